"""Exactly once under SIGKILL (I5): regional worker processes are killed while requests generate;
every request ends completed or failed, none is lost, none has two ledger entries, and billed
tokens equal the tokens returned (a stream lost after its first token bills what it delivered).

`make test` runs the small size (20 requests, 3 kills); `make test-kill` the full one
(KILL_REQUESTS, KILL_COUNT)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from billing.models import LedgerEntry
from controlplane.fleet.models import Host
from controlplane.inference.models import InferenceRequest
from tenants.models import RegionalQuota
from tests.stack import MODEL_NAME, Stack, Tenant, hosts_live, seed_platform, seed_tenant, stack_fixture, wait_for

REGION = "dxb"
REQUESTS = int(os.environ.get("KILL_REQUESTS", "20"))
KILLS = int(os.environ.get("KILL_COUNT", "3"))
MAX_TOKENS = int(os.environ.get("KILL_MAX_TOKENS", "32"))
pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: Any, django_db_setup: None) -> Iterator[Stack]:
    yield from stack_fixture(tmp_path_factory, (REGION,), REQUEST_MAX_ATTEMPTS="6")


@pytest.fixture
def tenant(stack: Stack, transactional_db: None) -> Tenant:
    seed_platform((REGION,))
    Host.objects.update(max_concurrent_requests=64)  # every request is queued, none refused region_busy
    t = seed_tenant("killtest", countries=["AE"], credit=Decimal("1000"))
    RegionalQuota.objects.unscoped_all_orgs().update_or_create(
        organization_id=t.org_id, region=REGION,
        defaults={"concurrent_requests": 10_000, "requests_per_minute": 10_000, "tokens_per_minute": 10_000_000},
    )  # fmt: skip
    hosts_live((REGION,))
    return t


def _one(stack: Stack, key: str, index: int, stream: bool, out: dict[str, Any]) -> None:
    body = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": f"Tell story number {index} about a lighthouse."}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0.7,
        "seed": index,
        "stream": stream,
    }
    headers = {"Authorization": f"Bearer {key}"}
    try:
        if not stream:
            r = httpx.post(f"{stack.base_url}/v1/chat/completions", headers=headers, json=body, timeout=300)
            out[f"{index}"] = {"status": r.status_code, "body": r.json(), "id": r.headers.get("x-inference-request-id")}
            return
        tokens, error = 0, None
        with httpx.stream("POST", f"{stack.base_url}/v1/chat/completions", headers=headers, json=body,
                          timeout=300) as r:  # fmt: skip
            request_id = r.headers.get("x-inference-request-id")
            for line in r.iter_lines():
                if line.startswith("data: {") and '"error"' in line:
                    error = line
                elif line.startswith("data: {") and '"content"' in line:
                    tokens += 1
        out[f"{index}"] = {"status": r.status_code, "stream_error": error, "id": request_id}
    except httpx.HTTPError as exc:
        out[f"{index}"] = {"status": None, "exception": repr(exc)}


def test_sigkill_during_generation_loses_nothing_and_bills_once(stack: Stack, tenant: Tenant) -> None:
    results: dict[str, Any] = {}
    threads = [threading.Thread(target=_one, args=(stack, tenant.key, i, i % 2 == 1, results)) for i in range(REQUESTS)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    killed_after_tokens = 0
    for _ in range(KILLS):
        # wait until some request of the current worker has produced tokens, then kill it
        wait_for(
            lambda: (
                InferenceRequest.objects.unscoped_all_orgs()
                .filter(status="running", first_token_at__isnull=False)
                .exists()
                or all(not t.is_alive() for t in threads)
            ),
            120,
            "no request started generating",
        )
        if all(not t.is_alive() for t in threads):
            break
        generating = (
            InferenceRequest.objects.unscoped_all_orgs().filter(status="running", first_token_at__isnull=False).count()
        )
        stack.kill(f"worker-{REGION}")
        killed_after_tokens += 1 if generating else 0
        time.sleep(0.5)
        stack.start_worker(REGION)
    for t in threads:
        t.join(300)
    assert killed_after_tokens >= min(KILLS, 3), f"only {killed_after_tokens} kills hit a generating request"

    rows = list(InferenceRequest.objects.unscoped_all_orgs().all())
    refused = {k: v.get("status") for k, v in results.items() if v.get("status") not in (200, None)}
    assert len(rows) == REQUESTS, f"a request was lost or refused: {dict(list(refused.items())[:5])}"
    assert all(r.status in {"completed", "failed"} for r in rows), [(r.request_id, r.status) for r in rows]
    ledger = list(LedgerEntry.objects.unscoped_all_orgs().all())
    by_request = {e.request_id: e for e in ledger}
    assert len(by_request) == len(ledger), "a request has two ledger entries"
    for row in rows:
        entry = by_request.get(row.request_id)
        if row.status == "completed":
            assert entry is not None
            assert entry.output_tokens == row.completion_tokens
        elif row.delivered_tokens:
            assert entry is not None
            assert entry.output_tokens == row.delivered_tokens
        else:
            assert entry is None, f"{row.request_id} failed but was billed"
    for outcome in results.values():
        if outcome.get("status") == 200 and "body" in outcome:
            body = outcome["body"]
            entry = by_request[outcome["id"]]
            assert body["usage"]["completion_tokens"] == entry.output_tokens
    print(  # noqa: T201  # the figures the closing note reports
        f"kill test: {REQUESTS} requests, {killed_after_tokens} kills after tokens, "
        f"{sum(r.status == 'completed' for r in rows)} completed, {sum(r.status == 'failed' for r in rows)} failed, "
        f"{sum(r.attempts > 1 for r in rows)} retried, {sum(bool(r.delivered_tokens) for r in rows)} streams billed "
        "as delivered"
    )
