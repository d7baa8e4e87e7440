"""Which commits on a request's path wait for the disk (PostgreSQL, `INFERENCE_ASYNC_COMMIT`).

The writes before the settlement (the regional content, admission's central write, a non-streamed claim,
the outbox mark) set `synchronous_commit` off for their own transaction; a stream's claim and the
settlement keep the server's setting, and nothing leaks to the connection's later transactions. Each
statement is run here inside a transaction of the test's, with the choice forced on, so that the setting it
made can be read back before the commit; outside a caller's transaction the choice is never forced."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.test import override_settings
from django.utils import timezone

from controlplane.core import prepared
from controlplane.inference import admission, services
from controlplane.inference.models import OutboxMessage
from tests.api.inference.test_central_write import _write
from tests.factories import Customer
from tests.stack import admit_chat, outbox_sends_recorded, serving_customer

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")
MODEL = "SmolLM2-135M-Instruct"


def _setting(alias: str = "default") -> str:
    with connections[alias].cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        value: str = cursor.fetchone()[0]
        return value


@pytest.fixture
def gulf(transactional_db: None, monkeypatch: pytest.MonkeyPatch) -> Customer:
    outbox_sends_recorded(monkeypatch)
    return serving_customer()


@pytest.fixture
def forced(monkeypatch: pytest.MonkeyPatch) -> None:
    """The request path's choice made as outside a transaction, inside the test's own."""
    for module in (admission, services, prepared):
        monkeypatch.setattr(module, "async_commit", lambda _connection: True)


def test_the_choice_is_postgresql_outside_a_transaction_and_the_setting() -> None:
    assert connection.vendor == "postgresql"
    assert prepared.async_commit(connection) is True
    with transaction.atomic():
        assert prepared.async_commit(connection) is False  # the caller's other writes keep their wait
    with override_settings(INFERENCE_ASYNC_COMMIT=False):
        assert prepared.async_commit(connection) is False


@pytest.mark.parametrize("chosen", [True, False])
def test_the_condition_sets_the_transaction_only(chosen: bool) -> None:
    server = _setting()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SELECT {prepared.ASYNC_COMMIT}".replace("%(async_commit)s", "%s"), [chosen])
        assert cursor.fetchone()[0] is True  # a condition that never filters a row out
        assert _setting() == ("off" if chosen else server)
    assert _setting() == server


def test_the_content_and_the_central_write_commit_without_waiting(gulf: Customer, forced: None) -> None:
    request_id = f"req_{uuid.uuid4().hex}"
    expires = timezone.now() + timedelta(days=1)
    with transaction.atomic(using="region_dxb"):
        with admission._content_write(region="dxb", request_id=request_id, organization_id=gulf.organization.pk,
                                      body={"prompt_ids": [1, 2]}, salt="00" * 16, expires_at=expires):  # fmt: skip
            pass
        assert _setting("region_dxb") == "off"
    assert _setting("region_dxb") == "on"
    with transaction.atomic():
        admission._central_write_in_database(_write(gulf, request_id))
        assert _setting() == "off"
    assert _setting() == "on"
    with transaction.atomic():
        admission.outbox_mark_sent(outbox_ids=[OutboxMessage.objects.get(request_id=request_id).pk])
        assert _setting() == "off"
    assert OutboxMessage.objects.get(request_id=request_id).sent_at is not None


@pytest.mark.parametrize("stream", [False, True])
def test_a_streams_claim_waits_and_the_settlement_always_does(gulf: Customer, forced: None, stream: bool) -> None:
    """A stream's tokens leave before its settlement: its claim's commit waits, and makes admission's
    write durable first. The settlement's commit is the one every answer waits for."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": stream}
    request_id = str(admit_chat(gulf, body).request_id)
    with transaction.atomic():
        claimed = services.request_claim(request_id=request_id, region="dxb", attempt=1, worker="test:1")
        assert claimed is not None
        assert claimed.stream is stream
        assert _setting() == ("on" if stream else "off")
    receipt = services.request_complete(
        request_id=request_id, attempt=1, completion_tokens=2, finish_reason="stop",
        response={"usage": {"prompt_tokens": claimed.prompt_tokens, "completion_tokens": 2}}, output=b"ok",
        timings={"generate_ms": 1.0}, claimed=claimed,
    )  # fmt: skip
    assert receipt is not None
    assert _setting() == "on"
