"""Billing data (central): FX and tax tables, the price book, credit grants, holds and the ledger."""

from __future__ import annotations

from django.db import models

from controlplane.core.models import CentralModel, OrgOwnedModel
from controlplane.core.regions import REGION_CODES


class FxRate(CentralModel):
    """Units of `currency` per one US dollar, in force from `effective_from` until superseded."""

    currency = models.CharField(max_length=3)
    per_usd = models.DecimalField(max_digits=20, decimal_places=8)
    effective_from = models.DateTimeField()
    source = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ("currency", "-effective_from")
        constraints = (
            models.UniqueConstraint(fields=["currency", "effective_from"], name="fx_unique_effective"),
            models.CheckConstraint(condition=models.Q(per_usd__gt=0), name="fx_positive"),
        )

    def __str__(self) -> str:
        return f"{self.currency} {self.per_usd}/USD from {self.effective_from:%Y-%m-%d}"


class TaxRate(CentralModel):
    country = models.CharField(max_length=2)
    tax_name = models.CharField(max_length=80)
    rate_percent = models.DecimalField(max_digits=6, decimal_places=3)
    effective_from = models.DateField()
    note = models.TextField(blank=True)

    class Meta:
        ordering = ("country", "-effective_from")
        constraints = (
            models.UniqueConstraint(fields=["country", "effective_from"], name="tax_unique_effective"),
            models.CheckConstraint(
                condition=models.Q(rate_percent__gte=0) & models.Q(rate_percent__lte=100), name="tax_in_range"
            ),
        )

    def __str__(self) -> str:
        return f"{self.country} {self.tax_name} {self.rate_percent}% from {self.effective_from}"


# --- The price book, credits, holds and the ledger (DESIGN section 8) ---------------------------------
#
# Amounts are integer micro-units of the organisation's billing currency (1 unit = 1_000_000 micros);
# list prices are exact Decimals in US dollars per million tokens. Holds and ledger entries copy the
# prices and the FX rate they were priced with, next to the ids of the rows they came from.


class PriceBookEntry(CentralModel):
    """The list price of one model's input or output tokens in one region, in force from `effective_from`.

    A change of price is a new entry; an entry that a hold or ledger entry references is never edited.
    """

    class TokenKind(models.TextChoices):
        INPUT = "input", "input"
        OUTPUT = "output", "output"

    model_name = models.CharField(max_length=120, help_text="the catalog name clients send as `model`")
    region = models.CharField(max_length=8, choices=[(code, code) for code in REGION_CODES])
    token_kind = models.CharField(max_length=8, choices=TokenKind.choices)
    usd_per_million = models.DecimalField(max_digits=18, decimal_places=6, help_text="USD per million tokens")
    effective_from = models.DateTimeField()
    note = models.CharField(max_length=300, blank=True, help_text="where the number comes from")

    class Meta:
        ordering = ("model_name", "region", "token_kind", "-effective_from")
        verbose_name = "price book entry"
        verbose_name_plural = "price book"
        constraints = (
            models.UniqueConstraint(
                fields=["model_name", "region", "token_kind", "effective_from"], name="price_unique_effective"
            ),
            models.CheckConstraint(condition=models.Q(usd_per_million__gte=0), name="price_not_negative"),
        )

    def __str__(self) -> str:
        return (
            f"{self.model_name} {self.region} {self.token_kind} ${self.usd_per_million}/M "
            f"from {self.effective_from:%Y-%m-%d}"
        )


