"""Writes of a request's life after admission: claim by a worker under a lease, completion and
settlement exactly once, failure, cancellation, and the reaper's recoveries (DESIGN section 4)."""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, connections, transaction
from django.db.models import Q
from django.utils import timezone

from billing import services as billing_services
from controlplane.core.prepared import ASYNC_COMMIT, Prepared, async_commit
from controlplane.core.regions import REGION_CODES, region_db_alias, region_queue
from controlplane.core.scoping import org_scope
from controlplane.inference import quota, streams
from controlplane.inference.admission import TASK_RUN, allowed_regions, outbox_send, quota_client, regions_allowed_by
from controlplane.inference.models import InferenceRequest, OutboxMessage, RequestContent
from controlplane.inference.receipts import content_hmac, receipt_sign
from tenants.models import ResidencyPolicy

logger = logging.getLogger("controlplane.inference")
Status = InferenceRequest.Status


@dataclass(frozen=True)
class ClaimedRequest:
    request_id: str
    organization_id: int
    region: str
    kind: str
    model_name: str
    stream: bool
    attempt: int
    prompt_tokens: int
    content: dict[str, Any]
    salt: str = ""  # the content's per-request salt (hex), for the receipt's HMACs at completion
    # the receipt's other claims and the completion's choice of what to keep (set by `request_claim`)
    country: str = ""
    accelerator_class: str = ""
    created_at: datetime | None = None
    retention_days: int = 0

    @functools.cached_property
    def input_hmac(self) -> str:
        """The receipt's HMAC of the request as the client sent it (canonical JSON) under the content's salt:
        known once the request is claimed, so the worker computes it while the engine runs."""
        return content_hmac(salt=bytes.fromhex(self.salt), data=_canonical(self.content.get("request")))


def _requests() -> Any:
    return InferenceRequest.objects.unscoped_all_orgs()


def request_claim(*, request_id: str, region: str, attempt: int, worker: str) -> ClaimedRequest | None:
    """Marks a queued request running under this worker's lease. A stale or duplicate delivery (a
    message of an earlier attempt, or one the reaper already re-sent) claims nothing and is dropped.

    Residency is checked again here: a policy narrowed after admission wins. On PostgreSQL the claim, the
    request's fields and its organisation's policy are one statement, and the content one more in the
    region's store."""
    now = timezone.now()
    lease = now + timedelta(seconds=settings.REQUEST_LEASE_S)
    if region not in REGION_CODES:  # no request is queued in a region this cloud does not have
        return None
    if connection.vendor == "postgresql":
        # the content's read in the region is on its way while the central statement claims the request
        store = connections[region_db_alias(region)]
        with _CONTENT.sent({"request_id": request_id}, using=store.alias) as content_read:
            with connection.cursor() as cursor:
                found = _CLAIM.execute(cursor, {
                    "request_id": request_id, "region": region, "attempt": attempt, "previous": attempt - 1,
                    "worker": worker[:120], "lease": lease, "now": now, "async_commit": async_commit(connection),
                }).fetchone()  # fmt: skip
            content_rows = content_read.rows() if found is not None else []
        if found is None:
            return None
        (organization_id, kind, model_name, stream, prompt_tokens, country, accelerator_class, created_at,
         retention_days, countries, zones, _) = found  # fmt: skip
        allowed = regions_allowed_by(countries=_jsonb(countries) or [], zones=_jsonb(zones) or [])
        body, salt = (_jsonb(content_rows[0][0]), content_rows[0][1] or "") if content_rows else (None, "")
    else:
        claimed = (
            _requests()
            .filter(request_id=request_id, region=region, status=Status.QUEUED, attempts=attempt - 1)
            .update(
                status=Status.RUNNING, attempts=attempt, worker=worker[:120], lease_expires_at=lease, started_at=now
            )
        )
        if not claimed:
            return None
        row = _requests().get(request_id=request_id)
        organization_id, kind, model_name, stream, prompt_tokens = (
            row.organization_id, row.kind, row.model_name, row.stream, row.prompt_tokens
        )  # fmt: skip
        country, accelerator_class, created_at, retention_days = (
            row.country, row.accelerator_class, row.created_at, row.retention_days
        )  # fmt: skip
        allowed = _regions_allowed_now(organization_id=organization_id)
        content = RequestContent.objects.using(region_db_alias(region)).filter(request_id=request_id).first()
        body, salt = (content.body, content.salt) if content is not None else (None, "")
    if region not in allowed:
        request_fail(
            request_id=request_id, code="region_no_longer_allowed",
            message="the residency policy no longer allows this request's region", status=Status.CANCELLED,
        )  # fmt: skip
        return None
    if body is None:
        request_fail(request_id=request_id, code="content_missing", message="the request's content is gone")
        return None
    return ClaimedRequest(
        request_id=request_id,
        organization_id=organization_id,
        region=region,
        kind=kind,
        model_name=model_name,
        stream=stream,
        attempt=attempt,
        prompt_tokens=prompt_tokens,
        content=body,
        salt=salt,
        country=country,
        accelerator_class=accelerator_class,
        created_at=created_at,
        retention_days=retention_days,
    )


