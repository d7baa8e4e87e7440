"""The regional worker's writes on PostgreSQL are single statements: the claim (the request row, its fields
and its organisation's policy) and the completion (row lock, settlement, the row completed with its receipt
and ledger entry). They claim, refuse and write what the ORM's statements do (`request_claim` and
`_request_complete_here`, run here by making the services see another database vendor). The completion
delivered ten times at once is tested on both paths in `tests/billing/test_request_path.py`."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from django.utils import timezone

from billing.models import CreditHold, LedgerEntry
from controlplane.core.errors import Conflict
from controlplane.core.services import Actor
from controlplane.inference import services
from controlplane.inference.models import InferenceRequest, RequestContent
from controlplane.inference.receipts import receipt_key_set, receipt_verify
from tenants import services as tenant_services
from tests.factories import Customer
from tests.stack import admit_chat, outbox_sends_recorded, serving_customer

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")
MODEL = "SmolLM2-135M-Instruct"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
RESPONSE = {"usage": {"prompt_tokens": 1, "completion_tokens": 7}, "choices": [{"text": "seven"}]}
FIRST_TOKEN = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)  # recorded with the completion when not recorded before


@pytest.fixture
def gulf(transactional_db: None, monkeypatch: pytest.MonkeyPatch) -> Customer:
    outbox_sends_recorded(monkeypatch)
    return serving_customer()


@pytest.fixture
def orm_path(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A context in which the services take their ORM path, as they do on SQLite."""

    class Orm:
        def __enter__(self) -> None:
            monkeypatch.setattr(services, "connection", SimpleNamespace(vendor="sqlite"))

        def __exit__(self, *exc: object) -> None:
            monkeypatch.undo()

    return Orm()


def _admit(customer: Customer) -> str:
    return str(admit_chat(customer, BODY).request_id)


def _complete(claimed: services.ClaimedRequest, *, tokens: int = 7, attempt: int | None = None) -> Any:
    return services.request_complete(
        request_id=claimed.request_id, attempt=attempt or claimed.attempt, completion_tokens=tokens,
        finish_reason="stop", response=RESPONSE, output=b"seven tokens", timings={"generate_ms": 12.5},
        claimed=claimed, first_token_at=FIRST_TOKEN,
    )  # fmt: skip


def _written(request_id: str, receipt: dict[str, Any]) -> dict[str, Any]:
    row = InferenceRequest.objects.unscoped_all_orgs().get(request_id=request_id)
    entry = LedgerEntry.objects.unscoped_all_orgs().get(request_id=request_id)
    content = RequestContent.objects.using("region_dxb").get(request_id=request_id)
    claims = {k: v for k, v in receipt["claims"].items() if k not in {"request_id", "created", "completed",
                                                                       "input_hmac", "output_hmac"}}  # fmt: skip
    assert row.receipt == receipt
    assert row.updated_at >= row.completed_at
    assert row.first_token_at == FIRST_TOKEN
    assert receipt_verify(receipt=receipt, keys=receipt_key_set()["keys"])
    return {
        "row": (
            row.status,
            row.completion_tokens,
            row.finish_reason,
            row.lease_expires_at,
            row.attempts,
            row.first_token_at,
        ),
        "timings": (row.timings["generate_ms"], row.timings["ledger_entry"] == entry.pk),
        "claims": claims,
        "entry": (entry.input_tokens, entry.output_tokens, entry.amount_micros, entry.api_key_id),
        "hold": CreditHold.objects.unscoped_all_orgs().get(request_id=request_id).status,
        "completion": content.completion,
    }


def test_the_statements_claim_and_complete_as_the_orm_does(gulf: Customer, orm_path: Any) -> None:
    fast, slow = _admit(gulf), _admit(gulf)
    claimed_fast = services.request_claim(request_id=fast, region="dxb", attempt=1, worker="w")
    with orm_path:
        claimed_slow = services.request_claim(request_id=slow, region="dxb", attempt=1, worker="w")
    assert claimed_fast is not None
    assert claimed_slow is not None
    different = {"request_id", "content", "salt", "created_at"}
    assert {k: v for k, v in asdict(claimed_fast).items() if k not in different} == {
        k: v for k, v in asdict(claimed_slow).items() if k not in different
    }
    assert claimed_fast.content.keys() == claimed_slow.content.keys()
    assert (claimed_fast.country, claimed_fast.retention_days) == ("AE", 1)
    receipt_fast = _complete(claimed_fast)
    with orm_path:
        receipt_slow = services.request_complete(
            request_id=slow, attempt=1, completion_tokens=7, finish_reason="stop", response=RESPONSE,
            output=b"seven tokens", timings={"generate_ms": 12.5}, first_token_at=FIRST_TOKEN,
        )  # fmt: skip
    assert receipt_slow is not None
    assert _written(fast, receipt_fast) == _written(slow, receipt_slow)
    assert _written(fast, receipt_fast)["completion"] == {"response": RESPONSE, "status": 200}


