"""The whole system as separate processes for end-to-end tests: the ASGI web server, regional Celery
workers running the real engine, the central worker and beat (the reaper). They use the test
databases and a Redis database of their own, exactly as `make run` wires them.

Tests seed rows with the ORM (transactional_db) and talk to the server over HTTP.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import redis
from django.conf import settings
from django.db import connections
from django.utils import timezone

from controlplane.core.regions import REGION_CODES, region_db_alias
from tests.factories import Customer, make_customer

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODEL_NAME = "SmolLM2-135M-Instruct"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _url(alias: str) -> str:
    d = connections[alias].settings_dict
    if connections[alias].vendor != "postgresql":
        return f"sqlite:///{d['NAME']}"
    return f"postgres://{d['USER'] or 'postgres'}@{d['HOST'] or '127.0.0.1'}:{d['PORT'] or 5432}/{d['NAME']}"


def stack_env(**extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "controlplane.settings.base",
        "DATABASE_URL": _url("default"),
        "REDIS_URL": settings.REDIS_URL,
        "API_KEY_PEPPER": settings.API_KEY_PEPPER,
        "SECRET_KEY": settings.SECRET_KEY,
        "DATA_DIR": str(settings.DATA_DIR),
        "RECEIPT_KEY_DIR": str(settings.RECEIPT_KEY_DIR),
        "HOST_HEARTBEAT_INTERVAL_S": "1",
        "HOST_HEARTBEAT_STALE_S": "5",
        "REQUEST_LEASE_S": "4",
        "REAPER_INTERVAL_S": "1",
        "INFERENCE_CONTEXT_TOKENS": "1024",
        "WORKER_MAX_BATCH": "4",
        "WORKER_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "DB_POOL_MAX_SIZE": "6",
        "WEB_DB_THREADS": "4",
    }
    for code in REGION_CODES:
        env[f"REGION_{code.upper()}_DATABASE_URL"] = _url(region_db_alias(code))
        env[f"REGION_{code.upper()}_REDIS_URL"] = settings.REGION_REDIS_URLS[code]
    env.update(extra)
    return env


@dataclass
class Stack:
    """Handles on the running processes; `logs` holds every process's output file."""

    base_url: str
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], **extra: str) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(  # noqa: S603  # the project's own programs
                argv, cwd=ROOT, env={**self.env, **extra}, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.processes[name] = process
        return process

    def start_worker(self, region: str, *, name: str | None = None) -> subprocess.Popen[bytes]:
        name = name or f"worker-{region}"
        return self.start(
            name,
            [str(BIN / "celery"), "-A", "workers", "worker", "-Q", f"region.{region}", "-P", "threads",
             "-c", self.env["WORKER_MAX_BATCH"], "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h", "--without-mingle",
             "--without-gossip", "--loglevel", "INFO"],
            REGION=region,
        )  # fmt: skip

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        process.wait(timeout=30)

    def stop(self) -> None:
        for name in list(self.processes):
            process = self.processes[name]
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + 20
        for name, process in list(self.processes.items()):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            del self.processes[name]

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))


