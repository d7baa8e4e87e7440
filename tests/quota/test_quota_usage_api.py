"""Customers see their limits and their use now in every region (`/api/v1/orgs/{org}/quota-usage`),
read from the counters admission checks: a request admitted counts at once, and its settlement gives
back the tokens it did not use and frees its concurrency slot."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.core.regions import REGION_CODES
from controlplane.inference import admission
from controlplane.inference.admission import request_admit
from controlplane.inference.models import InferenceRequest
from controlplane.inference.openai_schema import parse_generation
from controlplane.inference.services import request_claim, request_complete
from tenants.models import ApiKey
from tests.factories import Customer, key_client
from tests.stack import outbox_sends_recorded, serving_customer

BODY = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.fixture
def gulf(transactional_db: None, monkeypatch: pytest.MonkeyPatch) -> Customer:
    outbox_sends_recorded(monkeypatch)
    customer = serving_customer(slug="usage")
    # ids restart with every test database: forget the counters an earlier run left under this id
    client = admission.quota_client()
    stale = list(client.scan_iter(match=f"quota:{{{customer.organization.pk}:*"))
    if stale:
        client.delete(*stale)
    return customer


def _usage(customer: Customer) -> dict[str, dict[str, Any]]:
    response = key_client(customer.api_key).get(f"/api/v1/orgs/{customer.organization.slug}/quota-usage")
    assert response.status_code == 200, response.content
    return {row["region"]: row for row in response.json()}


def test_quota_usage_follows_admission_and_settlement(gulf: Customer) -> None:
    before = _usage(gulf)
    assert sorted(before) == sorted(REGION_CODES)
    assert before["dxb"]["allowed"]
    assert not before["fra"]["allowed"]
    assert before["dxb"]["requests_last_minute"] == before["dxb"]["running_requests"] == 0
    key = ApiKey.objects.unscoped_all_orgs().get(organization=gulf.organization)
    admitted = request_admit(
        api_key=key, organization=gulf.organization, parsed=parse_generation(BODY, "chat"), raw_body=BODY,
        region_header=None, idempotency_key=None,
    )  # fmt: skip
    reserved = InferenceRequest.objects.unscoped_all_orgs().get(request_id=admitted.request_id).reserved_tokens
    during = _usage(gulf)["dxb"]
    assert (during["requests_last_minute"], during["running_requests"]) == (1, 1)
    assert during["tokens_last_minute"] == during["tokens_this_month"] == reserved
    assert during["requests_per_minute"] > 0
    assert during["window_reset_ms"] > 0
    assert _usage(gulf)["fra"]["requests_last_minute"] == 0  # other regions untouched
    assert request_claim(request_id=admitted.request_id, region="dxb", attempt=1, worker="w") is not None
    response = {"usage": {"prompt_tokens": admitted.prompt_tokens, "completion_tokens": 3}}
    assert request_complete(request_id=admitted.request_id, attempt=1, completion_tokens=3, finish_reason="stop",
                            response=response, output=b"abc", timings={}) is not None  # fmt: skip
    after = _usage(gulf)["dxb"]
    assert (after["requests_last_minute"], after["running_requests"]) == (1, 0)
    assert after["tokens_last_minute"] == after["tokens_this_month"] == admitted.prompt_tokens + 3
