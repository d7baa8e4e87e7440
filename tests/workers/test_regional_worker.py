"""A real regional Celery worker: heartbeats for its hosts only, consumes only its region's queue,
refuses a task addressed to another region."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import connections

from controlplane.fleet.models import AcceleratorClass, Host, Region
from workers import app, task_names

ROOT = Path(__file__).resolve().parents[2]


def _fleet() -> dict[str, Host]:
    sin = Region.objects.create(code="sin", name="Singapore", country="SG", zones=["ASEAN"], queue_name="region.sin")
    fra = Region.objects.create(code="fra", name="Frankfurt", country="DE", zones=["EU"], queue_name="region.fra")
    t4 = AcceleratorClass.objects.create(slug="nvidia-t4", name="T4", vendor="NVIDIA", family="nvidia", kind="GPU")
    return {
        "sin-active": Host.objects.create(name="sin-t4-01", region=sin, accelerator_class=t4),
        "sin-down": Host.objects.create(name="sin-t4-02", region=sin, accelerator_class=t4, status=Host.Status.DOWN),
        "fra-active": Host.objects.create(name="fra-t4-01", region=fra, accelerator_class=t4),
    }


@pytest.fixture
def sin_worker(transactional_db: None) -> Iterator[subprocess.Popen[bytes]]:
    central = connections["default"].settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "controlplane.settings.base",
        "DATABASE_URL": f"postgres://{central['USER']}@{central['HOST']}:{central['PORT'] or 5432}/{central['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "REGION": "sin",
        "HOST_HEARTBEAT_INTERVAL_S": "1",
    }
    process = subprocess.Popen(  # noqa: S603  # the project's own worker
        [str(Path(sys.executable).with_name("celery")), "-A", "workers", "worker", "-Q", "region.sin", "-P", "threads",
         "-c", "2", "-n", f"test-sin-{uuid.uuid4().hex[:6]}@%h", "--without-mingle", "--without-gossip",
         "--loglevel", "INFO"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for(predicate: object, timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]  # a zero-argument callable
            return True
        time.sleep(0.25)
    return False


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_regional_worker_heartbeats_and_serves_only_its_region(sin_worker: subprocess.Popen[bytes]) -> None:
    hosts = _fleet()

    def stamped(key: str) -> bool:
        return Host.objects.get(pk=hosts[key].pk).last_heartbeat_at is not None

    assert _wait_for(lambda: stamped("sin-active")), "the sin worker never sent a heartbeat"
    first = Host.objects.get(pk=hosts["sin-active"].pk).last_heartbeat_at
    assert _wait_for(lambda: Host.objects.get(pk=hosts["sin-active"].pk).last_heartbeat_at != first, 15)
    assert not stamped("sin-down")
    assert not stamped("fra-active")

    sin_redis = redis.Redis.from_url(settings.REGION_REDIS_URLS["sin"])
    good, wrong = f"good-{uuid.uuid4().hex}", f"wrong-{uuid.uuid4().hex}"
    # A task addressed to fra but delivered on sin's queue is refused by the sin worker.
    app.send_task(task_names.REGION_PING, kwargs={"region": "fra", "token": wrong}, queue="region.sin")
    app.send_task(task_names.REGION_PING, kwargs={"region": "sin", "token": good}, queue="region.sin")
    assert _wait_for(lambda: sin_redis.get(f"ping:{good}") == b"sin", 30), "the sin worker did not run its task"
    time.sleep(1)
    assert sin_redis.get(f"ping:{wrong}") is None
    assert redis.Redis.from_url(settings.REGION_REDIS_URLS["fra"]).get(f"ping:{wrong}") is None
    assert sin_worker.poll() is None, "the worker crashed"
