"""Shared helpers for the quota tests: fixed clocks, limits and a readable dump of an organisation's keys."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import redis

from controlplane.inference.quota import QuotaLimits, quota_keys

REGION = "sin"
UNLIMITED = 10**12
WINDOW_MS = 60_000


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def utc_ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0,
           millisecond: int = 0) -> int:
    return ms(datetime(year, month, day, hour, minute, second, tzinfo=UTC)) + millisecond


T0 = utc_ms(2025, 6, 10, 12, 0, 0)


def limits(*, rpm: int = UNLIMITED, tpm: int = UNLIMITED, concurrent: int = UNLIMITED,
           monthly: int = UNLIMITED) -> QuotaLimits:
    return QuotaLimits(requests_per_minute=rpm, tokens_per_minute=tpm, concurrent_requests=concurrent,
                       monthly_tokens=monthly)


def keys(org_id: int, request_id: str = "-") -> dict[str, str]:
    window, window_tokens, leases, monthly, record = quota_keys(org_id=org_id, region=REGION, request_id=request_id)
    return {"window": window, "window_tokens": window_tokens, "leases": leases, "monthly": monthly,
            "record": record}


def org_state(client: redis.Redis, org_id: int) -> dict[str, Any]:
    """Every key of the organisation with its value (TTLs left out), to compare before and after an operation."""
    state: dict[str, Any] = {}
    for raw in sorted(client.scan_iter(match=f"quota:{{{org_id}:*", count=1000)):
        key = raw.decode()
        kind = cast(bytes, client.type(key)).decode()
        if kind == "zset":
            state[key] = client.zrange(key, 0, -1, withscores=True)
        elif kind == "hash":
            state[key] = client.hgetall(key)
        else:
            state[key] = (kind, client.dump(key))
    return state


def monthly_used(client: redis.Redis, org_id: int) -> dict[str, int]:
    used = cast(dict[bytes, bytes], client.hgetall(keys(org_id)["monthly"]))
    return {field.decode(): int(value) for field, value in used.items()}


def window_tokens_sum(client: redis.Redis, org_id: int) -> int:
    return int(cast(bytes | None, client.hget(keys(org_id)["window_tokens"], "sum")) or 0)


def scores(client: redis.Redis, key: str) -> dict[str, float]:
    """A sorted set's members and scores (the sync client's stubs also allow an awaitable; this one is not)."""
    members = cast(list[tuple[bytes, float]], client.zrange(key, 0, -1, withscores=True))
    return {member.decode(): score for member, score in members}


def pttl(client: redis.Redis, key: str) -> int:
    return cast(int, client.pttl(key))
