"""OpenAPI post-processing: every operation documents the error responses it can give, with the
one error body shape, so that clients (and schemathesis) know them."""

from __future__ import annotations

from typing import Any

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "stable, machine-readable"},
                "message": {"type": "string", "description": "for people"},
                "details": {"description": "per-field problems, when there are any"},
            },
        }
    },
}

_COMMON = {
    "400": "The request is not valid (`invalid_request`, `malformed_body`, ...).",
    "401": "Not authenticated, or the API key is malformed, revoked or expired.",
    "403": "Authenticated but lacking the scope, or the organisation is suspended.",
    "404": "Not found (or not yours: the two are the same answer).",
    "405": "The method is not allowed here.",
    "413": "The body is larger than the limit.",
    "415": "The body is not JSON.",
    "429": "Too many requests; see `Retry-After`.",
}
_WRITE_ONLY = {"409": "The change conflicts with the current state."}


def add_error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = _ERROR_SCHEMA
    reference = {"$ref": "#/components/schemas/Error"}
    for path_item in result.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            responses = operation.setdefault("responses", {})
            codes = dict(_COMMON)
            if method != "get":
                codes.update(_WRITE_ONLY)
            for status, description in codes.items():
                responses.setdefault(
                    status, {"description": description, "content": {"application/json": {"schema": reference}}}
                )
    return result