# The claim (PostgreSQL): the queued row of this attempt becomes running, and the fields the worker needs
# come back with its organisation's residency policy (none: no region is allowed). A non-streamed claim's
# commit does not wait for the disk (`INFERENCE_ASYNC_COMMIT`): its answer leaves only after the settlement's
# commit, which waits. A stream's does wait, and so makes admission's write durable, before its first token
# leaves: delivered tokens are billed, even after a crash of the database.
_CLAIM = Prepared(
    "inference_request_claim",
    f"""
UPDATE inference_inferencerequest r
   SET status = 'running', attempts = %(attempt)s, worker = %(worker)s, lease_expires_at = %(lease)s,
       started_at = %(now)s
 WHERE r.request_id = %(request_id)s AND r.region = %(region)s AND r.status = 'queued' AND r.attempts = %(previous)s
RETURNING r.organization_id, r.kind, r.model_name, r.stream, r.prompt_tokens, r.country, r.accelerator_class,
          r.created_at, r.retention_days,
          (SELECT p.allowed_countries FROM tenants_residencypolicy p WHERE p.organization_id = r.organization_id),
          (SELECT p.allowed_zones FROM tenants_residencypolicy p WHERE p.organization_id = r.organization_id),
          CASE WHEN NOT r.stream THEN {ASYNC_COMMIT} END
""",  # noqa: S608  # constants only
    {
        "attempt": "integer",
        "previous": "integer",
        "worker": "text",
        "lease": "timestamptz",
        "now": "timestamptz",
        "request_id": "text",
        "region": "text",
        "async_commit": "boolean",
    },
)
_CONTENT = Prepared(
    "inference_request_content",
    "SELECT c.body, c.salt FROM inference_requestcontent c WHERE c.request_id = %(request_id)s",
    {"request_id": "text"},
)


def _jsonb(value: Any) -> Any:
    """A jsonb column read through Django's cursor: text (Django decodes JSON fields itself) or decoded."""
    return json.loads(value) if isinstance(value, str) else value


def _regions_allowed_now(*, organization_id: int) -> frozenset[str]:
    with org_scope(organization_id):
        policy = ResidencyPolicy.objects.filter(organization_id=organization_id).first()
    return allowed_regions(policy)


def request_lease_renew(*, request_id: str, attempt: int) -> bool:
    """Extends the lease; False when the request is no longer this attempt's (reaped, cancelled)."""
    until = timezone.now() + timedelta(seconds=settings.REQUEST_LEASE_S)
    return bool(
        _requests()
        .filter(request_id=request_id, status=Status.RUNNING, attempts=attempt)
        .update(lease_expires_at=until)
    )


def request_first_token(*, request_id: str, attempt: int, at: datetime | None = None) -> None:
    """Records when the attempt produced its first token (`at`: the engine's moment, not this write's)."""
    _requests().filter(request_id=request_id, attempts=attempt, first_token_at__isnull=True).update(
        first_token_at=at or timezone.now()
    )


def _receipt_sign(
    source: ClaimedRequest | InferenceRequest,
    *,
    completion_tokens: int,
    input_hmac: str,
    output_hmac: str,
    completed: datetime,
) -> dict[str, Any]:
    """The signed receipt of a request, from its row or from what the worker claimed (the same fields)."""
    if source.created_at is None:
        raise ValueError(f"request {source.request_id} has no creation time")
    return receipt_sign(
        claims={
            "request_id": source.request_id,
            "organization": source.organization_id,
            "model": source.model_name,
            "region": source.region,
            "country": source.country,
            "accelerator_class": source.accelerator_class,
            "backend": "cpu",
            "created": source.created_at.isoformat(),
            "completed": completed.isoformat(),
            "input_hmac": input_hmac,
            "output_hmac": output_hmac,
            "input_tokens": source.prompt_tokens,
            "output_tokens": completion_tokens,
        }
    )


