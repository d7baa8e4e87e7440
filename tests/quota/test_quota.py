"""I3 quota, one request at a time: each limit admits up to its value and refuses past it with an honest
Retry-After; settle, release and renew are idempotent per request id; no key lives forever; Redis down is a 503."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import cast

import pytest
import redis

from controlplane.core.errors import Conflict, ServiceUnavailable
from controlplane.inference.quota import (
    QuotaDecision,
    QuotaLimits,
    _duration,
    quota_lease_renew,
    quota_release,
    quota_reserve,
    quota_settle,
    quota_state,
)
from tests.quota.helpers import (
    REGION,
    T0,
    WINDOW_MS,
    keys,
    limits,
    monthly_used,
    org_state,
    pttl,
    scores,
    utc_ms,
    window_tokens_sum,
)

LEASE_S = 30


def reserve(client: redis.Redis, org_id: int, request_id: str, tokens: int, now_ms: int | None,
            quota: QuotaLimits, *, lease_ttl_s: int = LEASE_S) -> QuotaDecision:
    return quota_reserve(client=client, org_id=org_id, region=REGION, request_id=request_id, tokens=tokens,
                         limits=quota, lease_ttl_s=lease_ttl_s, now_ms=now_ms)


def settle(client: redis.Redis, org_id: int, request_id: str, actual_tokens: int, now_ms: int) -> int:
    return quota_settle(client=client, org_id=org_id, region=REGION, request_id=request_id,
                        actual_tokens=actual_tokens, now_ms=now_ms)


def release(client: redis.Redis, org_id: int, request_id: str, now_ms: int) -> bool:
    return quota_release(client=client, org_id=org_id, region=REGION, request_id=request_id, now_ms=now_ms)


def renew(client: redis.Redis, org_id: int, request_id: str, now_ms: int) -> bool:
    return quota_lease_renew(client=client, org_id=org_id, region=REGION, request_id=request_id,
                             lease_ttl_s=LEASE_S, now_ms=now_ms)


def test_admission_reports_openai_rate_limit_headers(quota_redis: redis.Redis, org_id: int) -> None:
    quota = limits(rpm=10, tpm=1000)
    first = reserve(quota_redis, org_id, "a", 100, T0, quota)
    assert first.admitted
    assert (first.limit, first.retry_after_s) == (None, 0)
    assert first.headers == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "1m0s",
    }
    second = reserve(quota_redis, org_id, "b", 50, T0 + 10_500, quota)
    assert second.admitted
    assert second.headers["x-ratelimit-remaining-requests"] == "8"
    assert second.headers["x-ratelimit-remaining-tokens"] == "850"
    # Refusals carry the headers too; the window is empty again 60 s after its newest entry.
    refused = reserve(quota_redis, org_id, "c", 900, T0 + 20_000, quota)
    assert not refused.admitted
    assert refused.headers["x-ratelimit-remaining-requests"] == "8"
    assert refused.headers["x-ratelimit-remaining-tokens"] == "850"
    assert refused.headers["x-ratelimit-reset-requests"] == "50.5s"
    assert refused.headers["x-ratelimit-reset-tokens"] == "50.5s"


def test_state_reads_the_headers_without_reserving(quota_redis: redis.Redis, org_id: int) -> None:
    quota = limits(rpm=10, tpm=1000)
    empty = quota_state(client=quota_redis, org_id=org_id, region=REGION, limits=quota, now_ms=T0)
    assert empty["x-ratelimit-remaining-requests"] == "10"
    assert empty["x-ratelimit-reset-requests"] == "0s"
    assert reserve(quota_redis, org_id, "a", 100, T0, quota).admitted
    before = org_state(quota_redis, org_id)
    state = quota_state(client=quota_redis, org_id=org_id, region=REGION, limits=quota, now_ms=T0 + 30_000)
    assert (state["x-ratelimit-remaining-requests"], state["x-ratelimit-remaining-tokens"]) == ("9", "900")
    assert state["x-ratelimit-reset-tokens"] == "30s"
    assert org_state(quota_redis, org_id) == before  # nothing reserved, nothing freed
    # past the window the entry has left, as a reservation would find it
    later = quota_state(client=quota_redis, org_id=org_id, region=REGION, limits=quota, now_ms=T0 + 61_000)
    assert later["x-ratelimit-remaining-tokens"] == "1000"


def test_requests_per_minute_is_a_sliding_window(quota_redis: redis.Redis, org_id: int) -> None:
    quota = limits(rpm=2)
    assert reserve(quota_redis, org_id, "a", 1, T0, quota).admitted
    assert reserve(quota_redis, org_id, "b", 1, T0 + 1_000, quota).admitted
    refused = reserve(quota_redis, org_id, "c", 1, T0 + 30_000, quota)
    assert (refused.admitted, refused.limit, refused.retry_after_s) == (False, "requests_per_minute", 30)
    # One millisecond before "a" leaves the window the answer is still no; at that instant it is yes.
    refused = reserve(quota_redis, org_id, "c", 1, T0 + WINDOW_MS - 1, quota)
    assert (refused.admitted, refused.retry_after_s) == (False, 1)
    assert reserve(quota_redis, org_id, "c", 1, T0 + WINDOW_MS, quota).admitted
    refused = reserve(quota_redis, org_id, "d", 1, T0 + WINDOW_MS + 1, quota)
    assert (refused.admitted, refused.limit, refused.retry_after_s) == (False, "requests_per_minute", 1)
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"


def test_tokens_per_minute_retry_after_waits_for_enough_tokens_to_leave(
    quota_redis: redis.Redis, org_id: int
) -> None:
    quota = limits(tpm=100)
    assert reserve(quota_redis, org_id, "a", 40, T0, quota).admitted
    assert reserve(quota_redis, org_id, "b", 30, T0 + 10_000, quota).admitted
    assert reserve(quota_redis, org_id, "c", 20, T0 + 20_000, quota).admitted
    assert reserve(quota_redis, org_id, "fits", 10, T0 + 30_000, quota).admitted
    # 100 used: 50 more fit once "a" (40) and "b" (30) have left, at T0 + 70 s.
    refused = reserve(quota_redis, org_id, "big", 50, T0 + 30_000, quota)
    assert (refused.admitted, refused.limit, refused.retry_after_s) == (False, "tokens_per_minute", 40)
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    refused = reserve(quota_redis, org_id, "small", 40, T0 + 30_000, quota)
    assert (refused.limit, refused.retry_after_s) == ("tokens_per_minute", 30)
    assert not reserve(quota_redis, org_id, "big", 50, T0 + 69_999, quota).admitted
    assert reserve(quota_redis, org_id, "big", 50, T0 + 70_000, quota).admitted


@pytest.mark.parametrize(
    ("quota", "tokens", "limit"),
    [
        (limits(tpm=100), 101, "tokens_per_minute"),
        (limits(monthly=100), 101, "monthly_tokens"),
        (limits(rpm=0), 1, "requests_per_minute"),
        (limits(concurrent=0), 1, "concurrent_requests"),
    ],
)
def test_a_request_no_wait_can_admit_is_refused_as_not_retryable(
    quota_redis: redis.Redis, org_id: int, quota: QuotaLimits, tokens: int, limit: str
) -> None:
    refused = reserve(quota_redis, org_id, "a", tokens, T0, quota)
    assert (refused.admitted, refused.limit, refused.retryable, refused.retry_after_s) == (False, limit, False, 0)
    # Positive control: one token fewer (or a limit of one) is admitted under the same conditions.
    smaller = QuotaLimits(
        requests_per_minute=max(quota.requests_per_minute, 1),
        tokens_per_minute=quota.tokens_per_minute,
        concurrent_requests=max(quota.concurrent_requests, 1),
        monthly_tokens=quota.monthly_tokens,
    )
    assert reserve(quota_redis, org_id, "b", min(tokens, 100), T0, smaller).admitted
    assert quota_redis.exists(keys(org_id, "a")["record"]) == 0


def test_the_refusal_names_the_limit_that_frees_last(quota_redis: redis.Redis, org_id: int) -> None:
    quota = limits(tpm=10, concurrent=1)
    assert reserve(quota_redis, org_id, "a", 10, T0, quota, lease_ttl_s=120).admitted
    refused = reserve(quota_redis, org_id, "b", 10, T0 + 1_000, quota)
    # tokens free at T0 + 60 s, the lease at T0 + 120 s: retrying earlier than 119 s cannot succeed.
    assert (refused.limit, refused.retry_after_s) == ("concurrent_requests", 119)


def test_lease_expiry_frees_a_concurrency_slot(quota_redis: redis.Redis, org_id: int) -> None:
    quota = limits(concurrent=2)
    assert reserve(quota_redis, org_id, "a", 1, T0, quota).admitted
    assert reserve(quota_redis, org_id, "b", 1, T0 + 5_000, quota).admitted
    refused = reserve(quota_redis, org_id, "c", 1, T0 + 10_000, quota)
    assert (refused.admitted, refused.limit, refused.retry_after_s) == (False, "concurrent_requests", 20)
    assert not reserve(quota_redis, org_id, "c", 1, T0 + LEASE_S * 1000 - 1, quota).admitted
    assert reserve(quota_redis, org_id, "c", 1, T0 + LEASE_S * 1000, quota).admitted
    assert not reserve(quota_redis, org_id, "d", 1, T0 + LEASE_S * 1000, quota).admitted


def test_renewal_keeps_a_lease_until_it_has_expired(quota_redis: redis.Redis, org_id: int) -> None:
    quota = limits(concurrent=1)
    assert reserve(quota_redis, org_id, "a", 1, T0, quota).admitted
    assert renew(quota_redis, org_id, "a", T0 + 20_000)
    # Without the renewal "a" would have expired at T0 + 30 s; now it holds the slot until T0 + 50 s.
    refused = reserve(quota_redis, org_id, "b", 1, T0 + 45_000, quota)
    assert (refused.admitted, refused.limit, refused.retry_after_s) == (False, "concurrent_requests", 5)
    assert not renew(quota_redis, org_id, "a", T0 + 50_000)
    assert reserve(quota_redis, org_id, "b", 1, T0 + 50_000, quota).admitted
    assert not renew(quota_redis, org_id, "a", T0 + 50_001)
    assert renew(quota_redis, org_id, "b", T0 + 50_001)


def test_settle_refunds_unused_tokens_and_frees_the_lease(quota_redis: redis.Redis, org_id: int) -> None:
    quota = limits(rpm=5, tpm=100, concurrent=1, monthly=1000)
    assert reserve(quota_redis, org_id, "a", 80, T0, quota).admitted
    refused = reserve(quota_redis, org_id, "b", 30, T0 + 1_000, quota)
    # Both tokens (free at T0 + 60 s) and the lease (free at T0 + 30 s) refuse; the later one is named.
    assert (refused.admitted, refused.limit, refused.retry_after_s) == (False, "tokens_per_minute", 59)
    assert settle(quota_redis, org_id, "a", 25, T0 + 2_000) == 55
    admitted = reserve(quota_redis, org_id, "b", 30, T0 + 3_000, quota)
    assert admitted.admitted
    # "a" still counts as a request, with the 25 tokens it used.
    assert admitted.headers["x-ratelimit-remaining-requests"] == "3"
    assert admitted.headers["x-ratelimit-remaining-tokens"] == "45"
    assert monthly_used(quota_redis, org_id) == {"2025-06": 55}
    assert quota_redis.zrange(keys(org_id)["leases"], 0, -1) == [b"b"]


def test_settle_twice_refunds_once(quota_redis: redis.Redis, org_id: int) -> None:
    quota = limits(tpm=100, monthly=1000)
    assert reserve(quota_redis, org_id, "a", 80, T0, quota).admitted
    assert settle(quota_redis, org_id, "a", 30, T0 + 1_000) == 50
    after_first = org_state(quota_redis, org_id)
    assert settle(quota_redis, org_id, "a", 30, T0 + 2_000) == 0
    assert settle(quota_redis, org_id, "a", 0, T0 + 2_000) == 0
    assert org_state(quota_redis, org_id) == after_first
    assert window_tokens_sum(quota_redis, org_id) == 30
    assert monthly_used(quota_redis, org_id) == {"2025-06": 30}


def test_settle_never_charges_more_than_was_reserved(quota_redis: redis.Redis, org_id: int) -> None:
    quota = limits(tpm=100)
    assert reserve(quota_redis, org_id, "a", 80, T0, quota).admitted
    assert settle(quota_redis, org_id, "a", 500, T0 + 1_000) == 0
    assert window_tokens_sum(quota_redis, org_id) == 80


def test_release_frees_everything_once(quota_redis: redis.Redis, org_id: int) -> None:
    quota = limits(rpm=1, tpm=100, concurrent=1, monthly=100)
    assert reserve(quota_redis, org_id, "a", 100, T0, quota).admitted
    assert not reserve(quota_redis, org_id, "b", 100, T0 + 1_000, quota).admitted
    assert release(quota_redis, org_id, "a", T0 + 2_000)
    # Its request, tokens, lease and month are all free again.
    assert reserve(quota_redis, org_id, "b", 100, T0 + 3_000, quota).admitted
    after = org_state(quota_redis, org_id)
    assert not release(quota_redis, org_id, "a", T0 + 4_000)
    assert settle(quota_redis, org_id, "a", 10, T0 + 4_000) == 0
    assert not renew(quota_redis, org_id, "a", T0 + 4_000)
    assert org_state(quota_redis, org_id) == after
    assert monthly_used(quota_redis, org_id) == {"2025-06": 100}


def test_release_after_a_refusal_is_harmless(quota_redis: redis.Redis, org_id: int) -> None:
    quota = limits(tpm=100, concurrent=2)
    assert reserve(quota_redis, org_id, "a", 90, T0, quota).admitted
    refused = reserve(quota_redis, org_id, "b", 20, T0 + 1_000, quota)
    assert not refused.admitted
    before = org_state(quota_redis, org_id)
    assert not release(quota_redis, org_id, "b", T0 + 2_000)
    assert settle(quota_redis, org_id, "b", 0, T0 + 2_000) == 0
    assert not renew(quota_redis, org_id, "b", T0 + 2_000)
    assert org_state(quota_redis, org_id) == before
    # Positive control: releasing the admitted request does change the state.
    assert release(quota_redis, org_id, "a", T0 + 2_000)
    assert org_state(quota_redis, org_id) != before


def test_release_after_settle_keeps_the_tokens_used(quota_redis: redis.Redis, org_id: int) -> None:
    quota = limits(tpm=100, monthly=1000)
    assert reserve(quota_redis, org_id, "a", 80, T0, quota).admitted
    assert settle(quota_redis, org_id, "a", 30, T0 + 1_000) == 50
    before = org_state(quota_redis, org_id)
    assert not release(quota_redis, org_id, "a", T0 + 2_000)
    assert org_state(quota_redis, org_id) == before


def test_reserving_the_same_request_twice_reserves_once(quota_redis: redis.Redis, org_id: int) -> None:
    quota = limits(rpm=5, tpm=100)
    assert reserve(quota_redis, org_id, "a", 60, T0, quota).admitted
    again = reserve(quota_redis, org_id, "a", 60, T0 + 1_000, quota)
    assert again.admitted
    assert again.headers["x-ratelimit-remaining-requests"] == "4"
    assert again.headers["x-ratelimit-remaining-tokens"] == "40"
    assert settle(quota_redis, org_id, "a", 60, T0 + 2_000) == 0
    with pytest.raises(Conflict) as raised:
        reserve(quota_redis, org_id, "a", 60, T0 + 3_000, quota)
    assert raised.value.code == "request_id_reused"


@pytest.mark.parametrize(
    ("now_ms", "next_month_ms"),
    [
        (utc_ms(2025, 1, 31, 23, 59, 59, 999), utc_ms(2025, 2, 1)),
        (utc_ms(2028, 2, 29, 12), utc_ms(2028, 3, 1)),
        (utc_ms(2025, 12, 31, 23), utc_ms(2026, 1, 1)),
        (utc_ms(2024, 2, 28, 23, 59, 59), utc_ms(2024, 3, 1)),
        (utc_ms(2100, 2, 28, 22), utc_ms(2100, 3, 1)),
    ],
)
def test_monthly_tokens_reset_at_the_start_of_the_utc_month(
    quota_redis: redis.Redis, org_id: int, now_ms: int, next_month_ms: int
) -> None:
    quota = limits(monthly=100)
    assert reserve(quota_redis, org_id, "a", 100, now_ms, quota).admitted
    refused = reserve(quota_redis, org_id, "b", 1, now_ms, quota)
    assert (refused.admitted, refused.limit) == (False, "monthly_tokens")
    assert refused.retry_after_s == max(1, -(-(next_month_ms - now_ms) // 1000))
    assert not reserve(quota_redis, org_id, "b", 1, next_month_ms - 1, quota).admitted
    assert reserve(quota_redis, org_id, "b", 100, next_month_ms, quota).admitted


def test_settling_after_the_month_ends_refunds_the_month_reserved_in(quota_redis: redis.Redis, org_id: int) -> None:
    quota = limits(monthly=100)
    assert reserve(quota_redis, org_id, "a", 80, utc_ms(2025, 1, 31, 23, 59, 50), quota).admitted
    assert reserve(quota_redis, org_id, "b", 100, utc_ms(2025, 2, 1, 0, 0, 1), quota).admitted
    assert settle(quota_redis, org_id, "a", 30, utc_ms(2025, 2, 1, 0, 0, 5)) == 50
    assert monthly_used(quota_redis, org_id) == {"2025-01": 30, "2025-02": 100}


def test_the_monthly_counter_keeps_this_and_last_month_only(quota_redis: redis.Redis, org_id: int) -> None:
    quota = limits(monthly=100)
    for index, moment in enumerate([utc_ms(2025, 1, 15), utc_ms(2025, 2, 15), utc_ms(2025, 3, 15)]):
        assert reserve(quota_redis, org_id, f"r{index}", 10, moment, quota).admitted
    assert monthly_used(quota_redis, org_id) == {"2025-02": 10, "2025-03": 10}


def test_every_key_expires(quota_redis: redis.Redis, org_id: int) -> None:
    quota = limits(rpm=10, tpm=1000, concurrent=5, monthly=10_000)
    assert reserve(quota_redis, org_id, "a", 10, T0, quota).admitted
    assert reserve(quota_redis, org_id, "b", 10, T0 + 1_000, quota).admitted
    assert settle(quota_redis, org_id, "a", 5, T0 + 2_000) == 5
    assert release(quota_redis, org_id, "b", T0 + 2_000)
    assert reserve(quota_redis, org_id, "c", 10, T0 + 3_000, quota).admitted
    assert renew(quota_redis, org_id, "c", T0 + 4_000)
    names = keys(org_id, "c")
    found = {raw.decode() for raw in quota_redis.scan_iter(match=f"quota:{{{org_id}:*")}
    assert found == {names["window"], names["window_tokens"], names["leases"], names["monthly"],
                     keys(org_id, "a")["record"], keys(org_id, "b")["record"], names["record"]}
    ttl = {key: pttl(quota_redis, key) for key in found}
    assert all(value > 0 for value in ttl.values()), ttl
    assert ttl[names["window"]] <= WINDOW_MS + 1_000
    assert ttl[names["window_tokens"]] <= WINDOW_MS + 1_000
    assert ttl[names["leases"]] <= LEASE_S * 1000 + 1_000
    end_of_june = utc_ms(2025, 7, 1)
    assert ttl[names["monthly"]] <= end_of_june - T0 + 7 * 86_400_000
    assert ttl[names["record"]] <= LEASE_S * 1000 + 86_400_000


def _redis_now_ms(client: redis.Redis) -> int:
    seconds, micros = cast(tuple[int, int], client.time())
    return seconds * 1000 + micros // 1000


def test_the_redis_clock_is_used_without_now_ms(quota_redis: redis.Redis, org_id: int) -> None:
    before = _redis_now_ms(quota_redis)
    assert reserve(quota_redis, org_id, "a", 1, None, limits()).admitted
    after = _redis_now_ms(quota_redis)
    assert before <= scores(quota_redis, keys(org_id)["window"])["a"] <= after
    expires = scores(quota_redis, keys(org_id)["leases"])["a"]
    assert before + LEASE_S * 1000 <= expires <= after + LEASE_S * 1000


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


OPERATIONS: dict[str, Callable[[redis.Redis, int], object]] = {
    "reserve": lambda client, org: reserve(client, org, "a", 1, None, limits()),
    "settle": lambda client, org: settle(client, org, "a", 1, T0),
    "release": lambda client, org: release(client, org, "a", T0),
    "renew": lambda client, org: renew(client, org, "a", T0),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_redis_unreachable_is_quota_unavailable(quota_redis: redis.Redis, org_id: int, operation: str) -> None:
    unreachable = redis.Redis(host="127.0.0.1", port=_closed_port(), socket_connect_timeout=1, socket_timeout=1)
    with pytest.raises(ServiceUnavailable) as raised:
        OPERATIONS[operation](unreachable, org_id)
    assert raised.value.code == "quota_unavailable"
    assert raised.value.http_status == 503
    # Positive control: the same call against a live Redis answers.
    OPERATIONS[operation](quota_redis, org_id)


def test_invalid_arguments_are_refused_before_redis_is_asked(org_id: int) -> None:
    unreachable = redis.Redis(host="127.0.0.1", port=_closed_port(), socket_connect_timeout=1)
    with pytest.raises(ValueError, match="tokens"):
        reserve(unreachable, org_id, "a", -1, T0, limits())
    with pytest.raises(ValueError, match="lease_ttl_s"):
        reserve(unreachable, org_id, "a", 1, T0, limits(), lease_ttl_s=0)
    with pytest.raises(ValueError, match="request_id"):
        reserve(unreachable, org_id, "", 1, T0, limits())
    with pytest.raises(ValueError, match="negative"):
        reserve(unreachable, org_id, "a", 1, T0, limits(rpm=-1))


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "0s"), (20, "20ms"), (999, "999ms"), (1_000, "1s"), (6_000, "6s"), (8_640, "8.64s"), (59_999, "59.999s"),
     (60_000, "1m0s"), (90_500, "1m30.5s"), (3_600_000, "1h0m0s"), (3_723_400, "1h2m3.4s")],
)
def test_reset_durations_print_as_openai_does(ms: int, text: str) -> None:
    assert _duration(ms) == text
