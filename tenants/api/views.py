"""Views of the tenants API: they parse, authorise, call one service or selector, and serialise.

Account routes (`/auth/...`) and the organisation list are per person, not per organisation;
everything under `/orgs/{org}/` derives from `OrgScopedAPIView`; `/ops/` is for operators.
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

from django.contrib.auth import login, logout
from django.db.models import QuerySet
from django.middleware.csrf import get_token
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, permissions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.core.api.pagination import RegionCursorPagination
from controlplane.core.api.serializers import StrictInputSerializer
from controlplane.core.api.views import OperatorAPIView
from controlplane.core.errors import Conflict, PermissionDenied
from controlplane.core.models import AuditEvent
from tenants import selectors, services
from tenants.api import serializers as s
from tenants.api.base import OrgScopedAPIView, actor_from_request
from tenants.authentication import CsrfSessionAuthentication
from tenants.models import (
    ApiKey,
    Invitation,
    Membership,
    Organization,
    QuotaPlan,
    RegionalQuota,
    ResidencyPolicy,
    User,
)
from tenants.scopes import Scope

_NO_CONTENT = OpenApiResponse(description="Done; no body.")


def _parse(serializer_class: type[StrictInputSerializer], request: Request) -> dict[str, Any]:
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return cast(dict[str, Any], serializer.validated_data)


def _session_user(request: Request) -> User:
    """The signed-in person of a console session; API keys are refused where a person must act."""
    if request.auth is not None or not isinstance(request.user, User):
        raise PermissionDenied("This action needs a console session, not an API key.", code="session_required")
    return request.user


def _me_payload(user: User) -> dict[str, Any]:
    return {"user": user, "memberships": selectors.user_membership_list(user=user)}


# --- account routes (session based, for the console) -----------------------------------------


class AccountAPIView(APIView):
    """Per-person routes outside any organisation, for a signed-in caller."""

    scope_kind: ClassVar[str] = "user"


class PublicAccountAPIView(APIView):
    """Routes used before signing in (sign-up, login, password reset); they touch no organisation."""

    scope_kind: ClassVar[str] = "public"
    permission_classes: ClassVar[list[type[permissions.BasePermission]]] = [permissions.AllowAny]  # type: ignore[misc]  # narrowed


class CsrfView(PublicAccountAPIView):
    @extend_schema(operation_id="auth_csrf", responses=s.CsrfTokenSerializer, tags=["auth"])
    def get(self, request: Request) -> Response:
        # get_token also asks the CSRF middleware to set the cookie on this response.
        return Response({"csrf_token": get_token(request._request)})


class SignupView(PublicAccountAPIView):
    @extend_schema(request=s.SignupSerializer, responses={201: s.UserSerializer}, tags=["auth"])
    def post(self, request: Request) -> Response:
        data = _parse(s.SignupSerializer, request)
        user = services.user_signup(email=data["email"], password=data["password"], full_name=data["full_name"])
        return Response(s.UserSerializer(user).data, status=status.HTTP_201_CREATED)


class VerifyEmailView(PublicAccountAPIView):
    @extend_schema(request=s.TokenSerializer, responses=s.UserSerializer, tags=["auth"])
    def post(self, request: Request) -> Response:
        data = _parse(s.TokenSerializer, request)
        user = services.user_verify_email(token=data["token"])
        return Response(s.UserSerializer(user).data)


class LoginView(PublicAccountAPIView):
    @extend_schema(request=s.LoginSerializer, responses=s.MeSerializer, tags=["auth"])
    def post(self, request: Request) -> Response:
        # Login forms are CSRF-checked too, so a hostile page cannot sign a browser into its account.
        CsrfSessionAuthentication().enforce_csrf(request)
        data = _parse(s.LoginSerializer, request)
        user = services.user_authenticate(
            email=data["email"], password=data["password"], ip_address=request.META.get("REMOTE_ADDR")
        )
        login(request._request, user, backend="django.contrib.auth.backends.ModelBackend")
        return Response(s.MeSerializer(_me_payload(user)).data)


class LogoutView(AccountAPIView):
    @extend_schema(request=None, responses={204: _NO_CONTENT}, tags=["auth"])
    def post(self, request: Request) -> Response:
        logout(request._request)
        return Response(status=status.HTTP_204_NO_CONTENT)


class PasswordResetView(PublicAccountAPIView):
    @extend_schema(
        request=s.PasswordResetSerializer,
        responses={202: OpenApiResponse(description="Accepted; a link is mailed if the account exists.")},
        tags=["auth"],
    )
    def post(self, request: Request) -> Response:
        data = _parse(s.PasswordResetSerializer, request)
        services.password_reset_request(email=data["email"])
        return Response(status=status.HTTP_202_ACCEPTED)


class PasswordResetConfirmView(PublicAccountAPIView):
    @extend_schema(request=s.PasswordResetConfirmSerializer, responses={204: _NO_CONTENT}, tags=["auth"])
    def post(self, request: Request) -> Response:
        data = _parse(s.PasswordResetConfirmSerializer, request)
        services.password_reset_confirm(uid=data["uid"], token=data["token"], new_password=data["new_password"])
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeView(AccountAPIView):
    @extend_schema(responses=s.MeSerializer, tags=["auth"])
    def get(self, request: Request) -> Response:
        return Response(s.MeSerializer(_me_payload(cast(User, request.user))).data)


class InvitationAcceptView(AccountAPIView):
    @extend_schema(request=s.TokenSerializer, responses={201: s.MyMembershipSerializer}, tags=["invitations"])
    def post(self, request: Request) -> Response:
        user = _session_user(request)
        data = _parse(s.TokenSerializer, request)
        membership = services.invitation_accept(user=user, token=data["token"])
        return Response(s.MyMembershipSerializer(membership).data, status=status.HTTP_201_CREATED)


# --- the caller's organisations ----------------------------------------------------------------


class MyOrganizationsView(generics.GenericAPIView[Organization]):
    """The organisations the caller belongs to: per person, not per organisation."""

    scope_kind: ClassVar[str] = "user"
    serializer_class = s.OrganizationSerializer

    def get_queryset(self) -> QuerySet[Organization]:
        if getattr(self, "swagger_fake_view", False):
            return Organization.objects.none()
        auth = self.request.auth
        if isinstance(auth, ApiKey):
            return selectors.organization_list_for_api_key(api_key=auth)
        return selectors.organization_list_for_user(user=cast(User, self.request.user))

    @extend_schema(operation_id="orgs_list", responses=s.OrganizationSerializer(many=True), tags=["orgs"])
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(s.OrganizationSerializer(page, many=True).data)

    @extend_schema(request=s.OrganizationCreateSerializer, responses={201: s.OrganizationSerializer}, tags=["orgs"])
    def post(self, request: Request) -> Response:
        user = _session_user(request)
        data = _parse(s.OrganizationCreateSerializer, request)
        organization = services.organization_create(actor=actor_from_request(request), owner=user, **data)
        return Response(s.OrganizationSerializer(organization).data, status=status.HTTP_201_CREATED)


# --- organisation routes -------------------------------------------------------------------------


class OrganizationDetailView(OrgScopedAPIView):
    required_scopes: ClassVar[dict[str, str]] = {"GET": Scope.ORG_READ, "PATCH": Scope.ORG_WRITE}
    serializer_class = s.OrganizationSerializer

    def scoped_queryset(self) -> QuerySet[Organization]:
        return Organization.objects.filter(pk=self.organization.pk)

    @extend_schema(operation_id="orgs_retrieve", responses=s.OrganizationSerializer, tags=["orgs"])
    def get(self, request: Request, org: str) -> Response:
        return Response(s.OrganizationSerializer(self.organization).data)

    @extend_schema(request=s.OrganizationUpdateSerializer, responses=s.OrganizationSerializer, tags=["orgs"])
    def patch(self, request: Request, org: str) -> Response:
        data = _parse(s.OrganizationUpdateSerializer, request)
        organization = services.organization_update(actor=self.actor, organization=self.organization, **data)
        return Response(s.OrganizationSerializer(organization).data)


class MembershipListView(OrgScopedAPIView):
    required_scopes: ClassVar[dict[str, str]] = {"GET": Scope.MEMBERS_READ}
    serializer_class = s.MembershipSerializer

    def scoped_queryset(self) -> QuerySet[Membership]:
        return selectors.membership_list(organization=self.organization)

    @extend_schema(operation_id="orgs_members_list", responses=s.MembershipSerializer(many=True), tags=["members"])
    def get(self, request: Request, org: str) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(s.MembershipSerializer(page, many=True).data)


class MembershipDetailView(OrgScopedAPIView):
    required_scopes: ClassVar[dict[str, str]] = {
        "GET": Scope.MEMBERS_READ,
        "PATCH": Scope.MEMBERS_WRITE,
        "DELETE": Scope.MEMBERS_WRITE,
    }
    serializer_class = s.MembershipSerializer
    lookup_field = "public_id"
    lookup_url_kwarg = "member_id"

    def scoped_queryset(self) -> QuerySet[Membership]:
        return selectors.membership_list(organization=self.organization)

    @extend_schema(responses=s.MembershipSerializer, tags=["members"])
    def get(self, request: Request, org: str, member_id: str) -> Response:
        return Response(s.MembershipSerializer(cast(Membership, self.get_object())).data)

    @extend_schema(request=s.MembershipUpdateSerializer, responses=s.MembershipSerializer, tags=["members"])
    def patch(self, request: Request, org: str, member_id: str) -> Response:
        membership = cast(Membership, self.get_object())
        data = _parse(s.MembershipUpdateSerializer, request)
        updated = services.membership_update_role(
            actor=self.actor, organization=self.organization, membership=membership, role=data["role"]
        )
        return Response(s.MembershipSerializer(updated).data)

    @extend_schema(responses={204: _NO_CONTENT}, tags=["members"])
    def delete(self, request: Request, org: str, member_id: str) -> Response:
        membership = cast(Membership, self.get_object())
        services.membership_remove(actor=self.actor, organization=self.organization, membership=membership)
        return Response(status=status.HTTP_204_NO_CONTENT)


class InvitationListView(OrgScopedAPIView):
    required_scopes: ClassVar[dict[str, str]] = {"GET": Scope.MEMBERS_READ, "POST": Scope.MEMBERS_WRITE}
    serializer_class = s.InvitationSerializer

    def scoped_queryset(self) -> QuerySet[Invitation]:
        return selectors.invitation_list(organization=self.organization)

    @extend_schema(
        operation_id="orgs_invitations_list", responses=s.InvitationSerializer(many=True), tags=["invitations"]
    )
    def get(self, request: Request, org: str) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(s.InvitationSerializer(page, many=True).data)

    @extend_schema(
        request=s.InvitationCreateSerializer, responses={201: s.InvitationCreatedSerializer}, tags=["invitations"]
    )
    def post(self, request: Request, org: str) -> Response:
        data = _parse(s.InvitationCreateSerializer, request)
        invitation, token = services.invitation_create(
            actor=self.actor, organization=self.organization, email=data["email"], role=data["role"]
        )
        body = {**s.InvitationSerializer(invitation).data, "token": token}
        return Response(body, status=status.HTTP_201_CREATED)


class InvitationDetailView(OrgScopedAPIView):
    required_scopes: ClassVar[dict[str, str]] = {"GET": Scope.MEMBERS_READ, "DELETE": Scope.MEMBERS_WRITE}
    serializer_class = s.InvitationSerializer
    lookup_field = "public_id"
    lookup_url_kwarg = "invitation_id"

    def scoped_queryset(self) -> QuerySet[Invitation]:
        return selectors.invitation_list(organization=self.organization)

    @extend_schema(responses=s.InvitationSerializer, tags=["invitations"])
    def get(self, request: Request, org: str, invitation_id: str) -> Response:
        return Response(s.InvitationSerializer(cast(Invitation, self.get_object())).data)

    @extend_schema(responses={204: _NO_CONTENT}, tags=["invitations"])
    def delete(self, request: Request, org: str, invitation_id: str) -> Response:
        invitation = cast(Invitation, self.get_object())
        services.invitation_revoke(actor=self.actor, organization=self.organization, invitation=invitation)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ApiKeyListView(OrgScopedAPIView):
    required_scopes: ClassVar[dict[str, str]] = {"GET": Scope.KEYS_READ, "POST": Scope.KEYS_WRITE}
    serializer_class = s.ApiKeySerializer

    def scoped_queryset(self) -> QuerySet[ApiKey]:
        return selectors.api_key_list(organization=self.organization)

    @extend_schema(operation_id="orgs_api_keys_list", responses=s.ApiKeySerializer(many=True), tags=["api-keys"])
    def get(self, request: Request, org: str) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(s.ApiKeySerializer(page, many=True).data)

    @extend_schema(request=s.ApiKeyCreateSerializer, responses={201: s.ApiKeyCreatedSerializer}, tags=["api-keys"])
    def post(self, request: Request, org: str) -> Response:
        data = _parse(s.ApiKeyCreateSerializer, request)
        scopes: list[str] | None = data.get("scopes")
        if isinstance(request.auth, ApiKey):
            # A key minting a key passes on at most what it holds itself, never its creator's full role.
            if scopes is None:
                scopes = sorted(self.effective_scopes)
            elif not set(scopes) <= self.effective_scopes:
                raise PermissionDenied(
                    "A key cannot carry scopes the calling key does not hold.",
                    code="scope_not_held",
                    details={"scopes": sorted(set(scopes) - self.effective_scopes)},
                )
        key, secret = services.api_key_create(
            actor=self.actor,
            organization=self.organization,
            created_by=cast(User, request.user),
            name=data["name"],
            scopes=scopes,
            expires_at=data["expires_at"],
        )
        body = {**s.ApiKeySerializer(key).data, "secret": secret}
        return Response(body, status=status.HTTP_201_CREATED)


def _check_may_manage_key(view: OrgScopedAPIView, key: ApiKey) -> None:
    """Revoking or rotating someone else's key takes the members:write scope, not only keys:write."""
    if key.created_by_id != view.request.user.pk and Scope.MEMBERS_WRITE not in view.effective_scopes:
        raise PermissionDenied("Only the key's creator or an administrator may change it.", code="not_key_owner")


