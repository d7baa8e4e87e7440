"""How an invoice is taxed: the rate of the organisation's billing country, or the reverse charge.

Tax follows the billing country (the place of supply of digital services). A business customer with a
valid tax id in another country than the one the invoicing entity is established in
(`BILLING_SELLER_COUNTRY`) is reverse-charged: 0% on our invoice, with the note saying that the customer
accounts for the tax. "Valid" here is the id's published format and, where the scheme has one, its check
digits; no tax authority is asked online. A country without a rate in force cannot be invoiced at all,
reverse charge or not: operators add the rate first.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from django.conf import settings

from billing.models import TaxRate
from controlplane.core.errors import Conflict
from tenants.models import Organization

REVERSE_CHARGE_NOTE = "Reverse charge: the customer accounts for the tax (tax id {tax_id}, {country})."


class TaxRateMissing(Conflict):
    """The billing country has no tax rate in force: nothing is invoiced until operators add one."""

    code = "tax_rate_missing"


def _digits(value: str) -> str:
    return re.sub(r"[\s.\-/]", "", value)


def _de_vat_id(value: str) -> bool:
    """USt-IdNr: DE and nine digits, the last a check digit (ISO 7064 MOD 11,10)."""
    if not re.fullmatch(r"DE\d{9}", value):
        return False
    product = 10
    for char in value[2:10]:
        total = (int(char) + product) % 10 or 10
        product = (2 * total) % 11
    return (11 - product) % 10 == int(value[10])


def _br_cnpj(value: str) -> bool:
    """CNPJ: fourteen digits, the last two check digits (modulus 11)."""
    digits = _digits(value)
    if not re.fullmatch(r"\d{14}", digits) or len(set(digits)) == 1:
        return False

    def check(body: str, weights: list[int]) -> int:
        remainder = sum(int(d) * w for d, w in zip(body, weights, strict=True)) % 11
        return 0 if remainder < 2 else 11 - remainder

    first = check(digits[:12], [5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2])
    second = check(digits[:12] + str(first), [6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2])
    return digits[12:] == f"{first}{second}"


def _pattern(regex: str, *, strip: bool = False) -> Callable[[str], bool]:
    compiled = re.compile(regex)
    return lambda value: bool(compiled.fullmatch(_digits(value) if strip else value))


# The formats of the billing countries' business tax ids.
_VALIDATORS: dict[str, Callable[[str], bool]] = {
    "DE": _de_vat_id,
    "BR": _br_cnpj,
    # UAE tax registration number: fifteen digits, starting 100.
    "AE": _pattern(r"100\d{12}", strip=True),
    # Saudi VAT number: fifteen digits, starting and ending with 3.
    "SA": _pattern(r"3\d{13}3", strip=True),
    # Singapore GST registration: a UEN (business, local company, other entity) or an M-number.
    "SG": _pattern(r"\d{8}[A-Z]|\d{9}[A-Z]|[TSR]\d{2}[A-Z]{2}\d{4}[A-Z]|M[0-9A-Z]\d{7}[A-Z]"),
    # Indonesian NPWP: fifteen digits (sixteen since 2024, the NIK form).
    "ID": _pattern(r"\d{15,16}", strip=True),
    # Chinese unified social credit code: eighteen characters of its alphabet.
    "CN": _pattern(r"[0-9A-HJ-NPQRTUWXY]{2}\d{6}[0-9A-HJ-NPQRTUWXY]{10}"),
    # US employer identification number: nine digits.
    "US": _pattern(r"\d{9}", strip=True),
}


def tax_id_valid(*, country: str, tax_id: str) -> bool:
    """Whether `tax_id` has the format (and check digits) of a business tax id of `country`."""
    validator = _VALIDATORS.get(country.upper())
    value = tax_id.strip().upper()
    return bool(value) and validator is not None and validator(value)


@dataclass(frozen=True, slots=True)
class TaxTreatment:
    rate: TaxRate
    percent: Decimal  # what the invoice charges: the rate's, or 0 when reverse-charged
    reverse_charge: bool
    note: str


def tax_treatment(*, organization: Organization, on: date) -> TaxTreatment:
    """The tax of an invoice of `organization` dated `on` (the last day of its month).

    Raises 409 `tax_rate_missing` when the billing country has no rate in force then.
    """
    country = organization.billing_country.upper()
    rate = TaxRate.objects.filter(country=country, effective_from__lte=on).order_by("-effective_from").first()
    if rate is None:
        raise TaxRateMissing(
            f"No tax rate for {country} is in force on {on.isoformat()}: the organisation "
            f"{organization.slug} cannot be invoiced until operators add one.",
            details={"country": country, "organization": organization.slug, "on": on.isoformat()},
        )
    seller = settings.BILLING_SELLER_COUNTRY.upper()
    if country != seller and tax_id_valid(country=country, tax_id=organization.tax_id):
        note = REVERSE_CHARGE_NOTE.format(tax_id=organization.tax_id.strip().upper(), country=country)
        return TaxTreatment(rate=rate, percent=Decimal(0), reverse_charge=True, note=note)
    return TaxTreatment(rate=rate, percent=rate.rate_percent, reverse_charge=False, note="")
