"""Input and output serializers of the operators' FX and tax tables and of an organisation's balance."""

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


class BalanceOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]  # drf-stubs: generic over the instance
    """Amounts are exact decimal strings in the billing currency (six places: whole micro-units)."""

    currency = serializers.CharField()
    billing_mode = serializers.ChoiceField(choices=[("prepaid", "prepaid"), ("postpaid", "postpaid")])
    granted = serializers.DecimalField(max_digits=26, decimal_places=6, help_text="unexpired credit granted")
    settled = serializers.DecimalField(max_digits=26, decimal_places=6, help_text="of it, spent by settled requests")
    held = serializers.DecimalField(max_digits=26, decimal_places=6, help_text="reserved by requests in flight")
    available = serializers.DecimalField(
        max_digits=26, decimal_places=6, help_text="granted - settled - held; prepaid: never negative"
    )
