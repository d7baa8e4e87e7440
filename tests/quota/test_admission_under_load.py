"""Quota and holds through the real API (I3, I4): 200 concurrent requests through 4 web processes
against a tokens-per-minute limit and a small prepaid balance. Admitted tokens never exceed the
limit, the balance never goes negative, and every refusal carries its code and headers."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import pytest
from django.utils import timezone

from billing.models import CreditHold, LedgerEntry
from billing.services import balance_get, price_entry_add
from controlplane.core.services import Actor
from controlplane.fleet.models import Host
from controlplane.inference.models import InferenceRequest
from tenants.models import Organization, RegionalQuota
from tests.stack import MODEL_NAME, Stack, hosts_live, seed_platform, seed_tenant, stack_fixture

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
