"""Monthly invoices: closing calendar months per organisation, finalising, payment and voiding, exports.

A month is closed per organisation (UTC, by admission time). The close reads a watermark, the highest
ledger entry id, while it holds the organisation's lock: no settlement of the organisation is in
flight then, so every entry of the organisation up to the watermark is committed, and any later one
gets a higher id. The month's `BillingPeriod` covers the entries admitted before the month's end up to
the watermark, minus what the previous period covered; an entry settled after the close (a request
admitted on the 31st and finished after midnight) lands on the next month's invoice, and nothing
written by a close ever changes.

Each currency billed in the period gets one invoice with lines per usage month, model, region and token
kind. A line adds up its entries exactly (the input part of an entry is tokens x price x FX rate; the
output part is the rest of the entry's amount, so each entry's parts add up to its ledger amount) and is
rounded once, half-even, to the currency's minor unit. Subtotal = the lines; credits = what grants paid;
tax on the subtotal less credits, rounded once; total = subtotal - credits + tax.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Context, Decimal, Inexact, InvalidOperation, Overflow, localcontext
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Case, Count, DateTimeField, Max, Q, QuerySet, Sum, Value, When
from django.db.models.functions import TruncMonth
from django.utils import timezone

from billing import locks
from billing.budgets import month_start
from billing.models import BillingPeriod, CreditGrant, Invoice, InvoiceLine, LedgerEntry, LedgerPosting
from billing.tax import TaxTreatment, tax_treatment
from controlplane.core import money
from controlplane.core.errors import Conflict, DomainError, NotFound, ValidationFailed
from controlplane.core.services import Actor, audit_record
from tenants.models import Organization

logger = logging.getLogger("billing.invoicing")

# Sums of exact amounts: 80 digits hold any month's total with its 14 decimal places; a rounding here
# would be a bug, so it raises.
_EXACT = Context(prec=80, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, Inexact, Overflow])
_KINDS = ("input", "output")


# --- Months ----------------------------------------------------------------------------------------------


def month_parse(value: str) -> date:
    """'YYYY-MM' as the first day of that month."""
    try:
        parsed = datetime.strptime(value, "%Y-%m")  # noqa: DTZ007  # a calendar month, no time of day
    except ValueError as exc:
        raise ValidationFailed(f"{value!r} is not a month (YYYY-MM).") from exc
    return date(parsed.year, parsed.month, 1)


def month_next(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def month_bounds(month: date) -> tuple[datetime, datetime]:
    """The month's start and end (exclusive) as UTC moments."""
    start = date(month.year, month.month, 1)
    return datetime.combine(start, time(0), UTC), datetime.combine(month_next(start), time(0), UTC)


# --- What a period covers ------------------------------------------------------------------------------


def _coverage(*, organization_id: int, end: datetime, entry_id_max: int, previous: BillingPeriod | None,
              prefix: str = "") -> Q:  # fmt: skip
    """The entries a period covers, as a filter on ledger entries (or, with `prefix`, on related rows)."""
    covered = Q(**{f"{prefix}organization_id": organization_id, f"{prefix}admitted_at__lt": end,
                   f"{prefix}pk__lte": entry_id_max})  # fmt: skip
    if previous is not None:
        previous_end = datetime.combine(previous.period_end, time(0), UTC)
        covered &= Q(**{f"{prefix}admitted_at__gte": previous_end}) | Q(**{f"{prefix}pk__gt": previous.entry_id_max})
    return covered


def period_entries(*, period: BillingPeriod, currency: str | None = None) -> QuerySet[LedgerEntry]:
    """The ledger entries a closed period covers (all its invoices, or one currency's)."""
    _, end = month_bounds(period.period_start)
    covered = _coverage(
        organization_id=period.organization_id, end=end, entry_id_max=period.entry_id_max, previous=period.previous
    )
    entries: QuerySet[LedgerEntry] = LedgerEntry.objects.unscoped_all_orgs().filter(covered)
    return entries.filter(currency=currency) if currency is not None else entries


