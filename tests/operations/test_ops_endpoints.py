"""Health, readiness, metrics, request ids and JSON logs."""

from __future__ import annotations

import json
import logging

import pytest
from django.test import Client

from controlplane.core.logging import JsonFormatter, RequestIdFilter


@pytest.mark.django_db(databases="__all__")
def test_health_and_readiness() -> None:
    client = Client()
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.content
    checks = ready.json()["checks"]
    assert checks["db:default"] == "ok"
    assert checks["redis:central"] == "ok"
    assert {f"db:region_{code}" for code in ("sin", "dxb", "fra")} <= set(checks)


@pytest.mark.django_db(databases="__all__")
def test_readiness_fails_when_redis_is_unreachable(settings: object) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # type: ignore[attr-defined]  # pytest-django settings fixture
    response = Client().get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["redis:central"] != "ok"


@pytest.mark.django_db
def test_metrics_expose_request_counters() -> None:
    client = Client()
    client.get("/healthz")
    body = client.get("/metrics").content.decode()
    assert "http_requests_total" in body
    assert 'route="healthz"' in body


@pytest.mark.django_db
def test_every_response_carries_a_request_id() -> None:
    client = Client()
    minted = client.get("/healthz")["x-request-id"]
    assert minted.startswith("req_")
    assert client.get("/nope-not-a-route")["x-request-id"].startswith("req_")
    echoed = client.get("/healthz", HTTP_X_REQUEST_ID="trace-12345678")["x-request-id"]
    assert echoed == "trace-12345678"
    # A malformed incoming id is replaced, not echoed (header injection, log forging).
    replaced = client.get("/healthz", HTTP_X_REQUEST_ID="bad id\nwith newline")["x-request-id"]
    assert replaced.startswith("req_")


@pytest.mark.django_db
def test_logs_are_json_with_the_request_id(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="controlplane.request")
    Client().get("/healthz", HTTP_X_REQUEST_ID="trace-abcdefgh")
    records = [r for r in caplog.records if r.name == "controlplane.request"]
    assert records
    RequestIdFilter().filter(records[-1])
    line = json.loads(JsonFormatter().format(records[-1]))
    assert line["request_id"] == "trace-abcdefgh"
    assert line["route"] == "healthz"
    assert line["status"] == 200
