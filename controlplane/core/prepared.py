"""Statements prepared once per database connection (PostgreSQL), for the hot paths.

Django binds parameters client-side and never prepares, so PostgreSQL parses and plans every statement it
is sent; for the short statements of admission and settlement, planning costs as much as running them (the
host-load query: 0.7 ms of planning, 0.2 ms of execution). A `Prepared` statement is written with named
placeholders, `%(name)s`, and the PostgreSQL type of each name; it is prepared on a connection the first
time it runs there and executed by name after that.

PREPARE is not transactional: a rolled-back transaction keeps it, and a new connection (a new driver object,
as the pool opens one) prepares it again. PostgreSQL re-plans a prepared statement whose tables changed.

`Prepared.sent` sends a statement without waiting for its answer (libpq's asynchronous API), so that the
server runs it while this thread does something else: tokenising, or a statement on another connection
(the regional store's and the central store's round trips of one request overlap instead of adding up).
"""

from __future__ import annotations

import json
import re
import select
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connections, transaction
from psycopg import errors as pg_errors
from psycopg import pq

_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


class Prepared:
    """One statement, prepared per connection; `types` names every placeholder's PostgreSQL type."""

    def __init__(self, name: str, sql: str, types: dict[str, str]) -> None:
        order: list[str] = []

        def number(match: re.Match[str]) -> str:
            key = match.group(1)
            if key not in types:
                raise ValueError(f"the statement {name} has no type for the placeholder {key!r}")
            if key not in order:
                order.append(key)
            return f"${order.index(key) + 1}"

        body = _PLACEHOLDER.sub(number, sql)
        unused = set(types) - set(order)
        if unused:
            raise ValueError(f"the statement {name} declares types for unused placeholders: {sorted(unused)}")
        self.name = name
        self.names = tuple(order)
        self.types = dict(types)
        argument_types = ", ".join(types[key] for key in order)
        arguments = ", ".join(["%s"] * len(order))
        self.prepare = f"PREPARE {name} ({argument_types}) AS {body}" if order else f"PREPARE {name} AS {body}"
        self.execute_sql = f"EXECUTE {name} ({arguments})" if order else f"EXECUTE {name}"
        self._prepared_on: weakref.WeakSet[Any] = weakref.WeakSet()  # the driver connections that have it

    def execute(self, cursor: Any, params: dict[str, Any], *, using: str = "default") -> Any:
        """Runs the statement on `cursor` (a cursor of the `using` connection); returns the cursor."""
        driver = connections[using].connection
        if driver not in self._prepared_on:
            cursor.execute(self.prepare)
            self._prepared_on.add(driver)
        cursor.execute(self.execute_sql, [params[key] for key in self.names])
        return cursor

    @contextmanager
    def sent(self, params: dict[str, Any], *, using: str = "default") -> Iterator[Sent]:
        """Sends the statement on the `using` connection (PostgreSQL) and gives back at once a `Sent`, whose
        `rows()` waits for the answer. Nothing else may use that connection until then; leaving the block
        waits for an answer not asked for (an error in it is then raised unless one is already on its way)."""
        wrapper = connections[using]
        with wrapper.cursor() as cursor:  # connects, and prepares on a connection that lacks it
            driver = wrapper.connection
            if driver not in self._prepared_on:
                cursor.execute(self.prepare)
                self._prepared_on.add(driver)
        values = [_text(params[key], self.types[key]) for key in self.names]
        with wrapper.wrap_database_errors:
            driver.pgconn.send_query_prepared(self.name.encode(), values)
        pending = Sent(wrapper, driver, self._logged(values) if wrapper.queries_logged else "")
        try:
            yield pending
        except BaseException:
            pending.drain()
            raise
        pending.rows()

    def _logged(self, values: list[bytes | None]) -> str:
        """The statement as Django's debug cursor would log it (`connection.queries`)."""
        if not values:
            return self.execute_sql
        literals = ("NULL" if v is None else "'" + v.decode().replace("'", "''") + "'" for v in values)
        return f"EXECUTE {self.name} ({', '.join(literals)})"


