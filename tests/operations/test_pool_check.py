"""Pooled PostgreSQL connections are checked without a round trip when their socket is quiet, and with one
when the server has said something: a terminated backend is never handed out (`controlplane.core.postgresql`).
"""

from __future__ import annotations

import select
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import connection, connections
from psycopg_pool import ConnectionPool

from controlplane.core.postgresql.base import _POOLS, DatabaseWrapper, connection_check

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Calls of the pool's round-trip check, which still runs them."""
    calls: list[int] = []
    original = ConnectionPool.check_connection

    def counted(conn: psycopg.Connection[Any]) -> None:
        calls.append(1)
        original(conn)

    monkeypatch.setattr(ConnectionPool, "check_connection", staticmethod(counted))
    return calls


@pytest.fixture
def pooled() -> Iterator[ConnectionPool[Any]]:
    """The pool of a database wrapper of this backend, set up as the web and worker processes have it."""
    settings_dict = {
        **connection.settings_dict,
        "CONN_MAX_AGE": 0,
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": {"pool": {"min_size": 0, "max_size": 2, "timeout": 10}},
    }
    wrapper = DatabaseWrapper(settings_dict, alias="pool_check_test")
    pool = wrapper.pool
    assert pool is not None
    pool.open()
    try:
        yield pool
    finally:
        pool.close()
        _POOLS.pop("pool_check_test", None)


def _backend_pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def _readable(conn: psycopg.Connection[Any], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not select.select([conn.fileno()], [], [], 0.05)[0]:
        if time.monotonic() > deadline:
            pytest.fail("the server never wrote to the terminated connection's socket")


def test_the_settings_use_this_backend() -> None:
    assert type(connections["default"]).__module__ == "controlplane.core.postgresql.base"


def test_a_quiet_idle_connection_is_handed_out_without_a_round_trip(
    pooled: ConnectionPool[Any], round_trips: list[int]
) -> None:
    with pooled.connection() as conn:
        first = _backend_pid(conn)
    with pooled.connection() as conn:
        assert _backend_pid(conn) == first
    assert round_trips == []


def test_a_terminated_backend_is_replaced(pooled: ConnectionPool[Any], round_trips: list[int]) -> None:
    with pooled.connection() as conn:
        victim = _backend_pid(conn)
        held = conn
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [victim])
    _readable(held)
    with pooled.connection() as conn:
        assert _backend_pid(conn) != victim
    assert round_trips  # the terminated one got the round trip, failed it and was dropped


def test_a_connection_with_a_message_waiting_gets_the_round_trip(round_trips: list[int]) -> None:
    dsn = connection.get_connection_params()
    listener = psycopg.connect(**{**dsn, "autocommit": True})
    try:
        listener.execute("LISTEN pool_check_test")
        with connection.cursor() as cursor:
            cursor.execute("NOTIFY pool_check_test")
        _readable(listener)
        connection_check(listener)
        assert round_trips == [1]
        connection_check(listener)  # nothing waits any more
        assert round_trips == [1]
    finally:
        listener.close()


def test_a_closed_connection_fails_the_check(round_trips: list[int]) -> None:
    conn = psycopg.connect(**{**connection.get_connection_params(), "autocommit": True})
    conn.close()
    with pytest.raises(psycopg.OperationalError):
        connection_check(conn)
