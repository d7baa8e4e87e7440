"""The body of each OS process in the concurrency test: several threads reserving against one organisation and
region at once. Imported by name in processes started with 'spawn', so it must stay importable on its own."""

from __future__ import annotations

import random
import threading
import traceback
from dataclasses import dataclass
from typing import Any

import redis

from controlplane.inference.quota import QuotaLimits, quota_reserve
from tests.quota.helpers import REGION


@dataclass(frozen=True)
class Scenario:
    name: str
    org_id: int
    limits: QuotaLimits
    tokens: int
    lease_ttl_s: int
    base_ms: int | None  # None: the Redis server's clock; otherwise each attempt picks a time in [base, base+30 s)


@dataclass(frozen=True)
class Attempt:
    request_id: str
    now_ms: int | None
    admitted: bool
    limit: str | None
    retry_after_s: int
    retryable: bool


def hammer(redis_url: str, scenarios: list[Scenario], start: Any, results: Any, process_index: int,
           threads: int, attempts: int) -> None:
    """Run every scenario in turn; all processes start each one together (`start` is a multiprocessing Barrier)
    and put (scenario name, process index, attempts) on `results`, or ("error", process index, traceback)."""
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=30)
    try:
        for scenario in scenarios:
            start.wait(timeout=120)
            results.put((scenario.name, process_index, _burst(client, scenario, process_index, threads, attempts)))
    except Exception:  # the parent must hear about any failure instead of waiting for results
        results.put(("error", process_index, traceback.format_exc()))
    finally:
        client.close()


def _burst(client: redis.Redis, scenario: Scenario, process_index: int, threads: int,
           attempts: int) -> list[Attempt]:
    rows: list[Attempt] = []
    failures: list[str] = []
    lock = threading.Lock()
    together = threading.Barrier(threads)

    def run(thread_index: int) -> None:
        try:
            rng = random.Random(f"{scenario.name}-{process_index}-{thread_index}")
            together.wait(timeout=60)
            for attempt in range(attempts):
                request_id = f"{scenario.name}-p{process_index}-t{thread_index}-{attempt}"
                now_ms = None if scenario.base_ms is None else scenario.base_ms + rng.randrange(30_000)
                decision = quota_reserve(client=client, org_id=scenario.org_id, region=REGION, request_id=request_id,
                                         tokens=scenario.tokens, limits=scenario.limits,
                                         lease_ttl_s=scenario.lease_ttl_s, now_ms=now_ms)
                with lock:
                    rows.append(Attempt(request_id, now_ms, decision.admitted, decision.limit,
                                        decision.retry_after_s, decision.retryable))
        except Exception:  # reported below so that a failing thread fails the test
            with lock:
                failures.append(traceback.format_exc())

    workers = [threading.Thread(target=run, args=(index,)) for index in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if failures:
        raise RuntimeError("\n".join(failures))
    return rows
