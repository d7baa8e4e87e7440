"""The generation endpoints of `/v1` on a lean ASGI path, in front of Django's handler.

`POST /v1/chat/completions`, `/v1/completions` and `/v1/embeddings` are the product's hot path. Django's
ASGI handler costs about 3 ms of CPU per request around an async view on this machine: the
`request_started` and `request_finished` signals run their sync receivers in a thread created for the
request (two hops), and the middleware meant for the console (sessions, CSRF, users, messages, static
files) runs on every call. This path keeps what these endpoints need from Django's handler (its request
object, body reading, response sending and client-disconnect handling) and from the middleware (request
id, body-size limit, security headers, metrics and the access log: the same classes, in async mode), and
skips the rest: the views authenticate by API key, are CSRF-exempt, and open their database connections
only in their own thread pool, which closes them.

Every other path, and these paths with another method, go to Django's handler unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponse
from django.urls import resolve, set_script_prefix

from controlplane.core import middleware

ASGIApp = Callable[[dict[str, Any], Callable[..., Awaitable[Any]], Callable[..., Awaitable[Any]]], Awaitable[None]]
LEAN_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
RECEIVED_UNIX = "controlplane.received_unix"  # request.META: when the server called the handler (wall clock)
# outermost first, as in settings.MIDDLEWARE
_CHAIN: tuple[Callable[[Any], Any], ...] = (
    middleware.RequestIdMiddleware,
    middleware.BodySizeLimitMiddleware,
    middleware.SecurityMiddleware,
    middleware.XFrameOptionsMiddleware,
    middleware.MetricsMiddleware,
)


class _LeanHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        handler: Any = convert_exception_to_response(self._view)
        for layer in reversed(_CHAIN):
            handler = convert_exception_to_response(layer(handler))
        self._respond = handler

    def load_middleware(self, is_async: bool = False) -> None:
        """Django's middleware is not loaded: this handler has its own chain."""

    @staticmethod
    async def _view(request: HttpRequest) -> HttpResponse:
        match = resolve(request.path_info)
        request.resolver_match = match
        response: HttpResponse = await match.func(request, *match.args, **match.kwargs)
        return response

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Django's `ASGIHandler.handle` without the request signals (see the module). Every response says
        how long the server took until it started sending it: `server-timing: request;dur=<ms>`, from the
        moment the server called this handler."""
        received = time.perf_counter()
        received_unix = time.time()
        downstream = send

        async def timed_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                took = f"request;dur={(time.perf_counter() - received) * 1000:.2f}".encode()
                message = {**message, "headers": [*message.get("headers", ()), (b"server-timing", took)]}
            await downstream(message)

        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        send = timed_send
        if request is None:
            body_file.close()
            if error_response is not None:
                await self.send_response(error_response, send)
            return

        request.META[RECEIVED_UNIX] = received_unix

        async def respond() -> None:
            response = await self._respond(request)
            with contextlib.suppress(asyncio.CancelledError):  # the client went away during the send
                await self.send_response(response, send)

        # as Django does: a disconnect while the view runs cancels it (a stream's relay then cancels the
        # generation); a view that finishes first wins
        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(respond()),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                with contextlib.suppress(RequestAborted):
                    task.result()
            else:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        body_file.close()


class InferenceFastPath:
    """ASGI application: the lean path for `LEAN_PATHS` (POST), Django's handler for everything else."""

    def __init__(self, django_app: ASGIApp) -> None:
        self.django_app = django_app
        self.lean = _LeanHandler()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST" and scope.get("path") in LEAN_PATHS:
            await self.lean.handle(scope, receive, send)
            return
        await self.django_app(scope, receive, send)
