"""Token streams: one Redis Stream per request in the region's own Redis (never pub/sub, which ignores
database numbers). The worker appends events; the web process relays them; keys expire.

Each entry has one field, `e`: a JSON object with `type` (`start`, `tok`, `done`, `error`) and the
attempt that wrote it. Cancellation travels the other way as a key the worker polls between steps.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings

STREAM_MAXLEN = 100_000


def stream_key(request_id: str) -> str:
    return f"tokens:{request_id}"


def cancel_key(request_id: str) -> str:
    return f"cancel:{request_id}"


@cache
def region_client(region: str) -> redis.Redis:
    return redis.Redis.from_url(settings.REGION_REDIS_URLS[region], socket_timeout=10, health_check_interval=30)


_async_clients: dict[tuple[int, str], aioredis.Redis] = {}


def region_client_async(region: str) -> aioredis.Redis:
    """One asyncio client per event loop and region (an asyncio client is bound to its loop)."""
    import asyncio

    key = (id(asyncio.get_running_loop()), region)
    client = _async_clients.get(key)
    if client is None:
        client = aioredis.Redis.from_url(settings.REGION_REDIS_URLS[region], health_check_interval=30)
        _async_clients[key] = client
    return client


def event_append(*, region: str, request_id: str, event: dict[str, Any]) -> str:
    client = region_client(region)
    key = stream_key(request_id)
    pipe = client.pipeline(transaction=False)
    pipe.xadd(key, {"e": json.dumps(event, separators=(",", ":"))}, maxlen=STREAM_MAXLEN, approximate=True)
    pipe.expire(key, settings.STREAM_TTL_S)
    entry_id, _ = pipe.execute()
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def events_read(*, region: str, request_id: str) -> list[dict[str, Any]]:
    """Every event of a request so far (for the reaper's count of delivered tokens)."""
    entries: list[tuple[bytes, dict[bytes, bytes]]] = region_client(region).xrange(stream_key(request_id))  # type: ignore[assignment]  # the sync client returns the list itself
    return [json.loads(fields[b"e"]) for _, fields in entries]


def cancel_set(*, region: str, request_id: str) -> None:
    region_client(region).set(cancel_key(request_id), "1", ex=settings.STREAM_TTL_S)


def cancelled(*, region: str, request_id: str) -> bool:
    return bool(region_client(region).exists(cancel_key(request_id)))