@dataclass
class _LineSum:
    tokens: int = 0
    entries: int = 0
    exact: Decimal = Decimal(0)


@dataclass
class _CurrencySum:
    entry_count: int = 0
    ledger_micros: int = 0
    lines: dict[tuple[date, str, str, str], _LineSum] = field(default_factory=lambda: defaultdict(_LineSum))


# Grouping a month of entries sorts or hashes them; PostgreSQL's default working memory (4 MB) would spill
# a million of them to disk. Raised for the closing transaction only.
_CLOSE_WORK_MEM = "64MB"


def _roomy_work_mem() -> None:
    """Give the grouping queries of this transaction more working memory (PostgreSQL; a no-op elsewhere)."""
    connection = transaction.get_connection()
    if connection.vendor == "postgresql" and connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL work_mem = '{_CLOSE_WORK_MEM}'")


def _sums(entries: QuerySet[LedgerEntry], *, month: date) -> dict[int, dict[str, _CurrencySum]]:
    """Exact per-line sums of the entries, per organisation and currency, from one grouped query of integer sums.

    Within a group the input price and the FX rate are fixed, so the group's input amount is its token
    sum times them, exactly; the output amount is the rest of the group's ledger amount. Entries admitted
    in `month` (nearly all) skip the per-row truncation to their month.
    """
    start, _ = month_bounds(month)
    usage_month = Case(
        When(admitted_at__gte=start, then=Value(start)),
        default=TruncMonth("admitted_at", tzinfo=UTC),
        output_field=DateTimeField(),
    )
    rows = (
        entries.annotate(usage_month=usage_month)
        .values(
            "organization_id", "currency", "usage_month", "model_name", "region", "input_usd_per_million",
            "fx_per_usd",
        )
        .annotate(
            count=Count("pk"),
            input_tokens=Sum("input_tokens"),
            output_tokens=Sum("output_tokens"),
            amount=Sum("amount_micros"),
        )
        .order_by()
    )  # fmt: skip
    sums: dict[int, dict[str, _CurrencySum]] = defaultdict(lambda: defaultdict(_CurrencySum))
    with localcontext(_EXACT):
        for row in rows:
            count, input_tokens = int(row["count"]), int(row["input_tokens"])
            output_tokens, amount = int(row["output_tokens"]), int(row["amount"])
            input_exact = money.usd_to_currency(
                usd_micros=money.token_cost_usd_micros(
                    tokens=input_tokens, usd_per_million=row["input_usd_per_million"]
                ),
                per_usd=row["fx_per_usd"],
            )
            usage_month = row["usage_month"].astimezone(UTC).date()
            total = sums[row["organization_id"]][row["currency"]]
            total.entry_count += count
            total.ledger_micros += amount
            for kind, tokens, exact in (
                ("input", input_tokens, input_exact),
                ("output", output_tokens, Decimal(amount) - input_exact),
            ):
                line = total.lines[(usage_month, row["model_name"], row["region"], kind)]
                line.tokens += tokens
                line.entries += count
                line.exact += exact
    return sums


def _credit_sums(*, covered: Q, organization_ids: list[int]) -> dict[int, dict[str, int]]:
    """What prepaid grants paid for the covered entries, per organisation and currency (micros)."""
    with_grants = list(
        CreditGrant.objects.unscoped_all_orgs()
        .filter(organization_id__in=organization_ids)
        .values_list("organization_id", flat=True)
        .distinct()
    )
    if not with_grants:
        return {}
    rows = (
        LedgerPosting.objects.unscoped_all_orgs()
        .filter(covered, organization_id__in=with_grants, account=LedgerPosting.Account.CUSTOMER_CREDIT)
        .values("organization_id", "entry__currency")
        .annotate(total=Sum("debit_micros"))
        .order_by()
    )
    paid: dict[int, dict[str, int]] = defaultdict(dict)
    for row in rows:
        paid[row["organization_id"]][row["entry__currency"]] = int(row["total"])
    return paid


