"""Writes of billing: the FX and tax tables, the price book, credit grants, holds and settlement.

The tables are effective-dated: a change is a new version, never an edit. Money-changing writes lock
the organisation's row first (`billing.locks`), then draw on grants and append to the ledger in the
same transaction.
"""

from __future__ import annotations

import json
import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from billing import budgets, locks, selectors
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
from billing.selectors import Balance as Balance
from billing.selectors import PriceQuote as PriceQuote
from billing.selectors import balance_get as balance_get
from billing.selectors import price_quote as price_quote
from controlplane.core import hotcache, money
from controlplane.core.errors import Conflict, DomainError, NotFound, ServiceUnavailable, ValidationFailed
from controlplane.core.prepared import Prepared
from controlplane.core.regions import REGION_CODES
from controlplane.core.services import Actor, audit_record
from controlplane.fleet import selectors as fleet_selectors
from controlplane.fleet.models import CatalogModel
from tenants.models import BILLING_CURRENCIES, Organization

TAX_FILE = Path(__file__).resolve().parent / "data" / "tax.json"
# Seeded rows whose start the data does not record (pegs, the US zero rate) are in force from the
# epoch, so that any admission time finds them; operators add dated versions after them.
SEED_EFFECTIVE_FROM = datetime(1970, 1, 1, tzinfo=UTC)
_COUNTRY = re.compile(r"^[A-Z]{2}$")


@dataclass(slots=True)
class SeedResult:
    fx_added: list[str] = field(default_factory=list)
    tax_added: list[str] = field(default_factory=list)
    tax_without_rate: list[str] = field(default_factory=list)


def _as_decimal(value: Any, *, name: str) -> Decimal:
    if isinstance(value, float):
        raise ValidationFailed(f"{name} must be a decimal string or Decimal, never a float")
    try:
        return Decimal(str(value)) if not isinstance(value, Decimal) else value
    except ArithmeticError as exc:
        raise ValidationFailed(f"{name} is not a number: {value!r}") from exc


def _not_before_latest(*, label: str, latest: date | datetime | None, effective_from: date | datetime) -> None:
    if latest is not None and effective_from <= latest:
        raise Conflict(
            f"{label} already has a version from {latest.isoformat()}; a new version must start later "
            "(history is never rewritten).",
            code="rate_not_latest",
        )


def fx_rate_validate(*, currency: str, per_usd: Decimal | str, effective_from: datetime) -> tuple[str, Decimal]:
    """Check a new FX version without writing; `fx_rate_add` checks again under its lock."""
    currency = currency.upper()
    rate = _as_decimal(per_usd, name="per_usd")
    if currency not in BILLING_CURRENCIES:
        raise ValidationFailed(f"{currency} is not a billing currency ({', '.join(BILLING_CURRENCIES)}).")
    if not rate.is_finite() or rate <= 0:
        raise ValidationFailed("per_usd must be a positive number.")
    if currency == "USD" and rate != 1:
        raise ValidationFailed("USD is the list currency; its rate is 1.")
    if effective_from.tzinfo is None:
        raise ValidationFailed("effective_from must carry a time zone.")
    latest = FxRate.objects.filter(currency=currency).order_by("-effective_from").first()
    _not_before_latest(label=currency, latest=latest.effective_from if latest else None, effective_from=effective_from)
    return currency, rate


def fx_rate_add(
    *, actor: Actor, currency: str, per_usd: Decimal | str, effective_from: datetime, source: str = ""
) -> FxRate:
    """Add a version of a currency's rate (units per US dollar), later than every existing version."""
    try:
        with transaction.atomic():
            # Lock the currency's versions so that two additions cannot both pass the "latest" check.
            list(FxRate.objects.select_for_update().filter(currency=currency.upper()).values_list("pk"))
            currency, rate = fx_rate_validate(currency=currency, per_usd=per_usd, effective_from=effective_from)
            fx_rate = FxRate.objects.create(
                currency=currency, per_usd=rate, effective_from=effective_from, source=source
            )
            audit_record(
                actor=actor,
                action="fx_rate.add",
                target_type="FxRate",
                target_id=fx_rate.pk,
                changes={
                    "currency": currency,
                    "per_usd": str(rate),
                    "effective_from": effective_from.isoformat(),
                    "source": source,
                },
            )
    except IntegrityError as exc:
        raise Conflict(f"{currency} already has a version from that moment.", code="rate_not_latest") from exc
    return fx_rate


def tax_rate_validate(
    *, country: str, tax_name: str, rate_percent: Decimal | str, effective_from: date
) -> tuple[str, Decimal]:
    """Check a new tax version without writing; `tax_rate_add` checks again under its lock."""
    country = country.upper()
    rate = _as_decimal(rate_percent, name="rate_percent")
    if not _COUNTRY.match(country):
        raise ValidationFailed("country must be an ISO 3166-1 alpha-2 code.")
    if not rate.is_finite() or rate < 0 or rate > 100:
        raise ValidationFailed("rate_percent must be between 0 and 100.")
    if not tax_name.strip():
        raise ValidationFailed("tax_name is required.")
    latest = TaxRate.objects.filter(country=country).order_by("-effective_from").first()
    _not_before_latest(label=country, latest=latest.effective_from if latest else None, effective_from=effective_from)
    return country, rate


