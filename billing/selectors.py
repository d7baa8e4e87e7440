"""Reads of billing: FX and tax versions in force, price quotes, balances, holds, the ledger and its
independent reconciliation."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from billing.models import (
    CreditGrant,
    CreditHold,
    FxRate,
    HoldAllocation,
    LedgerEntry,
    LedgerPosting,
    PriceBookEntry,
    TaxRate,
)
from controlplane.core import hotcache, money
from controlplane.core.errors import ServiceUnavailable
from tenants.models import Organization


def fx_rate_in_force(*, currency: str, at: datetime) -> FxRate | None:
    """The latest version effective at `at`; None when the currency has no rate then.

    Inside a request that read generation tokens (the admission path), the currency's versions come
    from the process's cache; any FX write replaces the token.
    """
    token = hotcache.current().global_
    if token is None:
        return (
            FxRate.objects.filter(currency=currency.upper(), effective_from__lte=at).order_by("-effective_from").first()
        )
    versions = hotcache.cached(
        ("fx_rates", currency.upper()), token,
        lambda: list(FxRate.objects.filter(currency=currency.upper()).order_by("-effective_from")),
    )  # fmt: skip
    return next((rate for rate in versions if rate.effective_from <= at), None)


def tax_rate_in_force(*, country: str, at: datetime) -> TaxRate | None:
    """The latest version effective on the UTC date of `at`; None when the country has no rate (Brazil)."""
    on = at.astimezone(UTC).date()
    return TaxRate.objects.filter(country=country.upper(), effective_from__lte=on).order_by("-effective_from").first()


def fx_rates_list(*, currency: str | None = None) -> QuerySet[FxRate]:
    rates = FxRate.objects.all()
    if currency is not None:
        rates = rates.filter(currency=currency.upper())
    return rates


def tax_rates_list(*, country: str | None = None) -> QuerySet[TaxRate]:
    rates = TaxRate.objects.all()
    if country is not None:
        rates = rates.filter(country=country.upper())
    return rates


# --- Prices --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PriceQuote:
    """The list prices in force for one model in one region at one moment, with the entries they came from."""

    model_name: str
    region: str
    at: datetime
    input_entry_id: int
    output_entry_id: int
    input_usd_per_million: Decimal
    output_usd_per_million: Decimal

    def usd_micros(self, *, input_tokens: int, output_tokens: int) -> Decimal:
        """The exact list cost in USD micros (not rounded)."""
        return money.token_cost_usd_micros(
            tokens=input_tokens, usd_per_million=self.input_usd_per_million
        ) + money.token_cost_usd_micros(tokens=output_tokens, usd_per_million=self.output_usd_per_million)


def price_entry_in_force(*, model_name: str, region: str, token_kind: str, at: datetime) -> PriceBookEntry | None:
    """The latest entry effective at `at` (cached as `fx_rate_in_force` is, inside a request)."""
    token = hotcache.current().global_
    if token is None:
        return (
            PriceBookEntry.objects.filter(
                model_name=model_name, region=region, token_kind=token_kind, effective_from__lte=at
            )
            .order_by("-effective_from")
            .first()
        )
    entries = hotcache.cached(
        ("price_entries", model_name, region), token,
        lambda: list(PriceBookEntry.objects.filter(model_name=model_name, region=region).order_by("-effective_from")),
    )  # fmt: skip
    return next((e for e in entries if e.token_kind == token_kind and e.effective_from <= at), None)


def price_quote(*, model_name: str, region: str, at: datetime) -> PriceQuote:
    """The input and output prices in force at `at`; 503 `price_unavailable` when either is missing."""
    entries = {
        kind: price_entry_in_force(model_name=model_name, region=region, token_kind=kind, at=at)
        for kind in PriceBookEntry.TokenKind.values
    }
    input_entry, output_entry = entries[PriceBookEntry.TokenKind.INPUT], entries[PriceBookEntry.TokenKind.OUTPUT]
    if input_entry is None or output_entry is None:
        raise ServiceUnavailable(
            f"No list price is in force for {model_name} in {region}.",
            code="price_unavailable",
            details={"model": model_name, "region": region},
        )
    return PriceQuote(
        model_name=model_name,
        region=region,
        at=at,
        input_entry_id=input_entry.pk,
        output_entry_id=output_entry.pk,
        input_usd_per_million=input_entry.usd_per_million,
        output_usd_per_million=output_entry.usd_per_million,
    )


def price_entry_is_referenced(*, entry: PriceBookEntry) -> bool:
    """Whether a hold (and so maybe a ledger entry) was priced with this entry (then it is never edited).

    An entry carries its hold's prices (checked by the database at commit), so the holds answer for both.
    Holds have no index by price (nothing else looks them up that way): callers ask only about versions
    not yet in force, after a cheaper test, and an operator's edit may scan the holds.
    """
    return CreditHold.objects.unscoped_all_orgs().filter(Q(input_price=entry) | Q(output_price=entry)).exists()


def price_book_list(*, model_name: str | None = None, region: str | None = None) -> QuerySet[PriceBookEntry]:
    entries = PriceBookEntry.objects.all()
    if model_name is not None:
        entries = entries.filter(model_name=model_name)
    if region is not None:
        entries = entries.filter(region=region)
    return entries


def fx_quote(*, currency: str, at: datetime) -> tuple[FxRate | None, Decimal]:
    """The rate row and units per US dollar in force; USD without a row is 1 (the list currency).

    503 `fx_unavailable` when another currency has no rate in force: nothing is priced on a guess.
    """
    rate = fx_rate_in_force(currency=currency, at=at)
    if rate is not None:
        return rate, rate.per_usd
    if currency.upper() == "USD":
        return None, Decimal(1)
    raise ServiceUnavailable(
        f"No FX rate for {currency.upper()} is in force.", code="fx_unavailable", details={"currency": currency}
    )


# --- Balances, holds and the ledger ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Balance:
    """An organisation's credit in its billing currency, in micros, at one moment.

    Counted over the grants that have not expired then: `granted` their amounts, `settled` what ledger
    entries consumed of them, `held` what open holds reserve. Prepaid: `available = granted - settled -
    held`, never negative (the database refuses an overdrawn grant). Postpaid usage is invoiced, not
    drawn from grants: `held` is every open hold and `available` may go below zero.
    """

    currency: str
    billing_mode: str
    granted: int
    settled: int
    held: int
    available: int


def _grants_unexpired(*, organization_id: int, currency: str, at: datetime) -> QuerySet[CreditGrant]:
    return CreditGrant.objects.unscoped_all_orgs().filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=at), organization_id=organization_id, currency=currency
    )


def balance_get(*, organization: Organization, at: datetime | None = None) -> Balance:
    at = at or timezone.now()
    currency = organization.billing_currency
    totals = _grants_unexpired(organization_id=organization.pk, currency=currency, at=at).aggregate(
        granted=Sum("amount_micros"), settled=Sum("consumed_micros"), held=Sum("held_micros")
    )
    granted, settled = int(totals["granted"] or 0), int(totals["settled"] or 0)
    if organization.billing_mode == Organization.BillingMode.PREPAID:
        held = int(totals["held"] or 0)
    else:
        open_holds = CreditHold.objects.unscoped_all_orgs().filter(
            organization_id=organization.pk, status=CreditHold.Status.OPEN
        )
        held = int(open_holds.aggregate(total=Sum("amount_micros"))["total"] or 0)
    return Balance(
        currency=currency,
        billing_mode=organization.billing_mode,
        granted=granted,
        settled=settled,
        held=held,
        available=granted - settled - held,
    )


def hold_get(*, request_id: str) -> CreditHold | None:
    """The hold of a request, whichever organisation it belongs to (billing jobs and settlement)."""
    hold: CreditHold | None = CreditHold.objects.unscoped_all_orgs().filter(request_id=request_id).first()
    return hold


def ledger_entry_get(*, organization: Organization, request_id: str) -> LedgerEntry | None:
    entry: LedgerEntry | None = (
        LedgerEntry.objects.unscoped_all_orgs().filter(organization=organization, request_id=request_id).first()
    )
    return entry


def ledger_entries_list(
    *, organization: Organization, admitted_from: datetime | None = None, admitted_before: datetime | None = None
) -> QuerySet[LedgerEntry]:
    """An organisation's entries, newest first; the window is by admission time, as invoices are."""
    entries: QuerySet[LedgerEntry] = LedgerEntry.objects.unscoped_all_orgs().filter(organization=organization)
    if admitted_from is not None:
        entries = entries.filter(admitted_at__gte=admitted_from)
    if admitted_before is not None:
        entries = entries.filter(admitted_at__lt=admitted_before)
    return entries