def credits_applied(*, credit_micros: int, ledger_micros: int, subtotal_micros: int, currency: str) -> int:
    """Credits on an invoice: the grants' part rounded once half-even, never above the subtotal; when grants
    paid for every entry, exactly the subtotal (nothing is left to pay)."""
    if credit_micros == 0:
        return 0
    if credit_micros == ledger_micros:
        return subtotal_micros
    return min(subtotal_micros, money.round_to_minor_unit(credit_micros, currency))


def tax_amount(*, taxable_micros: int, percent: Decimal, currency: str) -> int:
    """Tax on `taxable_micros`, rounded once half-even to the minor unit (micros)."""
    with localcontext(_EXACT):
        exact = Decimal(taxable_micros) * percent / 100
    return money.round_to_minor_unit(exact, currency)


# --- Closing months ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeriodClosed:
    period: BillingPeriod
    invoices: list[Invoice]
    created: bool


def _watermark(*, organization_id: int) -> int:
    """The highest ledger entry id, read while no settlement of the organisation is in flight."""
    with transaction.atomic():
        locks.organization_lock(organization_id=organization_id)
        highest = LedgerEntry.objects.unscoped_all_orgs().aggregate(highest=Max("pk"))["highest"]
    return int(highest or 0)


def _existing(*, organization_id: int, month: date) -> PeriodClosed | None:
    period = (
        BillingPeriod.objects.unscoped_all_orgs()
        .filter(organization_id=organization_id, period_start=month)
        .select_related("previous")
        .first()
    )
    if period is None:
        return None
    invoices = list(Invoice.objects.unscoped_all_orgs().filter(period=period).order_by("currency"))
    return PeriodClosed(period=period, invoices=invoices, created=False)


class _ClosedMeanwhile(Exception):
    """Another closer closed the month between the check and the close."""


def _close_one(*, actor: Actor, organization_id: int, month: date, finalize: bool) -> PeriodClosed:
    _, end = month_bounds(month)
    entry_id_max = _watermark(organization_id=organization_id)
    try:
        with transaction.atomic():
            organization = Organization.objects.get(pk=organization_id)
            previous = (
                BillingPeriod.objects.unscoped_all_orgs()
                .filter(organization_id=organization_id)
                .order_by("-period_start")
                .first()
            )
            if previous is not None and previous.period_start > month:
                raise Conflict(f"{previous.period_start:%Y-%m} is already closed.", code="month_closed")
            if previous is not None and previous.period_start == month:
                raise _ClosedMeanwhile
            covered = _coverage(organization_id=organization_id, end=end, entry_id_max=entry_id_max,
                                previous=previous)  # fmt: skip
            _roomy_work_mem()
            sums = _sums(LedgerEntry.objects.unscoped_all_orgs().filter(covered), month=month).get(organization_id, {})
            paid = (
                _credit_sums(
                    covered=_coverage(organization_id=organization_id, end=end, entry_id_max=entry_id_max,
                                      previous=previous, prefix="entry__"),
                    organization_ids=[organization_id],
                ).get(organization_id, {})
                if sums
                else {}
            )  # fmt: skip
            return _period_write(actor=actor, organization=organization, month=month, entry_id_max=entry_id_max,
                                 previous=previous, sums=sums, paid=paid, finalize=finalize)  # fmt: skip
    except (IntegrityError, _ClosedMeanwhile):
        # Another closer of the same month won; its result is the answer.
        existing = _existing(organization_id=organization_id, month=month)
        if existing is None:
            raise
        return existing