def tax_rate_add(
    *,
    actor: Actor,
    country: str,
    tax_name: str,
    rate_percent: Decimal | str,
    effective_from: date,
    note: str = "",
) -> TaxRate:
    """Add a version of a country's tax rate, later than every existing version."""
    try:
        with transaction.atomic():
            list(TaxRate.objects.select_for_update().filter(country=country.upper()).values_list("pk"))
            country, rate = tax_rate_validate(
                country=country, tax_name=tax_name, rate_percent=rate_percent, effective_from=effective_from
            )
            tax_rate = TaxRate.objects.create(
                country=country,
                tax_name=tax_name,
                rate_percent=rate,
                effective_from=effective_from,
                note=note,
            )
            audit_record(
                actor=actor,
                action="tax_rate.add",
                target_type="TaxRate",
                target_id=tax_rate.pk,
                changes={
                    "country": country,
                    "tax_name": tax_name,
                    "rate_percent": str(rate),
                    "effective_from": effective_from.isoformat(),
                },
            )
    except IntegrityError as exc:
        raise Conflict(f"{country} already has a version from that date.", code="rate_not_latest") from exc
    return tax_rate


def fx_tax_seed(*, actor: Actor | None = None, path: Path = TAX_FILE) -> SeedResult:
    """Seed the tables from the tax data: USD = 1, the pegs, and every country with a rate.

    Idempotent: a currency or country that already has any version is left to the operators. A
    country whose rate the data leaves null (Brazil) gets no row, so it cannot be invoiced.
    """
    actor = actor or Actor.system("fx_tax_seed")
    document = json.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
    result = SeedResult()
    pegs = [("USD", "1", "list currency")] + [
        (peg["currency"], peg["per_usd"], peg.get("note", "")) for peg in document["fx_pegs"]
    ]
    with transaction.atomic():
        for currency, per_usd, note in pegs:
            if FxRate.objects.filter(currency=currency).exists():
                continue
            fx_rate_add(
                actor=actor,
                currency=currency,
                per_usd=per_usd,
                effective_from=SEED_EFFECTIVE_FROM,
                source=f"seed: {note}"[:200],
            )
            result.fx_added.append(currency)
        for entry in document["rates"]:
            country = entry["country"]
            if entry["rate_percent"] is None:
                result.tax_without_rate.append(country)
                continue
            if TaxRate.objects.filter(country=country).exists():
                continue
            since = entry.get("since")
            note = entry.get("note") or ""
            if since is None:
                note = (note + " Start date not recorded in the seed data.").strip()
            tax_rate_add(
                actor=actor,
                country=country,
                tax_name=entry["tax"],
                rate_percent=entry["rate_percent"],
                effective_from=date.fromisoformat(since) if since else SEED_EFFECTIVE_FROM.date(),
                note=note,
            )
            result.tax_added.append(country)
    return result


# --- The price book -------------------------------------------------------------------------------------

# The basis of the seeded list prices (`price_book_seed`). One public anchor: DeepInfra's list price for
# Qwen2.5-7B-Instruct served in bf16, $0.025 per million input tokens and $0.05 per million output
# tokens (deepinfra.com/Qwen/Qwen2.5-7B-Instruct/api, looked up November 2026). The work per token of a
# dense decoder grows with its parameter count (about 2 FLOPs and, when decoding, one weight read per
# parameter), so input prices scale linearly with parameters at the anchor's rate, $0.025 / 7.6156 B
# = $0.00328, rounded to $0.0033 per billion parameters per million tokens, with a floor of $0.01 for
# sub-billion models, whose cost per request is dominated by fixed overheads. Output tokens cost twice
# the input price, the anchor's ratio (decoding one token at a time uses the hardware less well than
# prefill). Cross-check: the same rule gives $0.108 / $0.216 for a 32.8 B model, against DeepInfra's
# $0.07 / $0.16 for Qwen2.5-Coder-32B served in fp8 (half the weight bytes of our bf16 basis). The
# price is the same in every region: we hold no sourced figure for regional cost differences, and
# operators add regional versions in the admin panel.
PRICE_SEED_INPUT_USD_PER_BILLION_PARAMS = Decimal("0.0033")
PRICE_SEED_INPUT_FLOOR = Decimal("0.01")
PRICE_SEED_OUTPUT_MULTIPLIER = 2
PRICE_SEED_STEP = Decimal("0.0001")
PRICE_SEED_NOTE = "seed: $0.0033/B params/M input (anchor DeepInfra Qwen2.5-7B bf16), floor $0.01, output 2x"


@dataclass(slots=True)
class PriceSeedResult:
    added: list[str] = field(default_factory=list)
    kept: int = 0


def price_seed_usd_per_million(*, parameters: int) -> tuple[Decimal, Decimal]:
    """The seeded (input, output) list prices for a model of `parameters` parameters (see the basis above)."""
    scaled = (Decimal(parameters).scaleb(-9) * PRICE_SEED_INPUT_USD_PER_BILLION_PARAMS).quantize(
        PRICE_SEED_STEP, rounding=ROUND_HALF_EVEN
    )
    input_price = max(PRICE_SEED_INPUT_FLOOR, scaled)
    return input_price, input_price * PRICE_SEED_OUTPUT_MULTIPLIER