def _content_hmacs(row: InferenceRequest, output: bytes) -> tuple[str, str, RequestContent | None]:
    store = RequestContent.objects.using(region_db_alias(row.region))
    content = store.filter(request_id=row.request_id).first()
    if content is None:
        return "", "", None
    salt = bytes.fromhex(content.salt)
    request_bytes = _canonical(content.body.get("request") if content.body else None)
    return content_hmac(salt=salt, data=request_bytes), content_hmac(salt=salt, data=output), content


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def request_complete(
    *,
    request_id: str,
    attempt: int,
    completion_tokens: int,
    finish_reason: str,
    response: dict[str, Any],
    output: bytes,
    timings: dict[str, float],
    claimed: ClaimedRequest | None = None,
    after_answer: bool = False,
    first_token_at: datetime | None = None,
) -> dict[str, Any] | None:
    """Settles a finished request exactly once: ledger entry, hold capture, status, receipt, in one
    central transaction; stores the response in the region (unless retention is 0). Returns the
    receipt, or None when this attempt no longer owns the request (nothing is written then).

    The worker passes what it claimed: the receipt then comes from what it already holds (the content
    for the HMACs, the request's fields) and, on PostgreSQL, the row's lock, the settlement and the row's
    completion are one statement, its own transaction. The response is stored in the region after the
    central commit (only the attempt that owns the request gets there), and the quota's reservation
    settled; with `after_answer` the caller does both once the answer is on its way
    (`request_after_answer`). `first_token_at`: the attempt's first token, if not recorded yet."""
    now = timezone.now()
    if claimed is not None and claimed.request_id == request_id and connection.vendor == "postgresql":
        done = _request_complete_in_database(
            claimed=claimed, attempt=attempt, completion_tokens=completion_tokens, finish_reason=finish_reason,
            response=response, output=output, timings=timings, now=now, first_token_at=first_token_at,
        )  # fmt: skip
    else:
        done = _request_complete_here(
            request_id=request_id, attempt=attempt, completion_tokens=completion_tokens, finish_reason=finish_reason,
            response=response, output=output, timings=timings, claimed=claimed, now=now,
            first_token_at=first_token_at,
        )  # fmt: skip
    if done is None:
        return None
    receipt, organization_id, region, total, retention_days = done
    if not after_answer:

        def after() -> None:
            _after_answer(request_id=request_id, organization_id=organization_id, region=region,
                          retention_days=retention_days, response=response, tokens=total)  # fmt: skip

        transaction.on_commit(after)
    return receipt


def request_after_answer(*, claimed: ClaimedRequest, response: dict[str, Any], completion_tokens: int) -> None:
    """What a completion made with `after_answer` leaves to its caller: the response stored in the region
    (unless retention is 0: then the content is dropped) and the quota's reservation settled to the actual
    tokens. A failure of either is logged: the answer is already out and billed."""
    _after_answer(request_id=claimed.request_id, organization_id=claimed.organization_id, region=claimed.region,
                  retention_days=claimed.retention_days, response=response,
                  tokens=claimed.prompt_tokens + completion_tokens)  # fmt: skip


def _after_answer(
    *, request_id: str, organization_id: int, region: str, retention_days: int, response: dict[str, Any], tokens: int
) -> None:
    try:
        _completion_store(request_id=request_id, region=region, retention_days=retention_days, response=response)
    except Exception:  # an idempotent replay then answers that the response was not retained
        logger.exception("could not store the completion in its region", extra={"request": request_id})
    _quota_settle(org_id=organization_id, region=region, request_id=request_id, tokens=tokens)


_Completed = tuple[dict[str, Any], int, str, int, int]  # receipt, organisation, region, tokens in all, retention


