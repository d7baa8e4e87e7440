"""Test data built through the services, so that it obeys the same rules as real data.

`make_user`, `make_org(owner=...)`, `make_member(org, ...)`, `make_api_key(org, user, scopes=None)`
and the two client helpers are meant for every app's tests.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from rest_framework.test import APIClient

from controlplane.core.services import Actor
from tenants.models import ApiKey, Membership, Organization, Role, User
from tenants.services import api_key_create, membership_create, organization_create, user_create

DEFAULT_PASSWORD = "correct-horse-battery-staple-42"
TEST_ACTOR = Actor.system("tests")


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_user(
    *,
    email: str | None = None,
    password: str = DEFAULT_PASSWORD,
    full_name: str = "Test Person",
    is_staff: bool = False,
    email_verified: bool = True,
) -> User:
    return user_create(
        email=email or f"{_unique('user')}@example.com",
        password=password,
        full_name=full_name,
        is_staff=is_staff,
        email_verified=email_verified,
    )


def make_operator(*, email: str | None = None) -> User:
    """A staff superuser: may use the admin panel and `/api/v1/ops/`."""
    operator = make_user(email=email, is_staff=True)
    User.objects.filter(pk=operator.pk).update(is_superuser=True)
    operator.refresh_from_db()
    return operator


def make_org(
    *,
    owner: User | None = None,
    slug: str | None = None,
    name: str = "Test Organisation",
    billing_country: str = "SG",
    billing_currency: str = "USD",
    billing_mode: str = "prepaid",
) -> Organization:
    return organization_create(
        actor=TEST_ACTOR,
        owner=owner or make_user(),
        slug=slug or _unique("org"),
        name=name,
        billing_country=billing_country,
        billing_currency=billing_currency,
        billing_mode=billing_mode,
    )


def make_member(organization: Organization, *, user: User | None = None, role: str = Role.DEVELOPER) -> Membership:
    return membership_create(actor=TEST_ACTOR, organization=organization, user=user or make_user(), role=role)


def make_api_key(
    organization: Organization,
    user: User,
    scopes: list[str] | None = None,
    *,
    name: str = "test key",
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """A key created by `user` (who must be a member); returns the row and the full secret."""
    return api_key_create(
        actor=TEST_ACTOR,
        organization=organization,
        created_by=user,
        name=name,
        scopes=scopes,
        expires_at=expires_at,
    )


def session_client(user: User, *, enforce_csrf_checks: bool = False) -> APIClient:
    client = APIClient(enforce_csrf_checks=enforce_csrf_checks)
    client.force_login(user)
    return client


def key_client(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


@dataclass(frozen=True)
class Customer:
    """A member who owns an organisation, with a full-scope API key."""

    user: User
    organization: Organization
    api_key: str


def make_customer(*, email: str | None = None, slug: str | None = None, owner: User | None = None) -> Customer:
    user = owner or make_user(email=email)
    organization = make_org(owner=user, slug=slug, name="Customer", billing_country="AE")
    _, secret = make_api_key(organization, user, name="ci")
    return Customer(user=user, organization=organization, api_key=secret)
