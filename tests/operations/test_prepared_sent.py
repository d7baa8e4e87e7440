"""Statements sent without waiting (`Prepared.sent`, PostgreSQL): the server runs one while this thread
does something else, even a statement on another connection; the answer comes back as text, an error as
Django's error, and the connection is idle again whichever way the block is left.

The request path relies on this in three places: admission reads the hosts' load while it tokenises and
writes the regional content while it reserves the quota; a worker reads the content while it claims."""

from __future__ import annotations

import os
import resource
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import psycopg
import pytest
from django.db import IntegrityError, connection, connections
from django.test.utils import CaptureQueriesContext

from controlplane.core.prepared import Prepared

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

_ECHO = Prepared(
    "test_sent_echo",
    "SELECT %(word)s, %(count)s + 1, %(flag)s, %(at)s, %(doc)s, %(nothing)s::text",
    {"word": "text", "count": "bigint", "flag": "boolean", "at": "timestamptz", "doc": "jsonb", "nothing": "text"},
)
_NUMBERS = Prepared(
    "test_sent_numbers",
    "SELECT %(real)s = 0.1::float8, %(huge)s, %(money)s * 3",
    {"real": "float8", "huge": "float8", "money": "numeric"},
)
_LOCKED = Prepared("test_sent_locked", "SELECT pg_advisory_xact_lock(%(lock)s), 'after the lock'", {"lock": "bigint"})
_SLEEP = Prepared("test_sent_sleep", "SELECT pg_sleep(%(seconds)s), 'slept'", {"seconds": "float8"})
_UNIQUE = Prepared("test_sent_unique", "INSERT INTO test_sent_unique VALUES (%(id)s)", {"id": "integer"})


@pytest.fixture
def unique_table() -> object:
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS test_sent_unique (id integer PRIMARY KEY)")
    yield None
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS test_sent_unique")


def _idle(alias: str = "default") -> bool:
    """The connection answers an ordinary query (nothing left unread on it)."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
        return bool(cursor.fetchone()[0] == 1)


def test_the_answer_comes_back_as_text_for_every_parameter_type() -> None:
    at = datetime(2026, 11, 29, 18, 0, 1, 250000, tzinfo=UTC)
    with _ECHO.sent({"word": "it's", "count": 41, "flag": True, "at": at, "doc": {"a": [1, "b"]}, "nothing": None}) \
            as sent:  # fmt: skip
        rows = sent.rows()
    assert len(rows) == 1
    word, count, flag, stamp, doc, nothing = rows[0]
    assert (word, count, flag, nothing) == ("it's", "42", "t", None)
    assert datetime.fromisoformat(str(stamp)) == at
    assert doc == '{"a": [1, "b"]}'
    with _NUMBERS.sent({"real": 0.1, "huge": float("-inf"), "money": Decimal("0.000001")}) as sent:
        assert sent.rows() == [("t", "-Infinity", "0.000003")]
    assert _idle()


def test_the_thread_goes_on_while_the_server_runs_the_statement() -> None:
    """The sent statement waits for a lock that another connection holds; that connection, used by this same
    thread meanwhile, sees it waiting and lets it go: only then does its answer come."""
    lock = uuid.uuid4().int % 2**62
    db = connection.settings_dict
    with connection.cursor() as cursor:  # were the send to wait for its answer, it would fail, not hang
        cursor.execute("SET lock_timeout = '10s'")
    with psycopg.connect(dbname=db["NAME"], user=db["USER"], password=db["PASSWORD"], host=db["HOST"],
                         port=db["PORT"] or None) as holder:  # fmt: skip
        holder.execute("SELECT pg_advisory_xact_lock(%s)", [lock])  # held until the holder's commit
        with _LOCKED.sent({"lock": lock}) as sent:
            backend = connection.connection.info.backend_pid
            for _ in range(500):
                row = holder.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                     [backend]).fetchone()  # fmt: skip
                if row is not None and row[0] == "Lock":
                    break
                time.sleep(0.01)
            else:
                holder.rollback()
                pytest.fail("the sent statement never waited for the lock")
            holder.commit()  # still waiting, and this thread was not held up by it: now let it go
            assert sent.rows() == [("", "after the lock")]
    with connection.cursor() as cursor:
        cursor.execute("RESET lock_timeout")
    assert _idle()


def test_an_error_is_djangos_and_leaves_the_connection_usable(unique_table: object) -> None:
    with _UNIQUE.sent({"id": 1}) as sent:
        assert sent.rows() == []
    with pytest.raises(IntegrityError, match="duplicate key"), _UNIQUE.sent({"id": 1}) as sent:
        sent.rows()
    assert _idle()
    # an error nobody asked for is raised on leaving the block
    with pytest.raises(IntegrityError), _UNIQUE.sent({"id": 1}):
        pass
    assert _idle()


def test_leaving_the_block_on_an_exception_drains_the_answer(unique_table: object) -> None:
    with pytest.raises(ZeroDivisionError), _UNIQUE.sent({"id": 7}):
        _ = 1 / 0  # the caller's own failure wins over nothing
    assert _idle()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM test_sent_unique WHERE id = 7")
        assert cursor.fetchone()[0] == 1  # the statement ran all the same
    with pytest.raises(ZeroDivisionError), _UNIQUE.sent({"id": 7}):
        _ = 1 / 0  # and its own error (a duplicate) does not replace the caller's
    assert _idle()


def test_a_sent_statement_is_logged_like_any_other() -> None:
    with (
        CaptureQueriesContext(connection) as captured,
        _ECHO.sent(
            {"word": "x", "count": 1, "flag": False, "at": datetime.now(UTC), "doc": [], "nothing": None}
        ) as sent,
    ):
        sent.rows()
    logged = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("EXECUTE test_sent_echo")]
    assert len(logged) == 1
    assert logged[0].startswith("EXECUTE test_sent_echo ('x', '1', 'f', '")
    assert logged[0].endswith(", '[]', NULL)")


def test_a_naive_datetime_or_an_unknown_type_is_refused_before_anything_is_sent() -> None:
    with (
        pytest.raises(ValueError, match="naive"),
        _ECHO.sent(
            {"word": "x", "count": 1, "flag": False, "at": datetime(2026, 1, 1), "doc": {}, "nothing": None}  # noqa: DTZ001
        ),
    ):
        pass
    with (
        pytest.raises(TypeError, match="no text form"),
        _ECHO.sent({"word": b"bytes", "count": 1, "flag": False, "at": datetime.now(UTC), "doc": {}, "nothing": None}),
    ):
        pass
    assert _idle()


def test_a_socket_numbered_past_1024_is_waited_on() -> None:
    """A web process with many clients holds descriptors past `select`'s limit (1024): the wait for an answer
    must not depend on the socket's number."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.fail(f"this test needs 1200 open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200) if soft != resource.RLIM_INFINITY else soft, hard))
    connection.close()
    fillers: list[int] = []
    try:
        while not fillers or fillers[-1] <= 1100:  # every lower number taken: the next socket's is higher
            fillers.append(os.open(os.devnull, os.O_RDONLY))
        with _SLEEP.sent({"seconds": 0.05}) as sent:
            assert connection.connection.fileno() > 1024
            assert sent.rows() == [("", "slept")]
        assert _idle()
    finally:
        for fd in fillers:
            os.close(fd)
        connection.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
