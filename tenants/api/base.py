"""The one base of every customer route under `/api/v1/orgs/{org}/`.

It resolves the organisation from the URL, checks that the caller belongs to it (membership for a
session, ownership for an API key), checks the scope the method requires, and activates the
organisation scope for the ORM before the handler runs. Subclasses implement `scoped_queryset()`
and `scoped_object()` hooks; overriding `get_queryset`, `get_object` or `get_permissions` is refused
when the class is defined. Missing and foreign objects are both 404.
"""

from __future__ import annotations

from contextvars import Token
from typing import Any, ClassVar

from django.db.models import Model, QuerySet
from rest_framework import exceptions, generics
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from controlplane.core.errors import NotFound, PermissionDenied
from controlplane.core.scoping import scope_enter, scope_exit
from controlplane.core.services import Actor
from tenants.models import ApiKey, Membership, Organization
from tenants.scopes import ALL_SCOPES, role_scopes

_FORBIDDEN_OVERRIDES = ("get_queryset", "get_object", "get_permissions", "initial", "check_permissions")


class OrgScopedAPIView(generics.GenericAPIView):  # type: ignore[type-arg]  # generic over each subclass's model
    scope_kind: ClassVar[str] = "org"
    # HTTP method (upper case) -> the scope it requires. Methods not listed are refused.
    required_scopes: ClassVar[dict[str, str]] = {}
    # Whether a suspended organisation may still use this route (reads stay available).
    allowed_when_suspended: ClassVar[bool] = False
    permission_classes: ClassVar[list[type[BasePermission]]] = [IsAuthenticated]  # type: ignore[misc]  # narrowed

    organization: Organization
    membership: Membership | None
    effective_scopes: frozenset[str]
    _scope_token: Token[int | None] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in _FORBIDDEN_OVERRIDES:
            if name in cls.__dict__:
                raise TypeError(
                    f"{cls.__name__} overrides {name}(); org-scoped views implement scoped_queryset()/"
                    "scoped_object() instead"
                )
        for method, scope in cls.required_scopes.items():
            if scope not in ALL_SCOPES:
                raise TypeError(f"{cls.__name__}.required_scopes[{method!r}] = {scope!r} is not a known scope")

    # --- hooks for subclasses ---------------------------------------------------------------

    def scoped_queryset(self) -> QuerySet[Any]:
        raise RuntimeError(f"{type(self).__name__} lists nothing: it defines no scoped_queryset()")

    def scoped_object(self) -> Model:
        lookup = self.kwargs.get(self.lookup_url_kwarg or self.lookup_field)
        queryset = self.scoped_queryset()
        try:
            obj: Model = queryset.get(**{self.lookup_field: lookup})
        except (queryset.model.DoesNotExist, ValueError, TypeError) as exc:
            raise NotFound("Not found.") from exc
        return obj

    # --- the enforcement ---------------------------------------------------------------------

    def get_queryset(self) -> QuerySet[Any]:
        return self.scoped_queryset()

    def get_object(self) -> Model:
        return self.scoped_object()

    def get_permissions(self) -> list[BasePermission]:
        return [permission() for permission in self.permission_classes]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        self.organization = self._resolve_organization(request, str(kwargs.get("org", "")))
        self._scope_token = scope_enter(self.organization.pk)
        method = (request.method or "").upper()
        if method == "OPTIONS":
            return
        required = self.required_scopes.get("GET" if method == "HEAD" else method)
        if required is None:
            raise exceptions.MethodNotAllowed(method)
        if required not in self.effective_scopes:
            raise exceptions.PermissionDenied(f"This action needs the scope {required!r}.")
        if (
            self.organization.status == Organization.Status.SUSPENDED
            and not self.allowed_when_suspended
            and method not in {"GET", "HEAD"}
        ):
            raise PermissionDenied(
                "The organisation is suspended; only reads are allowed.", code="organization_suspended"
            )

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        try:
            return super().finalize_response(request, response, *args, **kwargs)
        finally:
            if self._scope_token is not None:
                scope_exit(self._scope_token)
                self._scope_token = None

    def _resolve_organization(self, request: Request, slug: str) -> Organization:
        organization = Organization.objects.filter(slug=slug).first()
        if organization is None:
            raise NotFound("Not found.")
        user = request.user
        membership = Membership.objects.unscoped_all_orgs().filter(organization=organization, user_id=user.pk).first()
        auth = request.auth
        if isinstance(auth, ApiKey):
            if auth.organization_id != organization.pk or membership is None:
                raise NotFound("Not found.")
            scopes = frozenset(auth.scopes) & role_scopes(membership.role)
        else:
            if membership is None:
                raise NotFound("Not found.")
            scopes = role_scopes(membership.role)
        self.membership = membership
        self.effective_scopes = scopes
        return organization

    # --- helpers for handlers ----------------------------------------------------------------

    @property
    def actor(self) -> Actor:
        return actor_from_request(self.request)


def actor_from_request(request: Request) -> Actor:
    ip = request.META.get("REMOTE_ADDR") or None
    auth = request.auth
    if isinstance(auth, ApiKey):
        return Actor(user_id=auth.created_by_id, label=f"key:{auth.key_id}", ip_address=ip)
    user = request.user
    if user and user.is_authenticated:
        return Actor(user_id=user.pk, label=str(getattr(user, "email", user.pk)), ip_address=ip)
    return Actor(user_id=None, label="anonymous", ip_address=ip)
