"""Billing: settlement, bulk ledger insertion, quota checks and the month close, each next to an anchor
measured in the same run on this machine's PostgreSQL and Redis.

- settlement: `hold_settle` as the worker calls it (with the organisation id and token counts from its request
  row; organisation lock, one ledger entry per request id under its unique constraint, postings, the hold's
  capture, the budget and balance triggers), each settlement its own transaction and commit, from several
  processes at once (`--processes`, 4 by default) over holds of many organisations (half prepaid, half
  postpaid, seven currencies) placed by `hold_place` beforehand. Anchor: pgbench's simple-update
  transaction (`-N`), same client count, same database.
- bulk ledger insertion: ledger entries with their holds and postings written with COPY in one transaction,
  indexes, constraints and the deferred balance and budget triggers included. Anchor: COPY of the same
  number of entry rows into a plain table of the same shape without indexes or triggers.
- quota check: `quota_reserve`, the admission step's one Redis Lua call, from one client; rate and p99.
  Anchor: redis-benchmark running EVALSHA of a trivial script from one client.
- month close: `invoices_close_all` over a month of generated ledger entries (100 organisations, eight
  regions, seven currencies, a fifth prepaid), finalised, in the steady state (every organisation closed
  the month before). The entries are loaded with COPY with triggers off (loading is not what is measured;
  the budget counters are then recomputed). Anchor: one aggregate pass over the same month's rows. The
  independent reconciliation runs afterwards and must come out clean.

Everything runs in a throwaway PostgreSQL database (created, migrated, dropped) and a Redis logical database
of its own. `--tiny` runs every part for seconds (used by `make test`; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# This file is named like the `billing` app: its own folder must not shadow the app on the import path.
sys.path[:] = [str(ROOT), *(entry for entry in sys.path if Path(entry or ".").resolve() != HERE)]

import psycopg  # noqa: E402  # after the path set-up, so the bench runs as a script
import redis  # noqa: E402
from psycopg import sql  # noqa: E402

from controlplane.core.regions import REGION_CODES  # noqa: E402

DEFAULT_PG = "postgres://postgres@127.0.0.1:5432"
DEFAULT_REDIS = "redis://127.0.0.1:6379/13"
MODEL = "bench-model-7b"
CURRENCIES = (("USD", "US"), ("AED", "AE"), ("SAR", "SA"), ("EUR", "DE"), ("SGD", "SG"), ("IDR", "ID"), ("CNY", "CN"))
FX = {"EUR": "0.86412345", "SGD": "1.29871234", "IDR": "16612.12345678", "CNY": "7.09876543"}
MONTH = date(2026, 10, 1)
PARTS = ("settlement", "bulk", "quota", "close")
TARGETS = {"settlement": 2000.0, "bulk": 20000.0, "quota_p99_ms": 1.0, "close_s": 5.0}
_STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"billing: [{time.monotonic() - _STARTED:5.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Plan:
    organizations: int
    holds: int
    processes: int
    pgbench_seconds: int
    bulk_entries: int
    quota_checks: int
    month_organizations: int
    month_entries: int


FULL = Plan(32, 4000, 4, 10, 100_000, 50_000, 100, 1_000_000)
TINY = Plan(4, 120, 2, 2, 2_000, 2_000, 7, 14_000)


@dataclass
class Row:
    name: str
    ours: float
    anchor: float
    unit: str
    target: str
    met: bool

    @property
    def ratio(self) -> float:
        return self.ours / self.anchor if self.anchor else float("inf")


# --- the throwaway database ----------------------------------------------------------------------------------


def _admin(pg_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(f"{pg_url}/postgres", autocommit=True)


def database_create(pg_url: str) -> str:
    name = f"cpbench_billing_{secrets.token_hex(4)}"
    with _admin(pg_url) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def database_drop(pg_url: str, name: str) -> None:
    with _admin(pg_url) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def django_setup(*, database_url: str, redis_url: str, data_dir: str) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="controlplane.settings.base",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        DATA_DIR=data_dir,
        DB_POOL_MAX_SIZE="0",
        LOG_LEVEL="WARNING",
    )
    import django

    django.setup()


def world_seed() -> dict[str, Any]:
    """FX and tax tables, a price per region for the bench model, and what the generators need of them."""
    from billing import services
    from billing.models import FxRate, PriceBookEntry
    from controlplane.core.services import Actor

    actor = Actor.system("bench")
    services.fx_tax_seed(actor=actor)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for currency, rate in FX.items():
        services.fx_rate_add(actor=actor, currency=currency, per_usd=rate, effective_from=epoch)
    for index, region in enumerate(REGION_CODES):
        for kind, price in (("input", Decimal("0.025") + index * Decimal("0.001")), ("output", Decimal("0.05"))):
            services.price_entry_add(actor=actor, model_name=MODEL, region=region, token_kind=kind,
                                     usd_per_million=price, effective_from=epoch)  # fmt: skip
    prices = {
        (entry.region, entry.token_kind): (entry.pk, entry.usd_per_million)
        for entry in PriceBookEntry.objects.filter(model_name=MODEL)
    }
    fx = {rate.currency: (rate.pk, rate.per_usd) for rate in FxRate.objects.all()}
    return {"prices": prices, "fx": fx}


def organizations_make(count: int, *, prefix: str, prepaid_every: int, grant: str = "1000000000") -> list[Any]:
    from billing.services import credit_grant_create
    from controlplane.core.services import Actor
    from tenants.services import organization_create, user_create

    actor = Actor.system("bench")
    owner = user_create(email=f"{prefix}-owner@bench.invalid", password=secrets.token_urlsafe(16),
                        full_name="bench", is_staff=False, email_verified=True)  # fmt: skip
    organizations = []
    for index in range(count):
        currency, country = CURRENCIES[index % len(CURRENCIES)]
        prepaid = index % prepaid_every == 0
        organization = organization_create(
            actor=actor, owner=owner, slug=f"{prefix}-{index}", name=f"{prefix} {index}", billing_country=country,
            billing_currency=currency, billing_mode="prepaid" if prepaid else "postpaid",
        )  # fmt: skip
        if prepaid:
            credit_grant_create(actor=actor, organization=organization, amount=grant, currency=currency,
                                expires_at=None, reason="bench")  # fmt: skip
        organizations.append(organization)
    return organizations


# --- settlement ------------------------------------------------------------------------------------------


def _worker(job: dict[str, Any], barrier: Any, results: Any) -> None:
    """One process, like a web or worker process on its own: places or settles its share of the holds."""
    django_setup(database_url=job["database_url"], redis_url=job["redis_url"], data_dir=job["data_dir"])
    from django.db import connections

    from billing import services
    from billing.models import CreditHold
    from tenants.models import Organization

    organizations = {org.pk: org for org in Organization.objects.filter(pk__in={o for o, _ in job["requests"]})}
    at = datetime.fromisoformat(job["at"])
    rng = random.Random(job["seed"])  # noqa: S311  # generated test data, not secrets
    # The worker settles from its own request row (organisation and prompt tokens known): read them first.
    holds = CreditHold.objects.unscoped_all_orgs().filter(request_id__in=[r for _, r in job["requests"]])
    input_tokens = dict(holds.values_list("request_id", "input_tokens"))
    errors = 0
    barrier.wait(timeout=600)
    started = time.perf_counter()
    for organization_id, request_id in job["requests"]:
        try:
            if job["action"] == "place":
                services.hold_place(organization=organizations[organization_id], request_id=request_id,
                                    model_name=MODEL, region=rng.choice(REGION_CODES),
                                    input_tokens=rng.randrange(50, 2000), max_output_tokens=1024, at=at)  # fmt: skip
            else:
                services.hold_settle(request_id=request_id, input_tokens=input_tokens[request_id],
                                     output_tokens=rng.randrange(0, 1025), api_key_id=None, at=at,
                                     organization_id=organization_id)  # fmt: skip
        except Exception:  # counted and reported: the benchmark fails on any
            errors += 1
    elapsed = time.perf_counter() - started
    connections.close_all()
    results.put((elapsed, errors))


def _processes(jobs: list[dict[str, Any]]) -> tuple[float, int]:
    """Runs the jobs in processes started together; returns the wall time from release to the last one done."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(jobs) + 1)
    results = context.Queue()
    workers = [context.Process(target=_worker, args=(job, barrier, results)) for job in jobs]
    for worker in workers:
        worker.start()
    barrier.wait(timeout=600)
    started = time.perf_counter()
    outcomes = [results.get(timeout=1800) for _ in workers]
    wall = time.perf_counter() - started
    for worker in workers:
        worker.join(timeout=60)
    return wall, sum(errors for _, errors in outcomes)


