"""Inference requests: the central index (ids, counts, timings, never content), the outbox that
enqueues them, idempotency keys, and the regional rows that hold content in its region only."""

from __future__ import annotations

from django.db import models

from controlplane.core.models import CentralModel, OrgOwnedModel, RegionalModel
from controlplane.core.regions import REGION_CODES


class InferenceRequest(OrgOwnedModel):
    """One API request from admission to settlement. Content never lands here (DESIGN I2)."""

    class Kind(models.TextChoices):
        CHAT = "chat", "chat completion"
        COMPLETION = "completion", "text completion"
        EMBEDDING = "embedding", "embedding"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    request_id = models.CharField(max_length=64, unique=True)
    api_key = models.ForeignKey("tenants.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    model_name = models.CharField(max_length=120)
    region = models.CharField(max_length=8, choices=[(c, c) for c in REGION_CODES], db_index=True)
    country = models.CharField(max_length=2)
    host = models.ForeignKey("fleet.Host", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    accelerator_class = models.CharField(max_length=40)
    workload = models.CharField(max_length=16)
    stream = models.BooleanField(default=False)
    choices_n = models.PositiveSmallIntegerField(default=1)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    prompt_tokens = models.PositiveIntegerField()
    max_tokens = models.PositiveIntegerField()
    reserved_tokens = models.PositiveBigIntegerField()
    completion_tokens = models.PositiveIntegerField(default=0)
    delivered_tokens = models.PositiveIntegerField(default=0, help_text="tokens a stream had sent when it was lost")
    finish_reason = models.CharField(max_length=16, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    lease_expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    worker = models.CharField(max_length=120, blank=True)
    deadline_at = models.DateTimeField()
    placement_reasons = models.JSONField(default=list)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.CharField(max_length=300, blank=True, help_text="never content")
    timings = models.JSONField(default=dict, help_text="server-side timestamps and durations in ms")
    receipt = models.JSONField(null=True, blank=True)
    retention_days = models.PositiveIntegerField()
    started_at = models.DateTimeField(null=True, blank=True)
    first_token_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = (models.Index(fields=["organization", "-created_at"]), models.Index(fields=["status", "region"]))

    def __str__(self) -> str:
        return f"{self.request_id} ({self.status})"

    @property
    def finished(self) -> bool:
        return self.status in {self.Status.COMPLETED, self.Status.FAILED, self.Status.CANCELLED}


class OutboxMessage(CentralModel):
    """A task to enqueue, written in the request's transaction; sent on commit, re-sent by the relay."""

    request_id = models.CharField(max_length=64, db_index=True)
    task_name = models.CharField(max_length=120)
    queue = models.CharField(max_length=32)
    kwargs = models.JSONField()
    sent_at = models.DateTimeField(null=True, blank=True, db_index=True)
    send_attempts = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ("id",)

    def __str__(self) -> str:
        return f"{self.task_name} for {self.request_id}"


class IdempotencyKey(OrgOwnedModel):
    """`Idempotency-Key` per organisation, kept 24 h: a replay returns the stored response."""

    key = models.CharField(max_length=255)
    endpoint = models.CharField(max_length=40)
    body_sha256 = models.CharField(max_length=64)
    request_id = models.CharField(max_length=64)
    region = models.CharField(max_length=8)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = (models.UniqueConstraint(fields=["organization", "key"], name="idempotency_key_per_org"),)

    def __str__(self) -> str:
        return f"idempotency key for {self.request_id}"


class RequestContent(RegionalModel):
    """A request's prompt and response, kept for the tenant's retention and purged after it.

    The salt stays after purging so that a receipt's HMACs remain checkable by whoever holds the text.
    """

    request_id = models.CharField(max_length=64, unique=True)
    organization_id = models.BigIntegerField(db_index=True, help_text="central id; no cross-store relation")
    body = models.JSONField(null=True, blank=True)
    completion = models.JSONField(null=True, blank=True)
    salt = models.CharField(max_length=64, blank=True, help_text="hex; keys the receipt's content HMACs")
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"content of {self.request_id} in {self.region}"
