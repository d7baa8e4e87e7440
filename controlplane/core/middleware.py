"""Request id on every response and log line, a body-size limit, Prometheus request metrics, and static files.

Every middleware here runs in both modes, as Django's own do: under ASGI a request then goes from the server
to the async views of `/v1` without a thread hop (a sync-only middleware costs two hops, in and out, each
way, and held a thread for the whole request, streams included).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware import clickjacking, common, csrf, security
from prometheus_client import Counter, Histogram
from whitenoise.middleware import WhiteNoiseMiddleware

from controlplane.core.logging import current_request_id

logger = logging.getLogger("controlplane.request")

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")

HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests served", ["method", "route", "status"])
HTTP_LATENCY = Histogram("http_request_duration_seconds", "HTTP request latency", ["method", "route"])


def _adopt_mode(middleware: Callable[..., Any], get_response: Callable[[HttpRequest], Any]) -> bool:
    """Marks `middleware` a coroutine function when the handler it wraps is one; returns whether it is."""
    is_async = iscoroutinefunction(get_response)
    if is_async:
        markcoroutinefunction(middleware)
    return is_async


class _BothModes(ABC):
    """A middleware that is called in the mode of the handler it wraps: `respond` (sync) or `arespond`."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = _adopt_mode(self, get_response)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.arespond(request)
        return self.respond(request)

    @abstractmethod
    def respond(self, request: HttpRequest) -> HttpResponse:
        """The middleware under WSGI or a sync handler."""

    @abstractmethod
    async def arespond(self, request: HttpRequest) -> HttpResponse:
        """The same under an async handler (ASGI), without a thread hop."""


class RequestIdMiddleware(_BothModes):
    """Accept a well-formed incoming `x-request-id` or mint one; echo it on the response."""

    @staticmethod
    def _request_id(request: HttpRequest) -> str:
        incoming = request.headers.get("x-request-id", "")
        request_id = incoming if _VALID_REQUEST_ID.match(incoming) else f"req_{uuid.uuid4().hex}"
        request.request_id = request_id  # type: ignore[attr-defined]  # request attribute read by views and audit
        return request_id

    def respond(self, request: HttpRequest) -> HttpResponse:
        request_id = self._request_id(request)
        token = current_request_id.set(request_id)
        try:
            response: HttpResponse = self.get_response(request)
        finally:
            current_request_id.reset(token)
        response["x-request-id"] = request_id
        return response

    async def arespond(self, request: HttpRequest) -> HttpResponse:
        request_id = self._request_id(request)
        token = current_request_id.set(request_id)
        try:
            response: HttpResponse = await self.get_response(request)
        finally:
            current_request_id.reset(token)
        response["x-request-id"] = request_id
        return response


class BodySizeLimitMiddleware(_BothModes):
    """Refuse oversize bodies (413) and NUL characters in the path or query (400) up front,
    with a JSON error, before anything parses them."""

    def respond(self, request: HttpRequest) -> HttpResponse:
        refusal = self._refusal(request)
        return refusal if refusal is not None else self.get_response(request)

    async def arespond(self, request: HttpRequest) -> HttpResponse:
        refusal = self._refusal(request)
        return refusal if refusal is not None else await self.get_response(request)

    @staticmethod
    def _refusal(request: HttpRequest) -> HttpResponse | None:
        query = request.META.get("QUERY_STRING", "")
        if "\x00" in request.path or "%00" in query or "\x00" in query:
            return JsonResponse(
                {
                    "error": {
                        "code": "invalid_characters",
                        "message": "NUL characters are not allowed in URLs.",
                        "type": "invalid_request_error",
                        "param": None,
                    }
                },
                status=400,
            )
        length = request.META.get("CONTENT_LENGTH") or "0"
        try:
            size = int(length)
        except ValueError:
            return JsonResponse(
                {
                    "error": {
                        "code": "invalid_content_length",
                        "message": "Content-Length is not a number.",
                        "type": "invalid_request_error",
                        "param": None,
                    }
                },
                status=400,
            )
        if size > settings.MAX_BODY_BYTES:
            return JsonResponse(
                {
                    "error": {
                        "code": "request_too_large",
                        "message": f"The body has {size} bytes; the limit is {settings.MAX_BODY_BYTES}.",
                        # OpenAI's error shape as well, so that /v1 clients read it like any other error
                        "type": "invalid_request_error",
                        "param": None,
                    }
                },
                status=413,
            )
        return None