def pgbench_tps(*, database_url: str, clients: int, seconds: int) -> float:
    parsed = urlparse(database_url)
    base = ["-h", parsed.hostname or "127.0.0.1", "-p", str(parsed.port or 5432), "-U", parsed.username or "postgres"]
    name = parsed.path.lstrip("/")
    subprocess.run(["pgbench", *base, "-i", "-q", "-s", "10", name], check=True, capture_output=True)  # noqa: S603, S607  # the PostgreSQL client's own tool
    run = subprocess.run(  # noqa: S603  # the PostgreSQL client's own tool
        ["pgbench", *base, "-N", "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds), name],  # noqa: S607
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    found = re.search(r"tps = ([0-9.]+)", run.stdout)
    if found is None:
        raise RuntimeError(f"pgbench printed no tps:\n{run.stdout}\n{run.stderr}")
    return float(found.group(1))


def bench_settlement(plan: Plan, *, env: dict[str, str]) -> tuple[Row, Row]:
    organizations = organizations_make(plan.organizations, prefix="settle", prepaid_every=2)
    requests = [(organizations[index % len(organizations)].pk, f"settle-{index}") for index in range(plan.holds)]
    random.Random(1).shuffle(requests)  # noqa: S311  # generated test data, not secrets
    at = datetime.now(UTC).isoformat()

    def jobs(action: str) -> list[dict[str, Any]]:
        return [{**env, "action": action, "at": at, "seed": index, "requests": requests[index :: plan.processes]}
                for index in range(plan.processes)]  # fmt: skip

    progress(f"settlement: placing {plan.holds} holds over {plan.organizations} organisations, "
             f"{plan.processes} processes")  # fmt: skip
    place_wall, place_errors = _processes(jobs("place"))
    progress(f"settlement: {plan.holds / place_wall:,.0f} holds/s placed; now settling them")
    settle_wall, settle_errors = _processes(jobs("settle"))
    if place_errors or settle_errors:
        raise RuntimeError(f"settlement: {place_errors} place and {settle_errors} settle errors")
    settled = plan.holds / settle_wall
    progress(f"settlement: {settled:,.0f} settlements/s; pgbench -N with {plan.processes} clients, "
             f"{plan.pgbench_seconds} s")  # fmt: skip
    tps = pgbench_tps(database_url=env["database_url"], clients=plan.processes, seconds=plan.pgbench_seconds)
    progress(f"settlement: pgbench simple-update {tps:,.0f} tps")
    return (
        Row(f"settlement ({plan.processes} processes)", settled, tps, "requests/s vs pgbench -N tps",
            f">= {TARGETS['settlement']:,.0f}/s", settled >= TARGETS["settlement"]),
        Row(f"hold placement ({plan.processes} processes)", plan.holds / place_wall, tps,
            "holds/s vs pgbench -N tps", "-", True),
    )  # fmt: skip


# --- ledger rows for COPY ----------------------------------------------------------------------------------


@dataclass
class Copied:
    holds: list[tuple[Any, ...]]
    entries: list[tuple[Any, ...]]
    postings: list[tuple[Any, ...]]
    consumed: dict[int, int]  # grant id -> micros drawn


HOLD_COLUMNS = ("id", "created_at", "updated_at", "organization_id", "request_id", "billing_mode", "currency",
                "amount_micros", "model_name", "region", "input_tokens", "max_output_tokens", "input_price_id",
                "output_price_id", "input_usd_per_million", "output_usd_per_million", "fx_rate_id", "fx_per_usd",
                "admitted_at", "status", "closed_at", "release_reason")  # fmt: skip
ENTRY_COLUMNS = ("id", "created_at", "updated_at", "organization_id", "request_id", "hold_id", "api_key_id",
                 "model_name", "region", "input_tokens", "output_tokens", "input_price_id", "output_price_id",
                 "input_usd_per_million", "output_usd_per_million", "fx_rate_id", "fx_per_usd", "currency",
                 "usd_amount", "amount_micros", "admitted_at", "settled_at")  # fmt: skip
POSTING_COLUMNS = ("created_at", "updated_at", "organization_id", "entry_id", "account", "grant_id", "debit_micros",
                   "credit_micros")  # fmt: skip


def ledger_rows(
    *, world: dict[str, Any], organizations: list[Any], grants: dict[int, int], count: int, first_id: int,
    month: date, prefix: str, seed: int,
) -> Copied:  # fmt: skip
    """`count` settled requests priced exactly as `hold_settle` prices them (half-even to micros)."""
    from controlplane.core import money

    rng = random.Random(seed)  # noqa: S311  # generated test data, not secrets
    start = datetime.combine(month, datetime.min.time(), UTC)
    seconds = 28 * 86400
    copied = Copied([], [], [], {})
    now = datetime.now(UTC)
    for offset in range(count):
        organization = organizations[offset % len(organizations)]
        region = REGION_CODES[(offset // len(organizations)) % len(REGION_CODES)]
        input_id, input_price = world["prices"][(region, "input")]
        output_id, output_price = world["prices"][(region, "output")]
        fx_id, per_usd = world["fx"][organization.billing_currency]
        input_tokens, output_tokens = rng.randrange(1, 4000), rng.randrange(0, 1025)
        usd = money.token_cost_usd_micros(tokens=input_tokens, usd_per_million=input_price)
        usd += money.token_cost_usd_micros(tokens=output_tokens, usd_per_million=output_price)
        amount = money.round_micros_half_even(money.usd_to_currency(usd_micros=usd, per_usd=per_usd))
        admitted = start + timedelta(seconds=rng.randrange(seconds))
        row_id = first_id + offset
        request_id = f"{prefix}-{row_id}"
        prepaid = organization.pk in grants
        copied.holds.append((row_id, now, now, organization.pk, request_id, organization.billing_mode,
                             organization.billing_currency, amount, MODEL, region, input_tokens, 1024, input_id,
                             output_id, input_price, output_price, fx_id, per_usd, admitted, "captured", admitted,
                             ""))  # fmt: skip
        copied.entries.append((row_id, now, now, organization.pk, request_id, row_id, None, MODEL, region,
                               input_tokens, output_tokens, input_id, output_id, input_price, output_price, fx_id,
                               per_usd, organization.billing_currency, usd.scaleb(-6), amount, admitted,
                               admitted))  # fmt: skip
        if amount:
            grant = grants.get(organization.pk)
            debit = "customer_credit" if prepaid else "accounts_receivable"
            copied.postings.append((now, now, organization.pk, row_id, debit, grant, amount, 0))
            copied.postings.append((now, now, organization.pk, row_id, "revenue", None, 0, amount))
            if grant is not None:
                copied.consumed[grant] = copied.consumed.get(grant, 0) + amount
    return copied


def _reserve_ids(cursor: psycopg.Cursor[Any], count: int) -> int:
    """The first of `count` consecutive ids, taken from both sequences (holds and entries share them here)."""
    cursor.execute("SELECT greatest(nextval('billing_credithold_id_seq'), nextval('billing_ledgerentry_id_seq'))")
    row = cursor.fetchone()
    assert row is not None
    first = int(row[0]) + 1
    cursor.execute("SELECT setval('billing_credithold_id_seq', %s), setval('billing_ledgerentry_id_seq', %s)",
                   [first + count, first + count])  # fmt: skip
    return first


def _copy(cursor: psycopg.Cursor[Any], table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(column) for column in columns)
    )
    with cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def _copy_ledger(cursor: psycopg.Cursor[Any], copied: Copied) -> None:
    _copy(cursor, "billing_credithold", HOLD_COLUMNS, copied.holds)
    _copy(cursor, "billing_ledgerentry", ENTRY_COLUMNS, copied.entries)
    _copy(cursor, "billing_ledgerposting", POSTING_COLUMNS, copied.postings)
    for grant, micros in copied.consumed.items():
        cursor.execute("UPDATE billing_creditgrant SET consumed_micros = consumed_micros + %s WHERE id = %s",
                       [micros, grant])  # fmt: skip


def _grant_ids(organizations: list[Any]) -> dict[int, int]:
    from billing.models import CreditGrant

    grants = CreditGrant.objects.unscoped_all_orgs().filter(organization__in=organizations)
    return dict(grants.values_list("organization_id", "pk"))


def bench_bulk(plan: Plan, *, world: dict[str, Any], database_url: str) -> Row:
    organizations = organizations_make(4, prefix="bulk", prepaid_every=2)
    grants = _grant_ids(organizations)
    with psycopg.connect(database_url) as connection, connection.cursor() as cursor:
        first = _reserve_ids(cursor, plan.bulk_entries)
        connection.commit()
        copied = ledger_rows(world=world, organizations=organizations, grants=grants, count=plan.bulk_entries,
                             first_id=first, month=MONTH, prefix="bulk", seed=2)  # fmt: skip
        progress(f"bulk: COPY of {plan.bulk_entries} entries with their holds and postings, triggers on")
        started = time.perf_counter()
        _copy_ledger(cursor, copied)
        connection.commit()  # the deferred balance triggers run here
        ours = plan.bulk_entries / (time.perf_counter() - started)
        cursor.execute("CREATE TABLE bench_copy_anchor (LIKE billing_ledgerentry INCLUDING DEFAULTS)")
        connection.commit()
        started = time.perf_counter()
        _copy(cursor, "bench_copy_anchor", ENTRY_COLUMNS, copied.entries)
        connection.commit()
        anchor = plan.bulk_entries / (time.perf_counter() - started)
        cursor.execute("DROP TABLE bench_copy_anchor")
        connection.commit()
    progress(f"bulk: {ours:,.0f} entries/s; plain COPY of the entry rows alone {anchor:,.0f} rows/s")
    return Row("bulk ledger insertion (COPY)", ours, anchor, "entries/s vs plain-table COPY rows/s",
               f">= {TARGETS['bulk']:,.0f}/s", ours >= TARGETS["bulk"])  # fmt: skip


# --- quota checks --------------------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def bench_quota(plan: Plan, *, redis_url: str) -> tuple[Row, Row]:
    from controlplane.inference import quota

    client = redis.Redis.from_url(redis_url)
    limits = quota.QuotaLimits(requests_per_minute=10**12, tokens_per_minute=10**12, concurrent_requests=10**12,
                               monthly_tokens=10**12)  # fmt: skip
    org_id = 900_000_000 + secrets.randbelow(1_000_000)
    latencies: list[float] = []
    progress(f"quota: {plan.quota_checks} admission checks (quota_reserve) from one client")
    started = time.perf_counter()
    for index in range(plan.quota_checks):
        before = time.perf_counter()
        decision = quota.quota_reserve(client=client, org_id=org_id, region="dxb", request_id=f"q{index}",
                                       tokens=1500, limits=limits, lease_ttl_s=60)  # fmt: skip
        latencies.append(time.perf_counter() - before)
        assert decision.admitted
    rate = plan.quota_checks / (time.perf_counter() - started)
    p99_ms = _percentile(latencies, 0.99) * 1000
    for key in client.scan_iter(match=f"quota:{{{org_id}:*"):
        client.delete(key)
    parsed = urlparse(redis_url)
    sha = str(client.script_load("return 1"))
    progress("quota: redis-benchmark EVALSHA of a trivial script, one client")
    run = subprocess.run(  # noqa: S603  # Redis's own tool
        ["redis-benchmark", "-h", parsed.hostname or "127.0.0.1", "-p", str(parsed.port or 6379),  # noqa: S607
         "-n", str(plan.quota_checks), "-c", "1", "--csv", "EVALSHA", sha, "0"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    header, values = [line.replace('"', "").split(",") for line in run.stdout.strip().splitlines()[-2:]]
    anchor = dict(zip(header, values, strict=True))
    anchor_rate, anchor_p99 = float(anchor["rps"]), float(anchor["p99_latency_ms"])
    progress(f"quota: {rate:,.0f} checks/s, p99 {p99_ms:.3f} ms; EVALSHA {anchor_rate:,.0f}/s, p99 {anchor_p99} ms")
    return (
        Row("quota admission check", rate, anchor_rate, "checks/s vs EVALSHA/s (1 client)", "-", True),
        Row("quota admission check p99", p99_ms, anchor_p99, "ms vs EVALSHA p99 ms", f"<= {TARGETS['quota_p99_ms']} ms",
            p99_ms <= TARGETS["quota_p99_ms"]),
    )  # fmt: skip


# --- the month close -------------------------------------------------------------------------------------


@dataclass
class CloseResult:
    row: Row
    reconcile_s: float
    reconcile_clean: bool
    invoices: int


def _chunks(count: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, count, size):
        yield start, min(size, count - start)


def bench_close(plan: Plan, *, world: dict[str, Any], database_url: str) -> CloseResult:
    from billing import invoicing
    from billing.reconcile import reconcile
    from controlplane.core.services import Actor

    organizations = organizations_make(plan.month_organizations, prefix="month", prepaid_every=5)
    grants = _grant_ids(organizations)
    # The steady state: every organisation closed the month before (here without usage) when this one ends.
    invoicing.invoices_close_all(actor=Actor.system("bench"), month=date(2026, 9, 1), finalize=True)
    progress(f"month close: generating and loading {plan.month_entries:,} entries for {len(organizations)} "
             "organisations (COPY, triggers off)")  # fmt: skip
    with psycopg.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
        first = _reserve_ids(cursor, plan.month_entries)
        for chunk_start, size in _chunks(plan.month_entries, 200_000):
            copied = ledger_rows(
                world=world, organizations=organizations, grants=grants, count=size, first_id=first + chunk_start,
                month=MONTH, prefix="month", seed=chunk_start,
            )  # fmt: skip
            _copy_ledger(cursor, copied)
            connection.commit()
            progress(f"month close: {chunk_start + size:,} entries loaded")
        cursor.execute("SET session_replication_role = DEFAULT")
        # What the triggers would have counted: the committed spend of the postpaid holds.
        cursor.execute(
            """
            INSERT INTO billing_budgetspend
                (organization_id, month, currency, held_micros, settled_micros, created_at, updated_at)
            SELECT e.organization_id, date_trunc('month', e.admitted_at AT TIME ZONE 'UTC')::date, e.currency, 0,
                   sum(e.amount_micros), now(), now()
              FROM billing_ledgerentry e JOIN billing_credithold h ON h.id = e.hold_id
             WHERE e.request_id LIKE 'month-%%' AND h.billing_mode = 'postpaid'
             GROUP BY 1, 2, 3
            ON CONFLICT (organization_id, month, currency)
              DO UPDATE SET settled_micros = billing_budgetspend.settled_micros + EXCLUDED.settled_micros
            """
        )
        connection.commit()
        cursor.execute("ANALYZE")
        connection.commit()
        progress("month close: anchor, one aggregate pass over the month's rows")
        started = time.perf_counter()
        cursor.execute(
            "SELECT organization_id, currency, count(*), sum(amount_micros) FROM billing_ledgerentry "
            "WHERE admitted_at >= %s AND admitted_at < %s GROUP BY 1, 2",
            [datetime.combine(MONTH, datetime.min.time(), UTC), datetime(2026, 11, 1, tzinfo=UTC)],
        )
        cursor.fetchall()
        anchor = time.perf_counter() - started
    progress("month close: invoices_close_all, finalised")
    started = time.perf_counter()
    report = invoicing.invoices_close_all(actor=Actor.system("bench"), month=MONTH, finalize=True)
    closed = time.perf_counter() - started
    if report.refused:
        raise RuntimeError(f"month close refused: {report.refused}")
    invoices = sum(len(result.invoices) for result in report.closed)
    progress(f"month close: {closed:.2f} s for {invoices} invoices; anchor {anchor:.2f} s; reconciling")
    started = time.perf_counter()
    reconciled = reconcile()
    reconcile_s = time.perf_counter() - started
    progress(f"month close: reconciliation {reconcile_s:.2f} s, {'clean' if reconciled.clean else 'NOT CLEAN'}")
    row = Row(f"month close ({plan.month_entries:,} entries)", closed, anchor, "s vs one aggregate pass s",
              f"<= {TARGETS['close_s']} s", closed <= TARGETS["close_s"])  # fmt: skip
    return CloseResult(row=row, reconcile_s=reconcile_s, reconcile_clean=reconciled.clean, invoices=invoices)


# --- main ----------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="every part for seconds (figures mean nothing)")
    parser.add_argument("--pg", default=DEFAULT_PG, help=f"PostgreSQL server URL without a database ({DEFAULT_PG})")
    parser.add_argument(
        "--redis-url", default=DEFAULT_REDIS, help=f"a Redis logical database of its own, emptied ({DEFAULT_REDIS})"
    )
    parser.add_argument("--month-entries", type=int, help="ledger entries in the closed month")
    parser.add_argument("--processes", type=int, help="settling processes, and pgbench's clients (4)")
    parser.add_argument("--holds", type=int, help="holds placed and then settled (4,000)")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated parts to run (default all: {','.join(PARTS)})"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    plan = TINY if args.tiny else FULL
    parts = set(args.parts.split(","))
    if not parts <= set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(parts - set(PARTS)))}")
    if args.month_entries:
        plan = Plan(**{**asdict(plan), "month_entries": args.month_entries})
    if args.processes:
        plan = Plan(**{**asdict(plan), "processes": args.processes})
    if args.holds:
        plan = Plan(**{**asdict(plan), "holds": args.holds})
    name = database_create(args.pg)
    data_dir = tempfile.mkdtemp(prefix="cpbench-billing-")
    database_url = f"{args.pg}/{name}"
    redis.Redis.from_url(args.redis_url).flushdb()
    progress(f"throwaway database {name}, Redis {args.redis_url} (emptied before and after)")
    try:
        django_setup(database_url=database_url, redis_url=args.redis_url, data_dir=data_dir)
        from django.core.management import call_command

        call_command("migrate", database="default", verbosity=0)
        world = world_seed()
        env = {"database_url": database_url, "redis_url": args.redis_url, "data_dir": data_dir}
        rows: list[Row] = []
        close: CloseResult | None = None
        if "settlement" in parts:
            rows.extend(bench_settlement(plan, env=env))
        if "bulk" in parts:
            rows.append(bench_bulk(plan, world=world, database_url=database_url))
        if "quota" in parts:
            rows.extend(bench_quota(plan, redis_url=args.redis_url))
        if "close" in parts:
            close = bench_close(plan, world=world, database_url=database_url)
            rows.append(close.row)
    finally:
        from django.db import connections

        connections.close_all()
        database_drop(args.pg, name)
        shutil.rmtree(data_dir, ignore_errors=True)
        redis.Redis.from_url(args.redis_url).flushdb()  # its own logical database: quota keys, cache tokens
    print(f"{'benchmark':<38} {'ours':>12} {'anchor':>12} {'ratio':>8}  {'target':<12} unit")
    for row in rows:
        mark = "" if args.tiny else ("  met" if row.met else "  MISSED")
        print(f"{row.name:<38} {row.ours:>12,.2f} {row.anchor:>12,.2f} {row.ratio:>7.2f}x  {row.target:<12} "
              f"{row.unit}{mark}")  # fmt: skip
    if close is not None:
        print(f"reconciliation after the close: {close.reconcile_s:.2f} s, "
              f"{'clean' if close.reconcile_clean else 'NOT CLEAN'}; {close.invoices} invoices")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"plan": asdict(plan), "rows": [asdict(row) for row in rows],
                                         "reconcile_s": close.reconcile_s if close else None}, indent=2))  # fmt: skip
    return 0 if close is None or close.reconcile_clean else 1


if __name__ == "__main__":
    sys.exit(main())