def test_a_claim_outside_a_narrowed_policy_is_refused_on_both_paths(gulf: Customer, orm_path: Any) -> None:
    fast, slow = _admit(gulf), _admit(gulf)
    tenant_services.residency_policy_update(
        actor=Actor.system("tests"), organization=gulf.organization, allowed_countries=["DE"], allowed_zones=[],
        accelerator_family="", retention_days=1,
    )  # fmt: skip
    assert services.request_claim(request_id=fast, region="dxb", attempt=1, worker="w") is None
    with orm_path:
        assert services.request_claim(request_id=slow, region="dxb", attempt=1, worker="w") is None
    for request_id in (fast, slow):
        row = InferenceRequest.objects.unscoped_all_orgs().get(request_id=request_id)
        assert (row.status, row.error_code) == ("cancelled", "region_no_longer_allowed")


def test_a_stale_delivery_claims_nothing_and_a_superseded_attempt_writes_nothing(gulf: Customer) -> None:
    request_id = _admit(gulf)
    first = services.request_claim(request_id=request_id, region="dxb", attempt=1, worker="w1")
    assert first is not None
    assert services.request_claim(request_id=request_id, region="dxb", attempt=1, worker="w1") is None
    assert services.request_claim(request_id=request_id, region="other", attempt=1, worker="w1") is None
    InferenceRequest.objects.unscoped_all_orgs().filter(request_id=request_id).update(status="queued")  # reaped
    second = services.request_claim(request_id=request_id, region="dxb", attempt=2, worker="w2")
    assert second is not None
    assert _complete(first) is None  # attempt 1 no longer owns it
    assert LedgerEntry.objects.unscoped_all_orgs().filter(request_id=request_id).count() == 0
    assert RequestContent.objects.using("region_dxb").get(request_id=request_id).completion is None
    assert _complete(second, tokens=3) is not None
    entry = LedgerEntry.objects.unscoped_all_orgs().get(request_id=request_id)
    assert entry.output_tokens == 3


def test_a_replay_before_the_response_is_stored_is_told_to_retry(gulf: Customer) -> None:
    """The worker stores the response in the region just after answering (`after_answer`): an idempotent
    replay in between is told to retry (409 in progress), not that nothing was retained; once stored, the
    replay returns it, charged once."""

    def admit() -> Any:
        return admit_chat(gulf, BODY, idempotency_key="replay-key")

    request_id = admit().request_id
    claimed = services.request_claim(request_id=request_id, region="dxb", attempt=1, worker="w")
    assert claimed is not None
    assert services.request_complete(
        request_id=request_id, attempt=1, completion_tokens=7, finish_reason="stop", response=RESPONSE,
        output=b"seven tokens", timings={}, claimed=claimed, after_answer=True,
    ) is not None  # fmt: skip
    with pytest.raises(Conflict) as early:
        admit()
    assert early.value.code == "idempotent_request_in_progress"
    services.request_after_answer(claimed=claimed, response=RESPONSE, completion_tokens=7)
    replay = admit()
    assert replay.replay is not None
    assert (replay.request_id, replay.replay["body"]) == (request_id, RESPONSE)
    # long after the completion, a missing response is one that was not kept
    RequestContent.objects.using("region_dxb").filter(request_id=request_id).update(completion=None)
    InferenceRequest.objects.unscoped_all_orgs().filter(request_id=request_id).update(
        completed_at=timezone.now() - timedelta(minutes=5)
    )
    with pytest.raises(Conflict) as late:
        admit()
    assert late.value.code == "idempotent_response_not_retained"
    assert LedgerEntry.objects.unscoped_all_orgs().filter(request_id=request_id).count() == 1