class ApiKeyDetailView(OrgScopedAPIView):
    required_scopes: ClassVar[dict[str, str]] = {"GET": Scope.KEYS_READ, "DELETE": Scope.KEYS_WRITE}
    # Revoking a key must stay possible while the organisation is suspended.
    allowed_when_suspended: ClassVar[bool] = True
    serializer_class = s.ApiKeySerializer
    lookup_field = "key_id"

    def scoped_queryset(self) -> QuerySet[ApiKey]:
        return selectors.api_key_list(organization=self.organization)

    @extend_schema(responses=s.ApiKeySerializer, tags=["api-keys"])
    def get(self, request: Request, org: str, key_id: str) -> Response:
        return Response(s.ApiKeySerializer(cast(ApiKey, self.get_object())).data)

    @extend_schema(responses={204: _NO_CONTENT}, tags=["api-keys"])
    def delete(self, request: Request, org: str, key_id: str) -> Response:
        key = cast(ApiKey, self.get_object())
        _check_may_manage_key(self, key)
        services.api_key_revoke(actor=self.actor, organization=self.organization, api_key=key)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ApiKeyRotateView(OrgScopedAPIView):
    required_scopes: ClassVar[dict[str, str]] = {"POST": Scope.KEYS_WRITE}
    serializer_class = s.ApiKeyCreatedSerializer
    lookup_field = "key_id"

    def scoped_queryset(self) -> QuerySet[ApiKey]:
        return selectors.api_key_list(organization=self.organization)

    @extend_schema(request=s.ApiKeyRotateSerializer, responses={201: s.ApiKeyCreatedSerializer}, tags=["api-keys"])
    def post(self, request: Request, org: str, key_id: str) -> Response:
        key = cast(ApiKey, self.get_object())
        _check_may_manage_key(self, key)
        data = _parse(s.ApiKeyRotateSerializer, request)
        new_key, secret = services.api_key_rotate(
            actor=self.actor, organization=self.organization, api_key=key, overlap_s=data["overlap_s"]
        )
        body = {**s.ApiKeySerializer(new_key).data, "secret": secret}
        return Response(body, status=status.HTTP_201_CREATED)


