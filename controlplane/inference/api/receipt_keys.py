"""The public key set that verifies residency receipts (a JWKS): no authentication, no tenant data."""

from __future__ import annotations

from typing import ClassVar

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import View

from controlplane.inference.receipts import receipt_key_set

# Verifiers may cache the set this long; one that meets an unknown kid fetches it again (docs/receipts.md).
KEY_SET_MAX_AGE_S = 300


class ReceiptKeySetView(View):
    scope_kind: ClassVar[str] = "public"
    http_method_names = ["get", "head", "options"]  # noqa: RUF012  # Django's own attribute, a plain list

    def get(self, request: HttpRequest) -> HttpResponse:
        response = JsonResponse(receipt_key_set(), content_type="application/jwk-set+json")
        response["Cache-Control"] = f"public, max-age={KEY_SET_MAX_AGE_S}"
        response["Access-Control-Allow-Origin"] = "*"
        return response
