"""API keys: format, storage as HMAC only, authentication failures, scopes, rotation, revocation."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from controlplane.core.models import AuditEvent
from tenants.keys import KEY_LENGTH, PREFIX, key_hmac, key_parse
from tenants.models import ApiKey, Role
from tenants.scopes import role_scopes
from tests.factories import key_client, make_api_key, make_member, make_org, make_user, session_client

pytestmark = pytest.mark.django_db


def _org_url(organization: Any) -> str:
    return f"/api/v1/orgs/{organization.slug}"


def test_created_key_has_the_documented_format_and_is_shown_once() -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    client = session_client(owner)

    response = client.post(f"{_org_url(organization)}/api-keys", {"name": "ci"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    secret = body["secret"]
    assert secret.startswith(PREFIX)
    assert len(secret) == KEY_LENGTH
    parsed = key_parse(secret)
    assert parsed is not None
    assert parsed.key_id == body["key_id"]
    assert body["scopes"] == sorted(role_scopes(Role.OWNER))

    listed = client.get(f"{_org_url(organization)}/api-keys").json()["results"]
    detail = client.get(f"{_org_url(organization)}/api-keys/{body['key_id']}").json()
    assert "secret" not in listed[0]
    assert "secret" not in detail
    assert secret not in str(listed) + str(detail)


def test_keys_are_stored_only_as_hmac() -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    key, secret = make_api_key(organization, owner)
    row = ApiKey.objects.unscoped_all_orgs().values().get(pk=key.pk)
    assert row["secret_hmac"] == key_hmac(secret)
    assert all(secret not in str(value) for value in row.values())


def test_checksum_detects_a_mistyped_key() -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    _, secret = make_api_key(organization, owner)

    assert key_client(secret).get(_org_url(organization)).status_code == 200
    last = secret[-1]
    typo = secret[:-1] + ("A" if last != "A" else "B")
    assert key_parse(typo) is None
    response = key_client(typo).get(_org_url(organization))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "key_malformed"
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("damage", "code"),
    [
        ("revoke", "key_revoked"),
        ("expire", "key_expired"),
        ("malform", "key_malformed"),
        ("unknown", "key_invalid"),
    ],
)
def test_unusable_keys_get_401_with_a_code(damage: str, code: str) -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    key, secret = make_api_key(organization, owner, expires_at=timezone.now() + timedelta(hours=1))
    assert key_client(secret).get(_org_url(organization)).status_code == 200

    rows = ApiKey.objects.unscoped_all_orgs().filter(pk=key.pk)
    if damage == "revoke":
        rows.update(revoked_at=timezone.now())
    elif damage == "expire":
        rows.update(expires_at=timezone.now() - timedelta(seconds=1))
    elif damage == "malform":
        secret = "sovk_short"
    else:
        # A well-formed key whose row no longer exists.
        other, secret = make_api_key(organization, owner)
        ApiKey.objects.unscoped_all_orgs().filter(pk=other.pk).delete()
    response = key_client(secret).get(_org_url(organization))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == code


def test_requested_scopes_must_be_held_by_the_creator() -> None:
    organization = make_org()
    developer = make_member(organization, role=Role.DEVELOPER).user
    client = session_client(developer)
    url = f"{_org_url(organization)}/api-keys"

    refused = client.post(url, {"name": "too much", "scopes": ["members:write"]}, format="json")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "scope_not_held"
    unknown = client.post(url, {"name": "typo", "scopes": ["keys:destroy"]}, format="json")
    assert unknown.status_code == 400

    allowed = client.post(url, {"name": "reader", "scopes": ["keys:read", "org:read"]}, format="json")
    assert allowed.status_code == 201
    assert allowed.json()["scopes"] == ["keys:read", "org:read"]


def test_key_scopes_are_intersected_with_the_creators_current_role() -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    admin = make_member(organization, role=Role.ADMIN)
    _, secret = make_api_key(organization, admin.user, scopes=["members:read", "members:write", "org:read"])
    members_url = f"{_org_url(organization)}/members"
    developer = make_member(organization, role=Role.DEVELOPER)

    before = key_client(secret).patch(f"{members_url}/{developer.public_id}", {"role": "viewer"}, format="json")
    assert before.status_code == 200

    session_client(owner).patch(f"{members_url}/{admin.public_id}", {"role": "viewer"}, format="json")
    demoted = key_client(secret).patch(f"{members_url}/{developer.public_id}", {"role": "developer"}, format="json")
    assert demoted.status_code == 403
    assert key_client(secret).get(members_url).status_code == 200


def test_a_key_cannot_mint_a_key_with_more_scopes_than_itself() -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    _, secret = make_api_key(organization, owner, scopes=["keys:write", "keys:read"])
    url = f"{_org_url(organization)}/api-keys"

    refused = key_client(secret).post(url, {"name": "escalate", "scopes": ["members:write"]}, format="json")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "scope_not_held"
    default = key_client(secret).post(url, {"name": "child"}, format="json")
    assert default.status_code == 201
    assert default.json()["scopes"] == ["keys:read", "keys:write"]


def test_rotation_keeps_the_old_key_alive_for_the_overlap(settings: Any) -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    old, old_secret = make_api_key(organization, owner, scopes=["org:read", "keys:read"], name="prod")
    client = session_client(owner)
    url = f"{_org_url(organization)}/api-keys/{old.key_id}/rotate"

    too_long = client.post(url, {"overlap_s": 8 * 24 * 3600}, format="json")
    assert too_long.status_code == 400

    before = timezone.now()
    response = client.post(url, {"overlap_s": 600}, format="json")
    assert response.status_code == 201, response.content
    new = response.json()
    assert new["name"] == "prod"
    assert new["scopes"] == ["keys:read", "org:read"]
    assert new["rotated_from"] == old.key_id
    old.refresh_from_db()
    assert old.expires_at is not None
    assert before + timedelta(seconds=600) <= old.expires_at <= timezone.now() + timedelta(seconds=600)

    assert key_client(old_secret).get(_org_url(organization)).status_code == 200
    assert key_client(new["secret"]).get(_org_url(organization)).status_code == 200
    ApiKey.objects.unscoped_all_orgs().filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert key_client(old_secret).get(_org_url(organization)).json()["error"]["code"] == "key_expired"
    assert key_client(new["secret"]).get(_org_url(organization)).status_code == 200

    event = AuditEvent.objects.unscoped_all_orgs().get(organization=organization, action="api_key.rotate")
    assert event.target_id == old.key_id
    assert event.changes["new_key_id"] == new["key_id"]


def test_rotation_uses_the_configured_default_overlap(settings: Any) -> None:
    settings.API_KEY_ROTATION_OVERLAP_S = 120
    owner = make_user()
    organization = make_org(owner=owner)
    old, _ = make_api_key(organization, owner)
    before = timezone.now()
    response = session_client(owner).post(f"{_org_url(organization)}/api-keys/{old.key_id}/rotate", format="json")
    assert response.status_code == 201
    old.refresh_from_db()
    assert old.expires_at is not None
    assert before + timedelta(seconds=120) <= old.expires_at <= timezone.now() + timedelta(seconds=120)


def test_revocation_is_audited_and_limited_to_the_creator_or_admins() -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    developer = make_member(organization, role=Role.DEVELOPER).user
    owner_key, owner_secret = make_api_key(organization, owner)
    developer_key, _ = make_api_key(organization, developer)

    refused = session_client(developer).delete(f"{_org_url(organization)}/api-keys/{owner_key.key_id}")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "not_key_owner"
    assert key_client(owner_secret).get(_org_url(organization)).status_code == 200

    own = session_client(developer).delete(f"{_org_url(organization)}/api-keys/{developer_key.key_id}")
    assert own.status_code == 204
    by_owner = session_client(owner).delete(f"{_org_url(organization)}/api-keys/{owner_key.key_id}")
    assert by_owner.status_code == 204
    assert key_client(owner_secret).get(_org_url(organization)).status_code == 401
    revoked = AuditEvent.objects.unscoped_all_orgs().filter(organization=organization, action="api_key.revoke")
    assert set(revoked.values_list("target_id", flat=True)) == {owner_key.key_id, developer_key.key_id}
    created = AuditEvent.objects.unscoped_all_orgs().filter(organization=organization, action="api_key.create")
    assert created.count() == 2


def test_foreign_keys_are_404() -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    other_owner = make_user()
    other = make_org(owner=other_owner)
    foreign_key, _ = make_api_key(other, other_owner)

    assert session_client(other_owner).get(f"{_org_url(other)}/api-keys/{foreign_key.key_id}").status_code == 200
    client = session_client(owner)
    assert client.get(f"{_org_url(organization)}/api-keys/{foreign_key.key_id}").status_code == 404
    assert client.delete(f"{_org_url(organization)}/api-keys/{foreign_key.key_id}").status_code == 404
    assert client.post(f"{_org_url(organization)}/api-keys/{foreign_key.key_id}/rotate").status_code == 404
    foreign_key.refresh_from_db()
    assert foreign_key.revoked_at is None