def _price_check(*, model_name: str, region: str, token_kind: str, usd_per_million: Decimal | str) -> Decimal:
    price = _as_decimal(usd_per_million, name="usd_per_million")
    if not model_name.strip():
        raise ValidationFailed("model_name is required.")
    if region not in REGION_CODES:
        raise ValidationFailed(f"{region!r} is not a region code ({', '.join(REGION_CODES)}).")
    if token_kind not in PriceBookEntry.TokenKind.values:
        raise ValidationFailed("token_kind must be input or output.")
    if not price.is_finite() or price < 0 or price >= 10**12:
        raise ValidationFailed("usd_per_million must be a number from 0 to below 10^12.")
    if price != price.quantize(Decimal("0.000001"), rounding=ROUND_HALF_EVEN):
        raise ValidationFailed("usd_per_million has at most six decimal places.")
    return price


def _price_neighbours(
    *, model_name: str, region: str, token_kind: str, exclude_pk: int | None = None
) -> QuerySet[PriceBookEntry]:
    entries = PriceBookEntry.objects.filter(model_name=model_name, region=region, token_kind=token_kind)
    return entries.exclude(pk=exclude_pk) if exclude_pk is not None else entries


def price_entry_validate(
    *, model_name: str, region: str, token_kind: str, usd_per_million: Decimal | str, effective_from: datetime
) -> Decimal:
    """Check a new version without writing; `price_entry_add` checks again under its lock."""
    price = _price_check(model_name=model_name, region=region, token_kind=token_kind, usd_per_million=usd_per_million)
    if effective_from.tzinfo is None:
        raise ValidationFailed("effective_from must carry a time zone.")
    latest = (
        _price_neighbours(model_name=model_name, region=region, token_kind=token_kind)
        .order_by("-effective_from")
        .first()
    )
    _not_before_latest(
        label=f"{model_name} {region} {token_kind}",
        latest=latest.effective_from if latest else None,
        effective_from=effective_from,
    )
    return price


def price_entry_add(
    *,
    actor: Actor,
    model_name: str,
    region: str,
    token_kind: str,
    usd_per_million: Decimal | str,
    effective_from: datetime,
    note: str = "",
) -> PriceBookEntry:
    """Add a version of a list price, later than every existing version of the same model, region and kind."""
    try:
        with transaction.atomic():
            list(
                _price_neighbours(model_name=model_name, region=region, token_kind=token_kind)
                .select_for_update()
                .values_list("pk")
            )
            price = price_entry_validate(
                model_name=model_name,
                region=region,
                token_kind=token_kind,
                usd_per_million=usd_per_million,
                effective_from=effective_from,
            )
            entry = PriceBookEntry.objects.create(
                model_name=model_name,
                region=region,
                token_kind=token_kind,
                usd_per_million=price,
                effective_from=effective_from,
                note=note,
            )
            audit_record(
                actor=actor,
                action="price_entry.add",
                target_type="PriceBookEntry",
                target_id=entry.pk,
                changes={
                    "model_name": model_name,
                    "region": region,
                    "token_kind": token_kind,
                    "usd_per_million": str(price),
                    "effective_from": effective_from.isoformat(),
                    "note": note,
                },
            )
    except IntegrityError as exc:
        raise Conflict("That price already has a version from that moment.", code="rate_not_latest") from exc
    return entry


def price_entry_update_validate(
    *, entry: PriceBookEntry, usd_per_million: Decimal | str, effective_from: datetime, now: datetime | None = None
) -> Decimal:
    """An entry may be corrected only while it is scheduled: not yet in force and never used for pricing.

    The new start must stay in the future and between the neighbouring versions, so that the history of
    what was in force is never rewritten.
    """
    now = now or timezone.now()
    price = _price_check(
        model_name=entry.model_name, region=entry.region, token_kind=entry.token_kind, usd_per_million=usd_per_million
    )
    if effective_from.tzinfo is None:
        raise ValidationFailed("effective_from must carry a time zone.")
    if entry.effective_from <= now or selectors.price_entry_is_referenced(entry=entry):
        raise Conflict(
            "This price has been in force or has priced a request; add a new version instead.",
            code="price_entry_in_use",
        )
    if effective_from <= now:
        raise ValidationFailed("A scheduled price must stay in the future; add a new version instead.")
    others = _price_neighbours(
        model_name=entry.model_name, region=entry.region, token_kind=entry.token_kind, exclude_pk=entry.pk
    )
    before = others.filter(effective_from__lt=entry.effective_from).order_by("-effective_from").first()
    after = others.filter(effective_from__gt=entry.effective_from).order_by("effective_from").first()
    if (before is not None and effective_from <= before.effective_from) or (
        after is not None and effective_from >= after.effective_from
    ):
        raise Conflict("The new start would reorder the versions of this price.", code="rate_not_latest")
    return price


