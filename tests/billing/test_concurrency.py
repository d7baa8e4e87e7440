"""I4 under concurrency: holds from several OS processes against one small prepaid balance.

Each worker is a freshly spawned interpreter with its own database connection (as web processes on
different machines would be). The sum of open holds never exceeds the balance, and the number admitted
is exactly what the balance allows. Settling the same requests from several processes at once gives one
ledger entry per request. The control runs the same race without the organisation lock and shows the
checks failing, so they are able to fail.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from billing import selectors
from billing.models import CreditGrant, CreditHold, LedgerEntry
from tests.billing import concurrency_worker
from tests.billing.conftest import MODEL, REGION
from tests.factories import make_fx, make_grant, make_org, make_prices

PROCESSES = 4
ATTEMPTS_PER_PROCESS = 6
# 1000 input + 1000 output tokens at $1/$2 per million = 3000 USD micros = 11017.5 AED micros, held as 11018.
HOLD_MICROS = 11018
GRANTED_MICROS = 100_000  # two grants, 0.06 + 0.04 AED
CAPACITY = GRANTED_MICROS // HOLD_MICROS  # 9 holds fit; 15 of the 24 attempts must be refused


def _database_url() -> str:
    db = settings.DATABASES["default"]
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def _run_workers(jobs: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(jobs) + 1)
    results = context.Queue()
    workers = [context.Process(target=concurrency_worker.run, args=(job, barrier, results)) for job in jobs]
    for worker in workers:
        worker.start()
    try:
        barrier.wait(timeout=300)  # every worker has set Django up: release them together
        collected: dict[int, dict[str, Any]] = {}
        for _ in workers:
            pid, outcomes = results.get(timeout=300)
            collected[pid] = outcomes
    except (queue.Empty, threading.BrokenBarrierError) as exc:
        pytest.fail(f"a worker did not report: {exc!r}")
    finally:
        for worker in workers:
            worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0] * len(workers)
    return collected


@pytest.fixture
def prepaid_world(transactional_db: None) -> Any:
    if connection.vendor != "postgresql":
        pytest.fail("the concurrency tests need PostgreSQL (DATABASE_URL): row locks are what they prove")
    make_prices(model_name=MODEL, region=REGION, input_usd_per_million="1.00", output_usd_per_million="2.00")
    make_fx("AED", "3.6725")
    org = make_org(billing_mode="prepaid", billing_currency="AED")
    make_grant(org, "0.06", priority=1)
    make_grant(org, "0.04", priority=2)
    return org


def _place_jobs(org: Any, *, without_lock: bool = False) -> list[dict[str, Any]]:
    at = timezone.now().isoformat()
    return [
        {
            "action": "place",
            "database_url": _database_url(),
            "redis_url": settings.REDIS_URL,
            "organization_id": org.pk,
            "model_name": MODEL,
            "region": REGION,
            "input_tokens": 1000,
            "max_output_tokens": 1000,
            "at": at,
            "request_ids": [f"p{process}-r{attempt}" for attempt in range(ATTEMPTS_PER_PROCESS)],
            "without_lock": without_lock,
        }
        for process in range(PROCESSES)
    ]


def _open_hold_total(org: Any) -> int:
    holds = CreditHold.objects.unscoped_all_orgs().filter(organization=org, status="open")
    return int(holds.aggregate(total=Sum("amount_micros"))["total"] or 0)


def test_concurrent_holds_never_exceed_the_balance_and_admit_exactly_what_fits(prepaid_world: Any) -> None:
    org = prepaid_world
    outcomes = _run_workers(_place_jobs(org))
    flat = {request_id: result for per_process in outcomes.values() for request_id, result in per_process.items()}
    assert len(flat) == PROCESSES * ATTEMPTS_PER_PROCESS
    assert not [result for result in flat.values() if result not in {"admitted", "refused"}], flat
    admitted = sorted(request_id for request_id, result in flat.items() if result == "admitted")
    assert len(admitted) == CAPACITY
    assert list(flat.values()).count("refused") == PROCESSES * ATTEMPTS_PER_PROCESS - CAPACITY
    # What the database holds agrees: the open holds are exactly the admitted ones and fit the balance.
    open_holds = CreditHold.objects.unscoped_all_orgs().filter(organization=org, status="open")
    assert sorted(open_holds.values_list("request_id", flat=True)) == admitted
    assert _open_hold_total(org) == CAPACITY * HOLD_MICROS <= GRANTED_MICROS
    for grant in CreditGrant.objects.unscoped_all_orgs().filter(organization=org):
        assert 0 <= grant.consumed_micros + grant.held_micros <= grant.amount_micros
    balance = selectors.balance_get(organization=org)
    assert (balance.granted, balance.held, balance.available) == (
        GRANTED_MICROS,
        CAPACITY * HOLD_MICROS,
        GRANTED_MICROS - CAPACITY * HOLD_MICROS,
    )
    assert selectors.ledger_reconcile(organization=org) == []

    # Several processes settle the same requests at once (in different orders): one entry per request.
    at = timezone.now().isoformat()
    settle_jobs = [
        {
            "action": "settle",
            "database_url": _database_url(),
            "redis_url": settings.REDIS_URL,
            "organization_id": org.pk,
            "input_tokens": 500,
            "output_tokens": 500,
            "at": at,
            "request_ids": admitted if process % 2 == 0 else list(reversed(admitted)),
        }
        for process in range(3)
    ]
    settled = _run_workers(settle_jobs)
    per_request = {request_id: {outcome[request_id] for outcome in settled.values()} for request_id in admitted}
    assert all(len(ids) == 1 and isinstance(next(iter(ids)), int) for ids in per_request.values()), per_request
    entries = LedgerEntry.objects.unscoped_all_orgs().filter(organization=org)
    assert entries.count() == CAPACITY
    # 500 + 500 tokens = 1500 USD micros = 5508.75 AED micros -> 5509 each.
    assert set(entries.values_list("amount_micros", flat=True)) == {5509}
    balance = selectors.balance_get(organization=org)
    assert (balance.settled, balance.held) == (CAPACITY * 5509, 0)
    assert selectors.ledger_reconcile(organization=org) == []


def test_control_without_the_lock_the_same_race_overdraws(prepaid_world: Any) -> None:
    """Positive control: the checks above catch a broken implementation (no lock, stale reads)."""
    org = prepaid_world
    outcomes = _run_workers(_place_jobs(org, without_lock=True))
    flat = [result for per_process in outcomes.values() for result in per_process.values()]
    assert not [result for result in flat if result not in {"admitted", "refused"}], flat
    assert flat.count("admitted") > CAPACITY
    assert _open_hold_total(org) > GRANTED_MICROS
    assert selectors.ledger_reconcile(organization=org) != []
