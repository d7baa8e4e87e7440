"""I3 against a reference: random sequences of reserve, settle, release, renew and the passing of time, checked
step by step against a plain-Python model that states each limit by brute force (is the request admitted, which
limit refuses, when does it free), and the admitted history checked against every limit in every window."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
import redis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from controlplane.core.errors import Conflict
from controlplane.inference.quota import (
    QuotaLimits,
    quota_lease_renew,
    quota_release,
    quota_reserve,
    quota_settle,
)
from tests.quota.helpers import REGION, WINDOW_MS, utc_ms

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LIMIT_ORDER = ("requests_per_minute", "tokens_per_minute", "concurrent_requests", "monthly_tokens")


def month_of(now_ms: int) -> str:
    return (EPOCH + timedelta(milliseconds=now_ms)).strftime("%Y-%m")


def previous_month(month: str) -> str:
    year, number = int(month[:4]), int(month[5:])
    return f"{year - 1:04d}-12" if number == 1 else f"{year:04d}-{number - 1:02d}"


def next_month_start(now_ms: int) -> int:
    moment = EPOCH + timedelta(milliseconds=now_ms)
    first = datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=UTC)
    return (first - EPOCH) // timedelta(milliseconds=1)


def first_time(now: int, candidates: list[int], fits: Callable[[int], bool]) -> int:
    """Milliseconds from now until the first candidate instant at which the request would fit."""
    for moment in sorted(candidates):
        if moment >= now and fits(moment):
            return moment - now
    raise AssertionError("no candidate instant fits")


@dataclass
class Reference:
    limits: QuotaLimits
    lease_ms: int
    window: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (admitted at, tokens charged)
    leases: dict[str, int] = field(default_factory=dict)  # id -> expiry
    monthly: dict[str, int] = field(default_factory=dict)
    records: dict[str, tuple[str, int, str]] = field(default_factory=dict)  # id -> (state, tokens, month)
    admitted: dict[str, tuple[int, int]] = field(default_factory=dict)  # the history: id -> (at, tokens used)

    def _present(self, moment: int) -> list[tuple[int, int]]:
        return [(at, tokens) for at, tokens in self.window.values() if at > moment - WINDOW_MS]

    def reserve(self, request_id: str, tokens: int, now: int) -> tuple[object, ...]:
        limits = self.limits
        present = self._present(now)
        live = [expiry for expiry in self.leases.values() if expiry > now]
        month = month_of(now)
        record = self.records.get(request_id)
        if record is not None and record[0] != "reserved":
            return ("reused",)
        waits: dict[str, int] = {}
        if record is None:
            if len(present) + 1 > limits.requests_per_minute:
                waits["requests_per_minute"] = -1 if limits.requests_per_minute < 1 else first_time(
                    now, [at + WINDOW_MS for at, _ in present],
                    lambda t: len(self._present(t)) + 1 <= limits.requests_per_minute)
            if sum(amount for _, amount in present) + tokens > limits.tokens_per_minute:
                waits["tokens_per_minute"] = -1 if tokens > limits.tokens_per_minute else first_time(
                    now, [at + WINDOW_MS for at, _ in present],
                    lambda t: sum(amount for _, amount in self._present(t)) + tokens <= limits.tokens_per_minute)
            if len(live) + 1 > limits.concurrent_requests:
                waits["concurrent_requests"] = -1 if limits.concurrent_requests < 1 else first_time(
                    now, live, lambda t: sum(1 for expiry in live if expiry > t) + 1 <= limits.concurrent_requests)
            if self.monthly.get(month, 0) + tokens > limits.monthly_tokens:
                waits["monthly_tokens"] = -1 if tokens > limits.monthly_tokens else next_month_start(now) - now
        if not waits and record is None:
            self.window[request_id] = (now, tokens)
            self.leases[request_id] = now + self.lease_ms
            self.monthly[month] = self.monthly.get(month, 0) + tokens
            self.monthly = {key: value for key, value in self.monthly.items()
                            if key in (month, previous_month(month))}
            self.records[request_id] = ("reserved", tokens, month)
            self.admitted[request_id] = (now, tokens)
            present = self._present(now)
        remaining_requests = max(limits.requests_per_minute - len(present), 0)
        remaining_tokens = max(limits.tokens_per_minute - sum(amount for _, amount in present), 0)
        reset = max((at + WINDOW_MS - now for at, _ in present), default=0)
        if not waits:
            return (True, None, 0, True, remaining_requests, remaining_tokens, reset)
        never = [name for name in LIMIT_ORDER if waits.get(name) == -1]
        if never:
            return (False, never[0], 0, False, remaining_requests, remaining_tokens, reset)
        longest = max(waits.values())
        name = next(name for name in LIMIT_ORDER if waits.get(name) == longest)
        return (False, name, max(1, math.ceil(longest / 1000)), True, remaining_requests, remaining_tokens, reset)

    def _give_back(self, request_id: str, refund: int, month: str) -> None:
        if request_id in self.window:
            at, charged = self.window[request_id]
            self.window[request_id] = (at, charged - min(refund, charged))
        if month in self.monthly:
            self.monthly[month] -= refund
        self.leases.pop(request_id, None)

    def settle(self, request_id: str, actual: int) -> int:
        state, tokens, month = self.records.get(request_id, ("absent", 0, ""))
        if state != "reserved":
            return 0
        refund = max(tokens - actual, 0)
        self._give_back(request_id, refund, month)
        self.records[request_id] = ("settled", tokens, month)
        at, _ = self.admitted[request_id]
        self.admitted[request_id] = (at, tokens - refund)
        return refund

    def release(self, request_id: str) -> bool:
        state, tokens, month = self.records.get(request_id, ("absent", 0, ""))
        if state != "reserved":
            return False
        self._give_back(request_id, tokens, month)
        self.window.pop(request_id, None)
        self.records[request_id] = ("released", tokens, month)
        del self.admitted[request_id]
        return True

    def renew(self, request_id: str, now: int) -> bool:
        expiry = self.leases.get(request_id)
        if self.records.get(request_id, ("absent",))[0] != "reserved" or expiry is None or expiry <= now:
            self.leases.pop(request_id, None)
            return False
        self.leases[request_id] = max(expiry, now + self.lease_ms)
        return True


def _check_history(reference: Reference) -> None:
    """Admitted usage, as settled, never exceeds a per-minute limit in any window [a, a + 60 s)."""
    history = sorted(reference.admitted.values())
    for index, (start, _) in enumerate(history):
        inside = [tokens for at, tokens in history[index:] if at < start + WINDOW_MS]
        assert len(inside) <= reference.limits.requests_per_minute
        assert sum(inside) <= reference.limits.tokens_per_minute


DAY = 86_400_000
_reserve = st.tuples(st.just("reserve"), st.integers(0, 15))
_advance = st.tuples(st.just("advance"), st.sampled_from(
    [1, 999, 1_000, 15_000, 29_999, 30_000, 59_999, 60_000, 61_000, 10 * DAY, 40 * DAY]))
# Reserving and the passing of time weigh more, so that limits fill up and free again within one sequence.
operations = st.lists(
    st.one_of(
        _reserve, _reserve, _reserve, _advance, _advance,
        st.tuples(st.just("reserve_again"), st.integers(0, 40)),
        st.tuples(st.just("settle"), st.integers(0, 40), st.integers(0, 20)),
        st.tuples(st.just("release"), st.integers(0, 40)),
        st.tuples(st.just("renew"), st.integers(0, 40)),
    ),
    min_size=15,
    max_size=60,
)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rpm=st.integers(1, 5),
    tpm=st.integers(10, 80),
    concurrent=st.integers(1, 3),
    monthly=st.integers(10, 100),
    lease_s=st.sampled_from([1, 30, 90]),
    start=st.sampled_from([utc_ms(2025, 6, 10, 12), utc_ms(2025, 1, 31, 23, 59, 30), utc_ms(2028, 2, 29, 23, 59),
                           utc_ms(2025, 12, 31, 23, 59, 59)]),
    steps=operations,
)
def test_quota_matches_the_reference_model(
    quota_redis: redis.Redis, new_org_id: Callable[[], int], rpm: int, tpm: int, concurrent: int, monthly: int,
    lease_s: int, start: int, steps: list[tuple[object, ...]],
) -> None:
    org_id = new_org_id()
    limits = QuotaLimits(requests_per_minute=rpm, tokens_per_minute=tpm, concurrent_requests=concurrent,
                         monthly_tokens=monthly)
    reference = Reference(limits=limits, lease_ms=lease_s * 1000)
    ids: list[str] = []
    now = start
    for step in steps:
        kind = step[0]
        if kind == "advance":
            now += int(str(step[1]))
            continue
        if kind == "reserve" or (kind == "reserve_again" and ids):
            if kind == "reserve":
                request_id, tokens = f"r{len(ids)}", int(str(step[1]))
                ids.append(request_id)
            else:
                request_id, tokens = ids[int(str(step[1])) % len(ids)], 5
            expected = reference.reserve(request_id, tokens, now)
            if expected == ("reused",):
                with pytest.raises(Conflict) as raised:
                    quota_reserve(client=quota_redis, org_id=org_id, region=REGION, request_id=request_id,
                                  tokens=tokens, limits=limits, lease_ttl_s=lease_s, now_ms=now)
                assert raised.value.code == "request_id_reused"
                continue
            decision = quota_reserve(client=quota_redis, org_id=org_id, region=REGION, request_id=request_id,
                                     tokens=tokens, limits=limits, lease_ttl_s=lease_s, now_ms=now)
            event(f"reserve: {decision.limit or 'admitted'}{'' if decision.retryable else ' (not retryable)'}")
            headers = decision.headers
            reset = reference_reset(headers)
            assert (decision.admitted, decision.limit, decision.retry_after_s, decision.retryable,
                    int(headers["x-ratelimit-remaining-requests"]), int(headers["x-ratelimit-remaining-tokens"]),
                    reset) == expected, (step, now)
        elif ids:
            request_id = ids[int(str(step[1])) % len(ids)]
            if kind == "settle":
                actual = int(str(step[2]))
                assert quota_settle(client=quota_redis, org_id=org_id, region=REGION, request_id=request_id,
                                    actual_tokens=actual, now_ms=now) == reference.settle(request_id, actual)
            elif kind == "release":
                assert quota_release(client=quota_redis, org_id=org_id, region=REGION, request_id=request_id,
                                     now_ms=now) == reference.release(request_id)
            else:
                assert quota_lease_renew(client=quota_redis, org_id=org_id, region=REGION, request_id=request_id,
                                         lease_ttl_s=lease_s, now_ms=now) == reference.renew(request_id, now)
        _check_history(reference)


def reference_reset(headers: dict[str, str]) -> int:
    """Parse the reset header back to milliseconds (the formatter has its own test)."""
    text = headers["x-ratelimit-reset-requests"]
    assert text == headers["x-ratelimit-reset-tokens"]
    if text.endswith("ms"):
        return int(text[:-2])
    total = 0.0
    rest = text[:-1]
    for unit, factor in (("h", 3_600_000), ("m", 60_000)):
        if unit in rest:
            head, rest = rest.split(unit, 1)
            total += int(head) * factor
    return round(total + float(rest) * 1000)