class CreditGrant(OrgOwnedModel):
    """Prepaid credit: spent in burn order (priority, then the earliest expiry, then the oldest grant).

    `held_micros` is reserved by open holds, `consumed_micros` is spent by ledger entries; the database
    refuses any row where the two together exceed the grant, so no grant can be overdrawn.
    """

    currency = models.CharField(max_length=3)
    amount_micros = models.BigIntegerField()
    consumed_micros = models.BigIntegerField(default=0)
    held_micros = models.BigIntegerField(default=0)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="empty: never expires")
    priority = models.PositiveSmallIntegerField(default=100, help_text="lower numbers are spent first")
    reason = models.CharField(max_length=200)
    granted_by = models.CharField(max_length=200, help_text="who granted it, as in the audit log")

    class Meta:
        ordering = ("priority", "expires_at", "id")
        indexes = (models.Index(fields=["organization", "currency", "expires_at"], name="grant_org_currency_expiry"),)
        constraints = (
            models.CheckConstraint(condition=models.Q(amount_micros__gt=0), name="grant_amount_positive"),
            models.CheckConstraint(
                condition=models.Q(consumed_micros__gte=0, held_micros__gte=0), name="grant_used_not_negative"
            ),
            models.CheckConstraint(
                condition=models.Q(consumed_micros__lte=models.F("amount_micros") - models.F("held_micros")),
                name="grant_not_overdrawn",
            ),
        )

    def __str__(self) -> str:
        return f"grant {self.pk} of {self.organization_id}: {self.amount_micros} {self.currency} micros"

    @property
    def remaining_micros(self) -> int:
        return self.amount_micros - self.consumed_micros - self.held_micros


class CreditHold(OrgOwnedModel):
    """The most a request can cost, reserved at admission with the prices and FX rate in force then."""

    class Status(models.TextChoices):
        OPEN = "open", "open"
        CAPTURED = "captured", "captured"
        RELEASED = "released", "released"

    request_id = models.CharField(max_length=64, unique=True)
    billing_mode = models.CharField(max_length=16, help_text="the organisation's mode at admission")
    currency = models.CharField(max_length=3)
    amount_micros = models.BigIntegerField(help_text="the maximum cost, rounded up to whole micros")
    model_name = models.CharField(max_length=120)
    region = models.CharField(max_length=8, choices=[(code, code) for code in REGION_CODES])
    input_tokens = models.PositiveBigIntegerField()
    max_output_tokens = models.PositiveBigIntegerField()
    input_price = models.ForeignKey(PriceBookEntry, on_delete=models.PROTECT, related_name="+")
    output_price = models.ForeignKey(PriceBookEntry, on_delete=models.PROTECT, related_name="+")
    input_usd_per_million = models.DecimalField(max_digits=18, decimal_places=6)
    output_usd_per_million = models.DecimalField(max_digits=18, decimal_places=6)
    fx_rate = models.ForeignKey(
        FxRate, null=True, blank=True, on_delete=models.PROTECT, related_name="+", help_text="empty: USD, rate 1"
    )
    fx_per_usd = models.DecimalField(max_digits=20, decimal_places=8)
    admitted_at = models.DateTimeField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    closed_at = models.DateTimeField(null=True, blank=True)
    release_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ("-admitted_at", "-id")
        indexes = (models.Index(fields=["organization", "status"], name="hold_org_status"),)
        constraints = (
            models.CheckConstraint(condition=models.Q(amount_micros__gte=0), name="hold_amount_not_negative"),
            models.CheckConstraint(
                condition=(
                    models.Q(status="open", closed_at__isnull=True)
                    | (models.Q(status__in=["captured", "released"]) & models.Q(closed_at__isnull=False))
                ),
                name="hold_closed_when_not_open",
            ),
        )

    def __str__(self) -> str:
        return f"hold {self.request_id} ({self.status}): {self.amount_micros} {self.currency} micros"


class HoldAllocation(OrgOwnedModel):
    """The part of a prepaid hold reserved on one grant; a hold's allocations add up to its amount."""

    hold = models.ForeignKey(CreditHold, on_delete=models.PROTECT, related_name="allocations")
    grant = models.ForeignKey(CreditGrant, on_delete=models.PROTECT, related_name="+")
    amount_micros = models.BigIntegerField()

    class Meta:
        ordering = ("hold", "id")
        constraints = (
            models.UniqueConstraint(fields=["hold", "grant"], name="allocation_unique_grant"),
            models.CheckConstraint(condition=models.Q(amount_micros__gt=0), name="allocation_positive"),
        )

    def __str__(self) -> str:
        return f"{self.amount_micros} micros of grant {self.grant_id} for hold {self.hold_id}"


