"""Regional rows: request content lives only in the store of the region that processed it."""

from __future__ import annotations

from django.db import models

from controlplane.core.models import RegionalModel


class RequestContent(RegionalModel):
    """A request's prompt and completion, kept for the tenant's retention and purged after it."""

    request_id = models.CharField(max_length=64, unique=True)
    organization_id = models.BigIntegerField(db_index=True, help_text="central id; no cross-store relation")
    body = models.JSONField()
    completion = models.JSONField(null=True, blank=True)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"content of {self.request_id} in {self.region}"
