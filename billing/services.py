"""Writes of the FX and tax tables. Both are effective-dated: a change is a new version, never an edit."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.db import IntegrityError, transaction

from billing.models import FxRate, TaxRate
from controlplane.core.errors import Conflict, ValidationFailed
from controlplane.core.services import Actor, audit_record
from tenants.models import BILLING_CURRENCIES

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