def price_entry_update(
    *, actor: Actor, entry: PriceBookEntry, usd_per_million: Decimal | str, effective_from: datetime, note: str
) -> PriceBookEntry:
    """Correct a scheduled price (see `price_entry_update_validate`), audited with the old and new values."""
    with transaction.atomic():
        locked = PriceBookEntry.objects.select_for_update().get(pk=entry.pk)
        price = price_entry_update_validate(
            entry=locked, usd_per_million=usd_per_million, effective_from=effective_from
        )
        before = {
            "usd_per_million": str(locked.usd_per_million),
            "effective_from": locked.effective_from.isoformat(),
            "note": locked.note,
        }
        locked.usd_per_million, locked.effective_from, locked.note = price, effective_from, note
        locked.save(update_fields=["usd_per_million", "effective_from", "note", "updated_at"])
        audit_record(
            actor=actor,
            action="price_entry.update",
            target_type="PriceBookEntry",
            target_id=locked.pk,
            changes={
                "before": before,
                "after": {"usd_per_million": str(price), "effective_from": effective_from.isoformat(), "note": note},
            },
        )
    return locked


def price_book_seed(*, actor: Actor | None = None) -> PriceSeedResult:
    """List prices for every catalog model (not retired) in every region, input and output.

    Idempotent: a (model, region, kind) that already has any version is left to the operators. The
    numbers follow the basis written above `PRICE_SEED_INPUT_USD_PER_BILLION_PARAMS`; they are in force
    from the epoch, so any admission time finds them.
    """
    actor = actor or Actor.system("price_book_seed")
    result = PriceSeedResult()
    with transaction.atomic():
        existing = set(PriceBookEntry.objects.values_list("model_name", "region", "token_kind").distinct())
        rows: list[PriceBookEntry] = []
        for model in fleet_selectors.catalog_list().exclude(status=CatalogModel.Status.RETIRED).order_by("name"):
            input_price, output_price = price_seed_usd_per_million(parameters=model.parameters)
            for region in REGION_CODES:
                for kind, price in (
                    (PriceBookEntry.TokenKind.INPUT, input_price),
                    (PriceBookEntry.TokenKind.OUTPUT, output_price),
                ):
                    if (model.name, region, kind) in existing:
                        result.kept += 1
                        continue
                    rows.append(
                        PriceBookEntry(
                            model_name=model.name,
                            region=region,
                            token_kind=kind,
                            usd_per_million=price,
                            effective_from=SEED_EFFECTIVE_FROM,
                            note=PRICE_SEED_NOTE,
                        )
                    )
                    result.added.append(f"{model.name}/{region}/{kind}={price}")
        if rows:
            PriceBookEntry.objects.bulk_create(rows)
            hotcache.bump(org_id=None)  # bulk_create sends no post_save
            audit_record(
                actor=actor,
                action="price_book.seed",
                target_type="PriceBookEntry",
                target_id="*",
                changes={"added": result.added, "basis": PRICE_SEED_NOTE},
            )
    return result


# --- Credit, holds and settlement -----------------------------------------------------------------------


class InsufficientCredit(DomainError):
    """A prepaid organisation's available credit does not cover the most the request can cost."""

    code = "insufficient_credit"
    http_status = 402


_MAX_TOKENS = 10**9  # far above any context length; keeps every product well inside the exact context


def _check_tokens(**counts: int) -> None:
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_TOKENS:
            raise ValidationFailed(f"{name} must be a whole number of tokens between 0 and {_MAX_TOKENS}.")


def _check_moment(at: datetime, *, name: str = "at") -> None:
    if at.tzinfo is None:
        raise ValidationFailed(f"{name} must carry a time zone.")


# Micros are stored in 64-bit integers (at most 9.2 x 10^18): one grant stays far below that.
MAX_GRANT_UNITS = 10**12


def credit_grant_validate(
    *,
    organization: Organization,
    amount: Decimal | str,
    currency: str,
    expires_at: datetime | None,
    priority: int,
    reason: str,
) -> int:
    """Check a grant without writing; returns its amount in micros. `credit_grant_create` checks again."""
    value = _as_decimal(amount, name="amount")
    currency = currency.upper()
    if not value.is_finite() or value <= 0 or value >= MAX_GRANT_UNITS:
        raise ValidationFailed(f"amount must be a positive number below {MAX_GRANT_UNITS}.")
    if currency not in money.MINOR_UNITS:
        raise ValidationFailed(f"{currency} is not a billing currency.")
    if currency != organization.billing_currency:
        raise ValidationFailed(
            f"The organisation is billed in {organization.billing_currency}; grant credit in that currency.",
            code="currency_mismatch",
        )
    step = Decimal(1).scaleb(-money.minor_units(currency))
    if value != value.quantize(step, rounding=ROUND_HALF_EVEN):
        raise ValidationFailed(f"amount must be a whole number of {currency}'s smallest unit ({step}).")
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 32767:
        raise ValidationFailed("priority must be a whole number between 0 and 32767.")
    if not reason.strip():
        raise ValidationFailed("reason is required: it goes into the audit log.")
    if expires_at is not None:
        _check_moment(expires_at, name="expires_at")
        if expires_at <= timezone.now():
            raise ValidationFailed("expires_at must be in the future.")
    return money.units_to_micros(value)


