"""A Redis client for the quota tests and a fresh organisation id whose keys are deleted afterwards."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Iterator

import pytest
import redis
from django.conf import settings

# Each test works on its own organisation ids, so nothing is flushed and tests sharing a Redis cannot collide.
_org_ids = itertools.count(secrets.randbelow(10**9) * 1000)


def org_keys_delete(client: redis.Redis, org_id: int) -> None:
    keys = list(client.scan_iter(match=f"quota:{{{org_id}:*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def quota_redis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=10)
    client.ping()  # a missing Redis fails the test; it is never skipped
    yield client
    client.close()


@pytest.fixture
def new_org_id(quota_redis: redis.Redis) -> Iterator[Callable[[], int]]:
    used: list[int] = []

    def make() -> int:
        org_id = next(_org_ids)
        used.append(org_id)
        return org_id

    yield make
    for org_id in used:
        org_keys_delete(quota_redis, org_id)


@pytest.fixture
def org_id(new_org_id: Callable[[], int]) -> int:
    return new_org_id()
