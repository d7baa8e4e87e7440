"""Billing data (central): FX and tax tables, the price book, credit grants, holds and the ledger."""

from __future__ import annotations

from typing import Any

from django.db import models

from controlplane.core.models import CentralModel, OrgOwnedModel
from controlplane.core.regions import REGION_CODES

# The ledger's write path (holds, entries, postings) has no row-by-row foreign-key checks on PostgreSQL: its
# references are checked per statement, set-based, by triggers (migration 0007): a hold's organisation,
# prices and FX rate must exist when it is written and never change; an entry must carry its hold's
# organisation, prices and FX rate, and its postings its organisation and grants of that organisation; and
# a referenced row (an organisation, a price, a rate, a grant, a hold) cannot be deleted. Django keeps
# `on_delete` in Python as before (`db_constraint=False` below). Their `created_at` is not indexed: nothing
# looks them up by it. SQLite keeps its foreign keys and indexes (the migration alters PostgreSQL only).


def _created_at() -> models.DateTimeField[Any, Any]:
    return models.DateTimeField(auto_now_add=True)


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
    expired_at = models.DateTimeField(null=True, blank=True, help_text="when beat recorded its expiry")
    expired_micros = models.BigIntegerField(default=0, help_text="what was left unspent when it expired")

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

    created_at = _created_at()
    # The organisation's index is `hold_org_status`'s prefix; nothing looks holds up by price or rate.
    organization = models.ForeignKey(
        "tenants.Organization", on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False
    )
    request_id = models.CharField(max_length=64)
    billing_mode = models.CharField(max_length=16, help_text="the organisation's mode at admission")
    currency = models.CharField(max_length=3)
    amount_micros = models.BigIntegerField(help_text="the maximum cost, rounded up to whole micros")
    model_name = models.CharField(max_length=120)
    region = models.CharField(max_length=8, choices=[(code, code) for code in REGION_CODES])
    input_tokens = models.PositiveBigIntegerField()
    max_output_tokens = models.PositiveBigIntegerField()
    input_price = models.ForeignKey(PriceBookEntry, on_delete=models.PROTECT, related_name="+", db_index=False,
                                    db_constraint=False)  # fmt: skip
    output_price = models.ForeignKey(PriceBookEntry, on_delete=models.PROTECT, related_name="+", db_index=False,
                                     db_constraint=False)  # fmt: skip
    input_usd_per_million = models.DecimalField(max_digits=18, decimal_places=6)
    output_usd_per_million = models.DecimalField(max_digits=18, decimal_places=6)
    fx_rate = models.ForeignKey(
        FxRate,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="empty: USD, rate 1",
        db_index=False,
        db_constraint=False,
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
            # a constraint rather than `unique=True`, which would add a second (pattern) index nothing uses
            models.UniqueConstraint(fields=["request_id"], name="hold_request_unique"),
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

    created_at = _created_at()
    # The organisation, prices and FX rate are the hold's (checked at commit); the organisation's index is
    # `ledger_org_admitted`'s prefix, and nothing looks entries up by price or rate.
    organization = models.ForeignKey(
        "tenants.Organization", on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False
    )
    request_id = models.CharField(max_length=64)
    hold = models.OneToOneField(CreditHold, on_delete=models.PROTECT, related_name="ledger_entry", db_constraint=False)
    api_key_id = models.BigIntegerField(null=True, blank=True, help_text="the key that made the request")
    model_name = models.CharField(max_length=120)
    region = models.CharField(max_length=8, choices=[(code, code) for code in REGION_CODES])
    input_tokens = models.PositiveBigIntegerField()
    output_tokens = models.PositiveBigIntegerField()
    input_price = models.ForeignKey(PriceBookEntry, on_delete=models.PROTECT, related_name="+", db_index=False,
                                    db_constraint=False)  # fmt: skip
    output_price = models.ForeignKey(PriceBookEntry, on_delete=models.PROTECT, related_name="+", db_index=False,
                                     db_constraint=False)  # fmt: skip
    input_usd_per_million = models.DecimalField(max_digits=18, decimal_places=6)
    output_usd_per_million = models.DecimalField(max_digits=18, decimal_places=6)
    fx_rate = models.ForeignKey(
        FxRate, null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_index=False, db_constraint=False
    )
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
            models.UniqueConstraint(fields=["request_id"], name="ledger_request_unique"),
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

    created_at = _created_at()
    # The entry's organisation (checked at commit); indexed for the per-organisation reconciliation and invoices.
    organization = models.ForeignKey(
        "tenants.Organization", on_delete=models.CASCADE, related_name="+", db_constraint=False
    )
    entry = models.ForeignKey(LedgerEntry, on_delete=models.PROTECT, related_name="postings", db_constraint=False)
    account = models.CharField(max_length=24, choices=Account.choices)
    grant = models.ForeignKey(CreditGrant, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                              db_constraint=False)  # fmt: skip
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


# --- Budgets (DESIGN section 8, invariant I4) ------------------------------------------------------------


def default_alert_thresholds() -> list[int]:
    return [50, 80, 100]


class Budget(OrgOwnedModel):
    """A postpaid organisation's monthly budget in its billing currency (calendar months, UTC, by admission).

    Alerts fire once per threshold per month when committed spend (settled plus open holds) reaches the
    threshold's share of the amount. With `hard_stop`, admission refuses a request whose hold would take
    committed spend above the amount, so settled spend can never exceed it.
    """

    currency = models.CharField(max_length=3)
    amount_micros = models.BigIntegerField()
    alert_thresholds = models.JSONField(default=default_alert_thresholds, help_text="percents, ascending")
    hard_stop = models.BooleanField(default=False, help_text="refuse requests that would exceed the budget")

    class Meta:
        ordering = ("organization",)
        constraints = (
            models.UniqueConstraint(fields=["organization"], name="budget_one_per_org"),
            models.CheckConstraint(condition=models.Q(amount_micros__gt=0), name="budget_amount_positive"),
        )

    def __str__(self) -> str:
        return f"budget of {self.organization_id}: {self.amount_micros} {self.currency} micros a month"


class BudgetSpend(OrgOwnedModel):
    """Committed postpaid spend of one organisation in one month and currency: open holds and settled entries.

    Maintained by database triggers on holds (migration 0004), in the transaction that opens or closes
    the hold, so that the budget check reads one row; `billing_reconcile` recomputes it from the holds and
    the ledger.
    """

    month = models.DateField(help_text="the first day of the month (UTC) of the holds' admission")
    currency = models.CharField(max_length=3)
    held_micros = models.BigIntegerField(default=0)
    settled_micros = models.BigIntegerField(default=0)

    class Meta:
        ordering = ("organization", "-month")
        constraints = (
            models.UniqueConstraint(fields=["organization", "month", "currency"], name="budget_spend_unique_month"),
        )

    def __str__(self) -> str:
        return f"spend of {self.organization_id} in {self.month:%Y-%m}: {self.held_micros}+{self.settled_micros}"


class BudgetEvent(OrgOwnedModel):
    """An alert threshold reached in one month: recorded once, shown through the API, mailed by beat."""

    month = models.DateField()
    threshold_percent = models.PositiveSmallIntegerField()
    currency = models.CharField(max_length=3)
    budget_micros = models.BigIntegerField()
    committed_micros = models.BigIntegerField(help_text="settled plus open holds, with the request that crossed")
    request_id = models.CharField(max_length=64, help_text="the request whose hold reached the threshold")
    mailed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        constraints = (
            models.UniqueConstraint(
                fields=["organization", "month", "threshold_percent"], name="budget_event_once_per_threshold"
            ),
        )

    def __str__(self) -> str:
        return f"{self.threshold_percent}% of the budget of {self.organization_id} in {self.month:%Y-%m}"


# --- Invoices ------------------------------------------------------------------------------------------
#
# A closed month of an organisation is a `BillingPeriod`: it covers the organisation's ledger entries
# admitted before the month's end with ids up to `entry_id_max`, minus those its previous period
# covered. The watermark is read under the organisation's lock, when no settlement of the organisation
# is in flight, so every entry up to it is committed; an entry settled after the close has a larger id
# and lands on the next period's invoice. Each currency billed in the period gets one invoice.


class BillingPeriod(OrgOwnedModel):
    period_start = models.DateField(help_text="the first day of the month (UTC)")
    period_end = models.DateField(help_text="the first day of the next month (exclusive)")
    entry_id_max = models.BigIntegerField(help_text="ledger entries up to this id are covered")
    previous = models.OneToOneField("self", null=True, blank=True, on_delete=models.PROTECT, related_name="next_period")
    closed_by = models.CharField(max_length=200)

    class Meta:
        ordering = ("organization", "-period_start")
        constraints = (models.UniqueConstraint(fields=["organization", "period_start"], name="period_once_per_month"),)

    def __str__(self) -> str:
        return f"period {self.period_start:%Y-%m} of {self.organization_id}"


class Invoice(OrgOwnedModel):
    """The bill of one closed month in one currency. Money fields never change once written."""

    class Status(models.TextChoices):
        DRAFT = "draft", "draft"
        FINALIZED = "finalized", "finalized"
        PAID = "paid", "paid"
        VOID = "void", "void"

    period = models.ForeignKey(BillingPeriod, on_delete=models.PROTECT, related_name="invoices")
    period_start = models.DateField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    number = models.CharField(max_length=40, blank=True, help_text="given at finalisation")
    customer_name = models.CharField(max_length=120)
    billing_country = models.CharField(max_length=2)
    tax_id = models.CharField(max_length=40, blank=True)
    entry_count = models.PositiveBigIntegerField()
    ledger_micros = models.BigIntegerField(help_text="the covered ledger entries' amounts, added up")
    subtotal_micros = models.BigIntegerField(help_text="the lines, each rounded half-even to the minor unit")
    credits_micros = models.BigIntegerField(help_text="paid from prepaid grants")
    tax_rate = models.ForeignKey(TaxRate, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    tax_name = models.CharField(max_length=80)
    tax_rate_percent = models.DecimalField(max_digits=6, decimal_places=3)
    reverse_charge = models.BooleanField(default=False)
    tax_note = models.CharField(max_length=300, blank=True)
    tax_micros = models.BigIntegerField()
    total_micros = models.BigIntegerField(help_text="subtotal - credits + tax")
    finalized_at = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)
    status_note = models.CharField(max_length=300, blank=True, help_text="payment reference or reason for voiding")

    class Meta:
        ordering = ("-period_start", "-id")
        indexes = (models.Index(fields=["organization", "-period_start"], name="invoice_org_period"),)
        constraints = (
            models.UniqueConstraint(fields=["period", "currency"], name="invoice_once_per_period_currency"),
            models.UniqueConstraint(fields=["number"], condition=~models.Q(number=""), name="invoice_number_unique"),
            models.CheckConstraint(
                condition=models.Q(
                    total_micros=models.F("subtotal_micros") - models.F("credits_micros") + models.F("tax_micros")
                ),
                name="invoice_total_adds_up",
            ),
            models.CheckConstraint(
                condition=models.Q(
                    credits_micros__gte=0, credits_micros__lte=models.F("subtotal_micros"), tax_micros__gte=0
                ),
                name="invoice_amounts_in_range",
            ),
            models.CheckConstraint(
                condition=models.Q(status="draft", number="") | (~models.Q(status="draft") & ~models.Q(number="")),
                name="invoice_numbered_when_final",
            ),
        )

    def __str__(self) -> str:
        return f"invoice {self.number or self.pk} ({self.status}) {self.period_start:%Y-%m} {self.currency}"


class InvoiceLine(OrgOwnedModel):
    """Usage of one model in one region for one token kind, admitted in `usage_month`.

    `exact_micros` adds up the covered entries exactly (the input part is tokens x price x rate; the
    output part is the rest of each entry's amount, so the two parts add up to the ledger); `amount_micros`
    is it rounded once, half-even, to the currency's minor unit.
    """

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="lines")
    usage_month = models.DateField(help_text="an earlier month: settled after that month's close")
    model_name = models.CharField(max_length=120)
    region = models.CharField(max_length=8, choices=[(code, code) for code in REGION_CODES])
    token_kind = models.CharField(max_length=8, choices=PriceBookEntry.TokenKind.choices)
    tokens = models.PositiveBigIntegerField()
    entry_count = models.PositiveBigIntegerField()
    exact_micros = models.DecimalField(max_digits=40, decimal_places=14)
    amount_micros = models.BigIntegerField()

    class Meta:
        ordering = ("invoice", "usage_month", "model_name", "region", "token_kind")
        constraints = (
            models.UniqueConstraint(
                fields=["invoice", "usage_month", "model_name", "region", "token_kind"], name="invoice_line_unique"
            ),
        )

    def __str__(self) -> str:
        return f"{self.model_name} {self.region} {self.token_kind}: {self.amount_micros} micros"