def credit_grant_create(
    *,
    actor: Actor,
    organization: Organization,
    amount: Decimal | str,
    currency: str,
    expires_at: datetime | None,
    priority: int = 100,
    reason: str,
) -> CreditGrant:
    """Grant credit in the organisation's billing currency, audited.

    `amount` is in currency units, a whole number of the currency's smallest unit (cents). Grants are
    spent in burn order: lower `priority` first, then the earliest expiry, then the oldest.
    """
    with transaction.atomic():
        org = locks.organization_lock(organization_id=organization.pk)
        amount_micros = credit_grant_validate(
            organization=org, amount=amount, currency=currency, expires_at=expires_at, priority=priority, reason=reason
        )
        grant: CreditGrant = CreditGrant.objects.unscoped_all_orgs().create(
            organization=org,
            currency=org.billing_currency,
            amount_micros=amount_micros,
            expires_at=expires_at,
            priority=priority,
            reason=reason,
            granted_by=actor.label[:200],
        )
        audit_record(
            actor=actor,
            action="credit_grant.create",
            target_type="CreditGrant",
            target_id=grant.pk,
            organization_id=org.pk,
            changes={
                "amount": str(money.micros_to_units(amount_micros).normalize()),
                "currency": org.billing_currency,
                "expires_at": expires_at.isoformat() if expires_at else None,
                "priority": priority,
                "reason": reason,
            },
        )
    return grant


def _grants_in_burn_order(*, organization_id: int, currency: str, valid_at: datetime) -> list[CreditGrant]:
    """The organisation's grants usable at `valid_at` with credit left, in burn order.

    Read under the organisation's lock: grant rows change only while it is held.
    """
    grants = (
        CreditGrant.objects.unscoped_all_orgs()
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=valid_at), organization_id=organization_id)
        .filter(currency=currency, consumed_micros__lt=F("amount_micros") - F("held_micros"))
        .order_by("priority", F("expires_at").asc(nulls_last=True), "pk")
    )
    return list(grants)


def _plan_draw(*, grants: list[CreditGrant], amount_micros: int) -> tuple[list[tuple[CreditGrant, int]], int]:
    """Split an amount over grants in order; returns the parts and what no grant could cover."""
    parts: list[tuple[CreditGrant, int]] = []
    left = amount_micros
    for grant in grants:
        if left == 0:
            break
        take = min(grant.remaining_micros, left)
        if take > 0:
            parts.append((grant, take))
            left -= take
    return parts, left


def hold_place(
    *,
    organization: Organization,
    request_id: str,
    model_name: str,
    region: str,
    input_tokens: int,
    max_output_tokens: int,
    at: datetime,
) -> CreditHold:
    """Reserve the most a request can cost, in the billing currency at the FX rate in force at `at`.

    The cost uses the prices in force at `at` with every output token the request may produce, rounded
    up to whole micros. The organisation's row is locked first, so holds from any number of processes
    queue up. Prepaid: the hold is drawn from unexpired grants in burn order, or refused with 402
    `insufficient_credit`; the balance never goes below zero. Postpaid: no balance check. Calling again
    with the same request id returns the existing hold.

    On PostgreSQL all of it is one statement, `billing_hold_place` (migration 0008); elsewhere (SQLite)
    the same steps run here.
    """
    hold_place_check(request_id=request_id, input_tokens=input_tokens, max_output_tokens=max_output_tokens, at=at)
    arguments: dict[str, Any] = {
        "organization": organization, "request_id": request_id, "model_name": model_name, "region": region,
        "input_tokens": input_tokens, "max_output_tokens": max_output_tokens, "at": at,
    }  # fmt: skip
    if connection.vendor == "postgresql":
        return _hold_place_in_database(**arguments)
    return _hold_place_here(**arguments)


def hold_place_check(*, request_id: str, input_tokens: int, max_output_tokens: int, at: datetime) -> None:
    """The arguments' own checks, before anything is read (a caller that calls `billing_hold_place` in a
    statement of its own runs them first, as `hold_place` does)."""
    if not request_id or len(request_id) > 64:
        raise ValidationFailed("request_id must be 1 to 64 characters.")
    _check_tokens(input_tokens=input_tokens, max_output_tokens=max_output_tokens)
    _check_moment(at)


HOLD_PLACED = frozenset({"placed", "held_before"})


def hold_refusal(*, outcome: str, detail: dict[str, Any] | str | None, request_id: str) -> DomainError | Exception:
    """The exception for a `billing_hold_place` outcome that placed nothing, as `_hold_place_here` raises it
    (`detail`: the function's, as the driver returns it: decoded or JSON text)."""
    detail = (json.loads(detail) if isinstance(detail, str) else detail) or {}
    if outcome == "insufficient_credit":
        return InsufficientCredit("The organisation's prepaid credit does not cover this request.", details=detail)
    if outcome == "budget_exceeded":
        return budgets.BudgetExceeded(
            "This request could take the organisation's spend above its monthly budget (hard stop).", details=detail
        )
    if outcome == "price_unavailable":
        return ServiceUnavailable(
            f"No list price is in force for {detail.get('model')} in {detail.get('region')}.",
            code="price_unavailable", details=detail,
        )  # fmt: skip
    if outcome == "fx_unavailable":
        currency = str(detail.get("currency", "")).upper()
        return ServiceUnavailable(f"No FX rate for {currency} is in force.", code="fx_unavailable", details=detail)
    if outcome == "request_id_reused":
        return Conflict("This request id is already used by another request.", code="request_id_reused")
    if outcome == "organization_not_found":
        return Organization.DoesNotExist(f"the organisation of request {request_id} does not exist")
    return RuntimeError(f"billing_hold_place answered {outcome!r}")


