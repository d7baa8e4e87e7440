"""The active organisation scope, and the manager that refuses to query tenant rows without one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from django.db import models

from controlplane.core.errors import ScopeMissing

if TYPE_CHECKING:
    from django.db.models import Model

_current_org_id: ContextVar[int | None] = ContextVar("current_org_id", default=None)

M = TypeVar("M", bound="Model")


def current_org_id() -> int | None:
    return _current_org_id.get()


def scope_enter(org_id: int) -> Token[int | None]:
    return _current_org_id.set(org_id)


def scope_exit(token: Token[int | None]) -> None:
    _current_org_id.reset(token)


@contextmanager
def org_scope(org_id: int) -> Iterator[None]:
    """Run a block with tenant-owned queries limited to one organisation."""
    token = scope_enter(org_id)
    try:
        yield
    finally:
        scope_exit(token)


class OrgScopedManager(models.Manager[M], Generic[M]):
    """Default manager of tenant-owned models: every query is limited to the active organisation.

    Querying with no active scope raises; `unscoped_all_orgs()` is the escape hatch for the
    operators' admin, migrations and billing jobs only.
    """

    def get_queryset(self) -> models.QuerySet[M]:
        org_id = _current_org_id.get()
        if org_id is None:
            raise ScopeMissing(
                f"{self.model.__name__} queried outside an organisation scope; "
                "use org_scope(...) or, for operators only, unscoped_all_orgs()"
            )
        return super().get_queryset().filter(organization_id=org_id)

    def unscoped_all_orgs(self) -> models.QuerySet[M]:
        return super().get_queryset()

    def create(self, **kwargs: Any) -> M:
        org_id = _current_org_id.get()
        given = kwargs.get("organization_id") or getattr(kwargs.get("organization"), "pk", None)
        if org_id is not None and given is not None and given != org_id:
            raise ScopeMissing("refusing to create a row for another organisation than the active scope")
        return super().create(**kwargs)
