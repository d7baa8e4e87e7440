"""The OpenAI-compatible `/v1` API: models, chat completions, completions, embeddings, receipts.

Async views (responses stream as server-sent events); admission runs in one worker thread via
`sync_to_async`, then the answer is relayed from the region's Redis stream. Errors use OpenAI's
shape, `{"error": {"message", "type", "param", "code"}}`, so that the official client raises the
right exception classes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connections
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from controlplane.core import hotcache
from controlplane.core.errors import DomainError, RateLimited
from controlplane.core.regions import REGION_CODES
from controlplane.core.scoping import org_scope
from controlplane.inference import quota, streams
from controlplane.inference.admission import (
    Admission,
    RegionUnavailable,
    allowed_regions,
    outbox_mark_sent,
    quota_client,
    quota_limits,
    request_admit,
    residency_policy,
)
from controlplane.inference.api.asgi import RECEIVED_UNIX
from controlplane.inference.models import InferenceRequest
from controlplane.inference.openai_schema import InvalidParameter, parse_embedding, parse_generation
from controlplane.inference.responses import embedding_vector, stream_chunk, usage_chunk
from controlplane.inference.services import request_cancel
from tenants.keys import key_matches, key_parse
from tenants.models import ApiKey, Organization, ResidencyPolicy
from tenants.scopes import Scope

logger = logging.getLogger("controlplane.inference.api")
_T = TypeVar("_T")

KEEPALIVE_S = 10
RECEIPT_HEADER = "x-residency-receipt"

# The ORM is synchronous: admission and the other database steps run in this fixed set of threads,
# so that a web process runs at most this many of them at once however many requests it relays;
# each call hands its connections back (to the pool) when it ends.
_DB_POOL = ThreadPoolExecutor(max_workers=settings.WEB_DB_THREADS, thread_name_prefix="v1-db")


def _in_pool(func: Callable[..., _T]) -> Callable[..., Awaitable[_T]]:
    def run(*args: Any, **kwargs: Any) -> _T:
        close_old_connections()
        try:
            return func(*args, **kwargs)
        finally:
            connections.close_all()

    return sync_to_async(run, thread_sensitive=False, executor=_DB_POOL)


@dataclass(frozen=True)
class ApiError(Exception):
    status: int
    message: str
    code: str
    param: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_response(err: ApiError) -> JsonResponse:
    kind = _TYPES.get(err.status, "server_error")
    body = {"error": {"message": err.message, "type": kind, "param": err.param, "code": err.code}}
    response = JsonResponse(body, status=err.status)
    for name, value in err.headers:
        response[name] = value
    return response


def _from_domain(exc: DomainError) -> ApiError:
    headers: list[tuple[str, str]] = []
    if isinstance(exc, RateLimited | RegionUnavailable) and exc.retry_after_s > 0:
        headers.append(("Retry-After", str(exc.retry_after_s)))
    extra = exc.details.get("headers") if isinstance(exc.details, dict) else None
    if isinstance(extra, dict):
        headers.extend((str(k), str(v)) for k, v in extra.items())
    param = exc.param if isinstance(exc, InvalidParameter) else None
    return ApiError(exc.http_status, exc.message, exc.code, param, tuple(headers))


# --- authentication --------------------------------------------------------------------------------


def _authenticate(request: HttpRequest) -> tuple[ApiKey, Organization]:
    key, organization, _ = _authenticate_tokens(request)
    return key, organization


def _authenticate_tokens(request: HttpRequest) -> tuple[ApiKey, Organization, hotcache.Tokens]:
    """The key, its organisation and the generation tokens the rest of the request reads under."""
    header = request.headers.get("Authorization", "")
    scheme, _, raw = header.partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        raise ApiError(401, "You didn't provide an API key (Authorization: Bearer <key>).", "missing_api_key")
    parsed = key_parse(raw.strip())
    if parsed is None:
        raise ApiError(401, "Incorrect API key provided: the key is malformed.", "invalid_api_key")
    org_id = hotcache.key_organization(
        parsed.key_id,
        lambda: ApiKey.objects.unscoped_all_orgs().filter(key_id=parsed.key_id).values_list(
            "organization_id", flat=True
        ).first(),
    )
    key: ApiKey | None = None
    tokens = hotcache.Tokens(None, None)
    if org_id is not None:
        tokens = hotcache.generation_tokens(org_id=org_id)
        key = hotcache.cached(
            ("api_key", parsed.key_id),
            # the owner's row (is_active) is global; the key and its organisation are the
            # organisation's: the organisation's token covers both
            tokens.org,
            lambda: ApiKey.objects.unscoped_all_orgs()
            .select_related("created_by", "organization")
            .filter(key_id=parsed.key_id)
            .first(),
        )
    if key is None or not key_matches(parsed.full, key.secret_hmac):
        raise ApiError(401, "Incorrect API key provided.", "invalid_api_key")
    now = timezone.now()
    if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
        raise ApiError(401, "The API key has been revoked or has expired.", "invalid_api_key")
    if not key.created_by.is_active:
        raise ApiError(401, "The API key's owner is no longer active.", "invalid_api_key")
    if Scope.INFERENCE_WRITE not in key.scopes:
        raise ApiError(403, "The API key lacks the inference:write scope.", "scope_missing")
    return key, key.organization, tokens


def _json_body(request: HttpRequest) -> Any:
    if request.content_type != "application/json":
        raise ApiError(400, "The body must be JSON (Content-Type: application/json).", "invalid_content_type")
    try:
        text = request.body.decode("utf-8")
        if "\x00" in text:
            raise ApiError(400, "NUL characters are not allowed in the body.", "invalid_characters")
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"We could not parse the JSON body of your request: {exc}", "invalid_json") from None


def _region_header(request: HttpRequest) -> str | None:
    value = request.headers.get("X-Region")
    if value is None or value == "":
        return None
    value = value.strip().lower()
    if value not in REGION_CODES:
        raise ApiError(403, f"Unknown region {value!r}; known: {', '.join(REGION_CODES)}.", "region_not_allowed",
                       "X-Region")  # fmt: skip
    return value


def _idempotency_key(request: HttpRequest) -> str | None:
    value = request.headers.get("Idempotency-Key")
    if value is None:
        return None
    if not 1 <= len(value) <= 255 or not value.isprintable():
        raise ApiError(400, "Idempotency-Key must be 1-255 printable characters.", "invalid_idempotency_key")
    return value


def _admit(request: HttpRequest, endpoint: str) -> tuple[Admission, int]:
    """Authentication, validation and admission; runs in a worker thread (the ORM is synchronous)."""
    api_key, organization, tokens = _authenticate_tokens(request)
    with hotcache.tokens_in_force(tokens):
        try:
            body = _json_body(request)
            return _admit_parsed(request, endpoint, api_key, organization, body)
        except ApiError as err:
            raise _with_ratelimit(err, organization, request.headers.get("X-Region")) from None


def _with_ratelimit(err: ApiError, organization: Organization, requested: str | None) -> ApiError:
    """A refusal before the quota step still says where the organisation stands: the limits and use
    of the region it named, or else its first allowed region (named in `x-ratelimit-region`)."""
    if any(name.lower().startswith("x-ratelimit-") for name, _ in err.headers):
        return err
    allowed = sorted(allowed_regions(residency_policy(organization)))
    wanted = (requested or "").strip().lower()
    region = wanted if wanted in allowed else (allowed[0] if allowed else None)
    if region is None:
        return err
    try:
        headers = quota.quota_state(
            client=quota_client(), org_id=organization.pk, region=region, limits=quota_limits(organization, region)
        )
    except Exception:  # the refusal matters more than its headers
        logger.warning("could not read the rate-limit state", exc_info=True)
        return err
    return replace(err, headers=(*err.headers, *headers.items(), ("x-ratelimit-region", region)))


def _admit_parsed(
    request: HttpRequest, endpoint: str, api_key: ApiKey, organization: Organization, body: Any
) -> tuple[Admission, int]:
    try:
        parsed = parse_embedding(body) if endpoint == "embedding" else parse_generation(body, endpoint)  # type: ignore[arg-type]  # endpoint is chat|completion here
        admission = request_admit(
            api_key=api_key,
            organization=organization,
            parsed=parsed,
            raw_body=body,
            region_header=_region_header(request),
            idempotency_key=_idempotency_key(request),
        )
    except DomainError as exc:
        raise _from_domain(exc) from None
    return admission, organization.pk


# --- relay -----------------------------------------------------------------------------------------


async def _events(admission: Admission) -> AsyncIterator[dict[str, Any] | None]:
    """The request's stream events; None for a quiet interval (the caller sends a keep-alive)."""
    client = streams.region_client_async(admission.region)
    key = streams.stream_key(admission.request_id)
    last = "0-0"
    deadline = time.monotonic() + settings.REQUEST_DEADLINE_S + 30
    while time.monotonic() < deadline:
        reply = await client.xread({key: last}, block=KEEPALIVE_S * 1000, count=512)
        if not reply:
            yield None
            continue
        for entry_id, fields in reply[0][1]:
            last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            yield json.loads(fields[b"e"])
    yield {"type": "error", "code": "deadline_exceeded", "message": "the request did not finish in time"}