def _period_write(
    *,
    actor: Actor,
    organization: Organization,
    month: date,
    entry_id_max: int,
    previous: BillingPeriod | None,
    sums: dict[str, _CurrencySum],
    paid: dict[str, int],
    finalize: bool,
) -> PeriodClosed:
    """Write a month computed beforehand: its period, one invoice per currency, the audit record.

    Runs in the caller's transaction; a country without a tax rate is refused before anything is written.
    """
    start, end = month_bounds(month)
    treatment = tax_treatment(organization=organization, on=end.date() - timedelta(days=1)) if sums else None
    period = BillingPeriod.objects.unscoped_all_orgs().create(
        organization=organization,
        period_start=start.date(),
        period_end=end.date(),
        entry_id_max=entry_id_max,
        previous=previous,
        closed_by=actor.label[:200],
    )
    invoices = [
        _invoice_write(period=period, organization=organization, currency=currency, total=total,
                       credit_micros=paid.get(currency, 0), treatment=treatment)
        for currency, total in sorted(sums.items())
        if treatment is not None
    ]  # fmt: skip
    audit_record(
        actor=actor,
        action="billing_period.close",
        target_type="BillingPeriod",
        target_id=period.pk,
        organization_id=organization.pk,
        changes={
            "month": f"{month:%Y-%m}",
            "entry_id_max": entry_id_max,
            "invoices": {
                invoice.currency: {
                    "entries": invoice.entry_count,
                    "total": money.format_micros(invoice.total_micros, invoice.currency),
                }
                for invoice in invoices
            },
        },
    )
    if finalize:
        invoices = [invoice_finalize(actor=actor, invoice=invoice) for invoice in invoices]
    return PeriodClosed(period=period, invoices=invoices, created=True)


def _invoice_write(
    *,
    period: BillingPeriod,
    organization: Organization,
    currency: str,
    total: _CurrencySum,
    credit_micros: int,
    treatment: TaxTreatment,
) -> Invoice:
    lines = [
        InvoiceLine(
            organization=organization,
            usage_month=usage_month,
            model_name=model_name,
            region=region,
            token_kind=kind,
            tokens=line.tokens,
            entry_count=line.entries,
            exact_micros=line.exact,
            amount_micros=money.round_to_minor_unit(line.exact, currency),
        )
        for (usage_month, model_name, region, kind), line in sorted(total.lines.items())
    ]
    subtotal = sum(line.amount_micros for line in lines)
    applied = credits_applied(
        credit_micros=credit_micros, ledger_micros=total.ledger_micros, subtotal_micros=subtotal, currency=currency
    )
    tax = tax_amount(taxable_micros=subtotal - applied, percent=treatment.percent, currency=currency)
    invoice: Invoice = Invoice.objects.unscoped_all_orgs().create(
        organization=organization,
        period=period,
        period_start=period.period_start,
        currency=currency,
        customer_name=organization.name,
        billing_country=organization.billing_country,
        tax_id=organization.tax_id,
        entry_count=total.entry_count,
        ledger_micros=total.ledger_micros,
        subtotal_micros=subtotal,
        credits_micros=applied,
        tax_rate=treatment.rate,
        tax_name=treatment.rate.tax_name,
        tax_rate_percent=treatment.percent,
        reverse_charge=treatment.reverse_charge,
        tax_note=treatment.note[:300],
        tax_micros=tax,
        total_micros=subtotal - applied + tax,
    )
    for line in lines:
        line.invoice = invoice
    InvoiceLine.objects.unscoped_all_orgs().bulk_create(lines)
    return invoice


def invoice_close_month(
    *, actor: Actor, organization: Organization, month: date, finalize: bool = False, now: datetime | None = None
) -> list[PeriodClosed]:
    """Close `month` for the organisation, and first every earlier month it has not closed, oldest first.

    Idempotent: a month already closed is returned as it is (`created` False). The month must be over.
    Each month is its own transaction; a refusal (409 `tax_rate_missing`) writes nothing for that month
    and stops before the later ones.
    """
    month = month_start(datetime.combine(month, time(0), UTC))
    _, end = month_bounds(month)
    if end > (now or timezone.now()):
        raise ValidationFailed(f"{month:%Y-%m} is not over yet (UTC).", code="month_not_over")
    existing = _existing(organization_id=organization.pk, month=month)
    if existing is not None:
        return [existing]
    latest = (
        BillingPeriod.objects.unscoped_all_orgs()
        .filter(organization_id=organization.pk)
        .order_by("-period_start")
        .values_list("period_start", flat=True)
        .first()
    )
    if latest is not None and latest > month:
        raise Conflict(
            f"{month:%Y-%m} is before the organisation's first closed month and cannot be closed now.",
            code="month_closed",
        )
    if latest is not None:
        first = month_next(latest)
    else:
        earliest = (
            LedgerEntry.objects.unscoped_all_orgs()
            .filter(organization_id=organization.pk)
            .order_by("admitted_at")
            .values_list("admitted_at", flat=True)
            .first()
        )
        first = min(month, month_start(earliest)) if earliest is not None else month
    results: list[PeriodClosed] = []
    current = first
    while current <= month:
        results.append(_close_one(actor=actor, organization_id=organization.pk, month=current, finalize=finalize))
        current = month_next(current)
    return results


