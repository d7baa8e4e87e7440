"""Bad input gets a clear 4xx with a machine-readable code, and nothing is written."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from controlplane.core.models import AuditEvent
from tenants.models import ApiKey, Organization, ResidencyPolicy
from tests.factories import key_client, make_api_key, make_org, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(settings: Any) -> tuple[Organization, APIClient]:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    owner = make_user()
    org = make_org(owner=owner, billing_country="AE")
    _, secret = make_api_key(org, owner)
    return org, key_client(secret)


def _policy(org: Organization) -> dict[str, Any]:
    policy = ResidencyPolicy.objects.unscoped_all_orgs().get(organization=org)
    return {"countries": policy.allowed_countries, "zones": policy.allowed_zones, "days": policy.retention_days}


def _audit_count(org: Organization) -> int:
    return AuditEvent.objects.unscoped_all_orgs().filter(organization=org).count()


GOOD_POLICY = {"allowed_countries": ["AE"], "allowed_zones": ["GCC"], "accelerator_family": "", "retention_days": 3}


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        ('{"allowed_countries": ["AE"], ', "application/json", 400, "malformed_body"),
        (json.dumps({**GOOD_POLICY, "retention_days": "three"}), "application/json", 400, "invalid_request"),
        (json.dumps({**GOOD_POLICY, "allowed_countries": "AE"}), "application/json", 400, "invalid_request"),
        (json.dumps({**GOOD_POLICY, "retention_dayz": 3}), "application/json", 400, "invalid_request"),
        (json.dumps({**GOOD_POLICY, "allowed_zones": ["ATLANTIS"]}), "application/json", 400, "invalid_request"),
        (json.dumps({**GOOD_POLICY, "allowed_countries": ["ae\x00"]}), "application/json", 400, "malformed_body"),
        (json.dumps(["not", "an", "object"]), "application/json", 400, "invalid_request"),
        ("allowed_countries=AE", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ],
)
def test_bad_policy_bodies_are_refused_and_change_nothing(
    world: tuple[Organization, APIClient], body: str, content_type: str, status: int, code: str
) -> None:
    org, client = world
    before, audits = _policy(org), _audit_count(org)
    response = client.generic("PUT", f"/api/v1/orgs/{org.slug}/residency-policy", data=body, content_type=content_type)
    assert response.status_code == status, response.content
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]
    assert _policy(org) == before
    assert _audit_count(org) == audits
    # Positive control: the good body is accepted, changes the policy and is audited.
    good = client.put(f"/api/v1/orgs/{org.slug}/residency-policy", data=GOOD_POLICY, format="json")
    assert good.status_code == 200, good.content
    assert _policy(org)["days"] == 3
    assert _audit_count(org) == audits + 1


def test_oversize_body_is_refused_before_parsing(world: tuple[Organization, APIClient], settings: Any) -> None:
    org, client = world
    keys = ApiKey.objects.unscoped_all_orgs().filter(organization=org).count()
    huge = json.dumps({"name": "x" * (settings.MAX_BODY_BYTES + 10)})
    response = client.generic("POST", f"/api/v1/orgs/{org.slug}/api-keys", data=huge, content_type="application/json")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert ApiKey.objects.unscoped_all_orgs().filter(organization=org).count() == keys
    ok = client.post(f"/api/v1/orgs/{org.slug}/api-keys", data={"name": "small"}, format="json")
    assert ok.status_code == 201, ok.content


def test_nul_in_query_is_refused(world: tuple[Organization, APIClient]) -> None:
    org, client = world
    response = client.get(f"/api/v1/orgs/{org.slug}/audit-events?action=%00")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_characters"
    assert client.get(f"/api/v1/orgs/{org.slug}/audit-events?action=x").status_code == 200


@pytest.mark.parametrize(
    ("header", "code"),
    [
        ("Bearer sovk_tooshort", "key_malformed"),
        ("Bearer " + "sovk_" + "A" * 50, "key_malformed"),  # right length, wrong checksum
        ("Bearer not-a-key-at-all", "key_malformed"),
    ],
)
def test_malformed_keys_get_401_with_a_code(world: tuple[Organization, APIClient], header: str, code: str) -> None:
    org, good = world
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get(f"/api/v1/orgs/{org.slug}")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == code
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert good.get(f"/api/v1/orgs/{org.slug}").status_code == 200


def test_unknown_route_is_a_json_404() -> None:
    response = APIClient().get("/api/v1/no-such-thing")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
