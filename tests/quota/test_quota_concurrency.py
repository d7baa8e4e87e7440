"""I3 under concurrency: 4 OS processes x 8 threads reserve against one organisation and region at once. No
window ever holds more than a limit allows, and exactly as many requests are admitted as the limits allow."""

from __future__ import annotations

import multiprocessing
import queue
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
from django.conf import settings

from tests.quota.conftest import org_keys_delete
from tests.quota.hammer import Attempt, Scenario, hammer
from tests.quota.helpers import T0, WINDOW_MS, keys, limits, monthly_used, scores, utc_ms, window_tokens_sum

PROCESSES = 4
THREADS = 8
ATTEMPTS = 8  # 256 attempts per scenario, several times what any limit below admits
TOKENS = 7
LEASE_S = 600


@dataclass(frozen=True)
class Expected:
    admitted: int
    limit: str


# Each scenario makes one limit bind (two at once in the last fixed-clock one); the count it admits is known.
# The fixed-clock scenarios put every attempt inside one 30-second span, so the count cannot depend on timing.
_base = secrets.randbelow(10**9) * 1000
SCENARIOS: list[tuple[Scenario, Expected]] = [
    (Scenario("requests", _base + 1, limits(rpm=41), TOKENS, LEASE_S, T0),
     Expected(41, "requests_per_minute")),
    (Scenario("tokens", _base + 2, limits(tpm=TOKENS * 53 + 6), TOKENS, LEASE_S, T0),
     Expected(53, "tokens_per_minute")),
    (Scenario("concurrency", _base + 3, limits(concurrent=37), TOKENS, LEASE_S, T0),
     Expected(37, "concurrent_requests")),
    (Scenario("monthly", _base + 4, limits(monthly=TOKENS * 29 + 3), TOKENS, LEASE_S, T0),
     Expected(29, "monthly_tokens")),
    # Tokens and concurrency both run out at the 44th request; the lease frees later, so it is the one named.
    (Scenario("tokens_and_concurrency", _base + 5, limits(tpm=TOKENS * 44, concurrent=44), TOKENS, LEASE_S, T0),
     Expected(44, "concurrent_requests")),
    # The Redis clock: the lease outlives any burst, so the count does not depend on timing either.
    (Scenario("redis_clock", _base + 6, limits(concurrent=31), TOKENS, 3600, None),
     Expected(31, "concurrent_requests")),
]


@dataclass(frozen=True)
class Outcome:
    attempts: list[Attempt]
    window_scores: list[float]
    window_tokens: int
    leases: int
    monthly: dict[str, int]


@pytest.fixture(scope="module")
def outcomes() -> Iterator[dict[str, Outcome]]:
    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=10)
    client.ping()
    scenarios = [scenario for scenario, _ in SCENARIOS]
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(PROCESSES)
    results = context.Queue()
    processes = [
        context.Process(target=hammer, args=(settings.REDIS_URL, scenarios, start, results, index, THREADS, ATTEMPTS))
        for index in range(PROCESSES)
    ]
    collected: dict[str, list[Attempt]] = {scenario.name: [] for scenario in scenarios}
    try:
        for process in processes:
            process.start()
        pending = PROCESSES * len(scenarios)
        while pending:
            try:
                name, index, rows = results.get(timeout=5)
            except queue.Empty:
                # A process that died before reporting (an import error, say) fails the test now, not at a timeout.
                dead = [process.exitcode for process in processes if process.exitcode not in (None, 0)]
                assert not dead, f"hammer processes exited with {dead}"
                continue
            assert name != "error", f"process {index} failed:\n{rows}"
            collected[name].extend(rows)
            pending -= 1
        for process in processes:
            process.join(timeout=60)
            assert process.exitcode == 0
        yield {
            scenario.name: Outcome(
                attempts=collected[scenario.name],
                window_scores=list(scores(client, keys(scenario.org_id)["window"]).values()),
                window_tokens=window_tokens_sum(client, scenario.org_id),
                leases=len(scores(client, keys(scenario.org_id)["leases"])),
                monthly=monthly_used(client, scenario.org_id),
            )
            for scenario in scenarios
        }
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
        for scenario in scenarios:
            org_keys_delete(client, scenario.org_id)
        client.close()


