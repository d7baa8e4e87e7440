"""The operators' admin for inference: the request index, the outbox and idempotency keys, read-only.

Request content is regional and never shown here: `RequestContent` is deliberately not registered, so
no central admin page reads a region's store or renders a prompt or a completion (DESIGN I2).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from controlplane.core.admin import ReadOnlyAdmin
from controlplane.inference.models import IdempotencyKey, InferenceRequest, OutboxMessage


class RequestIdSearch(ReadOnlyAdmin):
    """Search is an exact request id: the indexed lookup, not a scan with LIKE over every row."""

    search_fields = ("request_id",)
    search_help_text = "An exact request id, e.g. req_0123456789abcdef01234567."

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(request_id=term), False


@admin.register(InferenceRequest)
class InferenceRequestAdmin(RequestIdSearch):
    list_display = (
        "request_id",
        "organization",
        "kind",
        "model_name",
        "region",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "error_code",
        "created_at",
    )
    list_filter = ("status", "region", "model_name", "kind", "organization")
    date_hierarchy = "created_at"
    list_select_related = ("organization",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[InferenceRequest]:
        # Operators read every organisation's requests; the scoped default manager would refuse.
        queryset: QuerySet[InferenceRequest] = InferenceRequest.objects.unscoped_all_orgs().select_related(
            "organization", "api_key", "host"
        )
        return queryset


@admin.register(OutboxMessage)
class OutboxMessageAdmin(RequestIdSearch):
    list_display = ("id", "request_id", "task_name", "queue", "sent_at", "send_attempts", "created_at")
    list_filter = ("queue", "task_name", ("sent_at", admin.EmptyFieldListFilter))
    date_hierarchy = "created_at"


@admin.register(IdempotencyKey)
class IdempotencyKeyAdmin(ReadOnlyAdmin):
    list_display = ("request_id", "organization", "endpoint", "region", "expires_at", "created_at")
    list_filter = ("endpoint", "region")
    search_fields = ("=request_id", "=key")
    date_hierarchy = "created_at"
    list_select_related = ("organization",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset: QuerySet[IdempotencyKey] = IdempotencyKey.objects.unscoped_all_orgs().select_related("organization")
        return queryset
