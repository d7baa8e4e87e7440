"""I4 prepaid: an organisation with credit for 20 requests fires 200 at once from eight processes. Exactly 20
are admitted; the balance is never negative while they race (sampled throughout); the ledger is the sum of
the actual costs; a larger grant that has expired is never touched."""

from __future__ import annotations

import random
import threading
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.db.models import Sum
from django.utils import timezone

from billing import selectors
from billing.models import CreditGrant, CreditHold, LedgerEntry
from billing.reconcile import reconcile
from tests.billing.conftest import MODEL, REGION
from tests.billing.test_concurrency import _database_url, _run_workers
from tests.factories import make_grant, make_org, make_prices

PROCESSES = 8
PER_PROCESS = 25
HOLD = 3000  # 1000 input + 1000 output tokens at $1/$2 per million, USD micros


def _sample_balances(stop: threading.Event, seen: list[int], org_id: int) -> None:
    """The lowest credit left on any grant, read over and over from another connection while workers race."""
    try:
        with connections["default"].cursor() as cursor:
            while not stop.is_set():
                cursor.execute(
                    "SELECT min(amount_micros - consumed_micros - held_micros), "
                    "sum(amount_micros - consumed_micros - held_micros) FROM billing_creditgrant "
                    "WHERE organization_id = %s",
                    [org_id],
                )
                lowest, total = cursor.fetchone()
                seen.extend([int(lowest), int(total)])
                stop.wait(0.005)
    finally:
        connections["default"].close()


@pytest.mark.django_db(transaction=True)
def test_two_hundred_requests_on_credit_for_twenty() -> None:
    if connection.vendor != "postgresql":
        pytest.fail("the concurrency tests need PostgreSQL: row locks are what they prove")
    make_prices(model_name=MODEL, region=REGION, input_usd_per_million="1.00", output_usd_per_million="2.00")
    org = make_org(billing_mode="prepaid", billing_currency="USD")
    valid = make_grant(org, "0.06", priority=5, reason="twenty requests")
    expired = make_grant(org, "10.00", priority=0, reason="expired", expires_at=timezone.now() + timedelta(days=1))
    CreditGrant.objects.unscoped_all_orgs().filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(hours=1))
    at = timezone.now().isoformat()
    jobs = [
        {"action": "place", "database_url": _database_url(), "redis_url": "", "organization_id": org.pk,
         "model_name": MODEL, "region": REGION, "input_tokens": 1000, "max_output_tokens": 1000, "at": at,
         "request_ids": [f"b{process}-{index}" for index in range(PER_PROCESS)]}
        for process in range(PROCESSES)
    ]  # fmt: skip
    stop, seen = threading.Event(), list[int]()
    sampler = threading.Thread(target=_sample_balances, args=(stop, seen, org.pk))
    sampler.start()
    try:
        outcomes = _run_workers(jobs)
    finally:
        stop.set()
        sampler.join()
    flat = {request_id: result for per_process in outcomes.values() for request_id, result in per_process.items()}
    assert len(flat) == PROCESSES * PER_PROCESS
    assert sorted(set(flat.values())) == ["admitted", "refused"], flat
    admitted = sorted(request_id for request_id, result in flat.items() if result == "admitted")
    assert len(admitted) == 20  # what the credit allows, no needless refusal
    assert len(seen) > 10, "the sampler did not run alongside the workers"
    assert min(seen) >= 0, "a grant went below zero while the requests raced"

    # Each request produced fewer tokens than it reserved; settlement bills the actual tokens only.
    rng = random.Random(200)
    actual = {request_id: rng.randrange(0, 1001) for request_id in admitted}
    settle = [{"action": "settle", "database_url": _database_url(), "redis_url": "", "organization_id": org.pk,
               "input_tokens": 1000, "at": timezone.now().isoformat(), "output_tokens_by_request": actual,
               "request_ids": admitted if process % 2 else list(reversed(admitted))}
              for process in range(2)]  # fmt: skip
    settled = _run_workers(settle)
    assert all(isinstance(pk, int) for per_process in settled.values() for pk in per_process.values()), settled
    costs = {request_id: 1000 + 2 * tokens for request_id, tokens in actual.items()}  # USD micros, exactly
    entries = LedgerEntry.objects.unscoped_all_orgs().filter(organization=org)
    assert dict(entries.values_list("request_id", "amount_micros")) == costs
    assert entries.aggregate(total=Sum("amount_micros"))["total"] == sum(costs.values())
    valid.refresh_from_db()
    expired.refresh_from_db()
    assert (valid.consumed_micros, valid.held_micros) == (sum(costs.values()), 0)
    assert (expired.consumed_micros, expired.held_micros) == (0, 0)
    assert not CreditHold.objects.unscoped_all_orgs().filter(organization=org, status="open").exists()
    balance = selectors.balance_get(organization=org)
    assert (balance.granted, balance.settled, balance.held) == (60_000, sum(costs.values()), 0)
    assert balance.available == 60_000 - sum(costs.values()) >= 0
    assert selectors.ledger_reconcile(organization=org) == []
    assert reconcile().clean