class LedgerEntry(OrgOwnedModel):
    """One settled request: exactly one per request id, append-only (the database refuses changes).

    Priced from the hold's recorded prices and FX rate: `usd_amount` is exact, `amount_micros` is the
    billing-currency amount rounded half-even to whole micros. Its postings balance (debits = credits
    = `amount_micros`), checked by the service and, on PostgreSQL, by a deferred constraint trigger.
    """

    request_id = models.CharField(max_length=64, unique=True)
    hold = models.OneToOneField(CreditHold, on_delete=models.PROTECT, related_name="ledger_entry")
    api_key_id = models.BigIntegerField(null=True, blank=True, help_text="the key that made the request")
    model_name = models.CharField(max_length=120)
    region = models.CharField(max_length=8, choices=[(code, code) for code in REGION_CODES])
    input_tokens = models.PositiveBigIntegerField()
    output_tokens = models.PositiveBigIntegerField()
    input_price = models.ForeignKey(PriceBookEntry, on_delete=models.PROTECT, related_name="+")
    output_price = models.ForeignKey(PriceBookEntry, on_delete=models.PROTECT, related_name="+")
    input_usd_per_million = models.DecimalField(max_digits=18, decimal_places=6)
    output_usd_per_million = models.DecimalField(max_digits=18, decimal_places=6)
    fx_rate = models.ForeignKey(FxRate, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    fx_per_usd = models.DecimalField(max_digits=20, decimal_places=8)
    currency = models.CharField(max_length=3)
    usd_amount = models.DecimalField(max_digits=30, decimal_places=12, help_text="exact list amount in USD")
    amount_micros = models.BigIntegerField(help_text="billing-currency micros, half-even")
    admitted_at = models.DateTimeField(help_text="invoices close by admission time")
    settled_at = models.DateTimeField()

    class Meta:
        ordering = ("-admitted_at", "-id")
        verbose_name_plural = "ledger entries"
        indexes = (models.Index(fields=["organization", "admitted_at"], name="ledger_org_admitted"),)
        constraints = (
            models.CheckConstraint(
                condition=models.Q(amount_micros__gte=0, usd_amount__gte=0), name="ledger_amount_not_negative"
            ),
        )

    def __str__(self) -> str:
        return f"ledger {self.request_id}: {self.amount_micros} {self.currency} micros"


class LedgerPosting(OrgOwnedModel):
    """One side of a ledger entry's double entry: a debit or a credit to one account."""

    class Account(models.TextChoices):
        CUSTOMER_CREDIT = "customer_credit", "customer credit (prepaid grants)"
        RECEIVABLE = "accounts_receivable", "accounts receivable (to invoice)"
        REVENUE = "revenue", "usage revenue"

    entry = models.ForeignKey(LedgerEntry, on_delete=models.PROTECT, related_name="postings")
    account = models.CharField(max_length=24, choices=Account.choices)
    grant = models.ForeignKey(CreditGrant, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    debit_micros = models.BigIntegerField(default=0)
    credit_micros = models.BigIntegerField(default=0)

    class Meta:
        ordering = ("entry", "id")
        constraints = (
            models.CheckConstraint(
                condition=(
                    models.Q(debit_micros__gt=0, credit_micros=0) | models.Q(debit_micros=0, credit_micros__gt=0)
                ),
                name="posting_one_side",
            ),
            models.CheckConstraint(
                condition=(
                    models.Q(account="customer_credit", grant__isnull=False)
                    | (~models.Q(account="customer_credit") & models.Q(grant__isnull=True))
                ),
                name="posting_grant_iff_credit",
            ),
        )

    def __str__(self) -> str:
        side = f"Dr {self.debit_micros}" if self.debit_micros else f"Cr {self.credit_micros}"
        return f"{self.account} {side}"