def _finished_status(request_id: str, organization_id: int) -> InferenceRequest | None:
    with org_scope(organization_id):
        return InferenceRequest.objects.filter(request_id=request_id).first()


async def _cancel(admission: Admission, organization_id: int) -> None:
    try:
        await _in_pool(request_cancel)(
            organization_id=organization_id, request_id=admission.request_id, reason="the client disconnected"
        )
    except Exception:
        logger.exception("cancel failed", extra={"request": admission.request_id})


def _headers(response: HttpResponse | StreamingHttpResponse, admission: Admission) -> None:
    for name, value in admission.ratelimit_headers.items():
        response[name] = value
    response["x-inference-request-id"] = admission.request_id
    response["x-region"] = admission.region
    response["server-timing"] = ", ".join(f"{k.removesuffix('_ms')};dur={v:.2f}" for k, v in admission.timings.items())


async def _wait_result(admission: Admission, organization_id: int) -> HttpResponse:
    done = False
    try:
        async for event in _events(admission):
            if event is None:
                continue
            if event["type"] == "done":
                done = True
                response = JsonResponse(event["response"])
                _headers(response, admission)
                receipt = json.dumps(event["receipt"], separators=(",", ":")).encode()
                response[RECEIPT_HEADER] = base64.urlsafe_b64encode(receipt).decode().rstrip("=")
                return response
            if event["type"] == "error":
                done = True
                status = 499 if event.get("code") == "cancelled" else 500
                if event.get("code") in {"deadline_exceeded", "worker_lost", "engine_unavailable"}:
                    status = 503
                return error_response(ApiError(status, event.get("message", "the request failed"), event["code"]))
    finally:
        if not done:
            await _cancel(admission, organization_id)
    return error_response(ApiError(503, "the request did not finish in time", "deadline_exceeded"))


