"""The operators' admin: every registered model's list, search, filters and detail pages render."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.contrib import admin
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from tests.factories import make_operator, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def seeded(settings: Any, tmp_path: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.DATA_DIR = tmp_path
    call_command("seed_demo", stdout=io.StringIO())


def test_every_admin_page_renders_for_operators(seeded: None) -> None:
    client = Client()
    client.force_login(make_operator())
    registered = list(admin.site._registry.items())
    assert len(registered) >= 14
    for model, model_admin in registered:
        info = (model._meta.app_label, model._meta.model_name)
        changelist = reverse("admin:{}_{}_changelist".format(*info))
        response = client.get(changelist)
        assert response.status_code == 200, (model, response.status_code)
        assert model_admin.search_fields, model
        assert model_admin.list_filter, model
        assert client.get(changelist, {"q": "a"}).status_code == 200, model
        obj = model_admin.get_queryset(client.get(changelist).wsgi_request).first()
        if obj is not None:
            change = reverse("admin:{}_{}_change".format(*info), args=[obj.pk])
            assert client.get(change).status_code == 200, (model, obj.pk)


def test_customers_cannot_open_the_admin(seeded: None) -> None:
    client = Client()
    client.force_login(make_user())
    response = client.get(reverse("admin:index"))
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_api_docs_are_served_without_a_cdn() -> None:
    client = Client()
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    body = docs.content.decode()
    assert "swagger-ui" in body
    assert "cdn.jsdelivr" not in body
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    assert schema.json()["info"]["title"].startswith("Sovereign inference cloud")
