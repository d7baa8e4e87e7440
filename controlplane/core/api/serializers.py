"""Serializer bases: input serializers refuse unknown fields."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers


class StrictInputSerializer(serializers.Serializer):  # type: ignore[type-arg]  # untyped base of all input serializers
    """Unknown fields are an error, so that a misspelt field never silently does nothing."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": ["Expected a JSON object."]})
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)
