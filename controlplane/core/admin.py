"""The audit log in the operators' admin: searchable, filterable and read-only (I6)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from controlplane.core.models import AuditEvent
from controlplane.core.services import Actor, actor_of_request


def admin_actor(request: HttpRequest) -> Actor:
    """The operator acting through the admin panel, labelled so in the audit log."""
    return actor_of_request(request, channel="admin")


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]  # generic over each subclass's model
    """Rows are changed by services (with their audit rows) or data syncs, never by editing them here."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # Every shown field is read-only, so no form field (and no foreign-key choice query) is built.
        hidden = set(self.exclude or ())
        return [field.name for field in self.model._meta.fields if field.name not in hidden]


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "actor_label", "organization", "action", "target_type", "target_id", "request_id")
    search_fields = ("actor_label", "action", "target_type", "target_id", "request_id", "organization__slug")
    list_filter = ("action", "target_type")
    date_hierarchy = "created_at"

    def get_queryset(self, request: HttpRequest) -> QuerySet[AuditEvent]:
        # Operators read every organisation's events; the scoped default manager would refuse.
        queryset: QuerySet[AuditEvent] = AuditEvent.objects.unscoped_all_orgs().select_related("organization")
        return queryset
