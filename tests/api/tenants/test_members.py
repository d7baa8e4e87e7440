"""Members and invitations: roles, the last owner, key revocation on removal, invitation tokens."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.utils import timezone

from controlplane.core.models import AuditEvent
from controlplane.core.scoping import org_scope
from tenants.models import Invitation, Membership, Role
from tests.factories import key_client, make_api_key, make_member, make_org, make_user, session_client

pytestmark = pytest.mark.django_db


def test_members_are_listed_and_addressed_by_public_id() -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    member = make_member(organization, role=Role.DEVELOPER)
    client = session_client(owner)

    listed = client.get(f"/api/v1/orgs/{organization.slug}/members").json()["results"]
    assert {m["user"]["email"] for m in listed} == {owner.email, member.user.email}
    assert member.public_id.startswith("mem_")
    detail = client.get(f"/api/v1/orgs/{organization.slug}/members/{member.public_id}")
    assert detail.status_code == 200
    assert detail.json()["role"] == "developer"
    assert client.get(f"/api/v1/orgs/{organization.slug}/members/{member.pk}").status_code == 404


def test_foreign_members_are_404() -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    other_owner = make_user()
    other = make_org(owner=other_owner)
    foreign_member = make_member(other)

    assert (
        session_client(other_owner).get(f"/api/v1/orgs/{other.slug}/members/{foreign_member.public_id}").status_code
        == 200
    )
    for method in ("get", "patch", "delete"):
        response = getattr(session_client(owner), method)(
            f"/api/v1/orgs/{organization.slug}/members/{foreign_member.public_id}", {"role": "viewer"}, format="json"
        )
        assert response.status_code == 404


def test_role_change_is_audited_and_limited_to_roles_the_actor_holds() -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    admin = make_member(organization, role=Role.ADMIN).user
    developer = make_member(organization, role=Role.DEVELOPER)
    url = f"/api/v1/orgs/{organization.slug}/members/{developer.public_id}"

    escalation = session_client(admin).patch(url, {"role": "owner"}, format="json")
    assert escalation.status_code == 403
    assert escalation.json()["error"]["code"] == "role_not_grantable"
    assert session_client(admin).patch(url, {"role": "viewer"}, format="json").status_code == 200
    assert session_client(owner).patch(url, {"role": "owner"}, format="json").json()["role"] == "owner"

    events = AuditEvent.objects.unscoped_all_orgs().filter(
        organization=organization, action="membership.update_role", target_id=developer.public_id
    )
    assert [e.changes["role"]["after"] for e in events.order_by("id")] == ["viewer", "owner"]


def test_developers_cannot_manage_members() -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    developer = make_member(organization, role=Role.DEVELOPER).user
    viewer = make_member(organization, role=Role.VIEWER)
    url = f"/api/v1/orgs/{organization.slug}/members/{viewer.public_id}"

    assert session_client(developer).delete(url).status_code == 403
    assert session_client(owner).delete(url).status_code == 204


def test_the_last_owner_cannot_be_demoted_or_removed() -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    with org_scope(organization.pk):
        owner_membership = Membership.objects.get(user=owner)
    url = f"/api/v1/orgs/{organization.slug}/members/{owner_membership.public_id}"
    client = session_client(owner)

    demote = client.patch(url, {"role": "admin"}, format="json")
    assert demote.status_code == 409
    assert demote.json()["error"]["code"] == "last_owner"
    remove = client.delete(url)
    assert remove.status_code == 409
    assert remove.json()["error"]["code"] == "last_owner"

    make_member(organization, role=Role.OWNER)
    assert client.patch(url, {"role": "admin"}, format="json").status_code == 200


def test_removing_a_member_revokes_their_keys_in_that_org() -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    developer = make_member(organization, role=Role.DEVELOPER)
    key, secret = make_api_key(organization, developer.user)
    owner_key, owner_secret = make_api_key(organization, owner)
    elsewhere = make_org(owner=developer.user)
    _, elsewhere_secret = make_api_key(elsewhere, developer.user)

    assert key_client(secret).get(f"/api/v1/orgs/{organization.slug}").status_code == 200
    response = session_client(owner).delete(f"/api/v1/orgs/{organization.slug}/members/{developer.public_id}")
    assert response.status_code == 204

    revoked = key_client(secret).get(f"/api/v1/orgs/{organization.slug}")
    assert revoked.status_code == 401
    assert revoked.json()["error"]["code"] == "key_revoked"
    assert key_client(owner_secret).get(f"/api/v1/orgs/{organization.slug}").status_code == 200
    assert key_client(elsewhere_secret).get(f"/api/v1/orgs/{elsewhere.slug}").status_code == 200
    audit = AuditEvent.objects.unscoped_all_orgs().filter(organization=organization)
    assert audit.filter(action="api_key.revoke", target_id=key.key_id).exists()
    assert not audit.filter(action="api_key.revoke", target_id=owner_key.key_id).exists()
    assert audit.get(action="membership.remove").changes["revoked_keys"] == [key.key_id]


def _invite(client: Any, slug: str, email: str, role: str, captured: Any) -> Any:
    with captured(execute=True):
        return client.post(f"/api/v1/orgs/{slug}/invitations", {"email": email, "role": role}, format="json")


def test_invitation_is_mailed_stored_hashed_and_accepted_by_the_invitee(
    django_capture_on_commit_callbacks: Any,
) -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    invitee = make_user(email="invitee@example.com")
    response = _invite(
        session_client(owner), organization.slug, "Invitee@example.com", "developer", django_capture_on_commit_callbacks
    )
    assert response.status_code == 201, response.content
    token = response.json()["token"]
    assert len(mail.outbox) == 1
    assert token in mail.outbox[0].body
    with org_scope(organization.pk):
        invitation = Invitation.objects.get()
    assert token not in invitation.token_hash
    assert invitation.email == "invitee@example.com"

    stranger = make_user()
    mismatch = session_client(stranger).post("/api/v1/invitations/accept", {"token": token}, format="json")
    assert mismatch.status_code == 403
    assert mismatch.json()["error"]["code"] == "invitation_email_mismatch"

    accepted = session_client(invitee).post("/api/v1/invitations/accept", {"token": token}, format="json")
    assert accepted.status_code == 201
    assert accepted.json()["role"] == "developer"
    assert accepted.json()["organization"]["slug"] == organization.slug
    again = session_client(invitee).post("/api/v1/invitations/accept", {"token": token}, format="json")
    assert again.status_code == 409
    assert AuditEvent.objects.unscoped_all_orgs().filter(organization=organization, action="invitation.accept").exists()


def test_revoked_and_expired_invitations_cannot_be_accepted(django_capture_on_commit_callbacks: Any) -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    client = session_client(owner)
    invitee = make_user(email="late@example.com")

    revoked = _invite(client, organization.slug, "late@example.com", "viewer", django_capture_on_commit_callbacks)
    invitation_id = revoked.json()["id"]
    assert client.get(f"/api/v1/orgs/{organization.slug}/invitations").json()["results"][0]["id"] == invitation_id
    assert client.delete(f"/api/v1/orgs/{organization.slug}/invitations/{invitation_id}").status_code == 204
    refused = session_client(invitee).post(
        "/api/v1/invitations/accept", {"token": revoked.json()["token"]}, format="json"
    )
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "invitation_not_pending"

    expired = _invite(client, organization.slug, "late@example.com", "viewer", django_capture_on_commit_callbacks)
    Invitation.objects.unscoped_all_orgs().filter(public_id=expired.json()["id"]).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    late = session_client(invitee).post("/api/v1/invitations/accept", {"token": expired.json()["token"]}, format="json")
    assert late.status_code == 409
    assert late.json()["error"]["code"] == "invitation_expired"

    fresh = _invite(client, organization.slug, "late@example.com", "viewer", django_capture_on_commit_callbacks)
    ok = session_client(invitee).post("/api/v1/invitations/accept", {"token": fresh.json()["token"]}, format="json")
    assert ok.status_code == 201
    assert re.fullmatch(r"mem_[0-9a-f]{20}", ok.json()["id"])


def test_invitation_roles_are_limited_to_what_the_inviter_holds(django_capture_on_commit_callbacks: Any) -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    admin = make_member(organization, role=Role.ADMIN).user

    refused = _invite(
        session_client(admin), organization.slug, "x@example.com", "owner", django_capture_on_commit_callbacks
    )
    assert refused.status_code == 403
    allowed = _invite(
        session_client(owner), organization.slug, "x@example.com", "owner", django_capture_on_commit_callbacks
    )
    assert allowed.status_code == 201
