"""The audit log in the operators' admin: searchable, filterable and read-only (I6)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from controlplane.core.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):  # type: ignore[type-arg]  # generic over the model
    list_display = ("created_at", "actor_label", "organization", "action", "target_type", "target_id", "request_id")
    search_fields = ("actor_label", "action", "target_type", "target_id", "request_id", "organization__slug")
    list_filter = ("action", "target_type")
    date_hierarchy = "created_at"
    readonly_fields = (
        "created_at",
        "actor",
        "actor_label",
        "organization",
        "action",
        "target_type",
        "target_id",
        "changes",
        "ip_address",
        "request_id",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[AuditEvent]:
        # Operators read every organisation's events; the scoped default manager would refuse.
        queryset: QuerySet[AuditEvent] = AuditEvent.objects.unscoped_all_orgs().select_related("organization")
        return queryset

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