def _request_complete_here(
    *, request_id: str, attempt: int, completion_tokens: int, finish_reason: str, response: dict[str, Any],
    output: bytes, timings: dict[str, float], claimed: ClaimedRequest | None, now: datetime,
    first_token_at: datetime | None,
) -> _Completed | None:  # fmt: skip
    """The completion through the ORM (SQLite, callers without the claim; on PostgreSQL a test compares it
    with `_request_complete_in_database`)."""
    with transaction.atomic():
        row = (
            _requests()
            .select_for_update()
            .filter(request_id=request_id, status=Status.RUNNING, attempts=attempt)
            .first()
        )
        if row is None:
            return None
        row.completion_tokens = completion_tokens
        if claimed is not None and claimed.salt and claimed.request_id == request_id:
            input_hmac = claimed.input_hmac
            output_hmac = content_hmac(salt=bytes.fromhex(claimed.salt), data=output)
            held = True
        else:
            input_hmac, output_hmac, content = _content_hmacs(row, output)
            held = content is not None
        ledger = billing_services.hold_settle(
            request_id=request_id,
            input_tokens=row.prompt_tokens,
            output_tokens=completion_tokens,
            api_key_id=row.api_key_id,
            at=now,
            organization_id=row.organization_id,
        )
        receipt = _receipt_sign(row, completion_tokens=completion_tokens, input_hmac=input_hmac,
                                output_hmac=output_hmac, completed=now)  # fmt: skip
        row.status = Status.COMPLETED
        row.finish_reason = finish_reason[:16]
        row.completed_at = now
        row.lease_expires_at = None
        row.receipt = receipt
        row.timings = {**row.timings, **timings, "ledger_entry": ledger.pk}
        if row.first_token_at is None:
            row.first_token_at = first_token_at
        row.save(
            update_fields=[
                "status", "finish_reason", "completed_at", "lease_expires_at", "receipt", "timings",
                "completion_tokens", "first_token_at", "updated_at",
            ]
        )  # fmt: skip
    if not held:  # no content in the region (purged): nothing to store there either
        return receipt, row.organization_id, row.region, row.prompt_tokens + completion_tokens, 0
    return receipt, row.organization_id, row.region, row.prompt_tokens + completion_tokens, row.retention_days


def _completion_store(*, request_id: str, region: str, retention_days: int, response: dict[str, Any]) -> None:
    """The response kept in the region with its content (for idempotent replays and the request log), or,
    with retention 0, the content dropped (the salt stays for the receipt)."""
    store = RequestContent.objects.using(region_db_alias(region)).filter(request_id=request_id)
    if retention_days:
        store.update(completion={"response": response, "status": 200})
    else:
        # retention 0: nothing of the content stays; the salt stays for the receipt
        store.update(body=None)


# The completion (PostgreSQL): lock the running row of this attempt, settle it (`billing_hold_settle`),
# then complete the row with the receipt and the ledger entry's id; nothing when the attempt no longer owns
# the request. `updated_at` is the moment the row is completed, after the settlement.
_COMPLETE = Prepared(
    "inference_request_complete",
    """
WITH request AS MATERIALIZED (
    SELECT r.id, r.organization_id, r.prompt_tokens, r.api_key_id
      FROM inference_inferencerequest r
     WHERE r.request_id = %(request_id)s AND r.status = 'running' AND r.attempts = %(attempt)s
       FOR UPDATE
), settled AS MATERIALIZED (
    SELECT request.id, s.outcome, (s.entry).id AS entry_id
      FROM request, billing_hold_settle(%(request_id)s, request.organization_id, request.prompt_tokens::bigint,
                                        %(completion_tokens)s, request.api_key_id, %(now)s) s
), completed AS (
    UPDATE inference_inferencerequest r
       SET status = 'completed', finish_reason = %(finish_reason)s, completed_at = %(now)s, lease_expires_at = NULL,
           receipt = %(receipt)s, completion_tokens = %(completion_tokens)s, updated_at = clock_timestamp(),
           first_token_at = coalesce(r.first_token_at, %(first_token_at)s),
           timings = r.timings || %(timings)s || jsonb_build_object('ledger_entry', settled.entry_id)
      FROM settled
     WHERE r.id = settled.id AND settled.outcome IN ('settled', 'settled_before')
)
SELECT settled.outcome FROM settled
""",
    {
        "request_id": "text",
        "attempt": "integer",
        "completion_tokens": "bigint",
        "now": "timestamptz",
        "finish_reason": "text",
        "receipt": "jsonb",
        "timings": "jsonb",
        "first_token_at": "timestamptz",
    },
)


def _request_complete_in_database(
    *, claimed: ClaimedRequest, attempt: int, completion_tokens: int, finish_reason: str, response: dict[str, Any],
    output: bytes, timings: dict[str, float], now: datetime, first_token_at: datetime | None,
) -> _Completed | None:  # fmt: skip
    receipt = _receipt_sign(
        claimed, completion_tokens=completion_tokens, completed=now, input_hmac=claimed.input_hmac,
        output_hmac=content_hmac(salt=bytes.fromhex(claimed.salt), data=output),
    )  # fmt: skip
    params = {
        "request_id": claimed.request_id, "attempt": attempt, "completion_tokens": completion_tokens, "now": now,
        "finish_reason": finish_reason[:16], "receipt": json.dumps(receipt), "timings": json.dumps(timings),
        "first_token_at": first_token_at,
    }  # fmt: skip
    # its own transaction (or part of the caller's): an outcome that settled nothing wrote nothing
    with connection.cursor() as cursor:
        found = _COMPLETE.execute(cursor, params).fetchone()
    if found is None:
        return None
    billing_services.settle_outcome_check(
        outcome=found[0], request_id=claimed.request_id, organization_id=claimed.organization_id
    )
    return (receipt, claimed.organization_id, claimed.region, claimed.prompt_tokens + completion_tokens,
            claimed.retention_days)  # fmt: skip


