"""The operators' admin: every tenants page loads across organisations; actions go through services."""

from __future__ import annotations

import pytest
from django.test import Client

from controlplane.core.models import AuditEvent
from controlplane.core.scoping import org_scope
from tenants.models import ApiKey, Organization, RegionalQuota
from tests.factories import make_api_key, make_member, make_operator, make_org, make_user

pytestmark = pytest.mark.django_db

CHANGELISTS = (
    "tenants/user",
    "tenants/organization",
    "tenants/membership",
    "tenants/invitation",
    "tenants/apikey",
    "tenants/residencypolicy",
    "tenants/regionalquota",
    "core/auditevent",
)


def _admin_client() -> Client:
    client = Client()
    client.force_login(make_operator())
    return client


@pytest.mark.parametrize("changelist", CHANGELISTS)
def test_changelists_show_every_organisations_rows(changelist: str) -> None:
    first, second = make_org(), make_org()
    make_member(first)
    make_api_key(second, make_member(second).user)

    assert Client().get(f"/admin/{changelist}/").status_code == 302
    response = _admin_client().get(f"/admin/{changelist}/", {"q": ""})
    assert response.status_code == 200


def test_api_key_admin_never_shows_the_hmac() -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    key, _ = make_api_key(organization, owner)
    response = _admin_client().get(f"/admin/tenants/apikey/{key.pk}/change/")
    assert response.status_code == 200
    assert key.key_id in response.content.decode()
    assert key.secret_hmac not in response.content.decode()


def test_suspend_and_revoke_actions_write_audit_rows() -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    key, _ = make_api_key(organization, owner)
    client = _admin_client()

    response = client.post(
        "/admin/tenants/organization/",
        {"action": "suspend_organizations", "_selected_action": [organization.pk]},
    )
    assert response.status_code == 302
    organization.refresh_from_db()
    assert organization.status == Organization.Status.SUSPENDED

    client.post("/admin/tenants/apikey/", {"action": "revoke_keys", "_selected_action": [key.pk]})
    assert ApiKey.objects.unscoped_all_orgs().get(pk=key.pk).revoked_at is not None

    actions = set(
        AuditEvent.objects.unscoped_all_orgs().filter(organization=organization).values_list("action", flat=True)
    )
    assert {"organization.suspend", "api_key.revoke"} <= actions
    suspend = AuditEvent.objects.unscoped_all_orgs().get(organization=organization, action="organization.suspend")
    assert suspend.actor_label.startswith("admin:")


def test_quota_edits_in_the_admin_go_through_the_service() -> None:
    organization = make_org()
    with org_scope(organization.pk):
        quota = RegionalQuota.objects.get(region="fra")
    response = _admin_client().post(
        f"/admin/tenants/regionalquota/{quota.pk}/change/",
        {"requests_per_minute": 7, "tokens_per_minute": 70, "concurrent_requests": 1, "monthly_tokens": 700},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    quota.refresh_from_db()
    assert quota.requests_per_minute == 7
    event = AuditEvent.objects.unscoped_all_orgs().get(organization=organization, action="regional_quota.set")
    assert event.changes["after"]["monthly_tokens"] == 700


def test_audit_events_are_read_only_in_the_admin() -> None:
    organization = make_org()
    event = AuditEvent.objects.unscoped_all_orgs().filter(organization=organization).first()
    assert event is not None
    client = _admin_client()
    assert client.get(f"/admin/core/auditevent/{event.pk}/change/").status_code == 200
    assert client.post(f"/admin/core/auditevent/{event.pk}/delete/").status_code == 403
    assert client.get("/admin/core/auditevent/add/").status_code == 403