class ResidencyPolicyView(OrgScopedAPIView):
    required_scopes: ClassVar[dict[str, str]] = {"GET": Scope.RESIDENCY_READ, "PUT": Scope.RESIDENCY_WRITE}
    serializer_class = s.ResidencyPolicySerializer

    def scoped_queryset(self) -> QuerySet[ResidencyPolicy]:
        return ResidencyPolicy.objects.filter(organization=self.organization)

    @extend_schema(responses=s.ResidencyPolicySerializer, tags=["residency"])
    def get(self, request: Request, org: str) -> Response:
        policy = selectors.residency_policy_get(organization=self.organization)
        return Response(s.ResidencyPolicySerializer(policy).data)

    @extend_schema(request=s.ResidencyPolicyUpdateSerializer, responses=s.ResidencyPolicySerializer, tags=["residency"])
    def put(self, request: Request, org: str) -> Response:
        data = _parse(s.ResidencyPolicyUpdateSerializer, request)
        policy = services.residency_policy_update(actor=self.actor, organization=self.organization, **data)
        return Response(s.ResidencyPolicySerializer(policy).data)


class RegionalQuotaListView(OrgScopedAPIView):
    required_scopes: ClassVar[dict[str, str]] = {"GET": Scope.QUOTAS_READ}
    serializer_class = s.RegionalQuotaSerializer
    pagination_class = RegionCursorPagination

    def scoped_queryset(self) -> QuerySet[RegionalQuota]:
        return selectors.regional_quota_list(organization=self.organization)

    @extend_schema(operation_id="orgs_quotas_list", responses=s.RegionalQuotaSerializer(many=True), tags=["quotas"])
    def get(self, request: Request, org: str) -> Response:
        page = self.paginate_queryset(self.get_queryset()) or []
        plan = selectors.quota_plan_of(organization=self.organization)
        limits = [selectors.quota_effective(row, region=row.region, plan=plan) for row in page]
        return self.get_paginated_response(s.RegionalQuotaSerializer(limits, many=True).data)