def _sse(data: Any) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


async def _stream(admission: Admission, organization_id: int) -> AsyncIterator[bytes]:
    kind, rid, created, model = admission.kind, admission.request_id, admission.created, admission.model
    first = [True] * admission.n
    finished = False

    def chunk(index: int, text: str | None, finish: str | None = None, lp: Any = None) -> bytes:
        body = stream_chunk(
            kind=kind, request_id=rid, created=created, model=model, index=index, text=text, finish_reason=finish,
            logprobs=lp, first=first[index], include_usage=admission.include_usage,
        )  # fmt: skip
        first[index] = False
        return _sse(body)

    try:
        if kind == "chat":
            for i in range(admission.n):
                yield chunk(i, "")
        async for event in _events(admission):
            if event is None:
                yield b": keep-alive\n\n"
                continue
            kind_of = event["type"]
            if kind_of == "tok":
                lp = [event["logprobs"]] if admission.logprobs and "logprobs" in event else None
                if event["text"] or lp is not None:
                    yield chunk(event["choice"], event["text"], lp=lp)
            elif kind_of == "done":
                # the receipt rides on the last chunk before [DONE] (an extra field the client keeps
                # in `model_extra`), so that clients reading `chunk.choices` see nothing unusual
                closing: list[dict[str, Any]] = []
                for i, (tail, reason) in enumerate(zip(event["tails"], event["finish_reasons"], strict=True)):
                    if tail:
                        yield chunk(i, tail)
                    closing.append(stream_chunk(
                        kind=kind, request_id=rid, created=created, model=model, index=i, text=None,
                        finish_reason=reason, first=first[i], include_usage=admission.include_usage,
                    ))  # fmt: skip
                if admission.include_usage:
                    closing.append(
                        usage_chunk(
                            kind=kind, request_id=rid, created=created, model=model,
                            prompt_tokens=event["usage"]["prompt_tokens"],
                            completion_tokens=event["usage"]["completion_tokens"],
                        )
                    )  # fmt: skip
                closing[-1]["residency_receipt"] = event["receipt"]
                for body in closing:
                    yield _sse(body)
                finished = True
                yield b"data: [DONE]\n\n"
                return
            elif kind_of == "error":
                finished = True
                yield _sse({"error": {"message": event.get("message", ""), "type": "server_error", "param": None,
                                      "code": event.get("code")}})  # fmt: skip
                yield b"data: [DONE]\n\n"
                return
    finally:
        if not finished:
            await _cancel(admission, organization_id)


