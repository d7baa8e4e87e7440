"""Request id on every response and log line, a body-size limit, and Prometheus request metrics."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import Counter, Histogram

from controlplane.core.logging import current_request_id

logger = logging.getLogger("controlplane.request")

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")

HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests served", ["method", "route", "status"])
HTTP_LATENCY = Histogram("http_request_duration_seconds", "HTTP request latency", ["method", "route"])


class RequestIdMiddleware:
    """Accept a well-formed incoming `x-request-id` or mint one; echo it on the response."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get("x-request-id", "")
        request_id = incoming if _VALID_REQUEST_ID.match(incoming) else f"req_{uuid.uuid4().hex}"
        request.request_id = request_id  # type: ignore[attr-defined]  # request attribute read by views and audit
        token = current_request_id.set(request_id)
        try:
            response = self.get_response(request)
        finally:
            current_request_id.reset(token)
        response["x-request-id"] = request_id
        return response


class BodySizeLimitMiddleware:
    """Refuse oversize bodies (413) and NUL characters in the path or query (400) up front,
    with a JSON error, before anything parses them."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        query = request.META.get("QUERY_STRING", "")
        if "\x00" in request.path or "%00" in query or "\x00" in query:
            return JsonResponse(
                {"error": {"code": "invalid_characters", "message": "NUL characters are not allowed in URLs.",
                           "type": "invalid_request_error", "param": None}},
                status=400,
            )
        length = request.META.get("CONTENT_LENGTH") or "0"
        try:
            size = int(length)
        except ValueError:
            return JsonResponse(
                {"error": {"code": "invalid_content_length", "message": "Content-Length is not a number.",
                           "type": "invalid_request_error", "param": None}},
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
        return self.get_response(request)


class MetricsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
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