class RegionalQuotaDetailView(OrgScopedAPIView):
    required_scopes: ClassVar[dict[str, str]] = {"GET": Scope.QUOTAS_READ}
    serializer_class = s.RegionalQuotaSerializer
    lookup_field = "region"

    def scoped_queryset(self) -> QuerySet[RegionalQuota]:
        return selectors.regional_quota_list(organization=self.organization)

    @extend_schema(responses=s.RegionalQuotaSerializer, tags=["quotas"])
    def get(self, request: Request, org: str, region: str) -> Response:
        row = cast(RegionalQuota, self.get_object())
        plan = selectors.quota_plan_of(organization=self.organization)
        return Response(s.RegionalQuotaSerializer(selectors.quota_effective(row, region=row.region, plan=plan)).data)


class AuditEventListView(OrgScopedAPIView):
    required_scopes: ClassVar[dict[str, str]] = {"GET": Scope.AUDIT_READ}
    serializer_class = s.AuditEventSerializer

    def scoped_queryset(self) -> QuerySet[AuditEvent]:
        params = self.request.query_params
        return selectors.audit_event_list(
            organization=self.organization,
            action=params.get("action") or None,
            target_type=params.get("target_type") or None,
        )

    @extend_schema(
        operation_id="orgs_audit_events_list",
        parameters=[
            OpenApiParameter("action", str, description="Only events with this action, e.g. api_key.create."),
            OpenApiParameter("target_type", str, description="Only events on this kind of object, e.g. api_key."),
        ],
        responses=s.AuditEventSerializer(many=True),
        tags=["audit"],
    )
    def get(self, request: Request, org: str) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(s.AuditEventSerializer(page, many=True).data)


