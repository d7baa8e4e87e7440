"""Residency policy validation and audit, quotas (customer reads, operator writes), the audit log."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.core.models import AuditEvent
from controlplane.core.regions import REGION_CODES
from tenants.models import Role
from tests.factories import key_client, make_api_key, make_member, make_operator, make_org, make_user, session_client

pytestmark = pytest.mark.django_db

VALID_POLICY = {
    "allowed_countries": ["AE", "SA"],
    "allowed_zones": ["GCC"],
    "accelerator_family": "npu",
    "retention_days": 0,
}


def test_residency_policy_update_is_validated_and_audited() -> None:
    owner = make_user()
    organization = make_org(owner=owner, billing_country="SG")
    client = session_client(owner)
    url = f"/api/v1/orgs/{organization.slug}/residency-policy"

    assert client.get(url).json()["allowed_countries"] == ["SG"]
    response = client.put(url, VALID_POLICY, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["allowed_countries"] == ["AE", "SA"]
    assert client.get(url).json()["retention_days"] == 0

    event = AuditEvent.objects.unscoped_all_orgs().get(organization=organization, action="residency_policy.update")
    assert event.changes["before"]["allowed_countries"] == ["SG"]
    assert event.changes["after"]["allowed_countries"] == ["AE", "SA"]
    assert event.changes["after"]["accelerator_family"] == "npu"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"allowed_countries": ["ae"]}, "allowed_countries"),
        ({"allowed_countries": ["UAE"]}, "allowed_countries"),
        ({"allowed_zones": ["MARS"]}, "allowed_zones"),
        ({"accelerator_family": "tpu"}, "accelerator_family"),
        ({"retention_days": -1}, "retention_days"),
        ({"region": "dxb"}, "region"),
    ],
)
def test_invalid_residency_policies_are_refused(change: dict[str, Any], field: str) -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    url = f"/api/v1/orgs/{organization.slug}/residency-policy"

    response = session_client(owner).put(url, {**VALID_POLICY, **change}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert field in response.json()["error"]["details"]
    assert session_client(owner).get(url).json()["allowed_countries"] == ["SG"]
    assert not AuditEvent.objects.unscoped_all_orgs().filter(action="residency_policy.update").exists()


def test_residency_policy_needs_the_write_scope() -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    developer = make_member(organization, role=Role.DEVELOPER).user
    url = f"/api/v1/orgs/{organization.slug}/residency-policy"

    assert session_client(developer).get(url).status_code == 200
    assert session_client(developer).put(url, VALID_POLICY, format="json").status_code == 403
    assert session_client(owner).put(url, VALID_POLICY, format="json").status_code == 200


def test_quotas_are_readable_by_members_and_set_by_operators() -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    operator = make_operator()
    client = session_client(owner)

    listed = client.get(f"/api/v1/orgs/{organization.slug}/quotas").json()["results"]
    assert [quota["region"] for quota in listed] == sorted(REGION_CODES)
    assert client.get(f"/api/v1/orgs/{organization.slug}/quotas/mars").status_code == 404

    body = {"requests_per_minute": 5, "tokens_per_minute": 1000, "concurrent_requests": 2, "monthly_tokens": 10**6}
    ops_url = f"/api/v1/ops/orgs/{organization.slug}/quotas/dxb"
    assert client.put(ops_url, body, format="json").status_code == 403
    response = session_client(operator).put(ops_url, body, format="json")
    assert response.status_code == 200, response.content
    assert session_client(operator).get(ops_url).json()["requests_per_minute"] == 5
    assert client.get(f"/api/v1/orgs/{organization.slug}/quotas/dxb").json()["tokens_per_minute"] == 1000

    event = AuditEvent.objects.unscoped_all_orgs().get(organization=organization, action="regional_quota.set")
    assert event.target_id == "dxb"
    assert event.changes["after"]["concurrent_requests"] == 2
    assert event.actor_label == operator.email

    negative = session_client(operator).put(ops_url, {**body, "monthly_tokens": -1}, format="json")
    assert negative.status_code == 400
    assert (
        session_client(operator)
        .put(f"/api/v1/ops/orgs/{organization.slug}/quotas/mars", body, format="json")
        .status_code
        == 400
    )


def test_foreign_quotas_are_404() -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    other = make_org()
    assert session_client(owner).get(f"/api/v1/orgs/{organization.slug}/quotas/sin").status_code == 200
    assert session_client(owner).get(f"/api/v1/orgs/{other.slug}/quotas/sin").status_code == 404


def test_audit_log_is_filterable_and_needs_audit_read() -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    viewer = make_member(organization, role=Role.VIEWER).user
    make_api_key(organization, owner)
    other = make_org()
    url = f"/api/v1/orgs/{organization.slug}/audit-events"
    client = session_client(owner)

    everything = client.get(url).json()["results"]
    assert {"organization.create", "membership.create", "api_key.create"} <= {e["action"] for e in everything}
    keys_only = client.get(url, {"target_type": "api_key"}).json()["results"]
    assert [e["action"] for e in keys_only] == ["api_key.create"]
    by_action = client.get(url, {"action": "membership.create"}).json()["results"]
    assert len(by_action) == 2
    assert all(e["target_type"] == "membership" for e in by_action)

    assert session_client(viewer).get(url).status_code == 403
    assert client.get(f"/api/v1/orgs/{other.slug}/audit-events").status_code == 404


def test_audit_log_is_readable_with_a_scoped_key() -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    _, reader = make_api_key(organization, owner, scopes=["audit:read"])
    _, no_audit = make_api_key(organization, owner, scopes=["org:read"])
    url = f"/api/v1/orgs/{organization.slug}/audit-events"
    assert key_client(reader).get(url).status_code == 200
    assert key_client(no_audit).get(url).status_code == 403
