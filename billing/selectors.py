"""Reads of the FX and tax tables: the version in force at a moment, and the histories."""

from __future__ import annotations

from datetime import UTC, datetime

from django.db.models import QuerySet

from billing.models import FxRate, TaxRate


def fx_rate_in_force(*, currency: str, at: datetime) -> FxRate | None:
    """The latest version effective at `at`; None when the currency has no rate then."""
    return FxRate.objects.filter(currency=currency.upper(), effective_from__lte=at).order_by("-effective_from").first()


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
