"""Django's PostgreSQL backend with a cheaper check of pooled connections.

Django's pool checks every connection it hands out with a round trip to the server
(`ConnectionPool.check_connection`, an empty query: about 0.1 ms here, and a request takes connections to
two databases in the web process and again in the worker). This backend checks without one when it can:
a connection that psycopg and libpq both hold open, idle outside a transaction, with nothing waiting on its
socket, is handed out as it is. A server that ends a connection (a restart, `pg_terminate_backend`, an idle
timeout) says so on the socket (an error message, then the close), so such a connection gets the round
trip, fails it and is replaced. What the round trip would catch and this does not is a peer that vanished
without a word (a cut network); the first statement then fails instead, and Django discards the
connection after the error.
"""

from __future__ import annotations

import select
from typing import Any

import psycopg
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.postgresql import base
from psycopg import pq
from psycopg_pool import ConnectionPool


def connection_check(conn: psycopg.Connection[Any]) -> None:
    """Raises when a pooled connection cannot be used (the pool then replaces it)."""
    if conn.closed or conn.broken or conn.pgconn.status != pq.ConnStatus.OK:
        raise psycopg.OperationalError("the pooled connection is closed")
    quiet = not select.select([conn.fileno()], [], [], 0)[0]
    if not quiet or conn.info.transaction_status != pq.TransactionStatus.IDLE:
        ConnectionPool.check_connection(conn)


# What Django's PostgreSQL backend keeps and calls (not in django-stubs): its pools, one per alias for the
# process, and the name of its maintenance connection.
_POOLS: dict[str, ConnectionPool[Any]] = base.DatabaseWrapper._connection_pools  # type: ignore[attr-defined]
_NO_DB_ALIAS: str = base.NO_DB_ALIAS  # type: ignore[attr-defined]


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self) -> ConnectionPool[Any] | None:
        """Django's pool (`base.DatabaseWrapper.pool`), checked with `connection_check` when health checks
        are on."""
        pool_options = self.settings_dict["OPTIONS"].get("pool")
        if self.alias == _NO_DB_ALIAS or not pool_options:
            return None
        if self.alias not in _POOLS:
            if self.settings_dict.get("CONN_MAX_AGE", 0) != 0:
                raise ImproperlyConfigured("Pooling doesn't support persistent connections.")
            options = {} if pool_options is True else dict(pool_options)
            connect_kwargs = self.get_connection_params()
            connect_kwargs["autocommit"] = True  # as Django's: autocommit, which Django sets again later
            pool = ConnectionPool(
                kwargs=connect_kwargs,
                open=False,  # opened on first use, as Django's
                configure=self._configure_connection,  # type: ignore[attr-defined]  # Django's, not in the stubs
                check=connection_check if self.settings_dict["CONN_HEALTH_CHECKS"] else None,
                **options,
            )
            _POOLS.setdefault(self.alias, pool)  # the first of racing threads wins
        return _POOLS[self.alias]