def _with_receive(admission: Admission, request: HttpRequest) -> Admission:
    """Adds `receive` to the admission's `server-timing`: from the server's first sight of the request (the
    lean path's handler) to the start of admission: the request object, middleware, the hop to the
    database thread, the key check and the JSON parsing."""
    received = request.META.get(RECEIVED_UNIX)
    if received is None or not admission.admitted_unix:
        return admission
    return replace(admission, timings={"receive_ms": (admission.admitted_unix - received) * 1000, **admission.timings})


_BACKGROUND: set[asyncio.Task[None]] = set()
# Outbox rows this process published at admission and has yet to mark sent, per event loop: marked in one
# statement a moment after the first of them, off every request's path (the reaper publishes a row still
# unmarked after a few seconds again; a second delivery claims nothing).
_UNMARKED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, set[int]] = weakref.WeakKeyDictionary()
OUTBOX_MARK_DELAY_S = 0.1


def _mark_sent_later(admission: Admission) -> None:
    if admission.outbox_unmarked is None:
        return
    loop = asyncio.get_running_loop()
    pending = _UNMARKED.setdefault(loop, set())
    if not pending:
        loop.call_later(OUTBOX_MARK_DELAY_S, _marks_flush, loop)
    pending.add(admission.outbox_unmarked)


def _marks_flush(loop: asyncio.AbstractEventLoop) -> None:
    ids = sorted(_UNMARKED.pop(loop, ()))
    if not ids:
        return

    async def mark() -> None:
        try:
            await _in_pool(outbox_mark_sent)(outbox_ids=ids)
        except Exception:  # the relay publishes them again; a second delivery claims nothing
            logger.exception("could not mark outbox rows sent", extra={"outbox_ids": ids[:20]})

    task = loop.create_task(mark())
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


# --- views -----------------------------------------------------------------------------------------


async def _generation_view(request: HttpRequest, endpoint: str) -> HttpResponse | StreamingHttpResponse:
    if request.method != "POST":
        return error_response(ApiError(405, "Use POST.", "method_not_allowed"))
    try:
        admission, organization_id = await _in_pool(_admit)(request, endpoint)
    except ApiError as err:
        return error_response(err)
    admission = _with_receive(admission, request)
    if admission.replay is not None:
        response = JsonResponse(admission.replay["body"], status=admission.replay.get("status", 200))
        response["x-idempotent-replay"] = "true"
        return response
    _mark_sent_later(admission)
    if admission.stream:
        streaming = StreamingHttpResponse(_stream(admission, organization_id), content_type="text/event-stream")
        streaming["Cache-Control"] = "no-cache"
        streaming["X-Accel-Buffering"] = "no"
        _headers(streaming, admission)
        return streaming
    return await _wait_result(admission, organization_id)


