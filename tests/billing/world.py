"""A priced world for the invoicing, budget and reconciliation tests: list prices with sub-micro parts in
all eight regions, the seeded FX pegs and tax rates plus rates for the other billing currencies, and
customers billed in several currencies. Usage goes through the real hold and settlement services."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext

from billing import services
from billing.models import LedgerEntry
from controlplane.core.regions import REGION_CODES
from controlplane.core.services import Actor
from tenants.models import Organization
from tests.factories import make_fx, make_grant, make_org, make_prices

MODEL = "SmolLM2-135M-Instruct"
# USD per million tokens, six decimal places, different in every region.
PRICES = {
    region: (Decimal("2.013457") + Decimal(index) * Decimal("0.311111"), Decimal("6.026913") + Decimal(index) / 7)
    for index, region in enumerate(REGION_CODES)
}
# Rates with all eight decimal places used (the pegs come from the seed data).
FX = {"SGD": "1.29871234", "EUR": "0.86412345", "IDR": "16612.12345678", "CNY": "7.09876543", "BRL": "5.43210987"}
EXACT = Context(prec=80)


@dataclass(frozen=True)
class CustomerSpec:
    slug: str
    currency: str
    country: str
    mode: str
    tax_id: str = ""


CUSTOMERS = (
    CustomerSpec("usd-us", "USD", "US", "postpaid"),
    CustomerSpec("aed-ae", "AED", "AE", "prepaid"),
    CustomerSpec("sar-sa", "SAR", "SA", "postpaid"),
    CustomerSpec("eur-de", "EUR", "DE", "postpaid", tax_id="DE136695976"),  # a business abroad: reverse charge
    CustomerSpec("sgd-sg", "SGD", "SG", "prepaid"),
    CustomerSpec("idr-id", "IDR", "ID", "postpaid"),
    CustomerSpec("cny-cn", "CNY", "CN", "postpaid"),
)


def price_world() -> None:
    services.fx_tax_seed(actor=Actor.system("tests"))
    for currency, rate in FX.items():
        make_fx(currency, rate)
    for region, (input_price, output_price) in PRICES.items():
        make_prices(model_name=MODEL, region=region, input_usd_per_million=str(input_price),
                    output_usd_per_million=str(output_price.quantize(Decimal("0.000001"))))  # fmt: skip


def customer(spec: CustomerSpec) -> Organization:
    org = make_org(slug=spec.slug, name=spec.slug.upper(), billing_country=spec.country,
                   billing_currency=spec.currency, billing_mode=spec.mode)  # fmt: skip
    if spec.tax_id:
        Organization.objects.filter(pk=org.pk).update(tax_id=spec.tax_id)
        org.refresh_from_db()
    if spec.mode == "prepaid":
        make_grant(org, "500000.00" if spec.currency == "IDR" else "50.00", priority=1, reason="plenty")
    return org


def request(
    org: Organization,
    *,
    request_id: str,
    region: str,
    at: datetime,
    input_tokens: int,
    max_output_tokens: int,
    output_tokens: int | None,
    settled_at: datetime | None = None,
) -> LedgerEntry | None:
    """Admit (hold) and, unless `output_tokens` is None, settle one request."""
    services.hold_place(organization=org, request_id=request_id, model_name=MODEL, region=region,
                        input_tokens=input_tokens, max_output_tokens=max_output_tokens, at=at)  # fmt: skip
    if output_tokens is None:
        return None
    return services.hold_settle(request_id=request_id, input_tokens=input_tokens, output_tokens=output_tokens,
                                api_key_id=None, at=settled_at or at + timedelta(seconds=2))  # fmt: skip


def random_usage(
    rng: random.Random, orgs: list[Organization], *, start: datetime, days: int, count: int, prefix: str
) -> list[LedgerEntry]:
    """`count` settled requests spread over every region and organisation within `days` from `start`."""
    entries: list[LedgerEntry] = []
    for index in range(count):
        org = orgs[index % len(orgs)]
        region = REGION_CODES[(index // len(orgs)) % len(REGION_CODES)]
        at = start + timedelta(seconds=rng.randrange(days * 86400 - 60))
        max_output = rng.choice([16, 64, 256, 1024])
        entry = request(org, request_id=f"{prefix}-{index}", region=region, at=at,
                        input_tokens=rng.randrange(1, 4000), max_output_tokens=max_output,
                        output_tokens=rng.randrange(0, max_output + 1))  # fmt: skip
        assert entry is not None
        entries.append(entry)
    return entries


def expected_lines(entries: list[LedgerEntry], *, minor_digits: int) -> dict[tuple[str, str, str], tuple[int, int]]:
    """The test's own invoice lines: (usage month, region, kind) -> (tokens, amount in micros), each line's exact
    sum rounded half-even to the minor unit with Decimal.quantize (not through the money module)."""
    exact: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    tokens: dict[tuple[str, str, str], int] = defaultdict(int)
    with localcontext(EXACT):
        for entry in entries:
            month = f"{entry.admitted_at:%Y-%m}"
            input_part = entry.input_tokens * entry.input_usd_per_million * entry.fx_per_usd
            exact[(month, entry.region, "input")] += input_part
            exact[(month, entry.region, "output")] += entry.amount_micros - input_part
            tokens[(month, entry.region, "input")] += entry.input_tokens
            tokens[(month, entry.region, "output")] += entry.output_tokens
        step = Decimal(1).scaleb(-minor_digits)
        return {
            key: (tokens[key], int((value / 1_000_000).quantize(step, rounding=ROUND_HALF_EVEN) * 1_000_000))
            for key, value in exact.items()
        }