@dataclass(slots=True)
class CloseReport:
    closed: list[PeriodClosed] = field(default_factory=list)
    refused: dict[str, DomainError] = field(default_factory=dict)


def _month_before(month: date) -> date:
    return date(month.year - (month.month == 1), (month.month - 2) % 12 + 1, 1)


def _close_batch(
    *, actor: Actor, month: date, previous: dict[int, BillingPeriod], finalize: bool, report: CloseReport
) -> None:
    """Close `month` for organisations whose last closed month is the one before, in one pass over the ledger.

    The watermark is read with all their rows locked at once (in primary-key order, briefly), so that it
    holds for each of them. Their previous periods all end where this month starts, so an entry is covered
    when it was admitted this month, or earlier with an id above its organisation's previous watermark
    (organisations closed together last month share one). All of them are summed with one grouped query;
    each organisation's period is then written in its own transaction, as `invoice_close_month` writes it.
    """
    start, end = month_bounds(month)
    ids = sorted(previous)
    with transaction.atomic():
        locks.organizations_lock(organization_ids=ids)
        entry_id_max = int(LedgerEntry.objects.unscoped_all_orgs().aggregate(highest=Max("pk"))["highest"] or 0)
    groups: dict[int, list[int]] = defaultdict(list)
    for organization_id, period in previous.items():
        groups[period.entry_id_max].append(organization_id)

    def covered(prefix: str) -> Q:
        # admitted this month, or earlier with an id above the organisation's previous watermark
        late = Q()
        for previous_max, members in groups.items():
            late |= Q(**{f"{prefix}organization_id__in": members, f"{prefix}pk__gt": previous_max})
        bounds = {
            f"{prefix}organization_id__in": ids,
            f"{prefix}pk__lte": entry_id_max,
            f"{prefix}admitted_at__lt": end,
        }
        return Q(**bounds) & (Q(**{f"{prefix}admitted_at__gte": start}) | late)

    organizations = Organization.objects.in_bulk(ids)
    with transaction.atomic():
        _roomy_work_mem()
        sums = _sums(LedgerEntry.objects.unscoped_all_orgs().filter(covered("")), month=month)
        paid = _credit_sums(covered=covered("entry__"), organization_ids=sorted(sums))
    for organization_id in ids:
        organization = organizations[organization_id]
        try:
            with transaction.atomic():
                report.closed.append(
                    _period_write(
                        actor=actor,
                        organization=organization,
                        month=month,
                        entry_id_max=entry_id_max,
                        previous=previous[organization_id],
                        sums=sums.get(organization_id, {}),
                        paid=paid.get(organization_id, {}),
                        finalize=finalize,
                    )
                )
        except IntegrityError:
            existing = _existing(organization_id=organization_id, month=month)
            if existing is None:
                raise
            report.closed.append(existing)
        except DomainError as exc:
            logger.warning("month not closed", extra={"organization": organization.slug, "code": exc.code})
            report.refused[organization.slug] = exc


