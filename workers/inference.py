"""The regional worker's side of a request: claim it under a lease, run it through this process's
engine loop, stream its tokens, settle it exactly once (DESIGN section 4, steps 8-9).

Retry policy: no Celery retries. A worker that dies leaves its lease to expire; the reaper re-sends
non-streaming requests (at most REQUEST_MAX_ATTEMPTS) and fails streams that had started. A
redelivered or duplicate message is harmless: `request_claim` only claims the attempt it names.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from controlplane.fleet.artifacts import artifact_local_path
from controlplane.fleet.models import CatalogModel
from controlplane.inference import responses, services, streams
from native import Engine, EngineError
from workers.engine_loop import EngineLoop, Job

logger = logging.getLogger("workers.inference")

_loops: dict[str, EngineLoop] = {}
_loops_lock = threading.Lock()
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"
POLL_S = 0.25


def _emitter(region: str) -> Any:
    import json

    client = streams.region_client(region)

    def emit(events: list[tuple[str, dict[str, Any]]]) -> None:
        pipe = client.pipeline(transaction=False)
        for request_id, event in events:
            key = streams.stream_key(request_id)
            pipe.xadd(key, {"e": json.dumps(event, separators=(",", ":"))}, maxlen=streams.STREAM_MAXLEN,
                      approximate=True)  # fmt: skip
            pipe.expire(key, settings.STREAM_TTL_S)
        pipe.execute()

    return emit


def engine_loop_for(*, model_name: str, region: str) -> EngineLoop:
    with _loops_lock:
        loop = _loops.get(model_name)
        if loop is None:
            model = CatalogModel.objects.get(name=model_name)
            path = artifact_local_path(artifact_path=model.artifact_path)
            engine = Engine(path, threads=settings.WORKER_THREADS, n_ctx=min(model.context_length,
                            settings.INFERENCE_CONTEXT_TOKENS))  # fmt: skip
            loop = EngineLoop(engine=engine, max_batch=settings.WORKER_MAX_BATCH, emit=_emitter(region))
            loop.start()
            _loops[model_name] = loop
            logger.info("engine loaded", extra={"model": model_name, "kernels": engine.info.kernels})
        return loop


def loops_stop() -> None:
    with _loops_lock:
        for loop in _loops.values():
            loop.stop()


def _wait(job: Job, *, region: str, request_id: str, attempt: int) -> str | None:
    """Waits for the loop, renewing the lease and watching for cancellation; returns why it stopped early."""
    renew_every = max(1.0, settings.REQUEST_LEASE_S / 3)
    renewed = time.monotonic()
    first_token_marked = False

    def mark_first_token() -> None:
        nonlocal first_token_marked
        at = _first_token_moment(job)
        if at is not None and not first_token_marked:
            services.request_first_token(request_id=request_id, attempt=attempt, at=at)
            first_token_marked = True

    while not job.done.wait(POLL_S):
        mark_first_token()
        if streams.cancelled(region=region, request_id=request_id):
            job.cancel.set()
            job.done.wait()
            return "cancelled"
        if time.monotonic() - renewed >= renew_every:
            renewed = time.monotonic()
            if not services.request_lease_renew(request_id=request_id, attempt=attempt):
                job.cancel.set()
                job.done.wait()
                return "lease_lost"
    # a request shorter than one poll: its first token is recorded with its completion (one write fewer
    # between the engine's end and the answer), or by the caller when it ends otherwise
    return None


def _first_token_moment(job: Job) -> datetime | None:
    """The loop's monotonic moment of the first token, carried over to wall time (exact whenever it runs)."""
    if job.first_token_at is None:
        return None
    return timezone.now() - timedelta(seconds=time.monotonic() - job.first_token_at)


