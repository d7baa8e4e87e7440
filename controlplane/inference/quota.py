"""Per-organisation, per-region quotas (DESIGN section 4 step 5, invariant I3): one atomic Redis Lua step
checks and reserves requests/min, tokens/min, concurrent requests and monthly tokens, together or not at all."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, Literal

import redis

from controlplane.core.errors import Conflict, ServiceUnavailable

QuotaLimitName = Literal["requests_per_minute", "tokens_per_minute", "concurrent_requests", "monthly_tokens"]

# Lua numbers are doubles written back to Redis as "%.14g": integers below 10**14 survive exactly. A configured
# limit above that is treated as this ceiling, which no real workload reaches (it is effectively unlimited).
_NUMBER_CEILING: Final = 10**14 - 1
_MAX_REQUEST_ID_LENGTH: Final = 200
_LIMIT_NAMES: Final[tuple[QuotaLimitName, ...]] = (
    "requests_per_minute",
    "tokens_per_minute",
    "concurrent_requests",
    "monthly_tokens",
)


@dataclass(frozen=True, slots=True)
class QuotaLimits:
    requests_per_minute: int
    tokens_per_minute: int
    concurrent_requests: int
    monthly_tokens: int


@dataclass(frozen=True, slots=True)
class QuotaDecision:
    """`limit` names the refusing limit (None when admitted). `retry_after_s` is the wait until that limit could
    admit this request if nothing else changed (0 when admitted). `retryable` is False when waiting cannot help:
    the request alone exceeds a limit (or the limit is 0); then `retry_after_s` is 0."""

    admitted: bool
    limit: QuotaLimitName | None
    retry_after_s: int
    headers: dict[str, str]
    retryable: bool = True


# KEYS: 1 window (zset: request id -> admitted ms), 2 window tokens (hash: "r:<id>" -> tokens, "sum"),
#       3 leases (zset: request id -> lease expiry ms), 4 monthly (hash: "YYYY-MM" -> tokens),
#       5 request record (hash: state reserved|settled|released, tokens, month).
# ARGV: 1 operation, 2 request id, 3 now ms or "" for the server's clock, then the operation's arguments.
# Redis >= 5 replicates a script's effects, so reading TIME before writing is allowed without
# redis.replicate_commands().
_SCRIPT: Final = """
local window, window_tokens, leases, monthly, record = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local op, request_id = ARGV[1], ARGV[2]
local now
if ARGV[3] == '' then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
else
  now = tonumber(ARGV[3])
end
local WINDOW_MS = 60000
local WINDOW_GRACE_MS = 1000
local RECORD_GRACE_MS = 86400000
local MONTH_GRACE_MS = 7 * 86400000
local DAY_MS = 86400000
local field = 'r:' .. request_id