class Sent:
    """A statement on its way (`Prepared.sent`): `rows()` waits for its answer, once, as text values."""

    def __init__(self, wrapper: Any, driver: Any, logged: str = "") -> None:
        self._wrapper, self._driver, self._logged = wrapper, driver, logged
        self._sent_at = time.monotonic()
        self._rows: list[tuple[str | None, ...]] | None = None
        self._error: pg_errors.Error | None = None

    def rows(self) -> list[tuple[str | None, ...]]:
        """The answer's rows, each value as PostgreSQL's text (None for NULL); a failed statement raises
        its error, as Django's cursor would."""
        if self._rows is None and self._error is None:
            self.drain()
        if self._error is not None:
            with self._wrapper.wrap_database_errors:
                raise self._error
        return self._rows or []

    def drain(self) -> None:
        """Reads the whole answer off the connection, leaving it idle; keeps the rows or the error."""
        if self._rows is not None or self._error is not None:
            return
        pgconn = self._driver.pgconn
        rows: list[tuple[str | None, ...]] = []
        error: pg_errors.Error | None = None
        readable: select.poll | None = None  # poll, not select: a busy process may hold descriptors past 1024
        try:
            while True:
                pgconn.consume_input()
                if pgconn.is_busy():
                    if readable is None:
                        readable = select.poll()
                        readable.register(pgconn.socket, select.POLLIN)
                    readable.poll()
                    continue
                result = pgconn.get_result()
                if result is None:
                    break
                if result.status == pq.ExecStatus.TUPLES_OK:
                    rows.extend(
                        tuple(None if (v := result.get_value(r, c)) is None else bytes(v).decode()
                              for c in range(result.nfields))
                        for r in range(result.ntuples)
                    )  # fmt: skip
                elif result.status != pq.ExecStatus.COMMAND_OK and error is None:
                    error = pg_errors.error_from_result(result, encoding=self._driver.info.encoding)
        except pg_errors.OperationalError as exc:  # the connection failed: Django must not hand it out again
            error = exc
        except (OSError, ValueError) as exc:  # its socket is gone
            error = pg_errors.OperationalError(f"the connection's socket failed: {exc}")
        self._rows, self._error = rows, error
        if error is not None:
            self._wrapper.errors_occurred = True
        if self._logged:  # as Django's debug cursor logs what it runs, from the send to the answer
            took = time.monotonic() - self._sent_at
            self._wrapper.queries_log.append({"sql": self._logged, "time": f"{took:.3f}"})


def _text(value: Any, kind: str) -> bytes | None:
    """A parameter in PostgreSQL's text format, for the type `kind` the statement declares."""
    if value is None:
        return None
    if kind == "boolean":
        return b"t" if value else b"f"
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"a naive datetime for a {kind} parameter: {value!r}")
        return value.isoformat().encode()
    if kind in ("json", "jsonb") and not isinstance(value, str):
        return json.dumps(value).encode()
    if isinstance(value, float):  # repr: the shortest text that reads back as the same float
        return {"nan": b"NaN", "inf": b"Infinity", "-inf": b"-Infinity"}.get(repr(value), repr(value).encode())
    if isinstance(value, bool | int | str | Decimal):
        return str(value).encode()
    raise TypeError(f"no text form for a {type(value).__name__} as {kind}")


# A condition for a statement that is its own transaction: with the boolean parameter `async_commit` true, it
# sets `synchronous_commit` off for that transaction only (`set_config(..., true)`), so that its commit does
# not wait for the WAL to reach the disk; the connection's own setting is untouched. PostgreSQL writes WAL in
# order: the next commit that does wait (on the same server) makes this one durable too. Always true; a
# CASE, because SQL does not promise the order in which it evaluates AND and OR.
ASYNC_COMMIT = "CASE WHEN %(async_commit)s THEN set_config('synchronous_commit', 'off', true) = 'off' ELSE true END"


def async_commit(connection: Any) -> bool:
    """Whether a request-path write on `connection` may commit without waiting for the disk
    (`INFERENCE_ASYNC_COMMIT`): PostgreSQL only, and never inside a caller's transaction, whose other writes
    would lose their wait too."""
    chosen = bool(settings.INFERENCE_ASYNC_COMMIT)
    return chosen and connection.vendor == "postgresql" and not connection.in_atomic_block


@contextmanager
def transaction_without_waiting(using: str = "default") -> Iterator[None]:
    """`ASYNC_COMMIT` for ORM writes: a transaction on `using` whose commit does not wait for the disk when
    `async_commit` allows it (`SET LOCAL`, so for this transaction only)."""
    connection = connections[using]
    asynchronous = async_commit(connection)
    with transaction.atomic(using=using):
        if asynchronous:
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        yield
