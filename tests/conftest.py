"""Test database set-up: the central test database migrates normally; the eight regional test
databases are cloned from one migrated template (PostgreSQL `CREATE DATABASE ... TEMPLATE`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.db import connections
from psycopg import sql

from controlplane.core.regions import REGION_CODES, region_db_alias


def _admin_connection(settings_dict: dict[str, Any]) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=settings_dict.get("HOST") or "127.0.0.1",
        port=int(settings_dict.get("PORT") or 5432),
        user=settings_dict.get("USER") or "postgres",
        password=settings_dict.get("PASSWORD") or None,
        dbname="postgres",
        autocommit=True,
    )


@pytest.fixture(scope="session")
def django_db_setup(django_test_environment: None, django_db_blocker: Any) -> Iterator[None]:
    from django.test.utils import setup_databases, teardown_databases

    regional = [region_db_alias(code) for code in REGION_CODES]
    template_alias, clones = regional[0], regional[1:]
    with django_db_blocker.unblock():
        first = connections[template_alias]
        if first.vendor != "postgresql":
            config = setup_databases(verbosity=0, interactive=False, aliases=set(settings.DATABASES))  # type: ignore[arg-type]  # Django iterates a set of aliases; the stub says Mapping
        else:
            # Migrate the central store and one regional store; clone the rest from that one.
            aliases = {"default", template_alias}
            config = setup_databases(verbosity=0, interactive=False, aliases=aliases)  # type: ignore[arg-type]  # Django iterates a set of aliases; the stub says Mapping
            template_name = first.settings_dict["NAME"]
            first.close()
            with _admin_connection(first.settings_dict) as admin:
                for alias in clones:
                    conn = connections[alias]
                    test_name = conn.creation._get_test_db_name()  # type: ignore[attr-defined]  # the name Django would give it
                    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(test_name)))
                    admin.execute(
                        sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                            sql.Identifier(test_name), sql.Identifier(template_name)
                        )
                    )
                    conn.close()
                    original_name = conn.settings_dict["NAME"]
                    settings.DATABASES[alias]["NAME"] = test_name
                    conn.settings_dict["NAME"] = test_name
                    config.append((conn, original_name, True))
    yield
    with django_db_blocker.unblock():
        for alias in clones:
            connections[alias].close()
        teardown_databases(config, verbosity=0)


# --- No silent skips: a skip or xfail must be on the reviewed allow-list ----------------------

_ALLOW_LIST = Path(__file__).with_name("allowed_skips.txt")
_unlisted: list[str] = []


def _allowed() -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in _ALLOW_LIST.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            node, _, reason = line.partition("|")
            entries[node.strip()] = reason.strip()
    return entries


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if (report.skipped or hasattr(report, "wasxfail")) and report.nodeid not in _allowed():
        _unlisted.append(report.nodeid)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    allowed = _allowed()
    terminalreporter.write_line(f"allowed skips ({len(allowed)}):")
    for node, reason in allowed.items():
        terminalreporter.write_line(f"  {node}: {reason}")
    if _unlisted:
        terminalreporter.write_line("skips or xfails NOT on tests/allowed_skips.txt (these fail the run):")
        for node in _unlisted:
            terminalreporter.write_line(f"  {node}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _unlisted and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _hotcache_empty() -> Iterator[None]:
    """Each test starts with an empty request-path cache, here and in any stack's processes: test
    databases are rolled back or flushed between tests without the writes that replace the tokens."""
    from controlplane.core import hotcache

    hotcache.clear()
    # and in the processes of a running stack: the global token covers every entry
    hotcache.invalidate_everywhere()
    yield
    hotcache.clear()


@pytest.fixture(autouse=True)
def _quota_counters_empty() -> None:
    """Each test starts with no quota counters: organisation ids restart with every test database, so
    an earlier test's requests (within the minute, or this month) would count against a new
    organisation that happens to get the same id."""
    from controlplane.inference import admission

    client = admission.quota_client()
    stale = list(client.scan_iter(match="quota:*", count=1000))
    if stale:
        client.delete(*stale)
