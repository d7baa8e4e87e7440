"""Quota and holds through the real API (I3, I4), through 4 web processes: 200 concurrent requests
against a tokens-per-minute limit and a small prepaid balance (admitted tokens never exceed the
limit, the balance never goes negative, every refusal carries its code and headers); and 500 at once
against a tokens-per-minute or a concurrency limit alone, where exactly as many are admitted as the
limit allows (none needlessly refused)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import pytest
from django.db import connections
from django.utils import timezone

from billing.models import CreditHold, LedgerEntry
from billing.services import balance_get, price_entry_add
from controlplane.core.services import Actor
from controlplane.fleet.models import Host
from controlplane.inference.models import InferenceRequest
from tenants.models import Organization, RegionalQuota
from tests.stack import MODEL_NAME, Stack, Tenant, hosts_live, seed_platform, seed_tenant, stack_fixture, wait_for

REGION = "dxb"
REQUESTS = 200
TOKENS_PER_MINUTE = 1500
pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: Any, django_db_setup: None) -> Iterator[Stack]:
    yield from stack_fixture(tmp_path_factory, (REGION,), WEB_PROCESSES="4")


def _post(stack: Stack, key: str, i: int) -> httpx.Response:
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": MODEL_NAME, "max_tokens": 4, "temperature": 0,
              "messages": [{"role": "user", "content": f"Say a number ({i})"}]},
        timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize("limit", ["tokens", "credit"])
def test_concurrent_admission_respects_tokens_per_minute_and_balance(
    stack: Stack, transactional_db: None, limit: str
) -> None:
    seed_platform((REGION,))
    # room in the host's queue, so that the quota and the balance are what refuse, not region_busy
    Host.objects.update(max_concurrent_requests=64)
    credit = Decimal("1000") if limit == "tokens" else Decimal("0.10")
    tenant = seed_tenant(f"load-{limit}", countries=["AE"], credit=credit)
    if limit == "credit":
        # a dear price, so that a small balance covers a handful of holds at a time
        for kind in ("input", "output"):
            price_entry_add(actor=Actor.system("tests"), model_name=MODEL_NAME, region=REGION, token_kind=kind,
                            usd_per_million=Decimal("500"), effective_from=timezone.now())  # fmt: skip
    RegionalQuota.objects.unscoped_all_orgs().update_or_create(
        organization_id=tenant.org_id, region=REGION,
        defaults={"tokens_per_minute": TOKENS_PER_MINUTE if limit == "tokens" else 10_000_000,
                  "requests_per_minute": 10_000, "concurrent_requests": 1000},
    )  # fmt: skip
    hosts_live((REGION,))
    with ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(lambda i: _post(stack, tenant.key, i), range(REQUESTS)))
    statuses = [r.status_code for r in responses]
    codes = {r.json()["error"]["code"] for r in responses if r.status_code != 200}
    admitted = list(InferenceRequest.objects.unscoped_all_orgs().filter(organization_id=tenant.org_id))
    assert statuses.count(200) == len(admitted) > 0, codes
    refused = [r for r in responses if r.status_code != 200]
    assert refused, "nothing was refused: the limit was never reached"
    org = Organization.objects.get(pk=tenant.org_id)
    if limit == "tokens":
        assert sum(r.reserved_tokens for r in admitted) <= TOKENS_PER_MINUTE
        # no needless refusals: one more request of the largest admitted size would not have fitted
        assert sum(r.reserved_tokens for r in admitted) + min(r.reserved_tokens for r in admitted) > TOKENS_PER_MINUTE
        for r in refused:
            assert r.status_code == 429, r.text
            assert r.json()["error"]["code"] == "rate_limit_tokens_per_minute"
            assert int(r.headers["retry-after"]) >= 1
            assert r.headers["x-ratelimit-limit-tokens"] == str(TOKENS_PER_MINUTE)
            assert r.headers["x-request-id"]
    else:
        for r in refused:
            assert r.status_code == 402, r.text
            assert r.json()["error"]["code"] == "insufficient_credit"
            assert r.headers["x-ratelimit-limit-tokens"]
            assert r.headers["x-request-id"]
        balance = balance_get(organization=org)
        assert balance.available >= 0
        assert not CreditHold.objects.unscoped_all_orgs().filter(organization=org, status="open").exists()
    ledger = LedgerEntry.objects.unscoped_all_orgs().filter(organization=org)
    assert ledger.count() == len(admitted)
    print(  # noqa: T201  # the figures the closing note reports
        f"{limit}: {len(admitted)} admitted of {REQUESTS}, refused {len(refused)}, "
        f"reserved {sum(r.reserved_tokens for r in admitted)} tokens"
    )


# --- 500 at once against one limit at a time: admitted == what the limit allows -----------------------

HELD_REGION = "ruh"  # a host with no worker: admitted requests stay queued and keep their leases
EXACT_REQUESTS = 500
EXACT_CONCURRENT = 37
EXACT_FIT = 23  # the tokens/min limit fits this many requests, and half of one more


async def _open_streams(stack: Stack, key: str) -> tuple[list[int], list[httpx.Response], list[Any]]:
    """Fires every request at once (streamed, so an admitted one answers 200 at once and stays open);
    returns the statuses, the refusals (read) and the open streams' contexts (closed by the caller)."""
    body = {"model": MODEL_NAME, "max_tokens": 8, "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": "Say a number."}]}  # fmt: skip
    limits = httpx.Limits(max_connections=EXACT_REQUESTS + 10, max_keepalive_connections=0)
    client = httpx.AsyncClient(base_url=stack.base_url, limits=limits, timeout=300)
    start = asyncio.Event()
    opened: list[Any] = []

    async def one() -> tuple[int, httpx.Response | None]:
        await start.wait()
        context = client.stream("POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                json=body)  # fmt: skip
        response = await context.__aenter__()
        if response.status_code == 200:
            opened.append(context)
            return 200, None
        await response.aread()
        await context.__aexit__(None, None, None)
        return response.status_code, response

    tasks = [asyncio.create_task(one()) for _ in range(EXACT_REQUESTS)]
    await asyncio.sleep(0.2)
    start.set()
    results = await asyncio.gather(*tasks)
    return [status for status, _ in results], [r for _, r in results if r is not None], [client, *opened]


async def _close(handles: list[Any]) -> None:
    client, *opened = handles
    for context in opened:
        await context.__aexit__(None, None, None)
    await client.aclose()


@pytest.mark.parametrize("limit", ["tokens", "concurrency"])
def test_500_at_once_admit_exactly_what_the_limit_allows(stack: Stack, transactional_db: None, limit: str) -> None:
    seed_platform((HELD_REGION,))
    Host.objects.update(max_concurrent_requests=1000, last_heartbeat_at=timezone.now())
    tenant = seed_tenant(f"exact-{limit}", countries=["SA"], credit=Decimal("1000"))
    # the size every request reserves (the same prompt for all): measured, not assumed
    probe = admission_tokens(tenant, "Say a number.", max_tokens=8)
    per_minute = probe * EXACT_FIT + probe // 2 if limit == "tokens" else 10**9
    concurrent = EXACT_CONCURRENT if limit == "concurrency" else 100_000
    RegionalQuota.objects.unscoped_all_orgs().update_or_create(
        organization_id=tenant.org_id, region=HELD_REGION,
        defaults={"tokens_per_minute": per_minute, "requests_per_minute": 100_000,
                  "concurrent_requests": concurrent, "monthly_tokens": 10**12},
    )  # fmt: skip
    stop = threading.Event()

    def beat() -> None:  # the heartbeats the missing worker would send
        while not stop.wait(1):
            Host.objects.update(last_heartbeat_at=timezone.now())
        connections.close_all()

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    try:
        statuses, refused, handles = asyncio.run(_open_streams(stack, tenant.key))
        expected = EXACT_FIT if limit == "tokens" else EXACT_CONCURRENT
        code = "rate_limit_tokens_per_minute" if limit == "tokens" else "rate_limit_concurrent_requests"
        rows = list(InferenceRequest.objects.unscoped_all_orgs().filter(organization_id=tenant.org_id))
        assert statuses.count(200) == len(rows) == expected, (statuses.count(200), len(rows), expected)
        assert len(refused) == EXACT_REQUESTS - expected
        for response in refused:
            assert response.status_code == 429, response.text
            assert response.json()["error"]["code"] == code
            assert int(response.headers["retry-after"]) >= 1
            assert response.headers["x-ratelimit-limit-tokens"] == str(per_minute)
        assert all(r.reserved_tokens == probe for r in rows)
        if limit == "tokens":
            assert sum(r.reserved_tokens for r in rows) <= per_minute < sum(r.reserved_tokens for r in rows) + probe
        asyncio.run(_close(handles))
        # the clients went away: every admitted request is cancelled, its hold released, nothing billed
        wait_for(
            lambda: not InferenceRequest.objects.unscoped_all_orgs()
            .filter(organization_id=tenant.org_id, status="queued")
            .exists(),
            60, "disconnected clients' requests were not cancelled",
        )  # fmt: skip
        assert not CreditHold.objects.unscoped_all_orgs().filter(organization_id=tenant.org_id, status="open").exists()
        assert not LedgerEntry.objects.unscoped_all_orgs().filter(organization_id=tenant.org_id).exists()
    finally:
        stop.set()
        beater.join(5)
    print(  # noqa: T201  # the figures the closing note reports
        f"exact {limit}: {statuses.count(200)} admitted of {EXACT_REQUESTS} (limit allows {expected}), "
        f"{len(refused)} refused with {code}"
    )


def admission_tokens(tenant: Tenant, content: str, *, max_tokens: int) -> int:
    """Prompt plus max_tokens as admission counts them, for one user message."""
    from controlplane.fleet.selectors import catalog_get
    from controlplane.inference.admission import tokenizer_for

    tok = tokenizer_for(catalog_get(name=MODEL_NAME))
    prompt = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return len(prompt) + max_tokens