def invoices_close_all(
    *, actor: Actor, month: date, finalize: bool = False, now: datetime | None = None
) -> CloseReport:
    """Close `month` for every organisation; refusals are collected, not raised.

    Organisations whose last closed month is the one before (the steady state) are closed together in one
    pass over the ledger (`_close_batch`); the others (a first close, a catch-up, a month already closed)
    one by one through `invoice_close_month`.
    """
    month = month_start(datetime.combine(month, time(0), UTC))
    _, end = month_bounds(month)
    if end > (now or timezone.now()):
        raise ValidationFailed(f"{month:%Y-%m} is not over yet (UTC).", code="month_not_over")
    report = CloseReport()
    periods = BillingPeriod.objects.unscoped_all_orgs()
    closed = set(periods.filter(period_start=month).values_list("organization_id", flat=True))
    batch = {
        period.organization_id: period
        for period in periods.filter(period_start=_month_before(month)).select_related("previous")
        if period.organization_id not in closed
    }
    if batch:
        _close_batch(actor=actor, month=month, previous=batch, finalize=finalize, report=report)
    for organization in Organization.objects.exclude(pk__in=batch).order_by("pk"):
        try:
            report.closed.extend(
                invoice_close_month(actor=actor, organization=organization, month=month, finalize=finalize, now=now)
            )
        except DomainError as exc:
            logger.warning("month not closed", extra={"organization": organization.slug, "code": exc.code})
            report.refused[organization.slug] = exc
    return report


def invoices_close_due(*, now: datetime | None = None) -> CloseReport:
    """Beat, daily: close the last month (and any earlier one left open) for every organisation, finalised."""
    now = now or timezone.now()
    last_month = month_start(datetime.combine(month_start(now), time(0), UTC) - timedelta(days=1))
    return invoices_close_all(actor=Actor.system("invoice_close"), month=last_month, finalize=True, now=now)


# --- Invoice status: draft -> finalized -> paid | void ---------------------------------------------------


def _locked(invoice: Invoice) -> Invoice:
    locked: Invoice = Invoice.objects.unscoped_all_orgs().select_for_update().get(pk=invoice.pk)
    return locked


def _audit_status(*, actor: Actor, invoice: Invoice, before: str, note: str = "") -> None:
    audit_record(
        actor=actor,
        action=f"invoice.{invoice.status}",
        target_type="Invoice",
        target_id=invoice.pk,
        organization_id=invoice.organization_id,
        changes={"number": invoice.number, "before": before, "after": invoice.status, "note": note},
    )


def invoice_finalize(*, actor: Actor, invoice: Invoice) -> Invoice:
    """Issue a draft: it gets its number and becomes visible to the customer."""
    with transaction.atomic():
        locked = _locked(invoice)
        if locked.status != Invoice.Status.DRAFT:
            raise Conflict(f"Invoice {locked.number} is {locked.status}, not a draft.", code="invoice_not_draft")
        locked.status = Invoice.Status.FINALIZED
        locked.number = f"INV-{locked.period_start:%Y%m}-{locked.pk:07d}"
        locked.finalized_at = timezone.now()
        locked.save(update_fields=["status", "number", "finalized_at", "updated_at"])
        _audit_status(actor=actor, invoice=locked, before=Invoice.Status.DRAFT)
    return locked


def invoice_mark_paid(*, actor: Actor, invoice: Invoice, reference: str) -> Invoice:
    """An operator records the payment of a finalised invoice."""
    if not reference.strip():
        raise ValidationFailed("A payment reference is required.")
    return _finalized_close(actor=actor, invoice=invoice, status=Invoice.Status.PAID, moment="paid_at",
                            note=reference)  # fmt: skip


def invoice_void(*, actor: Actor, invoice: Invoice, reason: str) -> Invoice:
    """An operator voids a finalised invoice. Its entries stay covered by it (they are not billed again);
    a correction is a credit grant or a new entry, never an edit."""
    if not reason.strip():
        raise ValidationFailed("A reason is required.")
    return _finalized_close(actor=actor, invoice=invoice, status=Invoice.Status.VOID, moment="voided_at",
                            note=reason)  # fmt: skip


def _finalized_close(*, actor: Actor, invoice: Invoice, status: str, moment: str, note: str) -> Invoice:
    """finalized -> paid or void, under the invoice's lock, with the moment, the note and the audit row."""
    with transaction.atomic():
        locked = _locked(invoice)
        if locked.status != Invoice.Status.FINALIZED:
            raise Conflict(f"Invoice {locked.number or locked.pk} is {locked.status}.", code="invoice_not_open")
        locked.status, locked.status_note = status, note[:300]
        setattr(locked, moment, timezone.now())
        locked.save(update_fields=["status", moment, "status_note", "updated_at"])
        _audit_status(actor=actor, invoice=locked, before=Invoice.Status.FINALIZED, note=note)
    return locked