def ledger_reconcile(*, organization: Organization) -> list[str]:
    """Recompute the organisation's money from first principles and list every disagreement (empty: clean).

    Independently of the stored totals it checks that each entry's amount follows from its token counts,
    its recorded prices and FX rate; that each entry's postings balance and add up to its amount; that
    each grant's `consumed_micros` is the sum of the postings drawn on it, and its `held_micros` the sum
    of its open holds' allocations; that each open prepaid hold is fully allocated; and that no grant
    is overdrawn.
    """
    problems: list[str] = []
    org_id = organization.pk
    entries = LedgerEntry.objects.unscoped_all_orgs().filter(organization_id=org_id).order_by("pk")
    postings: dict[int, list[LedgerPosting]] = defaultdict(list)
    for posting in LedgerPosting.objects.unscoped_all_orgs().filter(organization_id=org_id).order_by("pk"):
        postings[posting.entry_id].append(posting)
    for entry in entries:
        usd_micros = money.token_cost_usd_micros(
            tokens=entry.input_tokens, usd_per_million=entry.input_usd_per_million
        ) + money.token_cost_usd_micros(tokens=entry.output_tokens, usd_per_million=entry.output_usd_per_million)
        expected = money.round_micros_half_even(money.usd_to_currency(usd_micros=usd_micros, per_usd=entry.fx_per_usd))
        if entry.amount_micros != expected:
            problems.append(f"entry {entry.request_id}: amount {entry.amount_micros} != recomputed {expected}")
        if entry.usd_amount != usd_micros.scaleb(-6):
            problems.append(f"entry {entry.request_id}: usd_amount {entry.usd_amount} != {usd_micros.scaleb(-6)}")
        debit_total = sum(p.debit_micros for p in postings[entry.pk])
        credit_total = sum(p.credit_micros for p in postings[entry.pk])
        if not debit_total == credit_total == entry.amount_micros:
            problems.append(
                f"entry {entry.request_id}: debits {debit_total}, credits {credit_total}, amount {entry.amount_micros}"
            )
    consumed: dict[int, int] = defaultdict(int)
    for entry_postings in postings.values():
        for posting in entry_postings:
            if posting.grant_id is not None:
                consumed[posting.grant_id] += posting.debit_micros - posting.credit_micros
    held: dict[int, int] = defaultdict(int)
    allocated: dict[int, int] = defaultdict(int)
    open_allocations = HoldAllocation.objects.unscoped_all_orgs().filter(
        organization_id=org_id, hold__status=CreditHold.Status.OPEN
    )
    for allocation in open_allocations:
        held[allocation.grant_id] += allocation.amount_micros
        allocated[allocation.hold_id] += allocation.amount_micros
    for grant in CreditGrant.objects.unscoped_all_orgs().filter(organization_id=org_id).order_by("pk"):
        if grant.consumed_micros != consumed[grant.pk]:
            problems.append(f"grant {grant.pk}: consumed {grant.consumed_micros} != postings {consumed[grant.pk]}")
        if grant.held_micros != held[grant.pk]:
            problems.append(f"grant {grant.pk}: held {grant.held_micros} != open allocations {held[grant.pk]}")
        if grant.consumed_micros + grant.held_micros > grant.amount_micros:
            problems.append(f"grant {grant.pk}: overdrawn")
    open_prepaid = CreditHold.objects.unscoped_all_orgs().filter(
        organization_id=org_id, status=CreditHold.Status.OPEN, billing_mode=Organization.BillingMode.PREPAID
    )
    for hold in open_prepaid:
        if allocated[hold.pk] != hold.amount_micros:
            problems.append(f"hold {hold.request_id}: allocated {allocated[hold.pk]} != amount {hold.amount_micros}")
    return problems