# --- operator routes ---------------------------------------------------------------------------


class OpsOrganizationListView(OperatorAPIView):
    serializer_class = s.OrganizationSerializer

    def get_queryset(self) -> QuerySet[Organization]:
        status_filter = self.request.query_params.get("status") if hasattr(self, "request") else None
        return selectors.organization_list_all(status=status_filter or None)

    @extend_schema(
        operation_id="ops_orgs_list",
        parameters=[OpenApiParameter("status", str, enum=Organization.Status.values)],
        responses=s.OrganizationSerializer(many=True),
        tags=["ops"],
    )
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(s.OrganizationSerializer(page, many=True).data)


class OpsOrganizationSuspendView(OperatorAPIView):
    serializer_class = s.OrganizationSerializer

    @extend_schema(request=s.OrganizationStatusChangeSerializer, responses=s.OrganizationSerializer, tags=["ops"])
    def post(self, request: Request, org: str) -> Response:
        organization = selectors.organization_get(slug=org)
        data = _parse(s.OrganizationStatusChangeSerializer, request)
        changed = services.organization_suspend(
            actor=actor_from_request(request), organization=organization, reason=data["reason"]
        )
        return Response(s.OrganizationSerializer(changed).data)


class OpsOrganizationReinstateView(OperatorAPIView):
    serializer_class = s.OrganizationSerializer

    @extend_schema(request=s.OrganizationStatusChangeSerializer, responses=s.OrganizationSerializer, tags=["ops"])
    def post(self, request: Request, org: str) -> Response:
        organization = selectors.organization_get(slug=org)
        data = _parse(s.OrganizationStatusChangeSerializer, request)
        changed = services.organization_reinstate(
            actor=actor_from_request(request), organization=organization, reason=data["reason"]
        )
        return Response(s.OrganizationSerializer(changed).data)