def inference_run(*, region: str, request_id: str, attempt: int) -> str:
    claimed = services.request_claim(request_id=request_id, region=region, attempt=attempt, worker=WORKER_ID)
    if claimed is None:
        return "not_claimed"
    body = claimed.content
    job = Job(
        request_id=request_id,
        attempt=attempt,
        prompt_ids=list(body.get("prompt_ids") or []),
        params=dict(body.get("params") or {}),
        inputs_ids=body.get("inputs_ids"),
        stream=claimed.stream,
    )
    queued_at = time.monotonic()
    try:
        loop = engine_loop_for(model_name=claimed.model_name, region=region)
    except (EngineError, Exception) as exc:
        logger.exception("could not load the engine", extra={"request": request_id})
        services.request_fail(request_id=request_id, code="engine_unavailable", message=str(exc)[:200])
        return "failed"
    loop.submit(job)
    _ = claimed.input_hmac  # the receipt's input side, computed while the engine runs
    stopped = _wait(job, region=region, request_id=request_id, attempt=attempt)
    if stopped == "lease_lost":
        return "lease_lost"
    if stopped is not None or job.error is not None:
        first_token = _first_token_moment(job)
        if first_token is not None:
            services.request_first_token(request_id=request_id, attempt=attempt, at=first_token)
    if job.error is not None:
        services.request_fail(request_id=request_id, code=f"engine_{job.error.code}", message=str(job.error)[:200])
        return "failed"
    if stopped == "cancelled":
        services.request_fail(
            request_id=request_id, code="cancelled", message="the client went away",
            delivered_tokens=job.completion_tokens, status=services.Status.CANCELLED,
        )  # fmt: skip
        return "cancelled"
    return _finish(claimed, job, queued_at)


def _finish(claimed: services.ClaimedRequest, job: Job, queued_at: float) -> str:
    created = int(time.time())
    model = claimed.model_name
    if claimed.kind == "embedding":
        response = responses.embedding_response(
            model=model, vectors=job.vectors, encoding_format="float", prompt_tokens=claimed.prompt_tokens
        )
        completion_tokens, finish_reason = 0, "stop"
        # the receipt's output HMAC covers the vectors as little-endian float32, the bytes of the
        # base64 encoding a client receives
        output_bytes = b"".join(struct.pack(f"<{len(v)}f", *v) for v in job.vectors)
    else:
        reasons = [c.finish_reason or "length" for c in job.choices]
        choices = [
            {"text": c.text, "finish_reason": reason, "logprobs": c.logprobs}
            for c, reason in zip(job.choices, reasons, strict=True)
        ]
        completion_tokens = job.completion_tokens
        finish_reason = ",".join(sorted(set(reasons)))
        response = responses.generation_response(
            kind=claimed.kind, request_id=claimed.request_id, created=created, model=model, choices=choices,
            prompt_tokens=claimed.prompt_tokens, completion_tokens=completion_tokens,
            logprobs=bool(job.params.get("logprobs")),
        )  # fmt: skip
        output_bytes = "\u241e".join(c.text for c in job.choices).encode()
    finished = time.monotonic()
    timings = {
        "worker_queue_ms": ((job.started_at or finished) - queued_at) * 1000,
        "first_token_ms": ((job.first_token_at or finished) - (job.started_at or finished)) * 1000,
        "generate_ms": (finished - (job.started_at or finished)) * 1000,
        "max_batch": job.max_batch_seen,
    }
    receipt = services.request_complete(
        request_id=claimed.request_id, attempt=claimed.attempt, completion_tokens=completion_tokens,
        finish_reason=finish_reason, response=response, output=output_bytes, timings=timings, claimed=claimed,
        after_answer=True, first_token_at=_first_token_moment(job),
    )  # fmt: skip
    if receipt is None:
        return "superseded"
    streams.event_append(
        region=claimed.region,
        request_id=claimed.request_id,
        event={
            "type": "done",
            "attempt": claimed.attempt,
            "response": response,
            "tails": [c.pending for c in job.choices],
            "finish_reasons": [c.finish_reason or "length" for c in job.choices],
            "usage": response["usage"],
            "receipt": receipt,
            "timings": timings,
        },
    )
    # once the answer is on its way: the response kept in the region, the quota's reservation settled
    services.request_after_answer(claimed=claimed, response=response, completion_tokens=completion_tokens)
    return "completed"