def _max_in_any_window(times: list[int], tokens: int) -> tuple[int, int]:
    """The most requests and tokens admitted in any 60-second window [a, a + 60 s)."""
    ordered = sorted(times)
    most = 0
    for index, start in enumerate(ordered):
        most = max(most, sum(1 for moment in ordered[index:] if moment < start + WINDOW_MS))
    return most, most * tokens


def _ceil_s(ms: int) -> int:
    return max(1, -(-ms // 1000))


@pytest.mark.parametrize(("scenario", "expected"), SCENARIOS, ids=[scenario.name for scenario, _ in SCENARIOS])
def test_admits_exactly_what_the_limits_allow(
    outcomes: dict[str, Outcome], scenario: Scenario, expected: Expected
) -> None:
    outcome = outcomes[scenario.name]
    attempts = outcome.attempts
    assert len(attempts) == PROCESSES * THREADS * ATTEMPTS
    admitted = [attempt for attempt in attempts if attempt.admitted]
    refused = [attempt for attempt in attempts if not attempt.admitted]
    assert len(admitted) == expected.admitted
    assert {attempt.limit for attempt in refused} == {expected.limit}
    assert all(attempt.retryable and attempt.retry_after_s >= 1 for attempt in refused)

    # Redis holds exactly the admitted requests: in the window, in the token sum, as leases and in the month.
    assert len(outcome.window_scores) == expected.admitted
    assert outcome.window_tokens == expected.admitted * TOKENS
    assert outcome.leases == expected.admitted
    assert sum(outcome.monthly.values()) == expected.admitted * TOKENS

    # No 60-second window holds more than the per-minute limits, nor the month more than the monthly limit.
    times = [int(score) for score in outcome.window_scores]
    if scenario.base_ms is not None:
        assert sorted(times) == sorted(attempt.now_ms for attempt in admitted if attempt.now_ms is not None)
    most_requests, most_tokens = _max_in_any_window(times, TOKENS)
    assert most_requests <= scenario.limits.requests_per_minute
    assert most_tokens <= scenario.limits.tokens_per_minute
    assert outcome.leases <= scenario.limits.concurrent_requests
    assert sum(outcome.monthly.values()) <= scenario.limits.monthly_tokens


@pytest.mark.parametrize(("scenario", "expected"), SCENARIOS[:5], ids=[scenario.name for scenario, _ in SCENARIOS[:5]])
def test_retry_after_is_when_the_binding_limit_frees(
    outcomes: dict[str, Outcome], scenario: Scenario, expected: Expected
) -> None:
    """Every refusal happened once the limit was full, so its Retry-After follows from the admitted set."""
    attempts = outcomes[scenario.name].attempts
    oldest = min(attempt.now_ms for attempt in attempts if attempt.admitted and attempt.now_ms is not None)
    frees_at = {
        "requests_per_minute": oldest + WINDOW_MS,
        "tokens_per_minute": oldest + WINDOW_MS,
        "concurrent_requests": oldest + LEASE_S * 1000,
        "monthly_tokens": utc_ms(2025, 7, 1),
    }[expected.limit]
    for attempt in attempts:
        if not attempt.admitted:
            assert attempt.now_ms is not None
            assert attempt.retry_after_s == _ceil_s(frees_at - attempt.now_ms), attempt


def test_the_redis_clock_scenario_reports_a_lease_bound_retry(outcomes: dict[str, Outcome]) -> None:
    refused = [attempt for attempt in outcomes["redis_clock"].attempts if not attempt.admitted]
    assert refused
    assert all(1 <= attempt.retry_after_s <= 3600 for attempt in refused)