# --- Reads and exports ---------------------------------------------------------------------------------


def invoices_list(*, organization: Organization) -> QuerySet[Invoice]:
    """The organisation's issued invoices (drafts are the operators' until finalised)."""
    invoices: QuerySet[Invoice] = (
        Invoice.objects.unscoped_all_orgs().filter(organization=organization).exclude(status=Invoice.Status.DRAFT)
    )
    return invoices


def invoice_get(*, organization: Organization, number: str) -> Invoice:
    invoice: Invoice | None = invoices_list(organization=organization).filter(number=number).first()
    if invoice is None:
        raise NotFound("Not found.")
    return invoice


def _amount(micros: int, currency: str) -> str:
    return money.format_micros(micros, currency)


def invoice_document(*, invoice: Invoice) -> dict[str, Any]:
    """The invoice as plain data (the JSON export): amounts are decimal strings at the currency's precision."""
    currency = invoice.currency
    lines = (
        InvoiceLine.objects.unscoped_all_orgs()
        .filter(invoice=invoice)
        .order_by("usage_month", "model_name", "region", "token_kind")
    )
    return {
        "number": invoice.number,
        "status": invoice.status,
        "period": f"{invoice.period_start:%Y-%m}",
        "currency": currency,
        "customer": {"name": invoice.customer_name, "country": invoice.billing_country, "tax_id": invoice.tax_id},
        "lines": [
            {
                "usage_month": f"{line.usage_month:%Y-%m}",
                "model": line.model_name,
                "region": line.region,
                "token_kind": line.token_kind,
                "tokens": line.tokens,
                "requests": line.entry_count,
                "amount": _amount(line.amount_micros, currency),
            }
            for line in lines
        ],
        "requests": invoice.entry_count,
        "subtotal": _amount(invoice.subtotal_micros, currency),
        "credits": _amount(invoice.credits_micros, currency),
        "tax": {
            "name": invoice.tax_name,
            "rate_percent": f"{invoice.tax_rate_percent.normalize():f}",
            "reverse_charge": invoice.reverse_charge,
            "note": invoice.tax_note,
            "amount": _amount(invoice.tax_micros, currency),
        },
        "total": _amount(invoice.total_micros, currency),
        "finalized_at": invoice.finalized_at.isoformat() if invoice.finalized_at else None,
        "paid_at": invoice.paid_at.isoformat() if invoice.paid_at else None,
        "voided_at": invoice.voided_at.isoformat() if invoice.voided_at else None,
    }


CSV_HEADER = ("invoice", "period", "usage_month", "model", "region", "token_kind", "tokens", "requests", "amount",
              "currency")  # fmt: skip


def invoice_csv(*, invoice: Invoice) -> str:
    """The invoice as CSV: one row per line, then the subtotal, credits, tax and total rows."""
    document = invoice_document(invoice=invoice)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    number, period, currency = document["number"], document["period"], document["currency"]
    for line in document["lines"]:
        writer.writerow((number, period, line["usage_month"], line["model"], line["region"], line["token_kind"],
                         line["tokens"], line["requests"], line["amount"], currency))  # fmt: skip
    tax = document["tax"]
    tax_label = f"tax: {tax['name']} {tax['rate_percent']}%" + (" (reverse charge)" if tax["reverse_charge"] else "")
    less_credits = f"-{document['credits']}" if invoice.credits_micros else document["credits"]
    for label, amount in (("subtotal", document["subtotal"]), ("credits", less_credits),
                          (tax_label, tax["amount"]), ("total", document["total"])):  # fmt: skip
        writer.writerow((number, period, "", label, "", "", "", "", amount, currency))
    if tax["note"]:
        writer.writerow((number, period, "", tax["note"], "", "", "", "", "", currency))
    return out.getvalue()