@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    return await _generation_view(request, "chat")


@csrf_exempt
async def completions(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    return await _generation_view(request, "completion")


@csrf_exempt
async def embeddings(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return error_response(ApiError(405, "Use POST.", "method_not_allowed"))
    try:
        admission, organization_id = await _in_pool(_admit)(request, "embedding")
    except ApiError as err:
        return error_response(err)
    admission = _with_receive(admission, request)
    if admission.replay is not None:
        response = JsonResponse(admission.replay["body"], status=admission.replay.get("status", 200))
        response["x-idempotent-replay"] = "true"
        return response
    _mark_sent_later(admission)
    result = await _wait_result(admission, organization_id)
    if result.status_code != 200:
        return result
    body = json.loads(result.content)
    fmt = (json.loads(request.body or b"{}") or {}).get("encoding_format") or "float"
    if fmt == "base64":
        for item in body["data"]:
            item["embedding"] = embedding_vector(item["embedding"], "base64")
    converted = JsonResponse(body)
    for name, value in result.items():
        if name.lower() not in {"content-type", "content-length"}:
            converted[name] = value
    return converted


def _models_for(request: HttpRequest) -> list[dict[str, Any]]:
    _api_key, organization = _authenticate(request)
    from controlplane.fleet.selectors import hosts_live

    with org_scope(organization.pk):
        policy = ResidencyPolicy.objects.filter(organization=organization).first()
    regions = allowed_regions(policy)
    names: set[str] = set()
    family = policy.accelerator_family if policy else ""
    for host in hosts_live(region_code=None, model_name=None, now=timezone.now()).prefetch_related(
        "deployments__model"
    ):
        if host.region.code not in regions or (family and host.accelerator_class.family != family):
            continue
        names.update(d.model.name for d in host.deployments.all() if d.status == "active")
    from controlplane.fleet.models import CatalogModel

    rows = CatalogModel.objects.filter(name__in=names, status=CatalogModel.Status.AVAILABLE).order_by("name")
    return [
        {"id": m.name, "object": "model", "created": int(m.created_at.timestamp()), "owned_by": "sovereign-cloud"}
        for m in rows
    ]


async def models(request: HttpRequest) -> HttpResponse:
    if request.method != "GET":
        return error_response(ApiError(405, "Use GET.", "method_not_allowed"))
    try:
        data = await _in_pool(_models_for)(request)
    except ApiError as err:
        return error_response(err)
    return JsonResponse({"object": "list", "data": data})


async def model_detail(request: HttpRequest, name: str) -> HttpResponse:
    try:
        data = await _in_pool(_models_for)(request)
    except ApiError as err:
        return error_response(err)
    for item in data:
        if item["id"] == name:
            return JsonResponse(item)
    return error_response(ApiError(404, f"The model `{name}` does not exist or you do not have access to it.",
                                   "model_not_found", "model"))  # fmt: skip


def _receipt_for(request: HttpRequest, request_id: str) -> dict[str, Any]:
    _, organization = _authenticate(request)
    with org_scope(organization.pk):
        row = InferenceRequest.objects.filter(request_id=request_id).first()
    if row is None or row.receipt is None:
        raise ApiError(404, f"No receipt for request {request_id!r}.", "not_found")
    receipt: dict[str, Any] = row.receipt
    return receipt


async def receipt_detail(request: HttpRequest, request_id: str) -> HttpResponse:
    try:
        receipt = await _in_pool(_receipt_for)(request, request_id)
    except ApiError as err:
        return error_response(err)
    return JsonResponse(receipt)


async def not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    return error_response(ApiError(404, f"Unknown API path /v1/{rest}.", "unknown_url"))
