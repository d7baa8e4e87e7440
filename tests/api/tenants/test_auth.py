"""Console accounts: sign-up, email verification, login and its throttle, logout, password reset, CSRF."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.core import mail
from rest_framework.test import APIClient

from controlplane.core.models import AuditEvent
from tenants.models import User
from tests.factories import DEFAULT_PASSWORD, make_org, make_user, session_client

pytestmark = pytest.mark.django_db


def _token_from_mail(name: str) -> str:
    match = re.search(rf"{name}=([^&\s]+)", str(mail.outbox[-1].body))
    assert match is not None
    return match.group(1)


def _signup(client: APIClient, captured: Any, email: str = "new@example.com", **extra: Any) -> Any:
    with captured(execute=True):
        return client.post(
            "/api/v1/auth/signup",
            {"email": email, "password": DEFAULT_PASSWORD, "full_name": "New Person", **extra},
            format="json",
        )


def test_signup_creates_an_unverified_user_and_mails_a_link(django_capture_on_commit_callbacks: Any) -> None:
    response = _signup(APIClient(), django_capture_on_commit_callbacks)
    assert response.status_code == 201, response.content
    assert response.json()["email"] == "new@example.com"
    assert response.json()["email_verified"] is False
    assert "password" not in response.json()
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["new@example.com"]
    user = User.objects.get(email="new@example.com")
    assert AuditEvent.objects.unscoped_all_orgs().filter(action="user.create", target_id=str(user.pk)).exists()


def test_verify_email_accepts_the_mailed_token_only(django_capture_on_commit_callbacks: Any) -> None:
    client = APIClient()
    _signup(client, django_capture_on_commit_callbacks)
    token = _token_from_mail("token")

    forged = client.post("/api/v1/auth/verify-email", {"token": token[:-2] + "xx"}, format="json")
    assert forged.status_code == 400
    assert forged.json()["error"]["code"] == "invalid_token"
    assert User.objects.get(email="new@example.com").email_verified is False

    response = client.post("/api/v1/auth/verify-email", {"token": token}, format="json")
    assert response.status_code == 200
    assert response.json()["email_verified"] is True
    assert User.objects.get(email="new@example.com").email_verified is True


def test_signup_refuses_a_taken_email_weak_password_and_unknown_fields(
    django_capture_on_commit_callbacks: Any,
) -> None:
    client = APIClient()
    assert _signup(client, django_capture_on_commit_callbacks).status_code == 201

    taken = _signup(client, django_capture_on_commit_callbacks, email="NEW@example.com")
    assert taken.status_code == 409
    assert taken.json()["error"]["code"] == "email_taken"

    weak = client.post("/api/v1/auth/signup", {"email": "weak@example.com", "password": "12345"}, format="json")
    assert weak.status_code == 400
    assert "password" in weak.json()["error"]["details"]

    unknown = _signup(client, django_capture_on_commit_callbacks, email="other@example.com", is_staff=True)
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "invalid_request"
    assert unknown.json()["error"]["details"] == {"is_staff": ["Unknown field."]}
    assert not User.objects.filter(email="other@example.com").exists()


def test_login_me_and_logout() -> None:
    user = make_user(email="person@example.com")
    organization = make_org(owner=user)
    client = APIClient()

    wrong = client.post("/api/v1/auth/login", {"email": "person@example.com", "password": "nope"}, format="json")
    assert wrong.status_code == 400
    assert wrong.json()["error"]["code"] == "invalid_credentials"
    assert client.get("/api/v1/auth/me").status_code == 401

    response = client.post(
        "/api/v1/auth/login", {"email": "Person@Example.com", "password": DEFAULT_PASSWORD}, format="json"
    )
    assert response.status_code == 200, response.content
    me = client.get("/api/v1/auth/me").json()
    assert me["user"]["email"] == "person@example.com"
    assert [(m["organization"]["slug"], m["role"]) for m in me["memberships"]] == [(organization.slug, "owner")]
    assert me["memberships"][0]["id"].startswith("mem_")

    assert client.post("/api/v1/auth/logout").status_code == 204
    assert client.get("/api/v1/auth/me").status_code == 401


def test_login_is_throttled_per_email(settings: Any) -> None:
    settings.LOGIN_FAILURE_LIMIT = 3
    make_user(email="target@example.com")
    make_user(email="bystander@example.com")
    for index in range(3):
        # Different source addresses: only the per-email counter reaches the limit.
        client = APIClient(REMOTE_ADDR=f"10.0.0.{index + 1}")
        bad = client.post("/api/v1/auth/login", {"email": "target@example.com", "password": "x"}, format="json")
        assert bad.status_code == 400

    fresh_ip = APIClient(REMOTE_ADDR="10.0.9.9")
    throttled = fresh_ip.post(
        "/api/v1/auth/login", {"email": "target@example.com", "password": DEFAULT_PASSWORD}, format="json"
    )
    assert throttled.status_code == 429
    assert throttled.json()["error"]["code"] == "login_throttled"
    assert 1 <= int(throttled["Retry-After"]) <= settings.LOGIN_FAILURE_WINDOW_S + 1

    other = fresh_ip.post(
        "/api/v1/auth/login", {"email": "bystander@example.com", "password": DEFAULT_PASSWORD}, format="json"
    )
    assert other.status_code == 200


def test_login_is_throttled_per_ip(settings: Any) -> None:
    settings.LOGIN_FAILURE_LIMIT = 3
    make_user(email="victim@example.com")
    attacker = APIClient(REMOTE_ADDR="192.0.2.7")
    for index in range(3):
        attacker.post("/api/v1/auth/login", {"email": f"guess{index}@example.com", "password": "x"}, format="json")

    throttled = attacker.post(
        "/api/v1/auth/login", {"email": "victim@example.com", "password": DEFAULT_PASSWORD}, format="json"
    )
    assert throttled.status_code == 429
    assert throttled.json()["error"]["code"] == "login_throttled"
    assert "Retry-After" in throttled

    elsewhere = APIClient(REMOTE_ADDR="192.0.2.8").post(
        "/api/v1/auth/login", {"email": "victim@example.com", "password": DEFAULT_PASSWORD}, format="json"
    )
    assert elsewhere.status_code == 200


def test_password_reset_mails_only_existing_accounts_and_the_link_works_once(
    django_capture_on_commit_callbacks: Any,
) -> None:
    make_user(email="forgetful@example.com")
    client = APIClient()
    with django_capture_on_commit_callbacks(execute=True):
        unknown = client.post("/api/v1/auth/password-reset", {"email": "nobody@example.com"}, format="json")
    assert unknown.status_code == 202
    assert mail.outbox == []

    with django_capture_on_commit_callbacks(execute=True):
        known = client.post("/api/v1/auth/password-reset", {"email": "forgetful@example.com"}, format="json")
    assert known.status_code == 202
    assert len(mail.outbox) == 1
    uid, token = _token_from_mail("uid"), _token_from_mail("token")

    bad = client.post(
        "/api/v1/auth/password-reset/confirm",
        {"uid": uid, "token": "0-nottherighttoken", "new_password": "a-brand-new-passphrase"},
        format="json",
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_token"

    confirm = client.post(
        "/api/v1/auth/password-reset/confirm",
        {"uid": uid, "token": token, "new_password": "a-brand-new-passphrase"},
        format="json",
    )
    assert confirm.status_code == 204
    login = client.post(
        "/api/v1/auth/login", {"email": "forgetful@example.com", "password": "a-brand-new-passphrase"}, format="json"
    )
    assert login.status_code == 200

    reused = client.post(
        "/api/v1/auth/password-reset/confirm",
        {"uid": uid, "token": token, "new_password": "yet-another-passphrase"},
        format="json",
    )
    assert reused.status_code == 400


def test_session_writes_need_the_csrf_token() -> None:
    user = make_user()
    client = session_client(user, enforce_csrf_checks=True)
    body = {"slug": "csrf-org", "name": "CSRF", "billing_country": "SG"}

    refused = client.post("/api/v1/orgs", body, format="json")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "permission_denied"

    token = client.get("/api/v1/auth/csrf").json()["csrf_token"]
    assert client.cookies["csrftoken"].value
    accepted = client.post("/api/v1/orgs", body, format="json", HTTP_X_CSRFTOKEN=token)
    assert accepted.status_code == 201, accepted.content


def test_login_needs_the_csrf_token() -> None:
    make_user(email="csrf@example.com")
    client = APIClient(enforce_csrf_checks=True)
    body = {"email": "csrf@example.com", "password": DEFAULT_PASSWORD}

    assert client.post("/api/v1/auth/login", body, format="json").status_code == 403

    token = client.get("/api/v1/auth/csrf").json()["csrf_token"]
    assert client.post("/api/v1/auth/login", body, format="json", HTTP_X_CSRFTOKEN=token).status_code == 200
