"""The reaper's recoveries, driven directly: expired leases are re-sent (at most REQUEST_MAX_ATTEMPTS),
lost streams bill what they delivered, stranded requests fail with their holds released, unsent
outbox rows are re-sent, a narrowed residency policy cancels queued work, and a stale delivery of an
old attempt claims nothing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from billing.models import CreditHold, LedgerEntry
from controlplane.core.services import Actor
from controlplane.inference import admission, streams
from controlplane.inference.models import InferenceRequest, OutboxMessage
from controlplane.inference.services import request_claim, request_complete, requests_reap
from tenants import services as tenant_services
from tests.factories import Customer
from tests.stack import admit_chat, outbox_sends_recorded, serving_customer

MODEL = "SmolLM2-135M-Instruct"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Outbox sends are recorded instead of reaching a broker (no worker runs in these tests)."""
    return outbox_sends_recorded(monkeypatch)


@pytest.fixture
def gulf(transactional_db: None) -> Customer:
    return serving_customer()


def _admit(customer: Customer, body: dict[str, Any] | None = None) -> str:
    return str(admit_chat(customer, body or BODY).request_id)


def _row(request_id: str) -> InferenceRequest:
    row: InferenceRequest = InferenceRequest.objects.unscoped_all_orgs().get(request_id=request_id)
    return row


def _expire_lease(request_id: str) -> None:
    InferenceRequest.objects.unscoped_all_orgs().filter(request_id=request_id).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )


def test_an_expired_lease_is_resent_then_failed_after_the_last_attempt(
    gulf: Customer, sent: list[int], settings: Any
) -> None:
    settings.REQUEST_MAX_ATTEMPTS = 2
    request_id = _admit(gulf)
    assert len(sent) == 1
    assert request_claim(request_id=request_id, region="dxb", attempt=1, worker="w1") is not None
    requests_reap()  # positive control: a live lease is left alone
    assert _row(request_id).status == "running"
    _expire_lease(request_id)
    assert requests_reap().requeued == 1
    row = _row(request_id)
    assert (row.status, row.attempts, len(sent)) == ("queued", 1, 2)
    assert OutboxMessage.objects.order_by("-id").first().kwargs["attempt"] == 2  # type: ignore[union-attr]  # one exists
    # the stale message of attempt 1 claims nothing; attempt 2 does
    assert request_claim(request_id=request_id, region="dxb", attempt=1, worker="w-stale") is None
    assert request_claim(request_id=request_id, region="dxb", attempt=2, worker="w2") is not None
    _expire_lease(request_id)
    report = requests_reap()
    assert report.failed == 1
    row = _row(request_id)
    assert (row.status, row.error_code) == ("failed", "worker_lost")
    assert CreditHold.objects.unscoped_all_orgs().get(request_id=request_id).status == "released"
    assert not LedgerEntry.objects.unscoped_all_orgs().filter(request_id=request_id).exists()


def test_a_lost_stream_bills_the_tokens_it_delivered(gulf: Customer, sent: list[int]) -> None:
    request_id = _admit(gulf, {**BODY, "stream": True})
    assert request_claim(request_id=request_id, region="dxb", attempt=1, worker="w1") is not None
    for text in ("Hel", "lo", "!"):
        streams.event_append(region="dxb", request_id=request_id,
                             event={"type": "tok", "attempt": 1, "choice": 0, "text": text})  # fmt: skip
    _expire_lease(request_id)
    requests_reap()
    row = _row(request_id)
    assert (row.status, row.error_code, row.delivered_tokens) == ("failed", "stream_lost", 3)
    entry = LedgerEntry.objects.unscoped_all_orgs().get(request_id=request_id)
    assert entry.output_tokens == 3
    events = streams.events_read(region="dxb", request_id=request_id)
    assert events[-1]["type"] == "error"
    assert events[-1]["billed_tokens"] == 3


def test_a_stream_lost_before_its_first_token_is_retried(gulf: Customer, sent: list[int]) -> None:
    request_id = _admit(gulf, {**BODY, "stream": True})
    assert request_claim(request_id=request_id, region="dxb", attempt=1, worker="w1") is not None
    _expire_lease(request_id)
    assert requests_reap().requeued == 1
    assert _row(request_id).status == "queued"


def test_a_completed_attempt_settles_once_and_a_superseded_one_writes_nothing(gulf: Customer, sent: list[int]) -> None:
    request_id = _admit(gulf)
    assert request_claim(request_id=request_id, region="dxb", attempt=1, worker="w1") is not None
    _expire_lease(request_id)
    requests_reap()
    assert request_claim(request_id=request_id, region="dxb", attempt=2, worker="w2") is not None
    response = {"usage": {"prompt_tokens": 1, "completion_tokens": 2}}
    late = request_complete(request_id=request_id, attempt=1, completion_tokens=5, finish_reason="stop",
                            response=response, output=b"x", timings={})  # fmt: skip
    assert late is None
    receipt = request_complete(request_id=request_id, attempt=2, completion_tokens=2, finish_reason="stop",
                               response=response, output=b"ok", timings={})  # fmt: skip
    assert receipt is not None
    again = request_complete(request_id=request_id, attempt=2, completion_tokens=2, finish_reason="stop",
                             response=response, output=b"ok", timings={})  # fmt: skip
    assert again is None
    assert LedgerEntry.objects.unscoped_all_orgs().filter(request_id=request_id).count() == 1
    assert LedgerEntry.objects.unscoped_all_orgs().get(request_id=request_id).output_tokens == 2


def test_stranded_requests_fail_at_their_deadline(gulf: Customer, sent: list[int]) -> None:
    request_id = _admit(gulf)
    InferenceRequest.objects.unscoped_all_orgs().filter(request_id=request_id).update(
        deadline_at=timezone.now() - timedelta(seconds=1)
    )
    assert requests_reap().expired == 1
    row = _row(request_id)
    assert (row.status, row.error_code) == ("failed", "deadline_exceeded")
    assert CreditHold.objects.unscoped_all_orgs().get(request_id=request_id).status == "released"


def test_unsent_outbox_rows_are_resent(gulf: Customer, monkeypatch: pytest.MonkeyPatch) -> None:
    failures: list[int] = []

    def broken(*, outbox_id: int, **_: Any) -> bool:
        failures.append(outbox_id)
        return False

    monkeypatch.setattr(admission, "outbox_send", broken)
    request_id = _admit(gulf)
    assert failures
    message = OutboxMessage.objects.get(request_id=request_id)
    assert message.sent_at is None
    OutboxMessage.objects.filter(pk=message.pk).update(created_at=timezone.now() - timedelta(minutes=1))
    resent: list[int] = []

    def record(*, outbox_id: int, **_: Any) -> bool:
        resent.append(outbox_id)
        return True

    monkeypatch.setattr("controlplane.inference.services.outbox_send", record)
    assert requests_reap().resent == 1
    assert resent == [message.pk]


def test_a_narrowed_policy_cancels_queued_requests(gulf: Customer, sent: list[int]) -> None:
    queued = _admit(gulf)
    tenant_services.residency_policy_update(
        actor=Actor.system("tests"), organization=gulf.organization, allowed_countries=["DE"], allowed_zones=[],
        accelerator_family="", retention_days=1,
    )  # fmt: skip
    assert requests_reap().cancelled == 1
    row = _row(queued)
    assert (row.status, row.error_code) == ("cancelled", "region_no_longer_allowed")
    assert CreditHold.objects.unscoped_all_orgs().get(request_id=queued).status == "released"
