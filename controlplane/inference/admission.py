"""Admission of an inference request, in the web process (DESIGN section 4, steps 2-7): count tokens,
residency, placement, quota, credit hold, then the write order of section 3 and the enqueue.

Every refusal leaves nothing behind: a quota reservation made before a later refusal is released,
regional content written before a failed central transaction is deleted, and nothing is enqueued.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
import socket
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Literal

import redis
from django.conf import settings
from django.db import IntegrityError, connection, connections, transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from billing import services as billing_services
from controlplane.core import hotcache
from controlplane.core.errors import Conflict, DomainError, NotFound, PermissionDenied, RateLimited, ServiceUnavailable
from controlplane.core.logging import current_request_id
from controlplane.core.prepared import ASYNC_COMMIT, Prepared, async_commit, transaction_without_waiting
from controlplane.core.regions import REGIONS, region_db_alias, region_queue
from controlplane.core.scoping import org_scope
from controlplane.core.services import Actor, audit_record
from controlplane.fleet.artifacts import artifact_local_path
from controlplane.fleet.models import CatalogModel
from controlplane.inference import quota
from controlplane.inference.models import IdempotencyKey, InferenceRequest, OutboxMessage, RequestContent
from controlplane.inference.openai_schema import EmbeddingRequest, GenerationRequest, InvalidParameter
from controlplane.inference.receipts import content_salt_new
from controlplane.scheduling.fleet_view import host_states
from controlplane.scheduling.policy import HostState, PlacementRequest, place
from native.tokenizer import Tokenizer
from tenants import selectors as tenant_selectors
from tenants.models import ApiKey, Organization, ResidencyPolicy

logger = logging.getLogger("controlplane.inference")

TASK_RUN = "workers.inference_run"
Workload = Literal["interactive", "batch", "embedding"]
RETRY_AFTER_UNAVAILABLE_S = 5
RETRY_AFTER_BUSY_S = 2
CONCURRENCY_RETRY_AFTER_S = 1
FLEET_MAX_AGE_S = 1.0  # heartbeats arrive every few seconds; a second's lag in seeing one is immaterial


class UnprocessableIdempotency(DomainError):
    code = "idempotency_key_reused"
    http_status = 422


class ModelNotFound(NotFound):
    code = "model_not_found"


class RegionUnavailable(ServiceUnavailable):
    code = "region_unavailable"

    def __init__(self, message: str, *, retry_after_s: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


@dataclass
class Admission:
    """What the web process needs to relay the answer; `replay` is set for an idempotent replay."""

    request_id: str
    kind: str
    model: str
    region: str
    created: int
    prompt_tokens: int
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    ratelimit_headers: dict[str, str] = field(default_factory=dict)
    replay: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    outbox_unmarked: int | None = None  # published to the broker; the caller marks it (outbox_mark_sent)
    admitted_unix: float = 0.0  # when admission started (after authentication and parsing)


# --- tokens ----------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _tokenizer(path: str) -> Tokenizer:
    return Tokenizer(path)


def tokenizer_for(model: CatalogModel) -> Tokenizer:
    return _tokenizer(str(artifact_local_path(artifact_path=model.artifact_path)))


def context_tokens(model: CatalogModel) -> int:
    return min(model.context_length, settings.INFERENCE_CONTEXT_TOKENS)


def _check_ids(ids: list[int], vocab: int, param: str) -> None:
    bad = next((x for x in ids if not 0 <= x < vocab), None)
    if bad is not None:
        raise InvalidParameter(f"token id {bad} is outside the vocabulary (0..{vocab - 1}).", param=param)


def _generation_prompt(model: CatalogModel, req: GenerationRequest) -> list[int]:
    tok = tokenizer_for(model)
    if req.endpoint == "chat":
        if not model.supports_chat:
            raise InvalidParameter(f"the model {model.name} does not support chat.", param="model")
        try:
            return tok.apply_chat_template(req.messages, add_generation_prompt=True)
        except Exception as exc:  # the template is the model file's: its own errors become a 400
            raise InvalidParameter(f"the conversation cannot be rendered: {exc}", param="messages") from None
    if isinstance(req.prompt, list):
        _check_ids(req.prompt, tok.vocab_size, "prompt")
        return list(req.prompt)
    ids = tok.tokenize(req.prompt or "", add_special=True, parse_special=False)
    if not ids:
        raise InvalidParameter("'prompt' must not be empty.", param="prompt")
    return ids


def _tokens(
    model: CatalogModel, parsed: GenerationRequest | EmbeddingRequest, raw_body: dict[str, Any]
) -> tuple[dict[str, Any], int, int, int, int, Workload]:
    """The request's tokens: its content for the region (the request as sent, with its token ids and the
    engine's parameters), prompt tokens, max_tokens, n, the tokens the quota reserves, and its workload."""
    content: dict[str, Any] = {"endpoint": parsed.endpoint, "request": raw_body}
    if isinstance(parsed, EmbeddingRequest):
        if not model.supports_embeddings:
            raise InvalidParameter(f"the model {model.name} does not produce embeddings.", param="model")
        if parsed.dimensions is not None and parsed.dimensions != model.embedding_dimensions:
            raise InvalidParameter(
                f"the model {model.name} returns {model.embedding_dimensions}-dimensional embeddings and cannot "
                "shorten them; omit 'dimensions'.",
                param="dimensions",
                code="dimensions_not_supported",
            )
        tok = tokenizer_for(model)
        inputs_ids: list[list[int]] = []
        for i, item in enumerate(parsed.inputs):
            if isinstance(item, str):
                inputs_ids.append(tok.tokenize(item, add_special=True, parse_special=False))
            else:
                _check_ids(item, tok.vocab_size, f"input[{i}]")
                inputs_ids.append(list(item))
            if len(inputs_ids[-1]) > context_tokens(model):
                raise InvalidParameter(
                    f"input[{i}] has {len(inputs_ids[-1])} tokens; the model takes at most {context_tokens(model)}.",
                    param="input",
                    code="context_length_exceeded",
                )
        prompt_tokens = sum(len(x) for x in inputs_ids)
        max_tokens, n, reserve = 0, 1, prompt_tokens
        content["inputs_ids"] = inputs_ids
        workload: Workload = "embedding"
    else:
        prompt_ids = _generation_prompt(model, parsed)
        prompt_tokens = len(prompt_ids)
        max_tokens = _max_tokens(model, parsed, prompt_tokens)
        n = parsed.n
        reserve = prompt_tokens + max_tokens * n
        content["prompt_ids"] = prompt_ids
        content["params"] = {
            "max_tokens": max_tokens,
            "n": n,
            "stop": parsed.stop,
            "temperature": parsed.sampling.temperature,
            "top_p": parsed.sampling.top_p,
            "top_k": parsed.sampling.top_k,
            "min_p": parsed.sampling.min_p,
            "repetition_penalty": parsed.sampling.repetition_penalty,
            "seed": parsed.sampling.seed,
            "logprobs": parsed.logprobs,
            "top_logprobs": parsed.top_logprobs,
        }
        workload = "batch" if not parsed.stream and n > 1 else "interactive"
    return content, prompt_tokens, max_tokens, n, reserve, workload


