"""List endpoints have pinned query counts: the number of queries does not grow with the rows."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from controlplane.core.services import Actor
from tenants.models import Organization, Role
from tenants.services import invitation_create
from tests.factories import key_client, make_api_key, make_member, make_org, make_user

pytestmark = pytest.mark.django_db

LISTS = ["members", "invitations", "api-keys", "quotas", "audit-events"]


@pytest.fixture
def owner_client(settings: Any) -> tuple[Organization, APIClient, Any]:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    owner = make_user()
    org = make_org(owner=owner)
    _, secret = make_api_key(org, owner)
    return org, key_client(secret), owner


def _grow(org: Organization, owner: Any, index: int) -> None:
    make_member(org, role=Role.VIEWER)
    make_api_key(org, owner, name=f"extra {index}")
    invitation_create(actor=Actor.system("tests"), organization=org, email=f"inv{index}@example.com", role="viewer")


def _count(client: APIClient, url: str) -> int:
    with CaptureQueriesContext(connections["default"]) as captured:
        response = client.get(url)
    assert response.status_code == 200, response.content
    assert response.json()["results"]
    return len(captured.captured_queries)


@pytest.mark.parametrize("name", LISTS)
def test_list_query_count_is_constant(owner_client: tuple[Organization, APIClient, Any], name: str) -> None:
    org, client, owner = owner_client
    _grow(org, owner, 0)
    url = f"/api/v1/orgs/{org.slug}/{name}?page_size=50"
    client.get(url)  # the key's first use stamps last_used_at, once a minute; not part of a list
    few = _count(client, url)
    for index in range(1, 6):
        _grow(org, owner, index)
    many = _count(client, url)
    assert many == few, f"{name}: {few} queries with few rows, {many} with more (an N+1)"
    assert few <= 8, f"{name}: {few} queries per page"
