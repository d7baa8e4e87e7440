"""The operators' admin for inference: every organisation's requests, read-only, never their content."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib import admin
from django.test import Client
from django.utils import timezone

from controlplane.core.scoping import org_scope
from controlplane.inference.models import IdempotencyKey, InferenceRequest, OutboxMessage, RequestContent
from tests.factories import make_inference_request, make_operator, make_org, make_request_content

pytestmark = pytest.mark.django_db(databases="__all__")

SECRET_PROMPT = "the merger closes on Friday"


@pytest.fixture
def operator_client(settings: Any) -> Client:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    client = Client()
    client.force_login(make_operator())
    return client


def _request_with_content() -> InferenceRequest:
    row = make_inference_request(make_org(slug="acme"), region="fra", country="DE", retention_days=7)
    make_request_content(
        row,
        body={"endpoint": "chat", "request": {"messages": [{"role": "user", "content": SECRET_PROMPT}]}},
        completion={"status": 200, "response": {"choices": [{"message": {"content": SECRET_PROMPT.upper()}}]}},
    )
    return row


def test_request_content_is_not_in_the_central_admin() -> None:
    assert RequestContent not in admin.site._registry
    assert {InferenceRequest, OutboxMessage, IdempotencyKey} <= set(admin.site._registry)


def test_requests_of_every_organisation_list_filter_and_search(operator_client: Client) -> None:
    mine = _request_with_content()
    other = make_inference_request(make_org(slug="globex"), status="failed", error_code="oops")
    changelist = "/admin/inference/inferencerequest/"

    page = operator_client.get(changelist)
    assert page.status_code == 200
    text = page.content.decode()
    assert mine.request_id in text
    assert other.request_id in text
    assert SECRET_PROMPT not in text

    for query, shown, hidden in (
        ({"status__exact": "failed"}, other, mine),
        ({"region__exact": "fra"}, mine, other),
        ({"organization__id__exact": str(mine.organization_id)}, mine, other),
        ({"q": mine.request_id}, mine, other),
    ):
        text = operator_client.get(changelist, query).content.decode()
        assert shown.request_id in text, query
        assert hidden.request_id not in text, query
    model_filter = operator_client.get(changelist, {"model_name": mine.model_name})
    assert model_filter.status_code == 200
    assert mine.request_id in model_filter.content.decode()


def test_request_detail_is_read_only_and_shows_no_content(operator_client: Client) -> None:
    row = _request_with_content()
    page = operator_client.get(f"/admin/inference/inferencerequest/{row.pk}/change/")
    assert page.status_code == 200
    text = page.content.decode()
    assert row.request_id in text
    assert SECRET_PROMPT not in text
    assert SECRET_PROMPT.upper() not in text
    assert operator_client.get("/admin/inference/inferencerequest/add/").status_code == 403
    assert operator_client.post(f"/admin/inference/inferencerequest/{row.pk}/delete/").status_code == 403
    assert InferenceRequest.objects.unscoped_all_orgs().filter(pk=row.pk).exists()


def test_outbox_and_idempotency_keys_render(operator_client: Client) -> None:
    row = make_inference_request()
    message = OutboxMessage.objects.create(request_id=row.request_id, task_name="inference.run", queue="region.dxb",
                                           kwargs={"request_id": row.request_id})  # fmt: skip
    with org_scope(row.organization_id):
        key = IdempotencyKey.objects.create(
            organization=row.organization, key="retry-1", endpoint="chat", body_sha256="0" * 64,
            request_id=row.request_id, region="dxb", expires_at=timezone.now() + timedelta(hours=24),
        )  # fmt: skip
    for changelist, obj in (("outboxmessage", message), ("idempotencykey", key)):
        listing = operator_client.get(f"/admin/inference/{changelist}/", {"q": row.request_id})
        assert listing.status_code == 200
        assert row.request_id in listing.content.decode()
        assert operator_client.get(f"/admin/inference/{changelist}/{obj.pk}/change/").status_code == 200
    pending = operator_client.get("/admin/inference/outboxmessage/", {"sent_at__isempty": "1"})
    assert pending.status_code == 200
