"""The price book: the version in force is chosen by time; history is never rewritten; the seed covers
every catalog model in every region, idempotently, with the documented basis."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from billing import selectors, services
from billing.models import PriceBookEntry
from controlplane.core.errors import Conflict, ServiceUnavailable, ValidationFailed
from controlplane.core.models import AuditEvent
from controlplane.core.regions import REGION_CODES
from controlplane.fleet import services as fleet_services
from controlplane.fleet.models import CatalogModel
from tests.billing.conftest import MODEL, REGION
from tests.factories import BILLING_EPOCH, TEST_ACTOR, make_hold, make_org, make_prices

pytestmark = pytest.mark.django_db


def _audits(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.unscoped_all_orgs().filter(action=action).order_by("pk"))


def test_the_quote_is_the_version_in_force_at_the_moment() -> None:
    start = timezone.now() - timedelta(days=10)
    make_prices(input_usd_per_million="0.10", output_usd_per_million="0.20", effective_from=start)
    make_prices(input_usd_per_million="0.15", output_usd_per_million="0.30", effective_from=start + timedelta(days=5))
    with pytest.raises(ServiceUnavailable) as before:
        selectors.price_quote(model_name=MODEL, region=REGION, at=start - timedelta(seconds=1))
    assert (before.value.code, before.value.http_status) == ("price_unavailable", 503)
    old = selectors.price_quote(model_name=MODEL, region=REGION, at=start + timedelta(days=5, seconds=-1))
    new = selectors.price_quote(model_name=MODEL, region=REGION, at=start + timedelta(days=5))
    assert (old.input_usd_per_million, old.output_usd_per_million) == (Decimal("0.10"), Decimal("0.20"))
    assert (new.input_usd_per_million, new.output_usd_per_million) == (Decimal("0.15"), Decimal("0.30"))
    assert new.usd_micros(input_tokens=1000, output_tokens=10) == Decimal(153)
    with pytest.raises(ServiceUnavailable):
        selectors.price_quote(model_name=MODEL, region="fra", at=start + timedelta(days=6))


def test_a_quote_needs_both_kinds() -> None:
    services.price_entry_add(
        actor=TEST_ACTOR,
        model_name=MODEL,
        region=REGION,
        token_kind="input",
        usd_per_million="1",
        effective_from=BILLING_EPOCH,
    )
    with pytest.raises(ServiceUnavailable):
        selectors.price_quote(model_name=MODEL, region=REGION, at=timezone.now())
    services.price_entry_add(
        actor=TEST_ACTOR,
        model_name=MODEL,
        region=REGION,
        token_kind="output",
        usd_per_million="2",
        effective_from=BILLING_EPOCH,
    )
    assert selectors.price_quote(model_name=MODEL, region=REGION, at=timezone.now()).output_usd_per_million == 2


def test_new_versions_are_later_than_every_version_and_well_formed() -> None:
    start = timezone.now() - timedelta(days=10)
    make_prices(effective_from=start)
    assert len(_audits("price_entry.add")) == 2
    arguments: dict[str, Any] = {"actor": TEST_ACTOR, "model_name": MODEL, "region": REGION, "token_kind": "input"}
    with pytest.raises(Conflict):
        services.price_entry_add(**arguments, usd_per_million="3", effective_from=start - timedelta(days=1))
    with pytest.raises(Conflict):
        services.price_entry_add(**arguments, usd_per_million="3", effective_from=start)
    bad_cases: list[dict[str, Any]] = [
        {"usd_per_million": "-1"},
        {"usd_per_million": "0.0000001"},
        {"usd_per_million": "1E+30"},
        {"usd_per_million": 0.5},
        {"region": "xyz"},
        {"token_kind": "cached"},
    ]
    for bad in bad_cases:
        with pytest.raises(ValidationFailed):
            services.price_entry_add(**{**arguments, "usd_per_million": "3", **bad}, effective_from=timezone.now())
    assert len(_audits("price_entry.add")) == 2
    later = services.price_entry_add(**arguments, usd_per_million="3", effective_from=start + timedelta(days=1))
    assert later.usd_per_million == Decimal(3)  # positive control


def test_only_a_scheduled_unused_version_can_be_corrected() -> None:
    now = timezone.now()
    in_force, _ = make_prices(effective_from=now - timedelta(days=1))
    scheduled, _ = make_prices(
        input_usd_per_million="5", output_usd_per_million="10", effective_from=now + timedelta(days=7)
    )
    with pytest.raises(Conflict) as refused:
        services.price_entry_update(
            actor=TEST_ACTOR, entry=in_force, usd_per_million="9", effective_from=now + timedelta(days=1), note=""
        )
    assert refused.value.code == "price_entry_in_use"
    with pytest.raises(ValidationFailed):
        services.price_entry_update(
            actor=TEST_ACTOR, entry=scheduled, usd_per_million="9", effective_from=now - timedelta(hours=1), note=""
        )
    fixed = services.price_entry_update(
        actor=TEST_ACTOR, entry=scheduled, usd_per_million="4.5", effective_from=now + timedelta(days=8), note="typo"
    )
    assert (fixed.usd_per_million, fixed.note) == (Decimal("4.5"), "typo")
    [audit] = _audits("price_entry.update")
    assert audit.changes["before"]["usd_per_million"] == "5.000000"
    assert audit.changes["after"]["usd_per_million"] == "4.5"
    in_force.refresh_from_db()
    assert in_force.usd_per_million == Decimal("1.00")
    # A scheduled version that priced a request (an admission time in the future) is frozen too.
    org = make_org(billing_mode="postpaid")
    make_hold(org, at=now + timedelta(days=9))
    with pytest.raises(Conflict):
        services.price_entry_update(
            actor=TEST_ACTOR, entry=fixed, usd_per_million="1", effective_from=now + timedelta(days=8), note=""
        )


def test_the_seed_prices_every_catalog_model_in_every_region_once() -> None:
    fleet_services.catalog_sync()
    models = list(CatalogModel.objects.exclude(status="retired"))
    assert len(models) >= 8
    # An operator's own version is kept; the seed fills in everything else.
    make_prices(
        model_name="Qwen2.5-7B-Instruct", region="fra", input_usd_per_million="0.05", output_usd_per_million="0.09"
    )
    result = services.price_book_seed()
    assert len(result.added) == len(models) * len(REGION_CODES) * 2 - 2
    assert result.kept == 2
    for model in models:
        for region in REGION_CODES:
            quote = selectors.price_quote(model_name=model.name, region=region, at=timezone.now())
            assert quote.output_usd_per_million > quote.input_usd_per_million > 0
    at = timezone.now()
    smol = selectors.price_quote(model_name="SmolLM2-135M-Instruct", region="sin", at=at)
    qwen7 = selectors.price_quote(model_name="Qwen2.5-7B-Instruct", region="sin", at=at)
    qwen72 = selectors.price_quote(model_name="Qwen2.5-72B-Instruct", region="hgh", at=at)
    assert (smol.input_usd_per_million, smol.output_usd_per_million) == (Decimal("0.01"), Decimal("0.02"))
    assert (qwen7.input_usd_per_million, qwen7.output_usd_per_million) == (Decimal("0.0251"), Decimal("0.0502"))
    assert (qwen72.input_usd_per_million, qwen72.output_usd_per_million) == (Decimal("0.2399"), Decimal("0.4798"))
    assert selectors.price_quote(
        model_name="Qwen2.5-7B-Instruct", region="fra", at=at
    ).input_usd_per_million == Decimal("0.05")
    assert len(_audits("price_book.seed")) == 1
    rows = PriceBookEntry.objects.count()
    again = services.price_book_seed()
    assert (again.added, PriceBookEntry.objects.count(), len(_audits("price_book.seed"))) == ([], rows, 1)


def test_the_seed_basis_scales_with_parameters() -> None:
    assert services.price_seed_usd_per_million(parameters=7_615_616_512) == (Decimal("0.0251"), Decimal("0.0502"))
    assert services.price_seed_usd_per_million(parameters=134_515_008) == (Decimal("0.01"), Decimal("0.02"))
    small, large = (services.price_seed_usd_per_million(parameters=n)[0] for n in (3_085_938_688, 32_763_876_352))
    assert small < large