def stack_start(log_dir: Path, regions: tuple[str, ...], **extra: str) -> Stack:
    port = _free_port()
    stack = Stack(base_url=f"http://127.0.0.1:{port}", log_dir=log_dir, env=stack_env(**extra))
    web = [str(BIN / "uvicorn"), "controlplane.asgi:application", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", "--no-access-log"]  # fmt: skip
    if int(extra.get("WEB_PROCESSES", "1")) > 1:
        web += ["--workers", extra["WEB_PROCESSES"]]
    stack.start("web", web)
    stack.start("central", [str(BIN / "celery"), "-A", "workers", "worker", "-Q", "central", "-P", "threads", "-c",
                            "2", "-n", f"central-{uuid.uuid4().hex[:6]}@%h", "--without-mingle", "--without-gossip",
                            "--loglevel", "INFO"])  # fmt: skip
    stack.start("beat", [str(BIN / "celery"), "-A", "workers", "beat", "--loglevel", "INFO", "-s",
                         str(log_dir / "beat-schedule")])  # fmt: skip
    for region in regions:
        stack.start_worker(region)
    wait_for(lambda: _answers(stack.base_url), 60, "the web server did not start")
    return stack


def _answers(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(predicate: Callable[[], Any], timeout_s: float, message: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(message)


# --- data ------------------------------------------------------------------------------------------


@dataclass
class Tenant:
    slug: str
    org_id: int
    key: str


def seed_platform(regions: tuple[str, ...]) -> None:
    """Regions, accelerators, catalog, prices, and one CPU-backed host per region serving SmolLM2."""
    from billing.services import price_book_seed
    from controlplane.core.services import Actor
    from controlplane.fleet import selectors as fleet_selectors
    from controlplane.fleet import services as fleet_services

    actor = Actor.system("tests")
    fleet_services.regions_sync(actor=actor)
    fleet_services.accelerator_classes_sync(actor=actor)
    fleet_services.catalog_sync(actor=actor)
    price_book_seed(actor=actor)
    model = fleet_selectors.catalog_get(name=MODEL_NAME)
    for code in regions:
        host = fleet_services.host_create(
            actor=actor,
            name=f"{code}-l4-01",
            region=fleet_selectors.region_get(code=code),
            accelerator_class=fleet_selectors.accelerator_class_get(slug="nvidia-l4"),
        )
        fleet_services.deployment_create(actor=actor, model=model, host=host)


def seed_tenant(
    slug: str,
    *,
    countries: list[str],
    retention_days: int = 30,
    credit: Decimal = Decimal("100"),
    currency: str = "USD",
    billing_mode: str = "prepaid",
) -> Tenant:
    from billing.services import credit_grant_create
    from controlplane.core.services import Actor
    from tenants import services as tenant_services
    from tenants.models import Organization

    actor = Actor.system("tests")
    owner = tenant_services.user_create(email=f"owner@{slug}.example", password="a-long-test-password-1",
                                        email_verified=True)  # fmt: skip
    org = tenant_services.organization_create(
        actor=actor, owner=owner, slug=slug, name=slug.title(), billing_country="AE", billing_currency=currency
    )
    Organization.objects.filter(pk=org.pk).update(billing_mode=billing_mode)
    org.refresh_from_db()
    tenant_services.residency_policy_update(
        actor=actor, organization=org, allowed_countries=countries, allowed_zones=[], accelerator_family="",
        retention_days=retention_days,
    )  # fmt: skip
    _, secret = tenant_services.api_key_create(actor=actor, organization=org, created_by=owner, name="tests")
    # ids restart with every test database: forget quota windows an earlier run left under this id
    client = redis.Redis.from_url(settings.REDIS_URL)
    stale = list(client.scan_iter(match=f"quota:{{{org.pk}:*"))
    if stale:
        client.delete(*stale)
    if credit:
        credit_grant_create(actor=actor, organization=org, amount=credit, currency=currency, expires_at=None,
                            priority=0, reason="tests")  # fmt: skip
    return Tenant(slug=slug, org_id=org.pk, key=secret)


def hosts_live(regions: tuple[str, ...], timeout_s: float = 60) -> None:
    from controlplane.fleet.selectors import hosts_live as live

    def ready() -> bool:
        codes = {h.region.code for h in live(region_code=None, model_name=MODEL_NAME, now=timezone.now())}
        return set(regions) <= codes

    wait_for(ready, timeout_s, f"hosts of {regions} never became live (no worker heartbeats)")


def stack_fixture(tmp_path_factory: Any, regions: tuple[str, ...], **extra: str) -> Iterator[Stack]:
    stack = stack_start(tmp_path_factory.mktemp("stack"), regions, **extra)
    try:
        yield stack
    finally:
        stack.stop()


def serving_customer(slug: str = "gulf") -> Customer:
    """Without processes: the platform with one dxb host whose heartbeat is fresh now, and an
    organisation allowed only in the UAE (retention 1 day, USD 10 of credit), for tests that drive
    admission and the request services directly."""
    from billing.services import credit_grant_create
    from controlplane.core.services import Actor
    from controlplane.fleet.models import Host
    from tenants import services as tenant_services

    seed_platform(("dxb",))
    Host.objects.update(last_heartbeat_at=timezone.now())
    actor = Actor.system("tests")
    customer = make_customer(slug=slug)
    tenant_services.residency_policy_update(
        actor=actor, organization=customer.organization, allowed_countries=["AE"], allowed_zones=[],
        accelerator_family="", retention_days=1,
    )  # fmt: skip
    credit_grant_create(actor=actor, organization=customer.organization, amount="10", currency="USD",
                        expires_at=None, reason="tests")  # fmt: skip
    return customer


def admit_chat(customer: Customer, body: dict[str, Any], *, idempotency_key: str | None = None) -> Any:
    """Admission of a chat completion with the customer's API key, without HTTP (returns the `Admission`)."""
    from controlplane.inference.admission import request_admit
    from controlplane.inference.openai_schema import parse_generation
    from tenants.models import ApiKey

    key = ApiKey.objects.unscoped_all_orgs().get(organization=customer.organization)
    return request_admit(
        api_key=key, organization=customer.organization, parsed=parse_generation(body, "chat"), raw_body=body,
        region_header=None, idempotency_key=idempotency_key,
    )  # fmt: skip


def outbox_sends_recorded(monkeypatch: Any) -> list[int]:
    """For tests without a broker or worker: outbox sends (from admission and from the reaper) are
    recorded and marked sent instead of published; returns the list of outbox ids they sent."""
    from controlplane.inference import admission
    from controlplane.inference.models import OutboxMessage

    calls: list[int] = []

    def record(*, outbox_id: int, **_: Any) -> bool:
        calls.append(outbox_id)
        OutboxMessage.objects.filter(pk=outbox_id).update(sent_at=timezone.now())
        return True

    monkeypatch.setattr(admission, "outbox_send", record)
    monkeypatch.setattr("controlplane.inference.services.outbox_send", record)
    return calls
