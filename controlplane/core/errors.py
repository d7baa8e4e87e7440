"""The domain exception tree; one handler maps it to HTTP with a stable machine-readable code."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base of every expected failure. `code` is stable; `message` is for people."""

    code = "error"
    http_status = 400

    def __init__(self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details or {}


class ValidationFailed(DomainError):
    code = "invalid_request"
    http_status = 400


class NotFound(DomainError):
    """Missing and belonging to someone else are the same answer."""

    code = "not_found"
    http_status = 404


class PermissionDenied(DomainError):
    code = "permission_denied"
    http_status = 403


class Conflict(DomainError):
    code = "conflict"
    http_status = 409


class RateLimited(DomainError):
    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, *, retry_after_s: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class ServiceUnavailable(DomainError):
    code = "service_unavailable"
    http_status = 503


class ScopeMissing(RuntimeError):
    """A programming error: tenant data touched without an organisation scope."""


class ResidencyViolation(RuntimeError):
    """A programming error: a regional row routed to a store other than its region's."""
