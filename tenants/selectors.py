"""Reads of the tenants app. Each takes the organisation explicitly and builds its query inside
that organisation's scope; the scope's filter is part of the query, so it may be evaluated later."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from django.db.models import QuerySet

from controlplane.core.errors import NotFound
from controlplane.core.models import AuditEvent
from controlplane.core.scoping import org_scope
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
from tenants.plans import BUILTIN_DEFAULT
from tenants.scopes import Scope, role_scopes

logger = logging.getLogger(__name__)


def user_membership_list(*, user: User) -> QuerySet[Membership]:
    """A person's own memberships across organisations (the console's organisation switcher)."""
    # Filtered by the person, not by an organisation: the only cross-organisation read a customer gets.
    queryset: QuerySet[Membership] = (
        Membership.objects.unscoped_all_orgs()
        .filter(user=user)
        .select_related("organization")
        .order_by("organization__slug")
    )
    return queryset


def organization_list_for_user(*, user: User) -> QuerySet[Organization]:
    return Organization.objects.filter(
        pk__in=Membership.objects.unscoped_all_orgs().filter(user=user).values("organization_id")
    )


def organization_list_for_api_key(*, api_key: ApiKey) -> QuerySet[Organization]:
    """An API key sees only its own organisation, and only while it may read it."""
    membership = (
        Membership.objects.unscoped_all_orgs()
        .filter(organization_id=api_key.organization_id, user_id=api_key.created_by_id)
        .first()
    )
    if membership is None or Scope.ORG_READ not in frozenset(api_key.scopes) & role_scopes(membership.role):
        return Organization.objects.none()
    return Organization.objects.filter(pk=api_key.organization_id)


def organization_list_all(*, status: str | None = None) -> QuerySet[Organization]:
    """Operators: every organisation."""
    queryset = Organization.objects.all()
    if status:
        queryset = queryset.filter(status=status)
    return queryset


def organization_get(*, slug: str) -> Organization:
    organization = Organization.objects.filter(slug=slug).first()
    if organization is None:
        raise NotFound("Not found.")
    return organization


def membership_list(*, organization: Organization) -> QuerySet[Membership]:
    with org_scope(organization.pk):
        queryset: QuerySet[Membership] = Membership.objects.filter(organization=organization).select_related("user")
    return queryset


def invitation_list(*, organization: Organization) -> QuerySet[Invitation]:
    with org_scope(organization.pk):
        queryset: QuerySet[Invitation] = Invitation.objects.filter(organization=organization).select_related(
            "invited_by"
        )
    return queryset


def api_key_list(*, organization: Organization) -> QuerySet[ApiKey]:
    with org_scope(organization.pk):
        queryset: QuerySet[ApiKey] = ApiKey.objects.filter(organization=organization).select_related(
            "created_by", "rotated_from"
        )
    return queryset


def residency_policy_get(*, organization: Organization) -> ResidencyPolicy:
    with org_scope(organization.pk):
        policy: ResidencyPolicy | None = ResidencyPolicy.objects.filter(organization=organization).first()
    if policy is None:
        raise NotFound("Not found.")
    return policy


def regional_quota_list(*, organization: Organization) -> QuerySet[RegionalQuota]:
    with org_scope(organization.pk):
        queryset: QuerySet[RegionalQuota] = RegionalQuota.objects.filter(organization=organization)
    return queryset


def regional_quota_get(*, organization: Organization, region: str) -> RegionalQuota:
    with org_scope(organization.pk):
        quota: RegionalQuota | None = RegionalQuota.objects.filter(organization=organization, region=region).first()
    if quota is None:
        raise NotFound("Not found.")
    return quota


# --- quota plans and the limits in force ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EffectiveQuota:
    """The limits admission enforces for one organisation in one region: the plan's, except where the
    organisation's row for the region sets a value (``overridden`` names those)."""

    region: str
    plan: str
    requests_per_minute: int
    tokens_per_minute: int
    concurrent_requests: int
    monthly_tokens: int
    overridden: tuple[str, ...]
    updated_at: datetime | None


def quota_plan_list() -> QuerySet[QuotaPlan]:
    return QuotaPlan.objects.all()


def quota_plan_get(*, slug: str) -> QuotaPlan:
    plan = QuotaPlan.objects.filter(slug=slug).first()
    if plan is None:
        raise NotFound(f"No quota plan {slug!r}.")
    return plan


def quota_plan_default() -> QuotaPlan:
    """The plan marked default. The services never leave the plans without one, but an emptied table
    could: then the built-in standard figures apply (an unsaved plan), never no limits at all."""
    plan = QuotaPlan.objects.filter(is_default=True).first()
    if plan is None:
        logger.warning("no quota plan is marked as the default: the built-in standard limits apply")
        return QuotaPlan(**BUILTIN_DEFAULT)
    return plan


def quota_plan_of(*, organization: Organization) -> QuotaPlan:
    """The organisation's plan: the one it names, else the default."""
    if organization.quota_plan_id is None:
        return quota_plan_default()
    plan: QuotaPlan = organization.quota_plan  # type: ignore[assignment]  # not None when the id is set
    return plan


def quota_effective(row: RegionalQuota | None, *, region: str, plan: QuotaPlan) -> EffectiveQuota:
    def limit(field: str) -> int:
        value = getattr(row, field) if row is not None else None
        return int(getattr(plan, field) if value is None else value)

    return EffectiveQuota(
        region=region,
        plan=plan.slug,
        requests_per_minute=limit("requests_per_minute"),
        tokens_per_minute=limit("tokens_per_minute"),
        concurrent_requests=limit("concurrent_requests"),
        monthly_tokens=limit("monthly_tokens"),
        overridden=row.overridden if row is not None else (),
        updated_at=row.updated_at if row is not None else None,
    )


def regional_quota_effective(*, organization: Organization, region: str) -> EffectiveQuota:
    with org_scope(organization.pk):
        row: RegionalQuota | None = RegionalQuota.objects.filter(organization=organization, region=region).first()
    return quota_effective(row, region=region, plan=quota_plan_of(organization=organization))



def audit_event_list(
    *, organization: Organization, action: str | None = None, target_type: str | None = None
) -> QuerySet[AuditEvent]:
    with org_scope(organization.pk):
        queryset: QuerySet[AuditEvent] = AuditEvent.objects.filter(organization=organization)
    if action:
        queryset = queryset.filter(action=action)
    if target_type:
        queryset = queryset.filter(target_type=target_type)
    return queryset