def _quota_settle(*, org_id: int, region: str, request_id: str, tokens: int) -> None:
    try:
        quota.quota_settle(client=quota_client(), org_id=org_id, region=region, request_id=request_id,
                           actual_tokens=tokens)  # fmt: skip
    except Exception:
        # the lease and window entries expire on their own; admission stays metered
        logger.exception("quota settle failed", extra={"request": request_id})


def _quota_release(*, org_id: int, region: str, request_id: str) -> None:
    try:
        quota.quota_release(client=quota_client(), org_id=org_id, region=region, request_id=request_id)
    except Exception:
        logger.exception("quota release failed", extra={"request": request_id})


def request_fail(
    *, request_id: str, code: str, message: str, delivered_tokens: int = 0, status: str = Status.FAILED
) -> bool:
    """Ends a request without a result. Tokens already delivered on a lost stream are billed; with
    none, the hold is released and nothing is billed. Returns False if it had already ended."""
    now = timezone.now()
    with transaction.atomic():
        row = _requests().select_for_update().filter(request_id=request_id).first()
        if row is None or row.finished:
            return False
        if delivered_tokens > 0:
            billing_services.hold_settle(
                request_id=request_id, input_tokens=row.prompt_tokens, output_tokens=delivered_tokens,
                api_key_id=row.api_key_id, at=now,
            )  # fmt: skip
            row.completion_tokens = delivered_tokens
            row.delivered_tokens = delivered_tokens
        else:
            billing_services.hold_release(request_id=request_id, reason=code)
        row.status = status
        row.error_code = code[:64]
        row.error_message = message[:300]
        row.completed_at = now
        row.lease_expires_at = None
        row.save()
        region, org_id = row.region, row.organization_id
        tokens = row.prompt_tokens + delivered_tokens
        RequestContent.objects.using(region_db_alias(region)).filter(request_id=request_id, expires_at__lte=now).update(
            body=None
        )

        def after() -> None:
            if delivered_tokens > 0:
                _quota_settle(org_id=org_id, region=region, request_id=request_id, tokens=tokens)
            else:
                _quota_release(org_id=org_id, region=region, request_id=request_id)
            try:
                streams.event_append(
                    region=region, request_id=request_id,
                    event={"type": "error", "code": code, "message": message, "billed_tokens": delivered_tokens},
                )  # fmt: skip
            except Exception:
                logger.exception("could not append the error event", extra={"request": request_id})

        transaction.on_commit(after)
    return True


def request_cancel(*, organization_id: int, request_id: str, reason: str) -> None:
    """The client went away: the worker stops at its next step (it polls the cancel key); a request
    still queued ends here. Tokens already produced are billed by the worker's completion."""
    with org_scope(organization_id):
        row = InferenceRequest.objects.filter(request_id=request_id).first()
    if row is None or row.finished:
        return
    streams.cancel_set(region=row.region, request_id=request_id)
    if row.status == Status.QUEUED:
        request_fail(request_id=request_id, code="cancelled", message=reason, status=Status.CANCELLED)


def _delivered_tokens(row: InferenceRequest) -> int:
    """Token events the lost attempt had appended to the stream (what a client may have seen)."""
    try:
        events = streams.events_read(region=row.region, request_id=row.request_id)
    except Exception:
        logger.exception("could not read the stream", extra={"request": row.request_id})
        return 0
    return sum(1 for e in events if e.get("type") == "tok" and e.get("attempt") == row.attempts)


