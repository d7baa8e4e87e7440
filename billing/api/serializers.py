"""Input and output serializers of the operators' FX and tax tables."""

from __future__ import annotations

from rest_framework import serializers

from billing.models import FxRate, TaxRate
from controlplane.core.api.serializers import StrictInputSerializer
from tenants.models import BILLING_CURRENCIES


class FxRateOutputSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]  # drf-stubs: untyped model serializer
    class Meta:
        model = FxRate
        fields = ("id", "currency", "per_usd", "effective_from", "source", "created_at")
        read_only_fields = fields


class TaxRateOutputSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]  # drf-stubs: untyped model serializer
    class Meta:
        model = TaxRate
        fields = ("id", "country", "tax_name", "rate_percent", "effective_from", "note", "created_at")
        read_only_fields = fields


class FxRateAddInputSerializer(StrictInputSerializer):
    currency = serializers.ChoiceField(choices=[(c, c) for c in BILLING_CURRENCIES])
    # Strings in, Decimal out: a rate never passes through a float.
    per_usd = serializers.DecimalField(max_digits=20, decimal_places=8)
    effective_from = serializers.DateTimeField()
    source = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")  # type: ignore[assignment]  # a field named "source" shadows Field.source; the metaclass pops declared fields off the class


class TaxRateAddInputSerializer(StrictInputSerializer):
    country = serializers.RegexField(r"^[A-Z]{2}$", max_length=2)
    tax_name = serializers.CharField(max_length=80)
    rate_percent = serializers.DecimalField(max_digits=6, decimal_places=3)
    effective_from = serializers.DateField()
    note = serializers.CharField(required=False, allow_blank=True, default="")
