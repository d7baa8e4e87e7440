"""Serializers of the request log: the query filters (input) and the request rows (output).

The detail is the list row plus what only one request needs (timings, receipt, retained content);
its OpenAPI schema is that composition (`allOf`), so the row's enums are named once.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiSerializerExtension
from rest_framework import serializers

from controlplane.core.regions import REGION_CODES
from controlplane.inference.models import InferenceRequest
from controlplane.inference.selectors import RetainedContent


class InferenceRequestFilterSerializer(serializers.Serializer):  # type: ignore[type-arg]  # untyped input serializer
    """Query parameters of the request log; every one is optional."""

    status = serializers.ChoiceField(choices=InferenceRequest.Status.choices, required=False)
    model = serializers.CharField(max_length=120, required=False, help_text="The model name, exactly.")
    region = serializers.ChoiceField(choices=REGION_CODES, required=False)
    kind = serializers.ChoiceField(choices=InferenceRequest.Kind.choices, required=False)
    api_key = serializers.CharField(max_length=16, required=False, help_text="The public id of the API key.")
    created_after = serializers.DateTimeField(
        required=False, help_text="ISO 8601; requests created at or after this moment."
    )
    created_before = serializers.DateTimeField(
        required=False, help_text="ISO 8601; requests created before this moment."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        after, before = attrs.get("created_after"), attrs.get("created_before")
        if after is not None and before is not None and after >= before:
            raise serializers.ValidationError({"created_before": ["Must be later than created_after."]})
        return attrs


class InferenceRequestSerializer(serializers.ModelSerializer[InferenceRequest]):
    """One row of the request log: the central index only, never content."""

    model = serializers.CharField(source="model_name", read_only=True)
    region = serializers.ChoiceField(choices=REGION_CODES, read_only=True)
    api_key = serializers.CharField(
        source="api_key.key_id", read_only=True, allow_null=True, default=None, help_text="public id of the key"
    )
    n = serializers.IntegerField(source="choices_n", read_only=True)
    total_tokens = serializers.SerializerMethodField()

    class Meta:
        model = InferenceRequest
        fields = (
            "request_id",
            "kind",
            "model",
            "status",
            "region",
            "country",
            "accelerator_class",
            "workload",
            "stream",
            "n",
            "api_key",
            "prompt_tokens",
            "max_tokens",
            "completion_tokens",
            "total_tokens",
            "delivered_tokens",
            "finish_reason",
            "error_code",
            "error_message",
            "created_at",
            "started_at",
            "first_token_at",
            "completed_at",
        )
        read_only_fields = fields

    def get_total_tokens(self, obj: InferenceRequest) -> int:
        return obj.prompt_tokens + obj.completion_tokens


class RetainedContentSerializer(serializers.Serializer):  # type: ignore[type-arg]  # untyped output serializer
    request = serializers.DictField(
        read_only=True, allow_null=True, help_text="The body the client sent, as it was sent."
    )
    response = serializers.DictField(
        read_only=True, allow_null=True, help_text="The response returned; null while running or after a failure."
    )
    receipt_salt = serializers.CharField(
        read_only=True, help_text="Hex key of the receipt's input and output HMACs (docs/receipts.md)."
    )


class InferenceRequestDetailPartSerializer(serializers.Serializer):  # type: ignore[type-arg]  # untyped output serializer
    """What the detail adds to the row."""

    timings = serializers.DictField(
        child=serializers.FloatField(), read_only=True, help_text="server-side durations in milliseconds"
    )
    receipt = serializers.DictField(read_only=True, allow_null=True, help_text="the signed residency receipt")
    content_retained = serializers.BooleanField(
        read_only=True, help_text="Whether the region still holds the content (the organisation's retention)."
    )
    content = RetainedContentSerializer(read_only=True, allow_null=True)


def _durations(timings: Any) -> dict[str, float]:
    """Only the recorded durations: other bookkeeping in `timings` (internal ids) is not the customer's."""
    if not isinstance(timings, dict):
        return {}
    return {
        key: float(value)
        for key, value in timings.items()
        if key.endswith("_ms") and isinstance(value, int | float) and not isinstance(value, bool)
    }


class InferenceRequestDetailSerializer(InferenceRequestSerializer):
    """The row plus the detail part; the retained content (or None) comes in the context as `content`."""

    def to_representation(self, instance: InferenceRequest) -> dict[str, Any]:
        data: dict[str, Any] = super().to_representation(instance)
        content: RetainedContent | None = self.context.get("content")
        part = {
            "timings": _durations(instance.timings),
            "receipt": instance.receipt,
            "content_retained": content is not None,
            "content": content,
        }
        data.update(InferenceRequestDetailPartSerializer(part).data)
        return data


class InferenceRequestDetailSchema(OpenApiSerializerExtension):  # type: ignore[no-untyped-call]  # untyped registry hook
    target_class = "controlplane.inference.api.serializers.InferenceRequestDetailSerializer"

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        row = auto_schema.resolve_serializer(InferenceRequestSerializer, direction)
        part = auto_schema._map_serializer(InferenceRequestDetailPartSerializer, direction)
        return {"allOf": [row.ref, part]}


class QuotaUsageSerializer(serializers.Serializer):  # type: ignore[type-arg]  # untyped output serializer
    """One region: the organisation's limits there, and its use now, read from the quota store."""

    region = serializers.ChoiceField(choices=REGION_CODES)
    allowed = serializers.BooleanField(help_text="Whether the residency policy allows this region now.")
    requests_per_minute = serializers.IntegerField(help_text="The limit.")
    tokens_per_minute = serializers.IntegerField(help_text="The limit (reserved: prompt + max_tokens).")
    concurrent_requests = serializers.IntegerField(help_text="The limit.")
    monthly_tokens = serializers.IntegerField(help_text="The limit, per calendar month (UTC).")
    requests_last_minute = serializers.IntegerField()
    tokens_last_minute = serializers.IntegerField(help_text="Reserved, less what finished requests gave back.")
    running_requests = serializers.IntegerField(help_text="Requests holding a concurrency lease now.")
    tokens_this_month = serializers.IntegerField()
    window_reset_ms = serializers.IntegerField(help_text="Milliseconds until the last minute's window is empty.")
