"""I4/I5 through the request path: a settlement delivered ten times at once counts once; a worker that dies
between the engine's completion and the settlement is recovered by the reaper with neither loss nor
duplicate (one ledger entry, with the engine's token counts, priced as the hold recorded); and admission
refuses a request that a hard-stop budget cannot cover, with 402 `budget_exceeded`."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connections
from django.utils import timezone

from billing import budgets, selectors
from billing.models import CreditHold, LedgerEntry
from billing.reconcile import reconcile
from billing.services import price_entry_add
from controlplane.core import money
from controlplane.core.services import Actor
from controlplane.inference.models import InferenceRequest
from controlplane.inference.services import ClaimedRequest, request_claim, request_complete, requests_reap
from tenants.models import Organization
from tests.factories import Customer
from tests.stack import admit_chat, outbox_sends_recorded, serving_customer

MODEL = "SmolLM2-135M-Instruct"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
RESPONSE = {"usage": {"prompt_tokens": 1, "completion_tokens": 7}}
pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Outbox sends are recorded instead of reaching a broker (no worker runs here)."""
    return outbox_sends_recorded(monkeypatch)


@pytest.fixture
def customer(transactional_db: None) -> Customer:
    return serving_customer(slug="once")


def _admit(customer: Customer) -> str:
    return str(admit_chat(customer, BODY).request_id)


def _complete(
    request_id: str, attempt: int, tokens: int, claimed: ClaimedRequest | None = None
) -> dict[str, Any] | None:
    """Without `claimed`, the completion reads the row (the ORM's steps); with it, as the worker completes (on
    PostgreSQL one statement)."""
    return request_complete(request_id=request_id, attempt=attempt, completion_tokens=tokens, finish_reason="stop",
                            response=RESPONSE, output=b"seven tokens", timings={}, claimed=claimed)  # fmt: skip


def _expected_micros(hold: CreditHold, output_tokens: int) -> int:
    usd = money.token_cost_usd_micros(tokens=hold.input_tokens, usd_per_million=hold.input_usd_per_million)
    usd += money.token_cost_usd_micros(tokens=output_tokens, usd_per_million=hold.output_usd_per_million)
    return money.round_micros_half_even(money.usd_to_currency(usd_micros=usd, per_usd=hold.fx_per_usd))


@pytest.mark.parametrize("with_claim", [False, True], ids=["from-row", "from-claim"])
def test_the_same_settlement_delivered_ten_times_at_once_counts_once(
    customer: Customer, sent: list[int], with_claim: bool
) -> None:
    request_id = _admit(customer)
    claimed = request_claim(request_id=request_id, region="dxb", attempt=1, worker="w1")
    assert claimed is not None
    barrier, receipts, errors = threading.Barrier(10), [], []

    def deliver() -> None:
        try:
            barrier.wait(timeout=30)
            receipts.append(_complete(request_id, 1, 7, claimed if with_claim else None))
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=deliver) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(receipts) == 10
    assert sum(receipt is not None for receipt in receipts) == 1  # one delivery settled, nine found it done
    [entry] = LedgerEntry.objects.unscoped_all_orgs().filter(request_id=request_id)
    hold = CreditHold.objects.unscoped_all_orgs().get(request_id=request_id)
    assert (entry.output_tokens, entry.amount_micros, hold.status) == (7, _expected_micros(hold, 7), "captured")
    balance = selectors.balance_get(organization=customer.organization)
    assert (balance.settled, balance.held) == (entry.amount_micros, 0)
    assert reconcile().clean


def test_a_crash_between_completion_and_settlement_is_recovered_once(customer: Customer, sent: list[int]) -> None:
    request_id = _admit(customer)
    assert request_claim(request_id=request_id, region="dxb", attempt=1, worker="w1") is not None
    # Attempt 1's engine finished, and its worker died before settling: nothing was written. The lease runs out.
    assert not LedgerEntry.objects.unscoped_all_orgs().filter(request_id=request_id).exists()
    InferenceRequest.objects.unscoped_all_orgs().filter(request_id=request_id).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert requests_reap().requeued == 1  # not lost: sent again
    assert len(sent) == 2
    hold = CreditHold.objects.unscoped_all_orgs().get(request_id=request_id)
    assert hold.status == "open"  # still reserved for the retry
    assert request_claim(request_id=request_id, region="dxb", attempt=2, worker="w2") is not None
    assert _complete(request_id, 2, 9) is not None
    # The dead worker's late completion, and a duplicate of the retry's, write nothing.
    assert _complete(request_id, 1, 7) is None
    assert _complete(request_id, 2, 9) is None
    requests_reap()
    [entry] = LedgerEntry.objects.unscoped_all_orgs().filter(request_id=request_id)
    hold.refresh_from_db()
    assert (entry.output_tokens, entry.amount_micros, hold.status) == (9, _expected_micros(hold, 9), "captured")
    row = InferenceRequest.objects.unscoped_all_orgs().get(request_id=request_id)
    assert (row.status, row.completion_tokens, row.attempts) == ("completed", 9, 2)
    assert reconcile().clean


def test_admission_stops_at_a_hard_stop_budget(customer: Customer, sent: list[int]) -> None:
    org = customer.organization
    Organization.objects.filter(pk=org.pk).update(billing_mode="postpaid")
    org.refresh_from_db()
    # A price high enough that one request costs more than a cent, so that a budget in cents can sit between
    # three requests and four.
    since = timezone.now() - timedelta(minutes=1)
    for kind, price in (("input", "500"), ("output", "600")):
        price_entry_add(actor=Actor.system("tests"), model_name=MODEL, region="dxb", token_kind=kind,
                        usd_per_million=price, effective_from=since)  # fmt: skip
    first = _admit(customer)
    hold = CreditHold.objects.unscoped_all_orgs().get(request_id=first)
    budget = money.ceil_to_minor_unit(3 * hold.amount_micros, "USD")
    assert 3 * hold.amount_micros <= budget < 4 * hold.amount_micros
    budgets.budget_set(actor=Actor.system("tests"), organization=org, amount=money.micros_to_units(budget),
                       alert_thresholds=[100], hard_stop=True)  # fmt: skip
    _admit(customer)
    _admit(customer)
    with pytest.raises(budgets.BudgetExceeded) as refused:
        _admit(customer)
    assert refused.value.code == "budget_exceeded"
    assert refused.value.details["required_micros"] == hold.amount_micros
    assert InferenceRequest.objects.unscoped_all_orgs().filter(organization=org).count() == 3  # nothing written
    holds = CreditHold.objects.unscoped_all_orgs().filter(organization=org)
    assert holds.count() == 3
    assert sum(holds.values_list("amount_micros", flat=True)) <= budget
