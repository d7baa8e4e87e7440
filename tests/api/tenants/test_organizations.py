"""Organisations: creation with its defaults, listing, editing, isolation, suspension by operators."""

from __future__ import annotations

import pytest

from controlplane.core.models import AuditEvent
from controlplane.core.regions import REGION_CODES
from controlplane.core.scoping import org_scope
from tenants.models import Membership, Organization, RegionalQuota, ResidencyPolicy, Role
from tests.factories import key_client, make_api_key, make_member, make_operator, make_org, make_user, session_client

pytestmark = pytest.mark.django_db


def _audit_actions(organization: Organization) -> list[str]:
    return list(
        AuditEvent.objects.unscoped_all_orgs()
        .filter(organization=organization)
        .order_by("id")
        .values_list("action", flat=True)
    )


def test_create_org_makes_the_caller_owner_with_default_policy_and_quotas() -> None:
    user = make_user()
    response = session_client(user).post(
        "/api/v1/orgs", {"slug": "acme-ae", "name": "Acme", "billing_country": "AE"}, format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["slug"] == "acme-ae"
    organization = Organization.objects.get(slug="acme-ae")
    with org_scope(organization.pk):
        assert Membership.objects.get(user=user).role == Role.OWNER
        assert ResidencyPolicy.objects.get().allowed_countries == ["AE"]
        assert sorted(RegionalQuota.objects.values_list("region", flat=True)) == sorted(REGION_CODES)
    assert _audit_actions(organization) == ["organization.create", "membership.create", "residency_policy.create"]


def test_default_residency_is_empty_when_the_billing_country_hosts_no_region() -> None:
    organization = make_org(billing_country="FR")
    with org_scope(organization.pk):
        assert ResidencyPolicy.objects.get().allowed_countries == []


def test_slug_taken_and_invalid_input() -> None:
    client = session_client(make_user())
    body = {"slug": "taken", "name": "First", "billing_country": "SG"}
    assert client.post("/api/v1/orgs", body, format="json").status_code == 201

    again = client.post("/api/v1/orgs", body, format="json")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "slug_taken"

    bad_country = client.post("/api/v1/orgs", {**body, "slug": "other", "billing_country": "sg"}, format="json")
    assert bad_country.status_code == 400
    assert bad_country.json()["error"]["code"] == "invalid_request"

    unknown = client.post("/api/v1/orgs", {**body, "slug": "other", "status": "active"}, format="json")
    assert unknown.status_code == 400
    assert unknown.json()["error"]["details"] == {"status": ["Unknown field."]}


def test_api_keys_cannot_create_organisations() -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    _, secret = make_api_key(organization, owner)
    body = {"slug": "by-key", "name": "By key", "billing_country": "SG"}

    refused = key_client(secret).post("/api/v1/orgs", body, format="json")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "session_required"
    assert session_client(owner).post("/api/v1/orgs", body, format="json").status_code == 201


def test_org_list_shows_only_the_callers_organisations() -> None:
    user = make_user()
    mine = make_org(owner=user)
    also_mine = make_org()
    make_member(also_mine, user=user, role=Role.VIEWER)
    foreign = make_org()

    slugs = {org["slug"] for org in session_client(user).get("/api/v1/orgs").json()["results"]}
    assert slugs == {mine.slug, also_mine.slug}
    assert foreign.slug not in slugs

    _, secret = make_api_key(mine, user)
    key_slugs = [org["slug"] for org in key_client(secret).get("/api/v1/orgs").json()["results"]]
    assert key_slugs == [mine.slug]


def test_get_and_patch_organisation_with_audit() -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    client = session_client(owner)
    url = f"/api/v1/orgs/{organization.slug}"

    assert client.get(url).json()["name"] == "Test Organisation"
    response = client.patch(url, {"name": "Renamed", "tax_id": "SG-123"}, format="json")
    assert response.status_code == 200
    assert response.json()["name"] == "Renamed"
    event = AuditEvent.objects.unscoped_all_orgs().get(organization=organization, action="organization.update")
    assert event.changes["name"] == {"before": "Test Organisation", "after": "Renamed"}
    assert event.actor_label == owner.email

    slug_change = client.patch(url, {"slug": "new-slug"}, format="json")
    assert slug_change.status_code == 400
    assert slug_change.json()["error"]["code"] == "invalid_request"
    organization.refresh_from_db()
    assert organization.slug != "new-slug"


def test_viewers_cannot_edit_the_organisation() -> None:
    organization = make_org()
    viewer = make_member(organization, role=Role.VIEWER).user
    url = f"/api/v1/orgs/{organization.slug}"

    assert session_client(viewer).get(url).status_code == 200
    refused = session_client(viewer).patch(url, {"name": "Nope"}, format="json")
    assert refused.status_code == 403


def test_foreign_and_missing_organisations_are_404() -> None:
    owner = make_user()
    mine = make_org(owner=owner)
    foreign = make_org()
    client = session_client(owner)

    assert client.get(f"/api/v1/orgs/{mine.slug}").status_code == 200
    assert client.get(f"/api/v1/orgs/{foreign.slug}").status_code == 404
    assert client.get("/api/v1/orgs/does-not-exist").status_code == 404
    assert client.patch(f"/api/v1/orgs/{foreign.slug}", {"name": "x"}, format="json").status_code == 404

    _, secret = make_api_key(mine, owner)
    assert key_client(secret).get(f"/api/v1/orgs/{mine.slug}").status_code == 200
    # The key's creator is not a member of the foreign organisation either way.
    make_member(foreign, user=owner, role=Role.OWNER)
    assert key_client(secret).get(f"/api/v1/orgs/{foreign.slug}").status_code == 404


def test_suspended_organisations_refuse_writes_until_reinstated() -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    operator = make_operator()
    client = session_client(owner)
    url = f"/api/v1/orgs/{organization.slug}"

    suspend = session_client(operator).post(
        f"/api/v1/ops/orgs/{organization.slug}/suspend", {"reason": "unpaid"}, format="json"
    )
    assert suspend.status_code == 200
    assert suspend.json()["status"] == "suspended"

    assert client.get(url).status_code == 200
    refused = client.patch(url, {"name": "During suspension"}, format="json")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "organization_suspended"
    keys = client.post(f"{url}/api-keys", {"name": "k"}, format="json")
    assert keys.json()["error"]["code"] == "organization_suspended"

    again = session_client(operator).post(f"/api/v1/ops/orgs/{organization.slug}/suspend", format="json")
    assert again.status_code == 409

    reinstate = session_client(operator).post(f"/api/v1/ops/orgs/{organization.slug}/reinstate", format="json")
    assert reinstate.status_code == 200
    assert client.patch(url, {"name": "After"}, format="json").status_code == 200
    actions = _audit_actions(organization)
    assert "organization.suspend" in actions
    assert "organization.reinstate" in actions


def test_operator_routes_need_a_staff_session() -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    _, secret = make_api_key(organization, owner)
    operator = make_operator()

    assert session_client(owner).get("/api/v1/ops/orgs").status_code == 403
    assert key_client(secret).get("/api/v1/ops/orgs").status_code == 403
    assert session_client(owner).post(f"/api/v1/ops/orgs/{organization.slug}/suspend").status_code == 403
    listed = session_client(operator).get("/api/v1/ops/orgs").json()["results"]
    assert organization.slug in {org["slug"] for org in listed}
    assert session_client(operator).post("/api/v1/ops/orgs/missing/suspend").status_code == 404
