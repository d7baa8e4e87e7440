"""Admission writes the regional content while the quota's Lua step runs (the write is sent first, its answer
read after the quota's); a refusal by the quota, an unreachable quota store and a failed content write each
leave nothing behind: no content in the region, no central row, no reservation, nothing enqueued. An
admitted request's content is in its region before its central row exists (DESIGN section 3)."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from django.db import DatabaseError, connections

from controlplane.core.errors import RateLimited, ServiceUnavailable
from controlplane.core.regions import REGION_CODES, region_db_alias
from controlplane.core.services import Actor
from controlplane.inference import admission, quota
from controlplane.inference.models import InferenceRequest, OutboxMessage, RequestContent
from tenants import services as tenant_services
from tests.factories import Customer
from tests.stack import admit_chat, outbox_sends_recorded, serving_customer

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")
MODEL = "SmolLM2-135M-Instruct"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "overlap canary"}], "max_tokens": 4}


@pytest.fixture
def gulf(transactional_db: None, monkeypatch: pytest.MonkeyPatch) -> Customer:
    outbox_sends_recorded(monkeypatch)
    customer = serving_customer()
    tenant_services.regional_quota_set(
        actor=Actor.system("tests"), organization=customer.organization, region="dxb", requests_per_minute=1,
        tokens_per_minute=100_000, concurrent_requests=10, monthly_tokens=10**9,
    )  # fmt: skip
    return customer


def _nothing_left(customer: Customer, *, requests: int) -> None:
    """Only the `requests` admitted so far have content, a row and an outbox message; the quota holds only
    their reservations."""
    for code in REGION_CODES:
        held = RequestContent.objects.using(region_db_alias(code)).count()
        assert held == (requests if code == "dxb" else 0), code
    assert InferenceRequest.objects.unscoped_all_orgs().count() == requests
    assert OutboxMessage.objects.count() == requests
    state = quota.quota_state(
        client=admission.quota_client(), org_id=customer.organization.pk, region="dxb",
        limits=admission.quota_limits(customer.organization, "dxb"),
    )  # fmt: skip
    assert state["x-ratelimit-remaining-requests"] == str(1 - requests)


def test_a_quota_refusal_deletes_the_content_it_overlapped(gulf: Customer) -> None:
    admitted = admit_chat(gulf, BODY)
    store = RequestContent.objects.using(region_db_alias("dxb"))
    assert store.filter(request_id=admitted.request_id).exists()
    with pytest.raises(RateLimited) as refused:
        admit_chat(gulf, BODY)  # one request a minute: the second is refused
    assert refused.value.code == "rate_limit_requests_per_minute"
    _nothing_left(gulf, requests=1)


def test_an_unreachable_quota_store_deletes_the_content(gulf: Customer, monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(**_: Any) -> Any:
        raise redis.ConnectionError("refused")

    monkeypatch.setattr(quota, "quota_reserve", unreachable)
    with pytest.raises(ServiceUnavailable) as refused:
        admit_chat(gulf, BODY)
    assert refused.value.code == "quota_unavailable"
    monkeypatch.undo()
    _nothing_left(gulf, requests=0)


def test_a_failed_content_write_releases_the_reservation(gulf: Customer) -> None:
    store = connections[region_db_alias("dxb")]
    with store.cursor() as cursor:  # the region's store refuses the write after it was sent
        cursor.execute("ALTER TABLE inference_requestcontent ADD CONSTRAINT test_refuse CHECK (salt = '') NOT VALID")
    try:
        with pytest.raises(DatabaseError, match="test_refuse"):
            admit_chat(gulf, BODY)
        _nothing_left(gulf, requests=0)  # the request the quota had reserved is free again
    finally:
        with store.cursor() as cursor:
            cursor.execute("ALTER TABLE inference_requestcontent DROP CONSTRAINT test_refuse")
    admit_chat(gulf, BODY)
    _nothing_left(gulf, requests=1)


def test_the_content_is_written_before_the_central_row(gulf: Customer, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    central_write = admission._central_write_in_database

    def looking(write: admission.CentralWrite) -> None:
        request_id = write.row["request_id"]
        seen.append(RequestContent.objects.using(region_db_alias("dxb")).filter(request_id=request_id).exists())
        central_write(write)

    monkeypatch.setattr(admission, "_central_write_in_database", looking)
    admit_chat(gulf, BODY)
    assert seen == [True]