-- Days since 1970-01-01 <-> proleptic Gregorian dates (H. Hinnant's civil calendar algorithms).
local function civil_from_days(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400 + (month <= 2 and 1 or 0)
  return year, month
end

local function days_from_civil(year, month)
  if month <= 2 then year = year - 1 end
  local era = math.floor(year / 400)
  local yoe = year - era * 400
  local mp = month > 2 and month - 3 or month + 9
  local doy = math.floor((153 * mp + 2) / 5)
  return era * 146097 + yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy - 719468
end

-- This calendar month (UTC) as "YYYY-MM", the previous one, and the first millisecond of the next one.
local function month_of(ms)
  local year, month = civil_from_days(math.floor(ms / DAY_MS))
  local prev_year, prev_month = year, month - 1
  if prev_month == 0 then prev_year, prev_month = year - 1, 12 end
  local next_year, next_month = year, month + 1
  if next_month == 13 then next_year, next_month = year + 1, 1 end
  return string.format('%04d-%02d', year, month), string.format('%04d-%02d', prev_year, prev_month),
    days_from_civil(next_year, next_month) * DAY_MS
end

local function extend_ttl(key, ttl_ms)
  if redis.call('PTTL', key) < ttl_ms then redis.call('PEXPIRE', key, ttl_ms) end
end

-- Entries admitted at or before now - 60 s have left every window that contains now.
local function window_trim()
  local cutoff = now - WINDOW_MS
  local expired = redis.call('ZRANGEBYSCORE', window, '-inf', cutoff)
  if #expired == 0 then return end
  local freed = 0
  for _, member in ipairs(expired) do
    freed = freed + (tonumber(redis.call('HGET', window_tokens, 'r:' .. member)) or 0)
    redis.call('HDEL', window_tokens, 'r:' .. member)
  end
  redis.call('ZREMRANGEBYSCORE', window, '-inf', cutoff)
  if freed > 0 then redis.call('HINCRBY', window_tokens, 'sum', 0 - freed) end
end

-- The window's request count, token sum and ms until it is empty again (for the reset headers).
local function window_state()
  local count = redis.call('ZCARD', window)
  local used = tonumber(redis.call('HGET', window_tokens, 'sum')) or 0
  local reset = 0
  if count > 0 then
    local newest = redis.call('ZRANGE', window, -1, -1, 'WITHSCORES')
    reset = math.max(tonumber(newest[2]) + WINDOW_MS - now, 0)
  end
  return count, used, reset
end

-- Returns {admitted (1, 0, or -1 for a reused request id), limit index (0 = none), retry ms (-1 = never),
--          window count, window tokens, window reset ms}.
local function reserve()
  local tokens, rpm, tpm, concurrent, monthly_limit, lease_ms =
    tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
  window_trim()
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
  local state = redis.call('HGET', record, 'state')
  if state then
    local count, used, reset = window_state()
    if state == 'reserved' then return {1, 0, 0, count, used, reset} end
    return {-1, 0, 0, count, used, reset}
  end

  local count, used, reset = window_state()
  local active = redis.call('ZCARD', leases)
  local month, prev_month, next_month_ms = month_of(now)
  local month_used = tonumber(redis.call('HGET', monthly, month)) or 0

  -- Each limit that refuses gives the ms until it would admit this request (-1: never under this limit).
  local waits = {}
  if count + 1 > rpm then
    if rpm < 1 then waits[1] = -1 else
      local kth = redis.call('ZRANGE', window, count - rpm, count - rpm, 'WITHSCORES')
      waits[1] = tonumber(kth[2]) + WINDOW_MS - now
    end
  end
  if used + tokens > tpm then
    if tokens > tpm then waits[2] = -1 else
      local entries = redis.call('ZRANGE', window, 0, -1, 'WITHSCORES')
      local freed = 0
      waits[2] = WINDOW_MS
      for i = 1, #entries, 2 do
        freed = freed + (tonumber(redis.call('HGET', window_tokens, 'r:' .. entries[i])) or 0)
        if used - freed + tokens <= tpm then
          waits[2] = tonumber(entries[i + 1]) + WINDOW_MS - now
          break
        end
      end
    end
  end
  if active + 1 > concurrent then
    if concurrent < 1 then waits[3] = -1 else
      local kth = redis.call('ZRANGE', leases, active - concurrent, active - concurrent, 'WITHSCORES')
      waits[3] = tonumber(kth[2]) - now
    end
  end
  if month_used + tokens > monthly_limit then
    if tokens > monthly_limit then waits[4] = -1 else waits[4] = next_month_ms - now end
  end

  local refusing, wait = 0, 0
  for index = 1, 4 do
    local this = waits[index]
    if this ~= nil and wait ~= -1 and (this == -1 or refusing == 0 or this > wait) then
      refusing, wait = index, this
    end
  end
  if refusing ~= 0 then return {0, refusing, wait, count, used, reset} end

  redis.call('ZADD', window, now, request_id)
  redis.call('HSET', window_tokens, field, tokens)
  redis.call('HINCRBY', window_tokens, 'sum', tokens)
  redis.call('PEXPIRE', window, WINDOW_MS + WINDOW_GRACE_MS)
  redis.call('PEXPIRE', window_tokens, WINDOW_MS + WINDOW_GRACE_MS)
  redis.call('ZADD', leases, now + lease_ms, request_id)
  extend_ttl(leases, lease_ms + WINDOW_GRACE_MS)
  redis.call('HINCRBY', monthly, month, tokens)
  for _, other in ipairs(redis.call('HKEYS', monthly)) do
    if other ~= month and other ~= prev_month then redis.call('HDEL', monthly, other) end
  end
  extend_ttl(monthly, next_month_ms - now + MONTH_GRACE_MS)
  redis.call('HSET', record, 'state', 'reserved', 'tokens', tokens, 'month', month)
  redis.call('PEXPIRE', record, lease_ms + RECORD_GRACE_MS)
  count, used, reset = window_state()
  return {1, 0, 0, count, used, reset}
end

-- Frees `refund` tokens of this request's reservation from the window (while it is still there) and from
-- the month it was reserved in (while that counter is kept), and its concurrency lease.
local function give_back(refund, month)
  local charged = tonumber(redis.call('HGET', window_tokens, field))
  if charged ~= nil then
    local freed = math.min(refund, charged)
    redis.call('HSET', window_tokens, field, charged - freed)
    if freed > 0 then redis.call('HINCRBY', window_tokens, 'sum', 0 - freed) end
  end
  if refund > 0 and redis.call('HEXISTS', monthly, month) == 1 then
    redis.call('HINCRBY', monthly, month, 0 - refund)
  end
  redis.call('ZREM', leases, request_id)
end

if op == 'reserve' then return reserve() end
if op == 'state' then
  window_trim()
  local count, used, reset = window_state()
  local active = redis.call('ZCOUNT', leases, '(' .. now, '+inf')
  local month = month_of(now)
  return {count, used, reset, active, tonumber(redis.call('HGET', monthly, month)) or 0}
end

if redis.call('HGET', record, 'state') ~= 'reserved' then return 0 end
local reserved = tonumber(redis.call('HGET', record, 'tokens'))
local month = redis.call('HGET', record, 'month')

if op == 'settle' then
  local refund = math.max(reserved - tonumber(ARGV[4]), 0)
  give_back(refund, month)
  redis.call('HSET', record, 'state', 'settled')
  return refund
elseif op == 'release' then
  give_back(reserved, month)
  redis.call('ZREM', window, request_id)
  redis.call('HDEL', window_tokens, field)
  redis.call('HSET', record, 'state', 'released')
  return 1
elseif op == 'renew' then
  local lease_ms = tonumber(ARGV[4])
  local expires = tonumber(redis.call('ZSCORE', leases, request_id))
  if expires == nil or expires <= now then
    redis.call('ZREM', leases, request_id)
    return 0
  end
  redis.call('ZADD', leases, math.max(expires, now + lease_ms), request_id)
  extend_ttl(leases, lease_ms + WINDOW_GRACE_MS)
  extend_ttl(record, lease_ms + RECORD_GRACE_MS)
  return 1
end
return redis.error_reply('unknown quota operation ' .. op)
"""


def quota_reserve(
    *,
    client: redis.Redis,
    org_id: int,
    region: str,
    request_id: str,
    tokens: int,
    limits: QuotaLimits,
    lease_ttl_s: int,
    now_ms: int | None = None,
) -> QuotaDecision:
    """Admit the request and reserve one request, `tokens` (per minute and this month) and a concurrency lease of
    `lease_ttl_s`, or reserve nothing. Calling it again for a request id that holds a reservation admits it again
    without reserving twice; a request id that was settled or released cannot be reserved again (Conflict)."""
    if not 0 <= tokens <= _NUMBER_CEILING:
        raise ValueError(f"tokens must be between 0 and {_NUMBER_CEILING}, not {tokens}")
    if lease_ttl_s < 1:
        raise ValueError("lease_ttl_s must be at least 1")
    rpm, tpm, concurrent, monthly = (
        _ceiling(limits.requests_per_minute),
        _ceiling(limits.tokens_per_minute),
        _ceiling(limits.concurrent_requests),
        _ceiling(limits.monthly_tokens),
    )
    admitted, limit_index, wait_ms, count, used, reset_ms = (int(value) for value in _run(
        client, "reserve", org_id=org_id, region=region, request_id=request_id, now_ms=now_ms,
        args=(tokens, rpm, tpm, concurrent, monthly, lease_ttl_s * 1000),
    ))
    if admitted == -1:
        raise Conflict(f"request id {request_id!r} was already settled or released", code="request_id_reused")
    headers = _headers(rpm=rpm, tpm=tpm, count=count, used=used, reset_ms=reset_ms)
    if admitted == 1:
        return QuotaDecision(admitted=True, limit=None, retry_after_s=0, headers=headers)
    return QuotaDecision(
        admitted=False,
        limit=_LIMIT_NAMES[limit_index - 1],
        retry_after_s=0 if wait_ms < 0 else max(1, math.ceil(wait_ms / 1000)),
        headers=headers,
        retryable=wait_ms >= 0,
    )


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    """Where an organisation stands in one region now: the last minute's requests and reserved tokens,
    the running requests (live leases), this month's tokens, and ms until the minute's window is empty."""

    requests_last_minute: int
    tokens_last_minute: int
    concurrent_requests: int
    monthly_tokens: int
    window_reset_ms: int


def quota_usage(*, client: redis.Redis, org_id: int, region: str, now_ms: int | None = None) -> QuotaUsage:
    """Reads the counters, reserving nothing; only expired window entries are dropped, as any
    reservation would drop them."""
    count, used, reset_ms, active, month_used = (
        int(v) for v in _run(client, "state", org_id=org_id, region=region, request_id="-", now_ms=now_ms, args=())
    )
    return QuotaUsage(count, used, active, month_used, reset_ms)


def quota_state(*, client: redis.Redis, org_id: int, region: str, limits: QuotaLimits,
                now_ms: int | None = None) -> dict[str, str]:
    """The `x-ratelimit-*` headers as they stand, reserving nothing (for answers refused before the
    quota step)."""
    rpm, tpm = _ceiling(limits.requests_per_minute), _ceiling(limits.tokens_per_minute)
    usage = quota_usage(client=client, org_id=org_id, region=region, now_ms=now_ms)
    return _headers(rpm=rpm, tpm=tpm, count=usage.requests_last_minute, used=usage.tokens_last_minute,
                    reset_ms=usage.window_reset_ms)  # fmt: skip


def _headers(*, rpm: int, tpm: int, count: int, used: int, reset_ms: int) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*` headers for one window's state."""
    reset = _duration(reset_ms)
    return {
        "x-ratelimit-limit-requests": str(rpm),
        "x-ratelimit-remaining-requests": str(max(rpm - count, 0)),
        "x-ratelimit-reset-requests": reset,
        "x-ratelimit-limit-tokens": str(tpm),
        "x-ratelimit-remaining-tokens": str(max(tpm - used, 0)),
        "x-ratelimit-reset-tokens": reset,
    }


def quota_settle(*, client: redis.Redis, org_id: int, region: str, request_id: str, actual_tokens: int,
                 now_ms: int | None = None) -> int:
    """The request finished having used `actual_tokens`: give the unused part of its token reservation back (to the
    per-minute window while the request is still in it, and to the month it was reserved in) and free its lease.
    It stays counted as a request. Returns the tokens given back; 0 when already settled or released."""
    if actual_tokens < 0:
        raise ValueError("actual_tokens must not be negative")
    return int(_run(client, "settle", org_id=org_id, region=region, request_id=request_id, now_ms=now_ms,
                    args=(min(actual_tokens, _NUMBER_CEILING),)))


def quota_release(*, client: redis.Redis, org_id: int, region: str, request_id: str,
                  now_ms: int | None = None) -> bool:
    """The request will not run (refused later in admission, or failed unbilled): free everything it reserved,
    its place in the request window included. Returns False when there was nothing to free (never reserved,
    refused, already settled or released)."""
    return bool(_run(client, "release", org_id=org_id, region=region, request_id=request_id, now_ms=now_ms, args=()))


def quota_lease_renew(*, client: redis.Redis, org_id: int, region: str, request_id: str, lease_ttl_s: int,
                      now_ms: int | None = None) -> bool:
    """Extend a running request's concurrency lease to `lease_ttl_s` from now. Returns False when the lease has
    already expired or the request was settled or released: the slot may have been given to someone else."""
    if lease_ttl_s < 1:
        raise ValueError("lease_ttl_s must be at least 1")
    return bool(_run(client, "renew", org_id=org_id, region=region, request_id=request_id, now_ms=now_ms,
                     args=(lease_ttl_s * 1000,)))


def quota_keys(*, org_id: int, region: str, request_id: str) -> list[str]:
    """The script's keys. One hash tag per organisation and region keeps them in one Redis Cluster slot."""
    tag = f"quota:{{{org_id}:{region}}}"
    return [f"{tag}:window", f"{tag}:window_tokens", f"{tag}:leases", f"{tag}:monthly", f"{tag}:request:{request_id}"]


def _run(client: redis.Redis, operation: str, *, org_id: int, region: str, request_id: str, now_ms: int | None,
         args: tuple[int, ...]) -> Any:
    if not 0 < len(request_id) <= _MAX_REQUEST_ID_LENGTH:
        raise ValueError(f"request_id must have 1 to {_MAX_REQUEST_ID_LENGTH} characters")
    if not region or "{" in region or "}" in region:
        raise ValueError(f"invalid region {region!r}")
    script = client.register_script(_SCRIPT)
    keys = quota_keys(org_id=org_id, region=region, request_id=request_id)
    try:
        return script(keys=keys, args=[operation, request_id, "" if now_ms is None else now_ms, *args])
    except redis.RedisError as exc:
        raise ServiceUnavailable("The quota store is unavailable; try again shortly.",
                                 code="quota_unavailable") from exc


def _ceiling(limit: int) -> int:
    if limit < 0:
        raise ValueError(f"quota limits must not be negative, not {limit}")
    return min(limit, _NUMBER_CEILING)


def _duration(ms: int) -> str:
    """A duration as OpenAI's reset headers print it (Go's time.Duration format): 0s, 20ms, 6s, 8.64s, 1m0s."""
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, fraction = divmod(rest, 1000)
    seconds = f"{whole}.{fraction:03d}".rstrip("0") if fraction else str(whole)
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"