def _max_tokens(model: CatalogModel, req: GenerationRequest, prompt_tokens: int) -> int:
    n_ctx = context_tokens(model)
    room = n_ctx - prompt_tokens
    if room < 1:
        raise InvalidParameter(
            f"This model's maximum context length is {n_ctx} tokens. However, your messages resulted in "
            f"{prompt_tokens} tokens. Please reduce the length of the messages.",
            param="messages" if req.endpoint == "chat" else "prompt",
            code="context_length_exceeded",
        )
    if req.max_tokens is None:
        return min(room, model.default_max_tokens, 1024)
    if req.max_tokens > room:
        raise InvalidParameter(
            f"This model's maximum context length is {n_ctx} tokens. However, you requested "
            f"{prompt_tokens + req.max_tokens} tokens ({prompt_tokens} in the messages, {req.max_tokens} in the "
            "completion). Please reduce the length of the messages or completion.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return req.max_tokens


# --- residency ---------------------------------------------------------------------------------------


def allowed_regions(policy: ResidencyPolicy | None) -> frozenset[str]:
    """Regions whose country or zone the policy names; an absent or empty policy allows nothing."""
    if policy is None:
        return frozenset()
    return regions_allowed_by(countries=policy.allowed_countries, zones=policy.allowed_zones)


def regions_allowed_by(*, countries: list[str], zones: list[str]) -> frozenset[str]:
    """Regions in one of the countries or zones (a policy's two lists)."""
    country_set, zone_set = set(countries), set(zones)
    return frozenset(r.code for r in REGIONS if r.country in country_set or zone_set.intersection(r.zones))


def residency_policy(organization: Organization) -> ResidencyPolicy | None:
    def load() -> ResidencyPolicy | None:
        with org_scope(organization.pk):
            policy: ResidencyPolicy | None = ResidencyPolicy.objects.filter(organization=organization).first()
        return policy

    return hotcache.cached(("residency_policy", organization.pk), hotcache.current().org, load)


def _model(name: str) -> CatalogModel | None:
    def load() -> CatalogModel | None:
        available = CatalogModel.objects.filter(status=CatalogModel.Status.AVAILABLE)
        model: CatalogModel | None = available.filter(name=name).first()
        return model

    return hotcache.cached(("catalog_model", name), hotcache.current().global_, load)


def _fleet(model_name: str, now: datetime, load: dict[int, tuple[int, int]]) -> list[HostState]:
    """The fleet for placement: rows cached (liveness is heartbeat-based, so for at most a second),
    each host's load read fresh by the caller."""
    idle = hotcache.cached(
        ("fleet", model_name), hotcache.current().global_,
        lambda: host_states(model_name=model_name, now=now, load={}), max_age_s=FLEET_MAX_AGE_S,
    )  # fmt: skip
    return [
        replace(state, running=load[state.host_id][0], queued=load[state.host_id][1])
        if state.host_id in load
        else state
        for state in idle
    ]


def _candidate_regions(policy: ResidencyPolicy | None, requested: str | None) -> frozenset[str]:
    allowed = allowed_regions(policy)
    if not allowed:
        raise PermissionDenied(
            "Your organisation's residency policy allows no region; set one in the console.",
            code="region_not_allowed",
        )
    if requested is not None:
        if requested not in allowed:
            raise PermissionDenied(
                f"The region {requested!r} is not allowed by your organisation's residency policy "
                f"(allowed: {', '.join(sorted(allowed))}).",
                code="region_not_allowed",
            )
        return frozenset({requested})
    return allowed


# prepared: planning this query cost 0.7 ms each time, running it 0.2
_HOST_LOAD = Prepared(
    "inference_host_load",
    "SELECT r.host_id, count(*) FILTER (WHERE r.status = 'running'), count(*) FILTER (WHERE r.status = 'queued') "
    "FROM inference_inferencerequest r WHERE r.status IN ('queued', 'running') AND r.host_id IS NOT NULL "
    "GROUP BY r.host_id",
    {},
)


@contextmanager
def _host_load_read() -> Iterator[Callable[[], dict[int, tuple[int, int]]]]:
    """Running and queued requests per host, read fresh on every admission (the queue cap counts them):
    the block gives a function that returns them. On PostgreSQL the query is sent on entry and its answer
    read when the function is called, so the server runs it while the caller tokenises (nothing else may use
    the connection in the block); elsewhere the ORM's query runs when the function is called."""
    if connection.vendor != "postgresql":
        yield _host_load_orm
        return
    with _HOST_LOAD.sent({}) as sent:
        yield lambda: {int(str(host)): (int(str(running)), int(str(queued))) for host, running, queued in sent.rows()}


def _host_load() -> dict[int, tuple[int, int]]:
    """`_host_load_read`, read at once."""
    with _host_load_read() as read:
        return read()


def _host_load_orm() -> dict[int, tuple[int, int]]:
    load = (
        InferenceRequest.objects.unscoped_all_orgs()
        .filter(status__in=[InferenceRequest.Status.QUEUED, InferenceRequest.Status.RUNNING], host__isnull=False)
        .values("host_id")
        .annotate(
            running=Count("id", filter=Q(status=InferenceRequest.Status.RUNNING)),
            queued=Count("id", filter=Q(status=InferenceRequest.Status.QUEUED)),
        )
    )
    return {int(r["host_id"]): (int(r["running"]), int(r["queued"])) for r in load}


# --- quota ------------------------------------------------------------------------------------------


def quota_limits(organization: Organization, region: str) -> quota.QuotaLimits:
    def load() -> quota.QuotaLimits:
        limits = tenant_selectors.regional_quota_effective(organization=organization, region=region)
        return quota.QuotaLimits(
            requests_per_minute=limits.requests_per_minute,
            tokens_per_minute=limits.tokens_per_minute,
            concurrent_requests=limits.concurrent_requests,
            monthly_tokens=limits.monthly_tokens,
        )

    return hotcache.cached(("quota_limits", organization.pk, region), hotcache.current().org, load)


def quota_client() -> redis.Redis:
    return _quota_client(settings.REDIS_URL)


@lru_cache(maxsize=4)
def _quota_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


# --- idempotency -------------------------------------------------------------------------------------


def body_fingerprint(endpoint: str, body: Any) -> str:
    canonical = json.dumps({"endpoint": endpoint, "body": body}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _idempotent_replay(
    *, organization: Organization, key: str, endpoint: str, fingerprint: str, now: datetime
) -> dict[str, Any] | None:
    with org_scope(organization.pk):
        record = IdempotencyKey.objects.filter(organization=organization, key=key).first()
        if record is None:
            return None
        if record.expires_at <= now:
            record.delete()
            return None
        if record.body_sha256 != fingerprint or record.endpoint != endpoint:
            raise UnprocessableIdempotency(
                "This Idempotency-Key was used with a different request body; use a new key.",
            )
        request = InferenceRequest.objects.filter(request_id=record.request_id).first()
    if request is None or not request.finished:
        raise Conflict(
            "A request with this Idempotency-Key is still in progress; retry once it has finished.",
            code="idempotent_request_in_progress",
        )
    content = RequestContent.objects.using(region_db_alias(record.region)).filter(request_id=record.request_id).first()
    stored = content.completion if content is not None else None
    if (not stored or "response" not in stored) and _completion_pending(request, now):
        raise Conflict(
            "The response of this Idempotency-Key is being stored; retry shortly.",
            code="idempotent_request_in_progress",
        )
    if not stored or "response" not in stored:
        raise Conflict(
            "The response of this Idempotency-Key was not retained (the organisation keeps no content); "
            "it was not charged again.",
            code="idempotent_response_not_retained",
        )
    return {"status": stored.get("status", 200), "body": stored["response"], "request_id": record.request_id}


COMPLETION_STORE_GRACE_S = 30


def _completion_pending(request: InferenceRequest, now: datetime) -> bool:
    """A completed request whose response the worker stores in the region just after answering (see
    `services.request_after_answer`): for a few seconds a replay may arrive before it is stored."""
    return (
        request.status == InferenceRequest.Status.COMPLETED
        and request.retention_days > 0
        and request.completed_at is not None
        and now - request.completed_at < timedelta(seconds=COMPLETION_STORE_GRACE_S)
    )


# --- admission --------------------------------------------------------------------------------------


def new_request_id() -> str:
    return f"req_{secrets.token_hex(12)}"


def request_admit(
    *,
    api_key: ApiKey,
    organization: Organization,
    parsed: GenerationRequest | EmbeddingRequest,
    raw_body: dict[str, Any],
    region_header: str | None,
    idempotency_key: str | None,
    now: datetime | None = None,
) -> Admission:
    """Steps 2-7 of DESIGN section 4. Raises DomainError subclasses for every refusal.

    Read-mostly rows (model, policy, fleet, quota limits, prices) come from the process's cache under
    the generation tokens the caller read (`hotcache.tokens_in_force`), or that this call reads.
    """
    started = time.perf_counter()
    tokens = hotcache.current()
    if tokens.global_ is None or tokens.org is None:
        tokens = hotcache.generation_tokens(org_id=organization.pk)
    with hotcache.tokens_in_force(tokens):
        return _request_admit(
            api_key=api_key, organization=organization, parsed=parsed, raw_body=raw_body,
            region_header=region_header, idempotency_key=idempotency_key, now=now, started=started,
        )  # fmt: skip


def _request_admit(
    *,
    api_key: ApiKey,
    organization: Organization,
    parsed: GenerationRequest | EmbeddingRequest,
    raw_body: dict[str, Any],
    region_header: str | None,
    idempotency_key: str | None,
    now: datetime | None,
    started: float,
) -> Admission:
    now = now or timezone.now()
    if organization.status != Organization.Status.ACTIVE:
        raise PermissionDenied("This organisation is suspended.", code="organization_suspended")
    kind = {"chat": InferenceRequest.Kind.CHAT, "completion": InferenceRequest.Kind.COMPLETION}.get(
        parsed.endpoint, InferenceRequest.Kind.EMBEDDING
    )
    # the body's fingerprint serves the Idempotency-Key alone (kept with the key, compared on a replay)
    fingerprint = body_fingerprint(parsed.endpoint, raw_body) if idempotency_key is not None else ""
    if idempotency_key is not None:
        replay = _idempotent_replay(
            organization=organization, key=idempotency_key, endpoint=parsed.endpoint, fingerprint=fingerprint, now=now
        )
        if replay is not None:
            return Admission(
                request_id=replay["request_id"], kind=kind, model=parsed.model, region="", created=0,
                prompt_tokens=0, replay=replay,
            )  # fmt: skip

    model = _model(parsed.model)
    if model is None:
        raise ModelNotFound(f"The model `{parsed.model}` does not exist or you do not have access to it.")

    # tokens, while the hosts' load is read (its query on its way: nothing else uses the connection meanwhile)
    with _host_load_read() as host_load:
        counted = _tokens(model, parsed, raw_body)
        load = host_load()
    content, prompt_tokens, max_tokens, n, reserve, workload = counted
    tokens_done = time.perf_counter()

    # residency and placement
    policy = residency_policy(organization)
    regions = _candidate_regions(policy, region_header)
    states = _fleet(model.name, now, load)
    placement = place(
        PlacementRequest(
            model=model.name,
            prompt_tokens=prompt_tokens,
            max_output_tokens=max_tokens * n,
            workload=workload,
            allowed_regions=regions,
            requested_region=region_header,
            accelerator_family=(policy.accelerator_family or None) if policy else None,
        ),
        states,
    )
    if placement.host_id is None or placement.region is None:
        reasons = "; ".join(placement.reasons[:3]) + ("; ..." if len(placement.reasons) > 3 else "")
        if placement.refusal == "region_not_allowed":
            raise PermissionDenied(f"No allowed region can serve this request: {reasons}", code="region_not_allowed")
        if placement.refusal == "model_not_found":
            raise ModelNotFound(f"The model `{model.name}` is not deployed on any host of this cloud.")
        if placement.refusal == "region_busy":
            raise RegionUnavailable(
                f"Every allowed region is at its queue limit: {reasons}",
                retry_after_s=placement.retry_after_s or RETRY_AFTER_BUSY_S,
                code="region_busy",
            )
        raise RegionUnavailable(
            f"No host in an allowed region is serving {model.name} now: {reasons}",
            retry_after_s=placement.retry_after_s or RETRY_AFTER_UNAVAILABLE_S,
        )
    region = placement.region
    # every queued request has its host, so the region's queue is the sum over its hosts
    queued_in_region = sum(load[s.host_id][1] for s in states if s.region == region and s.host_id in load)
    if queued_in_region >= settings.REGION_QUEUE_CAP:
        raise RegionUnavailable(
            f"The region {region} has {queued_in_region} requests queued; retry shortly.",
            retry_after_s=RETRY_AFTER_BUSY_S,
            code="region_busy",
        )
    placed = time.perf_counter()

    # quota: one atomic step; everything after it releases the reservation on refusal. The regional content
    # (write order, DESIGN section 3: before the central transaction) is on its way meanwhile; a refusal
    # deletes it.
    request_id = new_request_id()
    retention_days = policy.retention_days if policy else 0
    salt = content_salt_new().hex()
    region_alias = region_db_alias(region)
    kept_for = timedelta(days=retention_days) if retention_days else timedelta(seconds=settings.REQUEST_DEADLINE_S)
    expires = now + kept_for
    decision: quota.QuotaDecision | None = None
    try:
        with _content_write(region=region, request_id=request_id, organization_id=organization.pk, body=content,
                            salt=salt, expires_at=expires):  # fmt: skip
            try:
                decision = quota.quota_reserve(
                    client=quota_client(),
                    org_id=organization.pk,
                    region=region,
                    request_id=request_id,
                    tokens=reserve,
                    limits=quota_limits(organization, region),
                    lease_ttl_s=settings.REQUEST_DEADLINE_S,
                )
            except redis.RedisError as exc:  # quota_reserve maps these itself; kept for the client's own errors
                raise ServiceUnavailable(
                    "The quota service is unreachable; retry shortly.", code="quota_unavailable"
                ) from exc
    except BaseException:
        if decision is not None and decision.admitted:  # the content's write failed
            quota.quota_release(client=quota_client(), org_id=organization.pk, region=region, request_id=request_id)
        _content_delete(region_alias=region_alias, request_id=request_id)
        raise
    if not decision.admitted:
        _content_delete(region_alias=region_alias, request_id=request_id)
        advice = (
            f"retry after {decision.retry_after_s} s."
            if decision.retryable
            else "this request alone is larger than the limit; waiting will not help."
        )
        retry_after = decision.retry_after_s
        if decision.limit == "concurrent_requests":
            # a lease lasts until its request ends, which is usually far sooner than its expiry
            retry_after = min(retry_after, CONCURRENCY_RETRY_AFTER_S)
            advice = f"retry after {retry_after} s, when a running request has finished."
        refusal = RateLimited(
            f"Rate limit reached for {organization.slug} in {region} on {decision.limit}; {advice}",
            retry_after_s=retry_after,
            code=f"rate_limit_{decision.limit}",
        )
        refusal.details = {"headers": decision.headers}
        raise refusal
    quota_done = time.perf_counter()

    row = {
        "organization_id": organization.pk,
        "request_id": request_id,
        "api_key_id": api_key.pk,
        "kind": kind,
        "model_name": model.name,
        "region": region,
        "country": next(r.country for r in REGIONS if r.code == region),
        "host_id": placement.host_id,
        "accelerator_class": placement.accelerator or "",
        "workload": workload,
        "stream": getattr(parsed, "stream", False),
        "choices_n": n,
        "prompt_tokens": prompt_tokens,
        "max_tokens": max_tokens,
        "reserved_tokens": reserve,
        "deadline_at": now + timedelta(seconds=settings.REQUEST_DEADLINE_S),
        "placement_reasons": list(placement.reasons),
        "retention_days": retention_days,
        "timings": {"admitted_unix": now.timestamp()},
    }
    write = CentralWrite(
        organization=organization,
        api_key=api_key,
        row=row,
        max_output_tokens=max_tokens * n,
        idempotency_key=idempotency_key,
        endpoint=parsed.endpoint,
        fingerprint=fingerprint,
        outbox=OutboxMessage(
            request_id=request_id,
            task_name=TASK_RUN,
            queue=region_queue(region),
            kwargs={"region": region, "request_id": request_id, "attempt": 1},
        ),
        audit_changes={
            "region": region,
            "host_id": placement.host_id,
            "accelerator": placement.accelerator,
            "reasons": list(placement.reasons),
        },
        now=now,
    )
    published: list[bool] = []
    try:
        # write order (DESIGN section 3): the regional content is written; now index + outbox in one transaction
        if connection.vendor == "postgresql":
            _central_write_in_database(write)
        else:
            _central_write_here(write)
        # published as the transaction commits (at once without one); marked sent later, off this
        # request's path (`outbox_mark_sent`): a row left unmarked is at worst published twice, and a
        # second delivery claims nothing
        outbox = write.outbox
        transaction.on_commit(lambda: published.append(outbox_send(outbox_id=outbox.pk, message=outbox, mark=False)))
    except BaseException as exc:
        quota.quota_release(client=quota_client(), org_id=organization.pk, region=region, request_id=request_id)
        _content_delete(region_alias=region_alias, request_id=request_id)
        if isinstance(exc, DomainError):
            # refused after the quota step (credit, idempotency): the limits are known, say them
            exc.details = {**exc.details, "headers": decision.headers}
        raise
    done = time.perf_counter()
    timings = {
        "tokenize_ms": (tokens_done - started) * 1000,
        "placement_ms": (placed - tokens_done) * 1000,
        "quota_ms": (quota_done - placed) * 1000,
        "write_ms": (done - quota_done) * 1000,
        "admission_ms": (done - started) * 1000,
    }
    return Admission(
        request_id=request_id,
        kind=kind,
        model=model.name,
        region=region,
        created=int(now.timestamp()),
        prompt_tokens=prompt_tokens,
        n=n,
        stream=getattr(parsed, "stream", False),
        include_usage=getattr(parsed, "include_usage", False),
        logprobs=getattr(parsed, "logprobs", False),
        ratelimit_headers=decision.headers,
        timings=timings,
        outbox_unmarked=write.outbox.pk if published and published[0] else None,
        admitted_unix=now.timestamp(),
    )


# --- the regional content ------------------------------------------------------------------------------

_CONTENT_TYPES = {"region": "text", "request_id": "text", "organization_id": "bigint", "body": "jsonb", "salt": "text",
                  "expires_at": "timestamptz", "async_commit": "boolean"}  # fmt: skip
# Its commit does not wait for the disk (`INFERENCE_ASYNC_COMMIT`): content lost with a crash of the regional
# server before the worker reads it fails the request as `content_missing`, unbilled; the worker's write of
# the completion to the same store, which waits, makes it durable.
_CONTENT_WRITE = Prepared(
    "inference_content_write",
    "INSERT INTO inference_requestcontent (region, created_at, request_id, organization_id, body, salt, expires_at) "
    "SELECT %(region)s, now(), %(request_id)s, %(organization_id)s, %(body)s, %(salt)s, %(expires_at)s "
    f"WHERE {ASYNC_COMMIT}",
    _CONTENT_TYPES,
)


@contextmanager
def _content_write(
    *, region: str, request_id: str, organization_id: int, body: dict[str, Any], salt: str, expires_at: datetime
) -> Iterator[None]:
    """The request's content, in its region's store only (`region_db_alias`). On PostgreSQL one prepared
    statement, sent on entry and its answer read on leaving the block (which raises its error): the caller
    reserves the quota meanwhile. Elsewhere the model's save, which checks the same, on entry."""
    store = connections[region_db_alias(region)]
    if store.vendor != "postgresql":
        RequestContent.objects.using(store.alias).create(
            region=region, request_id=request_id, organization_id=organization_id, body=body, salt=salt,
            expires_at=expires_at,
        )  # fmt: skip
        yield
        return
    params = {"region": region, "request_id": request_id, "organization_id": organization_id,
              "body": json.dumps(body), "salt": salt, "expires_at": expires_at,
              "async_commit": async_commit(store)}  # fmt: skip
    with _CONTENT_WRITE.sent(params, using=store.alias):
        yield


def _content_delete(*, region_alias: str, request_id: str) -> None:
    """A refused request's content, gone from its region (content left by a crash is reaped)."""
    RequestContent.objects.using(region_alias).filter(request_id=request_id).delete()


# --- the central write -------------------------------------------------------------------------------


@dataclass
class CentralWrite:
    """Admission's central transaction (DESIGN section 3, after the regional content): the credit hold,
    the idempotency key, the request's index row, its outbox message and the audit record."""

    organization: Organization
    api_key: ApiKey
    row: dict[str, Any]  # InferenceRequest's fields
    max_output_tokens: int
    idempotency_key: str | None
    endpoint: str
    fingerprint: str
    outbox: OutboxMessage  # unsaved; its pk is set by the write
    audit_changes: dict[str, Any]
    now: datetime

    @property
    def request_id(self) -> str:
        return str(self.row["request_id"])

    @property
    def actor_label(self) -> str:
        return f"key:{self.api_key.key_id}"

    def idempotency_in_progress(self) -> Conflict:
        return Conflict("A request with this Idempotency-Key is already in progress.",
                        code="idempotent_request_in_progress")  # fmt: skip


def _central_write_here(write: CentralWrite) -> None:
    """The central write through the ORM, statement by statement (SQLite; on PostgreSQL a test runs it next
    to `_central_write_in_database` and compares the rows)."""
    with transaction.atomic():
        if write.idempotency_key is not None:
            try:
                with transaction.atomic(), org_scope(write.organization.pk):
                    IdempotencyKey.objects.create(
                        organization=write.organization, key=write.idempotency_key, endpoint=write.endpoint,
                        body_sha256=write.fingerprint, request_id=write.request_id, region=write.row["region"],
                        expires_at=write.now + timedelta(seconds=settings.IDEMPOTENCY_TTL_S),
                    )  # fmt: skip
            except IntegrityError:
                raise write.idempotency_in_progress() from None
        billing_services.hold_place(
            organization=write.organization,
            request_id=write.request_id,
            model_name=write.row["model_name"],
            region=write.row["region"],
            input_tokens=write.row["prompt_tokens"],
            max_output_tokens=write.max_output_tokens,
            at=write.now,
        )
        with org_scope(write.organization.pk):
            InferenceRequest.objects.create(organization=write.organization, api_key=write.api_key, **{
                k: v for k, v in write.row.items() if k not in {"organization_id", "api_key_id"}
            })  # fmt: skip
        write.outbox.save()
        audit_record(
            actor=Actor(user_id=None, label=write.actor_label),
            action="inference.place",
            target_type="inference_request",
            target_id=write.request_id,
            organization_id=write.organization.pk,
            changes=write.audit_changes,
        )


# The same writes as one statement (PostgreSQL): `billing_hold_place` (billing migration 0008) and, only
# when it placed the hold, the other four rows, in one round trip and one transaction. Every row is
# written or none: a refusal of the hold writes nothing, and a duplicate idempotency key fails the whole
# statement on its unique constraint. Its commit does not wait for the disk (`INFERENCE_ASYNC_COMMIT`):
# nothing leaves the system on it before a later commit that waits (the settlement's, or a stream's claim)
# has made it durable, and a crash before then loses the request whole, its hold and key with it.
_REQUEST_COLUMNS = (
    "organization_id", "request_id", "api_key_id", "kind", "model_name", "region", "country", "host_id",
    "accelerator_class", "workload", "stream", "choices_n", "prompt_tokens", "max_tokens", "reserved_tokens",
    "deadline_at", "placement_reasons", "retention_days", "timings",
)  # fmt: skip
_JSON_COLUMNS = frozenset({"placement_reasons", "timings"})
_CENTRAL_WRITE = f"""
WITH hold AS MATERIALIZED (
    SELECT p.outcome, p.detail
      FROM billing_hold_place(%(organization_id)s, %(request_id)s, %(model_name)s, %(region)s, %(prompt_tokens)s,
                              %(max_output_tokens)s, %(now)s) p
), placed AS (
    SELECT 1 FROM hold WHERE hold.outcome = 'placed'
), idempotency AS (
    INSERT INTO inference_idempotencykey
        (created_at, updated_at, organization_id, key, endpoint, body_sha256, request_id, region, expires_at)
    SELECT %(now)s, %(now)s, %(organization_id)s, %(idempotency_key)s, %(endpoint)s, %(fingerprint)s,
           %(request_id)s, %(region)s, %(idempotency_expires_at)s
      FROM placed WHERE %(idempotency_key)s::text IS NOT NULL
), request AS (
    INSERT INTO inference_inferencerequest
        (created_at, updated_at, status, completion_tokens, delivered_tokens, finish_reason, attempts, worker,
         error_code, error_message, organization_id, request_id, api_key_id, kind, model_name, region, country,
         host_id, accelerator_class, workload, stream, choices_n, prompt_tokens, max_tokens, reserved_tokens,
         deadline_at, placement_reasons, retention_days, timings)
    SELECT %(now)s, %(now)s, 'queued', 0, 0, '', 0, '', '', '', %(organization_id)s, %(request_id)s, %(api_key_id)s,
           %(kind)s, %(model_name)s, %(region)s, %(country)s, %(host_id)s, %(accelerator_class)s, %(workload)s,
           %(stream)s, %(choices_n)s, %(prompt_tokens)s, %(max_tokens)s, %(reserved_tokens)s, %(deadline_at)s,
           %(placement_reasons)s::jsonb, %(retention_days)s, %(timings)s::jsonb
      FROM placed
), outbox AS (
    INSERT INTO inference_outboxmessage (created_at, updated_at, request_id, task_name, queue, kwargs, send_attempts)
    SELECT %(now)s, %(now)s, %(request_id)s, %(task_name)s, %(queue)s, %(kwargs)s::jsonb, 0 FROM placed
    RETURNING id
), audit AS (
    INSERT INTO core_auditevent
        (created_at, updated_at, actor_label, organization_id, action, target_type, target_id, changes, request_id)
    SELECT %(now)s, %(now)s, %(actor_label)s, %(organization_id)s, 'inference.place', 'inference_request',
           %(request_id)s, %(audit_changes)s::jsonb, %(log_request_id)s
      FROM placed
)
SELECT hold.outcome, hold.detail, (SELECT outbox.id FROM outbox), {ASYNC_COMMIT} FROM hold
"""  # noqa: S608  # constants only
_CENTRAL_WRITE_TYPES = {
    **dict.fromkeys(
        ("organization_id", "max_output_tokens", "api_key_id", "host_id", "prompt_tokens", "reserved_tokens"), "bigint"
    ),
    **dict.fromkeys(("choices_n", "max_tokens", "retention_days"), "integer"),
    **dict.fromkeys(("now", "idempotency_expires_at", "deadline_at"), "timestamptz"),
    **dict.fromkeys(("placement_reasons", "timings", "kwargs", "audit_changes"), "jsonb"),
    **dict.fromkeys(
        (
            "request_id",
            "model_name",
            "region",
            "idempotency_key",
            "endpoint",
            "fingerprint",
            "kind",
            "country",
            "accelerator_class",
            "workload",
            "task_name",
            "queue",
            "actor_label",
            "log_request_id",
        ),
        "text",
    ),
    **dict.fromkeys(("stream", "async_commit"), "boolean"),
}
_CENTRAL_WRITE_STATEMENT = Prepared("inference_central_write", _CENTRAL_WRITE, _CENTRAL_WRITE_TYPES)


def _central_write_in_database(write: CentralWrite) -> None:
    billing_services.hold_place_check(
        request_id=write.request_id, input_tokens=write.row["prompt_tokens"],
        max_output_tokens=write.max_output_tokens, at=write.now,
    )  # fmt: skip
    params: dict[str, Any] = {
        **{c: json.dumps(write.row[c]) if c in _JSON_COLUMNS else write.row[c] for c in _REQUEST_COLUMNS},
        "max_output_tokens": write.max_output_tokens,
        "now": write.now,
        "idempotency_key": write.idempotency_key,
        "endpoint": write.endpoint,
        "fingerprint": write.fingerprint,
        "idempotency_expires_at": write.now + timedelta(seconds=settings.IDEMPOTENCY_TTL_S),
        "task_name": write.outbox.task_name,
        "queue": write.outbox.queue,
        "kwargs": json.dumps(write.outbox.kwargs),
        "actor_label": write.actor_label[:200],
        "audit_changes": json.dumps(write.audit_changes),
        "log_request_id": current_request_id.get(),
        "async_commit": async_commit(connection),
    }
    try:
        # a savepoint only inside a caller's transaction (outside one the statement is its own)
        with transaction.atomic() if connection.in_atomic_block else nullcontext(), connection.cursor() as cursor:
            outcome, detail, outbox_id, _ = _CENTRAL_WRITE_STATEMENT.execute(cursor, params).fetchone()
    except IntegrityError as exc:
        constraint = getattr(getattr(exc.__cause__, "diag", None), "constraint_name", None)
        if constraint == "idempotency_key_per_org":
            raise write.idempotency_in_progress() from None
        raise
    if outcome != "placed":
        raise billing_services.hold_refusal(outcome=outcome, detail=detail, request_id=write.request_id)
    write.outbox.pk = outbox_id


# --- dispatch ----------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _producer() -> Any:
    """A Celery client for sending by task name (domain code never imports the workers package)."""
    from celery import Celery

    app = Celery("controlplane-producer", broker=settings.CELERY_BROKER_URL)
    app.conf.task_serializer = "json"
    app.conf.broker_transport_options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    return app


@lru_cache(maxsize=4)
def _broker_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


_ORIGIN = f"{socket.gethostname()}:{os.getpid()}"
_NO_CALLBACKS = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def task_message(*, task_name: str, kwargs: dict[str, Any], queue: str) -> dict[str, Any]:
    """A task message as Celery's `send_task` writes it to a Redis broker (message protocol 2, JSON body,
    kombu's Redis envelope), for a task run by name with keyword arguments and nothing else: no result,
    no countdown, no callbacks."""
    task_id = str(uuid.uuid4())
    body = json.dumps([[], kwargs, _NO_CALLBACKS]).encode()
    headers: dict[str, Any] = {
        "lang": "py", "task": task_name, "id": task_id, "shadow": None, "eta": None, "expires": None,
        "group": None, "group_index": None, "retries": 0, "timelimit": [None, None], "root_id": task_id,
        "parent_id": None, "argsrepr": "()", "kwargsrepr": repr(kwargs), "origin": _ORIGIN, "ignore_result": True,
        "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
    }  # fmt: skip
    return {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }


def task_publish(*, task_name: str, kwargs: dict[str, Any], queue: str) -> None:
    """Enqueues a task for the workers. On a Redis broker the message is pushed onto the queue's list
    directly, one LPUSH (as kombu's Redis transport does for priority 0): Celery's `send_task` took about
    1.2 ms of CPU per message on admission's path, this about 0.1. Other brokers go through Celery."""
    url = settings.CELERY_BROKER_URL
    if url.startswith(("redis://", "rediss://")):
        message = task_message(task_name=task_name, kwargs=kwargs, queue=queue)
        _broker_client(url).lpush(queue, json.dumps(message))
        return
    _producer().send_task(task_name, kwargs=kwargs, queue=queue)


def outbox_send(*, outbox_id: int, message: OutboxMessage | None = None, mark: bool = True) -> bool:
    """Publishes one outbox message (read from the database unless given) and, with `mark`, marks it
    sent; a failure leaves it for the relay."""
    if message is None:
        message = OutboxMessage.objects.filter(pk=outbox_id, sent_at__isnull=True).first()
        if message is None:
            return False
    try:
        task_publish(task_name=message.task_name, kwargs=message.kwargs, queue=message.queue)
    except Exception:
        OutboxMessage.objects.filter(pk=outbox_id).update(send_attempts=F("send_attempts") + 1)
        logger.exception("outbox send failed; the relay will retry", extra={"request": message.request_id})
        return False
    if mark:
        outbox_mark_sent(outbox_ids=[outbox_id])
    return True


def outbox_mark_sent(*, outbox_ids: Collection[int]) -> None:
    """Marks published messages sent, in one statement. Its commit need not wait for the disk
    (`INFERENCE_ASYNC_COMMIT`): a mark lost with a crash only has the relay publish the message again, and a
    second delivery claims nothing."""
    with transaction_without_waiting():
        OutboxMessage.objects.filter(pk__in=list(outbox_ids), sent_at__isnull=True).update(
            sent_at=timezone.now(), send_attempts=F("send_attempts") + 1
        )
