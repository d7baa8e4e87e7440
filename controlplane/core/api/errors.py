"""One exception handler: domain errors and DRF errors become `{"error": {"code", "message", ...}}`."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response

from controlplane.core.errors import DomainError, RateLimited

_DRF_CODES: dict[type[exceptions.APIException], str] = {
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.ParseError: "malformed_body",
    exceptions.Throttled: "throttled",
    exceptions.ValidationError: "invalid_request",
}


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return {"error": body}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DomainError):
        response = Response(error_body(exc.code, exc.message, exc.details), status=exc.http_status)
        if isinstance(exc, RateLimited):
            response["Retry-After"] = str(exc.retry_after_s)
        return response
    if isinstance(exc, Http404):
        return Response(error_body("not_found", "Not found."), status=status.HTTP_404_NOT_FOUND)
    if isinstance(exc, DjangoPermissionDenied):
        return Response(error_body("permission_denied", "Permission denied."), status=status.HTTP_403_FORBIDDEN)
    if isinstance(exc, exceptions.APIException):
        code = next((c for klass, c in _DRF_CODES.items() if isinstance(exc, klass)), "error")
        # An exception raised with its own code (`AuthenticationFailed(..., code="key_revoked")`)
        # keeps that code; the table above only names DRF's defaults.
        own_code = getattr(exc.detail, "code", None)
        if isinstance(own_code, str) and own_code != exc.default_code:
            code = own_code
        if isinstance(exc, exceptions.ValidationError):
            response = Response(
                error_body(code, "The request is not valid; see details.", exc.detail), status=exc.status_code
            )
        else:
            response = Response(error_body(code, str(exc.detail)), status=exc.status_code)
        wait = getattr(exc, "wait", None)
        if isinstance(exc, exceptions.Throttled) and wait is not None:
            response["Retry-After"] = str(int(wait) + 1)
        if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
            response["WWW-Authenticate"] = 'Bearer realm="api"'
        return response
    return None