def request_recover(*, request_id: str) -> str:
    """The reaper's decision for a running request whose lease ran out (its worker died)."""
    with transaction.atomic():
        row = (
            _requests()
            .select_for_update()
            .filter(request_id=request_id, status=Status.RUNNING, lease_expires_at__lt=timezone.now())
            .first()
        )
        if row is None:
            return "skipped"
        if row.stream:
            delivered = _delivered_tokens(row)
            if delivered > 0:
                transaction.on_commit(
                    lambda: request_fail(
                        request_id=request_id, code="stream_lost",
                        message="the worker was lost after the stream had started; delivered tokens are billed",
                        delivered_tokens=delivered,
                    )
                )  # fmt: skip
                return "failed_stream"
        if row.attempts >= settings.REQUEST_MAX_ATTEMPTS:
            transaction.on_commit(
                lambda: request_fail(
                    request_id=request_id, code="worker_lost",
                    message=f"the request's worker was lost {row.attempts} times",
                )
            )  # fmt: skip
            return "failed"
        row.status = Status.QUEUED
        row.lease_expires_at = None
        row.first_token_at = None
        row.save(update_fields=["status", "lease_expires_at", "first_token_at", "updated_at"])
        outbox = OutboxMessage.objects.create(
            request_id=request_id,
            task_name=TASK_RUN,
            queue=region_queue(row.region),
            kwargs={"region": row.region, "request_id": request_id, "attempt": row.attempts + 1},
        )
        transaction.on_commit(lambda: outbox_send(outbox_id=outbox.pk))
        return "requeued"


@dataclass
class ReapReport:
    requeued: int = 0
    failed: int = 0
    expired: int = 0
    resent: int = 0
    purged: int = 0
    orphans: int = 0
    cancelled: int = 0


def requests_reap(*, now: datetime | None = None) -> ReapReport:
    """Beat, every few seconds: expired leases, requests past their deadline, unsent outbox rows,
    content past retention, and regional content whose central row never came."""
    now = now or timezone.now()
    report = ReapReport()
    for request_id in (
        _requests().filter(status=Status.RUNNING, lease_expires_at__lt=now).values_list("request_id", flat=True)
    ):
        outcome = request_recover(request_id=request_id)
        if outcome == "requeued":
            report.requeued += 1
        elif outcome.startswith("failed"):
            report.failed += 1
    stranded = (
        _requests()
        .filter(Q(status=Status.QUEUED) | Q(status=Status.RUNNING), deadline_at__lt=now)
        .values_list("request_id", flat=True)
    )
    for request_id in stranded:
        if request_fail(request_id=request_id, code="deadline_exceeded",
                        message=f"not finished within {settings.REQUEST_DEADLINE_S} s"):  # fmt: skip
            report.expired += 1
    queued_by_org: dict[int, set[str]] = {}
    for org_id, region in _requests().filter(status=Status.QUEUED).values_list("organization_id", "region"):
        queued_by_org.setdefault(org_id, set()).add(region)
    for org_id, regions in queued_by_org.items():
        with org_scope(org_id):
            policy = ResidencyPolicy.objects.filter(organization_id=org_id).first()
        if regions - allowed_regions(policy):
            report.cancelled += requests_cancel_outside(organization_id=org_id, allowed=allowed_regions(policy))
    resend_before = now - timedelta(seconds=max(2, settings.REAPER_INTERVAL_S))
    for outbox_id in OutboxMessage.objects.filter(sent_at__isnull=True, created_at__lt=resend_before).values_list(
        "pk", flat=True
    ):
        report.resent += int(outbox_send(outbox_id=outbox_id))
    for code in settings.REGION_REDIS_URLS:
        store = RequestContent.objects.using(region_db_alias(code))
        report.purged += (
            store.filter(expires_at__lt=now)
            .filter(Q(body__isnull=False) | Q(completion__isnull=False))
            .update(body=None, completion=None)
        )
        orphan_before = now - timedelta(minutes=5)
        candidates = list(store.filter(created_at__lt=orphan_before).values_list("request_id", flat=True)[:500])
        if candidates:
            known = set(_requests().filter(request_id__in=candidates).values_list("request_id", flat=True))
            orphans = [c for c in candidates if c not in known]
            if orphans:
                report.orphans += store.filter(request_id__in=orphans).delete()[0]
    return report


def requests_cancel_outside(*, organization_id: int, allowed: frozenset[str]) -> int:
    """A narrowed residency policy cancels the tenant's queued requests in regions no longer allowed."""
    with org_scope(organization_id):
        ids = list(
            InferenceRequest.objects.filter(status=Status.QUEUED)
            .exclude(region__in=allowed)
            .values_list("request_id", flat=True)
        )
    for request_id in ids:
        request_fail(
            request_id=request_id, code="region_no_longer_allowed",
            message="the residency policy no longer allows this request's region", status=Status.CANCELLED,
        )  # fmt: skip
    return len(ids)