_HOLD_FIELDS = tuple(field.attname for field in CreditHold._meta.concrete_fields)
# prepared per connection, as the settlement is (below)
_HOLD_PLACE = Prepared(
    "billing_hold_place_call",
    "SELECT p.outcome, p.detail, "  # noqa: S608  # column names from the model, arguments bound
    + ", ".join(f"(p.hold).{name}" for name in _HOLD_FIELDS)
    + " FROM billing_hold_place(%(organization_id)s, %(request_id)s, %(model_name)s, %(region)s, %(input_tokens)s,"
    " %(max_output_tokens)s, %(at)s) p",
    {
        "organization_id": "bigint",
        "request_id": "text",
        "model_name": "text",
        "region": "text",
        "input_tokens": "bigint",
        "max_output_tokens": "bigint",
        "at": "timestamptz",
    },
)


def _hold_place_in_database(
    *, organization: Organization, request_id: str, model_name: str, region: str, input_tokens: int,
    max_output_tokens: int, at: datetime,
) -> CreditHold:  # fmt: skip
    arguments = {
        "organization_id": organization.pk, "request_id": request_id, "model_name": model_name, "region": region,
        "input_tokens": input_tokens, "max_output_tokens": max_output_tokens, "at": at,
    }  # fmt: skip
    try:
        # a savepoint only inside a caller's transaction (outside one the statement is its own)
        with transaction.atomic() if connection.in_atomic_block else nullcontext(), connection.cursor() as cursor:
            row = _HOLD_PLACE.execute(cursor, arguments).fetchone()
    except IntegrityError:
        # Two transactions raced for the same request id; the loser's statement is rolled back.
        existing = selectors.hold_get(request_id=request_id)
        if existing is None:
            raise
        return _same_hold(existing, organization_id=organization.pk, model_name=model_name, region=region)
    outcome, detail, values = row[0], row[1], row[2:]
    if outcome not in HOLD_PLACED:
        raise hold_refusal(outcome=outcome, detail=detail, request_id=request_id)
    hold: CreditHold = CreditHold.from_db(connection.alias, list(_HOLD_FIELDS), list(values))
    return hold


def _hold_place_here(
    *,
    organization: Organization,
    request_id: str,
    model_name: str,
    region: str,
    input_tokens: int,
    max_output_tokens: int,
    at: datetime,
) -> CreditHold:
    """The placement in Python, step by step (SQLite; on PostgreSQL a test runs it next to the function)."""
    quote = selectors.price_quote(model_name=model_name, region=region, at=at)
    try:
        with transaction.atomic():
            org = locks.organization_lock(organization_id=organization.pk)
            # a request id already held is found by the unique constraint below (one query fewer here)
            fx_rate, per_usd = selectors.fx_quote(currency=org.billing_currency, at=at)
            usd_micros = quote.usd_micros(input_tokens=input_tokens, output_tokens=max_output_tokens)
            amount = money.ceil_micros(money.usd_to_currency(usd_micros=usd_micros, per_usd=per_usd))
            budgets.budget_check(organization=org, request_id=request_id, amount_micros=amount, at=at)
            hold: CreditHold = CreditHold.objects.unscoped_all_orgs().create(
                organization=org,
                request_id=request_id,
                billing_mode=org.billing_mode,
                currency=org.billing_currency,
                amount_micros=amount,
                model_name=model_name,
                region=region,
                input_tokens=input_tokens,
                max_output_tokens=max_output_tokens,
                input_price_id=quote.input_entry_id,
                output_price_id=quote.output_entry_id,
                input_usd_per_million=quote.input_usd_per_million,
                output_usd_per_million=quote.output_usd_per_million,
                fx_rate=fx_rate,
                fx_per_usd=per_usd,
                admitted_at=at,
            )
            prepaid = org.billing_mode == Organization.BillingMode.PREPAID
            parts: list[tuple[CreditGrant, int]] = []
            if prepaid:
                grants = _grants_in_burn_order(organization_id=org.pk, currency=org.billing_currency, valid_at=at)
                parts, short = _plan_draw(grants=grants, amount_micros=amount)
                if short:
                    available = sum(grant.remaining_micros for grant in grants)
                    raise InsufficientCredit(
                        "The organisation's prepaid credit does not cover this request.",
                        details={
                            "currency": org.billing_currency,
                            "required_micros": amount,
                            "available_micros": available,
                        },
                    )
            for grant, take in parts:
                grant.held_micros += take
                grant.save(update_fields=["held_micros", "updated_at"])
            HoldAllocation.objects.unscoped_all_orgs().bulk_create(
                HoldAllocation(organization=org, hold=hold, grant=grant, amount_micros=take) for grant, take in parts
            )
    except IntegrityError:
        # Two organisations raced for the same request id; the loser's transaction is rolled back.
        existing = selectors.hold_get(request_id=request_id)
        if existing is None:
            raise
        return _same_hold(existing, organization_id=organization.pk, model_name=model_name, region=region)
    return hold


def _same_hold(hold: CreditHold, *, organization_id: int, model_name: str, region: str) -> CreditHold:
    if hold.organization_id != organization_id or hold.model_name != model_name or hold.region != region:
        raise Conflict("This request id is already used by another request.", code="request_id_reused")
    return hold


