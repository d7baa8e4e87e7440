"""Residency end to end (I2): a tenant allowed only in the UAE sends 200+ requests carrying canary
strings while Redis MONITOR records every command on every database and every process logs to a
file. Afterwards no canary is in the capture outside the UAE region's Redis database, in any log, in
any central table or in any other region's store; the UAE store holds them unless retention is 0.
With the UAE worker stopped the API answers 503 region_unavailable and nothing runs elsewhere."""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis
from django.conf import settings
from django.db import connections
from django.test import override_settings
from django.utils import timezone

from controlplane.core.regions import REGION_CODES, region_db_alias
from controlplane.fleet.selectors import hosts_live as hosts_live_now
from controlplane.inference.models import InferenceRequest
from tests.stack import MODEL_NAME, Stack, Tenant, hosts_live, seed_platform, seed_tenant, stack_fixture, wait_for

REGIONS = ("dxb", "fra")
REQUESTS = 200
pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: Any, django_db_setup: None) -> Iterator[Stack]:
    yield from stack_fixture(tmp_path_factory, REGIONS)


class Monitor(threading.Thread):
    """Redis MONITOR: every command on every logical database of the server, with its db number."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        with self.client.monitor() as monitor:  # type: ignore[no-untyped-call]  # redis-py leaves monitor() unannotated
            self.ready.set()
            for command in monitor.listen():
                self.lines.append(f"db={command.get('db')} {command.get('command')}")
                if self.stopping.is_set():
                    return


def _db_index(url: str) -> int:
    return int(url.rsplit("/", 1)[1].split("?")[0] or 0)


def _table_texts(alias: str) -> str:
    out: list[str] = []
    with connections[alias].cursor() as cursor:
        for table in connections[alias].introspection.table_names(cursor):
            cursor.execute(f'SELECT * FROM "{table}"')  # noqa: S608  # table names come from introspection
            out.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(out)


def _send(stack: Stack, key: str, i: int, canary: str) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    if i % 3 == 0:
        r = httpx.post(f"{stack.base_url}/v1/embeddings", headers=headers,
                       json={"model": MODEL_NAME, "input": f"{canary} embedding {i}"}, timeout=120)  # fmt: skip
    else:
        r = httpx.post(
            f"{stack.base_url}/v1/chat/completions", headers=headers,
            json={"model": MODEL_NAME, "max_tokens": 2, "temperature": 0, "stream": i % 3 == 2,
                  "messages": [{"role": "user", "content": f"Repeat {canary} please ({i})"}]},
            timeout=120,
        )  # fmt: skip
    return r.status_code


def test_canaries_stay_in_the_uae(stack: Stack, transactional_db: None) -> None:
    seed_platform(REGIONS)
    kept: Tenant = seed_tenant("uae-kept", countries=["AE"], retention_days=7, credit=Decimal(1000))
    nothing: Tenant = seed_tenant("uae-zero", countries=["AE"], retention_days=0,
                                  credit=Decimal(1000))  # fmt: skip
    hosts_live(REGIONS)
    canary_kept, canary_zero = f"CANARY{uuid.uuid4().hex}", f"CANARY{uuid.uuid4().hex}"
    monitor = Monitor(settings.REDIS_URL)
    monitor.start()
    assert monitor.ready.wait(10)
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: _send(stack, kept.key, i, canary_kept), range(REQUESTS)))
        statuses += list(pool.map(lambda i: _send(stack, nothing.key, i, canary_zero), range(30)))
    monitor.stopping.set()
    redis.Redis.from_url(settings.REDIS_URL).ping()  # wakes the monitor so that it sees the stop flag
    monitor.join(10)
    assert statuses.count(200) == len(statuses), {s: statuses.count(s) for s in set(statuses)}

    dxb_db = _db_index(settings.REGION_REDIS_URLS["dxb"])
    leaked = [line for line in monitor.lines if "CANARY" in line and not line.startswith(f"db={dxb_db} ")]
    assert not leaked, leaked[:3]
    # positive controls: the capture saw the broker messages and the UAE token streams
    assert any("inference_run" in line for line in monitor.lines), "the capture missed the broker"
    assert any(line.startswith(f"db={dxb_db} ") and "XADD" in line for line in monitor.lines)
    assert "CANARY" not in stack.logs()
    assert "CANARY" not in _table_texts("default")
    for code in REGION_CODES:
        if code != "dxb":
            assert "CANARY" not in _table_texts(region_db_alias(code)), code
    uae = _table_texts(region_db_alias("dxb"))
    assert uae.count(canary_kept) >= REQUESTS
    assert canary_zero not in uae

    # the UAE worker stops: its hosts go silent, and nothing is sent anywhere else
    before = InferenceRequest.objects.unscoped_all_orgs().count()
    stack.kill("worker-dxb", signal.SIGTERM)
    with override_settings(HOST_HEARTBEAT_STALE_S=int(stack.env["HOST_HEARTBEAT_STALE_S"])):
        wait_for(
            lambda: not hosts_live_now(region_code="dxb", model_name=MODEL_NAME, now=timezone.now()).exists(),
            30,
            "the UAE host kept its heartbeat after its worker stopped",
        )
    r = httpx.post(f"{stack.base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {kept.key}"},
                   json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}]}, timeout=30)  # fmt: skip
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "region_unavailable"
    assert r.headers["retry-after"]
    assert InferenceRequest.objects.unscoped_all_orgs().count() == before
    assert not InferenceRequest.objects.unscoped_all_orgs().exclude(region="dxb").exists()
