"""Liveness, readiness and Prometheus metrics endpoints (no authentication, no tenant data)."""

from __future__ import annotations

import time

import redis
from django.conf import settings
from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"status": "ok"})


def _check_database(alias: str) -> str | None:
    try:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # readiness reports any failure instead of raising
        return f"{type(exc).__name__}"
    return None


def _check_redis(url: str) -> str | None:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        client.ping()
    except redis.RedisError as exc:
        return f"{type(exc).__name__}"
    return None


@require_GET
def readyz(request: HttpRequest) -> HttpResponse:
    started = time.perf_counter()
    checks: dict[str, str] = {}
    for alias in settings.DATABASES:
        failure = _check_database(alias)
        checks[f"db:{alias}"] = failure or "ok"
    failure = _check_redis(settings.REDIS_URL)
    checks["redis:central"] = failure or "ok"
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks,
         "duration_ms": round((time.perf_counter() - started) * 1000, 1)},
        status=200 if ready else 503,
    )


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Unmatched URLs answer in the API's JSON error shape, not an HTML page."""
    return JsonResponse({"error": {"code": "not_found", "message": "No such route."}}, status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    return JsonResponse(
        {"error": {"code": "internal_error", "message": "Something went wrong on our side; it has been logged."}},
        status=500,
    )
