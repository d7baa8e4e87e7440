"""Property-based API tests: schemathesis drives every documented operation against a live server
as a member's key of organisation A, of organisation B, and as an operator session. No response
may be a server error, and every response must conform to the committed schema (status, content
type, body)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from django.test import Client
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from controlplane.core.services import Actor
from tenants.services import api_key_create, organization_create, user_create

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
CSRF = "schemathesiscsrftokenabcdefghijk"  # 32 characters: a valid unmasked CSRF secret


@pytest.fixture
def principals(transactional_db: None, settings: Any) -> list[dict[str, Any]]:
    # Password hashing is not under test here; Argon2 would dominate the run time.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    found: list[dict[str, Any]] = []
    for slug in ("alpha", "bravo"):
        owner = user_create(email=f"owner@{slug}.example", password="correct-horse-battery-9", email_verified=True)
        org = organization_create(
            actor=Actor.system("test"),
            owner=owner,
            slug=slug,
            name=slug.title(),
            billing_country="AE",
            billing_currency="AED",
        )
        _, secret = api_key_create(actor=Actor.system("test"), organization=org, created_by=owner, name="schemathesis")
        found.append({"org": slug, "headers": {"Authorization": f"Bearer {secret}"}, "cookies": {}})
    operator = user_create(
        email="operator@cloud.example", password="correct-horse-battery-9", is_staff=True, email_verified=True
    )
    client = Client()
    client.force_login(operator)
    found.append(
        {
            "org": "alpha",
            "headers": {"X-CSRFToken": CSRF},
            "cookies": {"sessionid": client.cookies["sessionid"].value, "csrftoken": CSRF},
        }
    )
    return found


schema = schemathesis.openapi.from_path(str(SCHEMA_FILE))


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_schema(case: Any, principals: list[dict[str, Any]], live_server: Any) -> None:
    for principal in principals:
        if case.path_parameters and "org" in case.path_parameters:
            case.path_parameters["org"] = principal["org"]
        case.call_and_validate(
            base_url=live_server.url, headers=principal["headers"], cookies=principal["cookies"], checks=CHECKS
        )
