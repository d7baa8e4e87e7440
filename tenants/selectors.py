"""Reads of the tenants app. Each takes the organisation explicitly and builds its query inside
that organisation's scope; the scope's filter is part of the query, so it may be evaluated later."""

from __future__ import annotations

from django.db.models import QuerySet

from controlplane.core.errors import NotFound
from controlplane.core.models import AuditEvent
from controlplane.core.scoping import org_scope
from tenants.models import ApiKey, Invitation, Membership, Organization, RegionalQuota, ResidencyPolicy, User
from tenants.scopes import Scope, role_scopes


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
