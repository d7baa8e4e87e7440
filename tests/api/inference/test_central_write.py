"""Admission's central write on PostgreSQL is one statement (`_central_write_in_database`: the hold through
`billing_hold_place`, the idempotency key, the request's row, its outbox message, the audit record). It
writes what the ORM's statements write (`_central_write_here`), all of it or nothing: a refused hold and a
duplicate idempotency key leave no row behind. And the broker message admission publishes itself is the one
Celery's own `send_task` writes."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
from django.conf import settings
from django.utils import timezone

from billing.models import CreditGrant, CreditHold, HoldAllocation
from billing.services import InsufficientCredit
from controlplane.core.errors import Conflict
from controlplane.core.models import AuditEvent
from controlplane.core.regions import region_queue
from controlplane.inference import admission
from controlplane.inference.admission import CentralWrite
from controlplane.inference.models import IdempotencyKey, InferenceRequest, OutboxMessage
from tenants.models import ApiKey
from tests.factories import Customer
from tests.stack import serving_customer

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")
MODEL = "SmolLM2-135M-Instruct"
PATHS: dict[str, Callable[[CentralWrite], None]] = {
    "database": admission._central_write_in_database,
    "orm": admission._central_write_here,
}
_VOLATILE = {"id", "created_at", "updated_at", "request_id", "organization_id", "target_id"}


@pytest.fixture
def gulf(transactional_db: None) -> Customer:
    return serving_customer()


def _write(
    customer: Customer, request_id: str, *, idempotency_key: str | None = None, now: datetime | None = None
) -> CentralWrite:
    key = ApiKey.objects.unscoped_all_orgs().select_related("organization").get(organization=customer.organization)
    now = now or timezone.now()
    reasons = ["candidate regions: dxb", "chose host 1"]
    return CentralWrite(
        organization=key.organization,
        api_key=key,
        row={
            "organization_id": key.organization_id,
            "request_id": request_id,
            "api_key_id": key.pk,
            "kind": "chat",
            "model_name": MODEL,
            "region": "dxb",
            "country": "AE",
            "host_id": None,
            "accelerator_class": "nvidia-l4",
            "workload": "interactive",
            "stream": True,
            "choices_n": 2,
            "prompt_tokens": 20,
            "max_tokens": 8,
            "reserved_tokens": 36,
            "deadline_at": now + timedelta(seconds=600),
            "placement_reasons": reasons,
            "retention_days": 1,
            "timings": {"admitted_unix": now.timestamp()},
        },
        max_output_tokens=16,
        idempotency_key=idempotency_key,
        endpoint="chat",
        fingerprint="f" * 64,
        outbox=OutboxMessage(
            request_id=request_id,
            task_name=admission.TASK_RUN,
            queue=region_queue("dxb"),
            kwargs={"region": "dxb", "request_id": request_id, "attempt": 1},
        ),
        audit_changes={"region": "dxb", "host_id": None, "reasons": reasons},
        now=now,
    )


def _rows(request_id: str) -> dict[str, Any]:
    """Everything the write left for one request, without ids and moments of writing, the request id
    replaced by a placeholder."""

    def plain(rows: Any) -> list[dict[str, Any]]:
        kept = [{k: v for k, v in row.items() if k not in _VOLATILE} for row in rows]
        text = json.dumps(kept, default=str, sort_keys=True).replace(request_id, "<request>")
        loaded: list[dict[str, Any]] = json.loads(text)
        return loaded

    holds = plain(CreditHold.objects.unscoped_all_orgs().filter(request_id=request_id).values())
    return {
        "request": plain(InferenceRequest.objects.unscoped_all_orgs().filter(request_id=request_id).values()),
        "outbox": plain(OutboxMessage.objects.filter(request_id=request_id).values()),
        "audit": plain(AuditEvent.objects.unscoped_all_orgs().filter(target_id=request_id).values()),
        "idempotency": plain(IdempotencyKey.objects.unscoped_all_orgs().filter(request_id=request_id).values()),
        "hold": holds[0] if holds else None,
        "allocations": [
            a.amount_micros for a in HoldAllocation.objects.unscoped_all_orgs().filter(hold__request_id=request_id)
        ],
    }


@pytest.mark.parametrize("idempotency_key", [None, "key-1"])
def test_the_statement_writes_what_the_orm_writes(gulf: Customer, idempotency_key: str | None) -> None:
    written: dict[str, dict[str, Any]] = {}
    now = timezone.now()
    for path, write_with in PATHS.items():
        request_id = f"req_{path}_{idempotency_key}"
        key = None if idempotency_key is None else f"{path}-{idempotency_key}"
        write = _write(gulf, request_id, idempotency_key=key, now=now)
        write_with(write)
        assert write.outbox.pk == OutboxMessage.objects.get(request_id=request_id).pk
        rows = _rows(request_id)
        for part in ("request", "outbox", "audit"):
            assert len(rows[part]) == 1, part
        assert rows["hold"] is not None
        assert rows["allocations"] == [rows["hold"]["amount_micros"]]
        assert len(rows["idempotency"]) == (0 if idempotency_key is None else 1)
        for row in rows["idempotency"]:
            assert row.pop("key") == key
        written[path] = rows
    assert written["database"] == written["orm"]


def test_a_refused_hold_writes_nothing(gulf: Customer) -> None:
    CreditGrant.objects.unscoped_all_orgs().filter(organization=gulf.organization).update(consumed_micros=10_000_000)
    for path, write_with in PATHS.items():
        request_id = f"req_refused_{path}"
        with pytest.raises(InsufficientCredit) as refused:
            write_with(_write(gulf, request_id, idempotency_key=f"refused-{path}"))
        assert refused.value.details["available_micros"] == 0
        assert _rows(request_id) == {"request": [], "outbox": [], "audit": [], "idempotency": [], "hold": None,
                                     "allocations": []}  # fmt: skip


def test_a_duplicate_idempotency_key_undoes_the_whole_write(gulf: Customer) -> None:
    for path, write_with in PATHS.items():
        write_with(_write(gulf, f"req_first_{path}", idempotency_key=f"same-{path}"))
        held = CreditGrant.objects.unscoped_all_orgs().get(organization=gulf.organization).held_micros
        with pytest.raises(Conflict) as conflict:
            write_with(_write(gulf, f"req_second_{path}", idempotency_key=f"same-{path}"))
        assert conflict.value.code == "idempotent_request_in_progress"
        assert _rows(f"req_second_{path}")["hold"] is None
        assert _rows(f"req_second_{path}")["request"] == []
        # the first request's hold stays, and the second one's draw on the grant was undone with it
        assert CreditGrant.objects.unscoped_all_orgs().get(organization=gulf.organization).held_micros == held


def test_the_published_message_is_the_one_celery_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoded, the message admission pushes onto the queue equals what Celery's `send_task` pushes for the
    same task, apart from the ids it draws and the sender's name; a real worker running it is shown by every
    end-to-end test."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    queue = "region.test-publish"
    client.delete(queue)
    kwargs = {"region": "dxb", "request_id": "req_publish", "attempt": 1}
    admission.task_publish(task_name=admission.TASK_RUN, kwargs=kwargs, queue=queue)
    admission._producer().send_task(admission.TASK_RUN, kwargs=kwargs, queue=queue)
    pushed: list[bytes] = client.lrange(queue, 0, -1)  # type: ignore[assignment]  # a sync client
    ours, celery = (json.loads(raw) for raw in reversed(pushed))
    client.delete(queue)
    assert json.loads(base64.b64decode(ours["body"])) == json.loads(base64.b64decode(celery["body"]))
    for message in (ours, celery):
        del message["body"]
        for name in ("id", "root_id", "origin", "ignore_result"):
            message["headers"].pop(name)
        for name in ("correlation_id", "reply_to", "delivery_tag"):
            message["properties"].pop(name)
    assert ours == celery