class MetricsMiddleware(_BothModes):
    def respond(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response: HttpResponse = self.get_response(request)
        return self._record(request, response, started)

    async def arespond(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response: HttpResponse = await self.get_response(request)
        return self._record(request, response, started)

    @staticmethod
    def _record(request: HttpRequest, response: HttpResponse, started: float) -> HttpResponse:
        match = getattr(request, "resolver_match", None)
        route = match.route if match is not None and match.route else "unmatched"
        elapsed = time.perf_counter() - started
        HTTP_REQUESTS.labels(request.method or "", route, str(response.status_code)).inc()
        HTTP_LATENCY.labels(request.method or "", route).observe(elapsed)
        logger.info(
            "request",
            extra={
                "method": request.method,
                "route": route,
                "status": response.status_code,
                "duration_ms": round(elapsed * 1000, 2),
            },
        )
        return response


class StaticFilesMiddleware(WhiteNoiseMiddleware):  # type: ignore[misc]  # WhiteNoise has no type hints
    """WhiteNoise (the console's built files), in both modes: a path that is not a static file goes on in
    the caller's mode; a static file is answered from WhiteNoise's index of files, as WhiteNoise does."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any], **kwargs: Any) -> None:
        super().__init__(get_response, **kwargs)
        self.is_async = _adopt_mode(self, get_response)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        return super().__call__(request)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        static_file = self.find_file(request.path_info) if self.autorefresh else self.files.get(request.path_info)
        if static_file is not None:
            response: HttpResponse = self.serve(static_file, request)
            return response
        awaited: Awaitable[HttpResponse] = self.get_response(request)
        return await awaited


# --- Django's middleware, without thread hops under ASGI ------------------------------------------------
#
# In async mode Django's `MiddlewareMixin` runs `process_request` and `process_response` through
# `sync_to_async` (a hop to a thread and back each), and the handler does the same for `process_view`:
# about a dozen hops per request through the stack below. These hooks do no I/O (they read and set headers
# and cookies, or attach lazy objects), so they run inline on the event loop. The session's save is the one
# hook that writes to the database: a request that changed its session still saves it in a thread.


class _Inline:
    """`MiddlewareMixin` in async mode, its hooks called inline."""

    get_response: Callable[[HttpRequest], Any]

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        super().__init__(get_response)  # type: ignore[call-arg]  # MiddlewareMixin's
        view_hook = getattr(self, "process_view", None)
        if getattr(self, "async_mode", False) and view_hook is not None:

            async def process_view(*args: Any) -> Any:
                return view_hook(*args)

            setattr(self, "process_view", process_view)  # noqa: B010  # an instance attribute over the method

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        response = None
        if hasattr(self, "process_request"):
            response = self.process_request(request)
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            response = await self._response_hook(request, response)
        return response

    async def _response_hook(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        result: HttpResponse = self.process_response(request, response)  # type: ignore[attr-defined]
        return result


class SecurityMiddleware(_Inline, security.SecurityMiddleware):
    pass


class SessionMiddleware(_Inline, sessions.SessionMiddleware):
    async def _response_hook(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        session = getattr(request, "session", None)
        if session is not None and (session.modified or settings.SESSION_SAVE_EVERY_REQUEST):
            saved: HttpResponse = await sync_to_async(self.process_response, thread_sensitive=True)(request, response)
            return saved
        return await super()._response_hook(request, response)


class CommonMiddleware(_Inline, common.CommonMiddleware):
    pass


class CsrfViewMiddleware(_Inline, csrf.CsrfViewMiddleware):
    pass


class AuthenticationMiddleware(_Inline, auth.AuthenticationMiddleware):
    pass


class MessageMiddleware(_Inline, messages.MessageMiddleware):
    pass


class XFrameOptionsMiddleware(_Inline, clickjacking.XFrameOptionsMiddleware):
    pass