def hold_settle(
    *,
    request_id: str,
    input_tokens: int,
    output_tokens: int,
    api_key_id: int | None,
    at: datetime,
    organization_id: int | None = None,
) -> LedgerEntry:
    """Bill a request exactly once: one ledger entry per request id, priced as recorded on its hold.

    The amount is the exact cost of the actual tokens at the hold's prices and FX rate, rounded half-even
    to whole micros. Prepaid: it is drawn from the hold's own allocations (the unused part is freed);
    a cost above the hold (more tokens than reserved) draws from grants with credit left and any
    remainder goes to accounts receivable, so the balance still never goes negative. Postpaid: accounts
    receivable. The postings balance; the hold is captured. A second call returns the existing entry.
    A caller that knows the request's organisation passes `organization_id`.

    On PostgreSQL all of it is one statement, `billing_hold_settle` (migration 0006): one round trip, and
    one transaction of its own unless the caller has one open. Elsewhere (SQLite) the same steps run here.
    """
    _check_tokens(input_tokens=input_tokens, output_tokens=output_tokens)
    _check_moment(at)
    if api_key_id is not None and (isinstance(api_key_id, bool) or not isinstance(api_key_id, int)):
        raise ValidationFailed("api_key_id must be an integer or None.")
    arguments: dict[str, Any] = {
        "request_id": request_id,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "api_key_id": api_key_id,
        "at": at,
        "organization_id": organization_id,
    }
    if connection.vendor == "postgresql":
        return _hold_settle_in_database(**arguments)
    return _hold_settle_here(**arguments)


_ENTRY_FIELDS = tuple(field.attname for field in LedgerEntry._meta.concrete_fields)
# A prepared statement per connection: the call is parsed and planned once per connection, not on every
# settlement (Django binds parameters client-side and never prepares; see controlplane/core/prepared.py).
_HOLD_SETTLE = Prepared(
    "billing_hold_settle_call",
    "SELECT s.outcome, "  # noqa: S608  # column names from the model, arguments bound
    + ", ".join(f"(s.entry).{name}" for name in _ENTRY_FIELDS)
    + " FROM billing_hold_settle(%(request_id)s, %(organization_id)s, %(input_tokens)s, %(output_tokens)s,"
    " %(api_key_id)s, %(at)s) s",
    {
        "request_id": "text",
        "organization_id": "bigint",
        "input_tokens": "bigint",
        "output_tokens": "bigint",
        "api_key_id": "bigint",
        "at": "timestamptz",
    },
)


def _hold_settle_in_database(
    *, request_id: str, input_tokens: int, output_tokens: int, api_key_id: int | None, at: datetime,
    organization_id: int | None,
) -> LedgerEntry:  # fmt: skip
    with connection.cursor() as cursor:
        row = _HOLD_SETTLE.execute(cursor, {
            "request_id": request_id, "organization_id": organization_id, "input_tokens": input_tokens,
            "output_tokens": output_tokens, "api_key_id": api_key_id, "at": at,
        }).fetchone()  # fmt: skip
    outcome, values = row[0], row[1:]
    settle_outcome_check(outcome=outcome, request_id=request_id, organization_id=organization_id)
    entry: LedgerEntry = LedgerEntry.from_db(connection.alias, list(_ENTRY_FIELDS), list(values))
    return entry


def settle_outcome_check(*, outcome: str, request_id: str, organization_id: int | None) -> None:
    """Raises what `hold_settle` raises for a `billing_hold_settle` outcome that settled nothing (a caller
    that calls the function in a statement of its own checks its outcome with this)."""
    if outcome in {"settled", "settled_before"}:
        return
    if outcome == "hold_not_found":
        raise NotFound(f"No hold for request {request_id}.", code="hold_not_found")
    if outcome == "hold_released":
        raise Conflict(f"The hold of request {request_id} was released; it cannot be billed.", code="hold_released")
    if outcome == "organization_not_found":
        raise Organization.DoesNotExist(f"organisations [{organization_id}] do not exist")
    raise RuntimeError(f"billing_hold_settle answered {outcome!r}")