class OpsRegionalQuotaView(OperatorAPIView):
    serializer_class = s.RegionalQuotaSerializer

    @extend_schema(operation_id="ops_orgs_quotas_retrieve", responses=s.RegionalQuotaSerializer, tags=["ops"])
    def get(self, request: Request, org: str, region: str) -> Response:
        organization = selectors.organization_get(slug=org)
        selectors.regional_quota_get(organization=organization, region=region)  # 404 for an unknown region
        limits = selectors.regional_quota_effective(organization=organization, region=region)
        return Response(s.RegionalQuotaSerializer(limits).data)

    @extend_schema(request=s.RegionalQuotaSetSerializer, responses=s.RegionalQuotaSerializer, tags=["ops"])
    def put(self, request: Request, org: str, region: str) -> Response:
        organization = selectors.organization_get(slug=org)
        data = _parse(s.RegionalQuotaSetSerializer, request)
        services.regional_quota_set(actor=actor_from_request(request), organization=organization, region=region, **data)
        limits = selectors.regional_quota_effective(organization=organization, region=region)
        return Response(s.RegionalQuotaSerializer(limits).data)


class OpsQuotaPlanListView(OperatorAPIView):
    serializer_class = s.QuotaPlanSerializer
    pagination_class = None  # a handful of tiers

    def get_queryset(self) -> QuerySet[QuotaPlan]:
        return selectors.quota_plan_list()

    @extend_schema(operation_id="ops_quota_plans_list", responses=s.QuotaPlanSerializer(many=True), tags=["ops"])
    def get(self, request: Request) -> Response:
        return Response(s.QuotaPlanSerializer(self.get_queryset(), many=True).data)

    @extend_schema(request=s.QuotaPlanCreateSerializer, responses={201: s.QuotaPlanSerializer}, tags=["ops"])
    def post(self, request: Request) -> Response:
        data = _parse(s.QuotaPlanCreateSerializer, request)
        if selectors.quota_plan_list().filter(slug=data["slug"]).exists():
            raise Conflict("A quota plan with this slug exists: change it with PUT.", code="quota_plan_exists")
        plan = services.quota_plan_save(actor=actor_from_request(request), **data)
        return Response(s.QuotaPlanSerializer(plan).data, status=status.HTTP_201_CREATED)


class OpsQuotaPlanDetailView(OperatorAPIView):
    serializer_class = s.QuotaPlanSerializer

    @extend_schema(operation_id="ops_quota_plans_retrieve", responses=s.QuotaPlanSerializer, tags=["ops"])
    def get(self, request: Request, plan: str) -> Response:
        return Response(s.QuotaPlanSerializer(selectors.quota_plan_get(slug=plan)).data)

    @extend_schema(request=s.QuotaPlanInputSerializer, responses=s.QuotaPlanSerializer, tags=["ops"])
    def put(self, request: Request, plan: str) -> Response:
        selectors.quota_plan_get(slug=plan)
        data = _parse(s.QuotaPlanInputSerializer, request)
        saved = services.quota_plan_save(actor=actor_from_request(request), slug=plan, **data)
        return Response(s.QuotaPlanSerializer(saved).data)


def _organization_plan(organization: Organization) -> dict[str, Any]:
    plan = selectors.quota_plan_of(organization=organization)
    return {"slug": organization.slug, "plan": plan.slug, "plan_named": organization.quota_plan_id is not None}


class OpsOrganizationQuotaPlanView(OperatorAPIView):
    serializer_class = s.OrganizationQuotaPlanSerializer

    @extend_schema(
        operation_id="ops_orgs_quota_plan_retrieve", responses=s.OrganizationQuotaPlanSerializer, tags=["ops"]
    )
    def get(self, request: Request, org: str) -> Response:
        organization = selectors.organization_get(slug=org)
        return Response(s.OrganizationQuotaPlanSerializer(_organization_plan(organization)).data)

    @extend_schema(
        request=s.OrganizationQuotaPlanSetSerializer, responses=s.OrganizationQuotaPlanSerializer, tags=["ops"]
    )
    def put(self, request: Request, org: str) -> Response:
        organization = selectors.organization_get(slug=org)
        data = _parse(s.OrganizationQuotaPlanSetSerializer, request)
        plan = selectors.quota_plan_get(slug=data["plan"]) if data["plan"] is not None else None
        changed = services.organization_quota_plan_set(
            actor=actor_from_request(request), organization=organization, plan=plan
        )
        return Response(s.OrganizationQuotaPlanSerializer(_organization_plan(changed)).data)
