"""Read-mostly rows that the request path needs on every call (API keys, residency policies, quotas,
the catalog, the fleet, prices), cached in each process and checked against generation tokens in the
central Redis.

Every write to such a row replaces the token of its scope (one organisation, or everything global)
twice: at once, and again when its transaction commits. The next read in any process sees a token
that differs from the one its entry was stored under and reloads from the database, so a narrowed
residency policy, a revoked key or a suspended organisation is seen by the very next request. The
second replacement closes the gap where another process reloaded between the first one and the
commit. Entries also age out after `max_age_s` (a backstop for a replacement that Redis missed).

A read costs one Redis round trip (`generation_tokens`, both scopes in one MGET) for all the entries
of a request. Without Redis the request path fails anyway (quota is fail-closed), and `cached` then
reads the database every time.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar, cast

import redis
from django.conf import settings
from django.db import transaction

logger = logging.getLogger("controlplane.hotcache")
_T = TypeVar("_T")

GLOBAL_KEY = "hotcache:gen:global"
MAX_ENTRIES = 20_000
DEFAULT_MAX_AGE_S = 5.0

_store: dict[tuple[Any, ...], tuple[str, float, Any]] = {}
_lock = threading.Lock()
_key_orgs: dict[str, int] = {}  # API key id -> its organisation: never changes, so never invalidated


def org_key(org_id: int) -> str:
    return f"hotcache:gen:org:{org_id}"


@dataclass(frozen=True, slots=True)
class Tokens:
    """The generation tokens in force for one request; None: unknown, read the database."""

    global_: str | None
    org: str | None = None


@lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def client() -> redis.Redis:
    return _client(settings.REDIS_URL)


def _ensure(conn: redis.Redis, key: str) -> str | None:
    """A scope that has no token yet (a new Redis, a flushed database) gets a fresh one."""
    conn.set(key, secrets.token_hex(8), nx=True)
    value = conn.get(key)
    return value.decode() if isinstance(value, bytes) else None


def generation_tokens(*, org_id: int | None = None) -> Tokens:
    """The tokens of the global scope and of one organisation, in one round trip."""
    keys = [GLOBAL_KEY] if org_id is None else [GLOBAL_KEY, org_key(org_id)]
    try:
        conn = client()
        values = cast(list[bytes | None], conn.mget(keys))
        tokens = [
            v.decode() if isinstance(v, bytes) else _ensure(conn, key) for key, v in zip(keys, values, strict=True)
        ]
    except redis.RedisError:
        logger.warning("generation tokens unavailable; reading the database")
        return Tokens(None, None)
    if org_id is None or tokens[0] is None or tokens[1] is None:
        return Tokens(tokens[0], None)
    # an organisation's entries also go when the global token is replaced (a bulk load, a test's reset)
    return Tokens(tokens[0], f"{tokens[0]}:{tokens[1]}")


_current: ContextVar[Tokens | None] = ContextVar("hotcache_tokens", default=None)


class tokens_in_force:  # noqa: N801 - used as a context manager, like contextlib's
    """The tokens that reads deeper in this request use (`current`), read once at its start.

    A plain class rather than `contextlib.contextmanager`: that one rewrites the traceback of an
    exception passing through it, which frozen exception classes refuse.
    """

    def __init__(self, tokens: Tokens) -> None:
        self._tokens = tokens
        self._reset: Any = None

    def __enter__(self) -> Tokens:
        self._reset = _current.set(self._tokens)
        return self._tokens

    def __exit__(self, *exc: object) -> None:
        _current.reset(self._reset)


def current() -> Tokens:
    return _current.get() or Tokens(None, None)


def key_organization(key_id: str, load: Callable[[], int | None]) -> int | None:
    """The organisation an API key id belongs to (immutable; unknown ids are not remembered)."""
    org_id = _key_orgs.get(key_id)
    if org_id is None:
        org_id = load()
        if org_id is not None:
            with _lock:
                if len(_key_orgs) >= MAX_ENTRIES:
                    _key_orgs.clear()
                _key_orgs[key_id] = org_id
    return org_id


def cached(
    key: tuple[Any, ...], token: str | None, load: Callable[[], _T], *, max_age_s: float = DEFAULT_MAX_AGE_S
) -> _T:
    """The value stored under `key` if it was stored under `token` less than `max_age_s` ago, else
    `load()` (stored for the next call). The value is shared between threads: treat it as read-only."""
    if token is None:
        return load()
    now = time.monotonic()
    hit = _store.get(key)
    if hit is not None and hit[0] == token and now - hit[1] < max_age_s:
        value: _T = hit[2]
        return value
    value = load()
    with _lock:
        if len(_store) >= MAX_ENTRIES:
            _store.clear()
        _store[key] = (token, now, value)
    return value


def _replace(key: str) -> None:
    try:
        client().set(key, secrets.token_hex(8))
    except redis.RedisError:
        logger.warning("could not replace the generation token %s; entries age out instead", key)


def bump(*, org_id: int | None) -> None:
    """A row of this scope (None: global) changed: replace its token now and when the transaction commits."""
    key = GLOBAL_KEY if org_id is None else org_key(org_id)
    _replace(key)
    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(lambda: _replace(key))


def invalidate_everywhere() -> None:
    """Every process drops every entry at its next read (the global token covers them all)."""
    _replace(GLOBAL_KEY)


def clear() -> None:
    """Forget every entry of this process (tests start from an empty cache)."""
    with _lock:
        _store.clear()
        _key_orgs.clear()