def _hold_settle_here(
    *, request_id: str, input_tokens: int, output_tokens: int, api_key_id: int | None, at: datetime,
    organization_id: int | None,
) -> LedgerEntry:  # fmt: skip
    """The settlement in Python, step by step (SQLite; on PostgreSQL a test runs it next to the function)."""
    if organization_id is None:
        found = selectors.hold_get(request_id=request_id)
        if found is None:
            raise NotFound(f"No hold for request {request_id}.", code="hold_not_found")
        organization_id = found.organization_id
    with transaction.atomic():
        org = locks.organization_lock(organization_id=organization_id)
        hold: CreditHold | None = (
            CreditHold.objects.unscoped_all_orgs().filter(request_id=request_id, organization_id=org.pk).first()
        )
        if hold is None:
            raise NotFound(f"No hold for request {request_id}.", code="hold_not_found")
        if hold.status == CreditHold.Status.CAPTURED:
            # settled before (the hold is captured in the same transaction as its entry)
            settled: LedgerEntry = LedgerEntry.objects.unscoped_all_orgs().get(request_id=request_id)
            return settled
        if hold.status != CreditHold.Status.OPEN:
            raise Conflict(f"The hold of request {request_id} was released; it cannot be billed.", code="hold_released")
        entry: LedgerEntry
        usd_micros = money.token_cost_usd_micros(
            tokens=input_tokens, usd_per_million=hold.input_usd_per_million
        ) + money.token_cost_usd_micros(tokens=output_tokens, usd_per_million=hold.output_usd_per_million)
        amount = money.round_micros_half_even(money.usd_to_currency(usd_micros=usd_micros, per_usd=hold.fx_per_usd))
        draws, receivable = _settle_draws(org=org, hold=hold, amount_micros=amount)
        entry = LedgerEntry.objects.unscoped_all_orgs().create(
            organization=org,
            request_id=request_id,
            hold=hold,
            api_key_id=api_key_id,
            model_name=hold.model_name,
            region=hold.region,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            input_price_id=hold.input_price_id,
            output_price_id=hold.output_price_id,
            input_usd_per_million=hold.input_usd_per_million,
            output_usd_per_million=hold.output_usd_per_million,
            fx_rate_id=hold.fx_rate_id,
            fx_per_usd=hold.fx_per_usd,
            currency=hold.currency,
            usd_amount=usd_micros.scaleb(-6),
            amount_micros=amount,
            admitted_at=hold.admitted_at,
            settled_at=at,
        )
        postings = [
            LedgerPosting(
                organization=org,
                entry=entry,
                account=LedgerPosting.Account.CUSTOMER_CREDIT,
                grant=grant,
                debit_micros=take,
            )
            for grant, take in draws
        ]
        if receivable:
            postings.append(
                LedgerPosting(
                    organization=org, entry=entry, account=LedgerPosting.Account.RECEIVABLE, debit_micros=receivable
                )
            )
        if amount:
            postings.append(
                LedgerPosting(
                    organization=org, entry=entry, account=LedgerPosting.Account.REVENUE, credit_micros=amount
                )
            )
        _check_balanced(postings, amount_micros=amount)
        LedgerPosting.objects.unscoped_all_orgs().bulk_create(postings)
        hold.status, hold.closed_at = CreditHold.Status.CAPTURED, at
        hold.save(update_fields=["status", "closed_at", "updated_at"])
    return entry


def _settle_draws(
    *, org: Organization, hold: CreditHold, amount_micros: int
) -> tuple[list[tuple[CreditGrant, int]], int]:
    """Free the hold's reservations and draw the actual amount; returns the grant draws and the rest.

    Runs under the organisation's lock. The actual amount is taken from the hold's allocations in their
    order; any excess over the hold is drawn like a new hold from grants with credit left (usable at the
    admission time); what no grant covers is the accounts-receivable part.
    """
    if hold.billing_mode != Organization.BillingMode.PREPAID:
        return [], amount_micros
    draws: dict[int, int] = {}
    grants: dict[int, CreditGrant] = {}
    left = amount_micros
    allocations = HoldAllocation.objects.unscoped_all_orgs().filter(hold=hold).select_related("grant").order_by("pk")
    for allocation in allocations:
        grant = allocation.grant
        grants[grant.pk] = grant
        grant.held_micros -= allocation.amount_micros
        take = min(allocation.amount_micros, left)
        if take:
            draws[grant.pk] = take
            grant.consumed_micros += take
            left -= take
    for grant in grants.values():
        grant.save(update_fields=["held_micros", "consumed_micros", "updated_at"])
    if left:
        extra, left = _plan_draw(
            grants=_grants_in_burn_order(organization_id=org.pk, currency=hold.currency, valid_at=hold.admitted_at),
            amount_micros=left,
        )
        for grant, take in extra:
            grant.consumed_micros += take
            grant.save(update_fields=["consumed_micros", "updated_at"])
            draws[grant.pk] = draws.get(grant.pk, 0) + take
            grants[grant.pk] = grant
    return [(grants[pk], take) for pk, take in draws.items()], left


def _check_balanced(postings: list[LedgerPosting], *, amount_micros: int) -> None:
    debit_total = sum(posting.debit_micros for posting in postings)
    credit_total = sum(posting.credit_micros for posting in postings)
    if not debit_total == credit_total == amount_micros:
        raise RuntimeError(
            f"unbalanced ledger entry: debits {debit_total}, credits {credit_total}, amount {amount_micros}"
        )


def hold_release(*, request_id: str, reason: str) -> None:
    """Free a hold without billing anything. Idempotent: an unknown, released or captured hold is left as is."""
    found = selectors.hold_get(request_id=request_id)
    if found is None or found.status != CreditHold.Status.OPEN:
        return
    with transaction.atomic():
        locks.organization_lock(organization_id=found.organization_id)
        hold: CreditHold = CreditHold.objects.unscoped_all_orgs().get(pk=found.pk)
        if hold.status != CreditHold.Status.OPEN:
            return
        allocations = HoldAllocation.objects.unscoped_all_orgs().filter(hold=hold).select_related("grant")
        for allocation in allocations.order_by("pk"):
            grant = allocation.grant
            grant.held_micros -= allocation.amount_micros
            grant.save(update_fields=["held_micros", "updated_at"])
        hold.status, hold.closed_at, hold.release_reason = CreditHold.Status.RELEASED, timezone.now(), reason[:200]
        hold.save(update_fields=["status", "closed_at", "release_reason", "updated_at"])
