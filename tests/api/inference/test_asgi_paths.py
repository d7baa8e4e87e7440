"""The ASGI application: the generation endpoints take the lean path (`controlplane.inference.api.asgi`),
which answers as Django's handler does (status, body, headers: request id, security headers), and every
other path or method goes to Django's handler. The end-to-end tests drive the lean path through the real
server (streams, client disconnects, the official client)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest

from controlplane import asgi
from controlplane.inference.api.asgi import LEAN_PATHS, InferenceFastPath

BODY = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
_VOLATILE_HEADERS = {"x-request-id", "content-length", "server-timing"}


def _call(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def _shape(response: httpx.Response) -> tuple[int, Any, dict[str, str]]:
    headers = {k: v for k, v in response.headers.items() if k not in _VOLATILE_HEADERS}
    return response.status_code, response.json(), headers


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Which handler answered each request."""
    seen: list[str] = []
    lean = asgi.application.lean
    original_lean, original_django = lean.handle, asgi.application.django_app

    async def lean_handle(scope: Any, receive: Any, send: Any) -> None:
        seen.append("lean")
        await original_lean(scope, receive, send)

    async def django_app(scope: Any, receive: Any, send: Any) -> None:
        seen.append("django")
        await original_django(scope, receive, send)

    monkeypatch.setattr(lean, "handle", lean_handle)
    monkeypatch.setattr(asgi.application, "django_app", django_app)
    return seen


def test_the_application_is_the_fast_path_in_front_of_django() -> None:
    assert isinstance(asgi.application, InferenceFastPath)
    assert asgi.application.django_app is asgi.django_application
    assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings"} == LEAN_PATHS


@pytest.mark.parametrize("path", sorted(LEAN_PATHS))
@pytest.mark.parametrize(
    ("headers", "content", "status", "code"),
    [
        ({"Authorization": "Bearer not-a-key"}, json.dumps(BODY), 401, "invalid_api_key"),
        ({}, json.dumps(BODY), 401, "missing_api_key"),
        ({"Authorization": "Bearer x"}, "x" * 2_000_000, 413, "request_too_large"),
    ],
)
def test_the_lean_path_answers_as_djangos_handler(
    calls: list[str], path: str, headers: dict[str, str], content: str, status: int, code: str
) -> None:
    headers = {**headers, "Content-Type": "application/json"}
    lean = _call(asgi.application, "POST", path, headers=headers, content=content)
    django = _call(asgi.django_application, "POST", path, headers=headers, content=content)
    assert calls == ["lean"]  # the second call went to Django's handler directly
    assert _shape(lean) == _shape(django)
    assert lean.status_code == status
    assert lean.json()["error"]["code"] == code
    assert lean.headers["x-request-id"].startswith("req_")
    assert re.fullmatch(r"request;dur=\d+\.\d\d", lean.headers["server-timing"])  # the server's time
    assert "server-timing" not in django.headers
    if status != 413:  # the size limit answers before the security headers' middleware, on both paths
        assert lean.headers["x-content-type-options"] == "nosniff"
        assert lean.headers["x-frame-options"] == "DENY"


def test_a_request_id_sent_by_the_client_is_kept() -> None:
    sent = "client-chosen-id-0001"
    response = _call(asgi.application, "POST", "/v1/completions", headers={"x-request-id": sent}, json=BODY)
    assert response.status_code == 401
    assert response.headers["x-request-id"] == sent


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/chat/completions"), ("POST", "/v1/nowhere"),
                                               ("GET", "/healthz")])  # fmt: skip
def test_other_paths_and_methods_go_to_django(calls: list[str], method: str, path: str) -> None:
    response = _call(asgi.application, method, path)
    assert calls == ["django"]
    assert response.headers["x-request-id"]
