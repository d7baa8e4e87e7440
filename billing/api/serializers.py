"""Input and output serializers of the operators' FX and tax tables, an organisation's balance, prices,
usage, budget and invoices."""

from __future__ import annotations

from rest_framework import serializers

from billing.models import BudgetEvent, FxRate, Invoice, PriceBookEntry, TaxRate, default_alert_thresholds
from controlplane.core import money
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


# --- Prices, usage, budgets and invoices -------------------------------------------------------------------


class PriceOutputSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]  # drf-stubs: untyped model serializer
    class Meta:
        model = PriceBookEntry
        fields = ("id", "model_name", "region", "token_kind", "usd_per_million", "effective_from")
        read_only_fields = fields


class RegionUseOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]  # drf-stubs: generic over the instance
    """One region: the limits in force there (plan and overrides) and this month's use."""

    region = serializers.CharField()
    requests_per_minute = serializers.IntegerField()
    tokens_per_minute = serializers.IntegerField()
    concurrent_requests = serializers.IntegerField()
    monthly_tokens = serializers.IntegerField(help_text="limit; compare with the tokens used")
    requests = serializers.IntegerField(help_text="settled this month")
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    spend = serializers.DecimalField(max_digits=26, decimal_places=6, help_text="billing currency, settled")
    open_requests = serializers.IntegerField(help_text="admitted, not settled yet")
    held = serializers.DecimalField(max_digits=26, decimal_places=6, help_text="reserved by them, at most")


class UsageOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]  # drf-stubs: generic over the instance
    month = serializers.CharField(help_text="YYYY-MM, UTC, by admission time")
    currency = serializers.CharField()
    regions = RegionUseOutputSerializer(many=True)


class BudgetInputSerializer(StrictInputSerializer):
    # Strings in, Decimal out: an amount never passes through a float.
    amount = serializers.DecimalField(max_digits=20, decimal_places=6, help_text="per calendar month, billing currency")
    alert_thresholds = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=1000),
        max_length=10,
        required=False,
        default=default_alert_thresholds,
        help_text="percentages of the amount; each fires once a month",
    )
    hard_stop = serializers.BooleanField(required=False, default=False, help_text="refuse requests above the amount")


class BudgetOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]  # drf-stubs: generic over the instance
    currency = serializers.CharField()
    amount = serializers.DecimalField(max_digits=26, decimal_places=6)
    alert_thresholds = serializers.ListField(child=serializers.IntegerField())
    hard_stop = serializers.BooleanField()
    month = serializers.CharField(help_text="the current month, YYYY-MM (UTC)")
    settled = serializers.DecimalField(max_digits=26, decimal_places=6, help_text="settled this month")
    held = serializers.DecimalField(max_digits=26, decimal_places=6, help_text="reserved by requests in flight")
    committed = serializers.DecimalField(
        max_digits=26, decimal_places=6, help_text="settled + held: what the hard stop and the alerts count"
    )


class BudgetEventOutputSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]  # drf-stubs: untyped model serializer
    month = serializers.DateField(format="%Y-%m")
    budget = serializers.SerializerMethodField()
    committed = serializers.SerializerMethodField()

    class Meta:
        model = BudgetEvent
        fields = ("id", "month", "threshold_percent", "currency", "budget", "committed", "request_id", "created_at",
                  "mailed_at")  # fmt: skip
        read_only_fields = fields

    def get_budget(self, event: BudgetEvent) -> str:
        return str(money.micros_to_units(event.budget_micros))

    def get_committed(self, event: BudgetEvent) -> str:
        return str(money.micros_to_units(event.committed_micros))


class InvoiceSummaryOutputSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]  # drf-stubs: untyped model serializer
    """Amounts are decimal strings at the currency's precision ("12.35")."""

    number = serializers.CharField(read_only=True)
    period = serializers.DateField(source="period_start", format="%Y-%m")
    subtotal = serializers.SerializerMethodField()
    credits = serializers.SerializerMethodField()
    tax = serializers.SerializerMethodField()
    total = serializers.SerializerMethodField()

    class Meta:
        model = Invoice
        fields: tuple[str, ...] = ("number", "status", "period", "currency", "subtotal", "credits", "tax", "total",
                                   "reverse_charge", "finalized_at", "paid_at", "voided_at")  # fmt: skip
        read_only_fields = fields

    def get_subtotal(self, invoice: Invoice) -> str:
        return money.format_micros(invoice.subtotal_micros, invoice.currency)

    def get_credits(self, invoice: Invoice) -> str:
        return money.format_micros(invoice.credits_micros, invoice.currency)

    def get_tax(self, invoice: Invoice) -> str:
        return money.format_micros(invoice.tax_micros, invoice.currency)

    def get_total(self, invoice: Invoice) -> str:
        return money.format_micros(invoice.total_micros, invoice.currency)


class InvoiceLineOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]  # drf-stubs: generic over the instance
    usage_month = serializers.CharField(help_text="YYYY-MM; an earlier month is usage settled after its close")
    model = serializers.CharField()
    region = serializers.CharField()
    token_kind = serializers.ChoiceField(choices=[("input", "input"), ("output", "output")])
    tokens = serializers.IntegerField()
    requests = serializers.IntegerField()
    amount = serializers.CharField(help_text="rounded once, half-even, to the currency's minor unit")


class InvoiceCustomerOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]  # drf-stubs: generic over the instance
    name = serializers.CharField()
    country = serializers.CharField()
    tax_id = serializers.CharField(allow_blank=True)


class InvoiceTaxOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]  # drf-stubs: generic over the instance
    name = serializers.CharField()
    rate_percent = serializers.CharField()
    reverse_charge = serializers.BooleanField()
    note = serializers.CharField(allow_blank=True)
    amount = serializers.CharField()


class InvoiceDocumentOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]  # drf-stubs: generic over the instance
    """The invoice as issued (its JSON export); amounts are decimal strings at the currency's precision."""

    number = serializers.CharField()
    status = serializers.ChoiceField(choices=Invoice.Status.choices)
    period = serializers.CharField(help_text="YYYY-MM")
    currency = serializers.CharField()
    customer = InvoiceCustomerOutputSerializer()
    lines = InvoiceLineOutputSerializer(many=True)
    requests = serializers.IntegerField()
    subtotal = serializers.CharField()
    credits = serializers.CharField()
    tax = InvoiceTaxOutputSerializer()
    total = serializers.CharField(help_text="subtotal - credits + tax")
    finalized_at = serializers.DateTimeField(allow_null=True)
    paid_at = serializers.DateTimeField(allow_null=True)
    voided_at = serializers.DateTimeField(allow_null=True)


class OpsInvoiceOutputSerializer(InvoiceSummaryOutputSerializer):
    id = serializers.IntegerField()
    organization = serializers.CharField(source="organization.slug")

    class Meta(InvoiceSummaryOutputSerializer.Meta):
        fields = ("id", "organization", *InvoiceSummaryOutputSerializer.Meta.fields)
        read_only_fields = fields
