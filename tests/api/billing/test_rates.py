"""Effective-dated FX and tax tables: versions are added, never edited; the version in force is chosen by time."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from billing import selectors, services
from billing.models import FxRate, TaxRate
from controlplane.core.errors import Conflict, ValidationFailed
from controlplane.core.models import AuditEvent
from controlplane.core.services import Actor
from tenants.models import User

ACTOR = Actor.system("test")


def _audit_count(action: str | None = None) -> int:
    events = AuditEvent.objects.unscoped_all_orgs()
    return (events.filter(action=action) if action else events).count()


@pytest.mark.django_db
def test_seed_loads_rates_pegs_and_leaves_brazil_unset() -> None:
    result = services.fx_tax_seed()
    assert sorted(result.fx_added) == ["AED", "SAR", "USD"]
    assert sorted(result.tax_added) == ["AE", "CN", "DE", "ID", "SA", "SG", "US"]
    assert result.tax_without_rate == ["BR"]
    at = datetime(2026, 6, 1, tzinfo=UTC)
    aed = selectors.fx_rate_in_force(currency="AED", at=at)
    assert aed is not None
    assert aed.per_usd == Decimal("3.6725")
    assert selectors.fx_rate_in_force(currency="SAR", at=at).per_usd == Decimal("3.75")  # type: ignore[union-attr]  # asserted present by the seed
    assert selectors.fx_rate_in_force(currency="USD", at=at).per_usd == Decimal(1)  # type: ignore[union-attr]  # asserted present by the seed
    assert selectors.fx_rate_in_force(currency="EUR", at=at) is None
    assert selectors.tax_rate_in_force(country="BR", at=at) is None
    de = selectors.tax_rate_in_force(country="DE", at=at)
    assert de is not None
    assert (de.rate_percent, de.effective_from) == (Decimal(19), date(2007, 1, 1))
    assert selectors.tax_rate_in_force(country="SA", at=datetime(2020, 6, 30, tzinfo=UTC)) is None
    us = selectors.tax_rate_in_force(country="US", at=at)
    assert us is not None
    assert us.rate_percent == 0

    rows, audits = FxRate.objects.count() + TaxRate.objects.count(), _audit_count()
    again = services.fx_tax_seed()
    assert (again.fx_added, again.tax_added) == ([], [])
    assert FxRate.objects.count() + TaxRate.objects.count() == rows
    assert _audit_count() == audits


@pytest.mark.django_db
def test_a_new_fx_version_takes_over_from_its_start_and_history_stays() -> None:
    old = services.fx_rate_add(
        actor=ACTOR, currency="EUR", per_usd="0.92", effective_from=datetime(2026, 1, 1, tzinfo=UTC)
    )
    new = services.fx_rate_add(
        actor=ACTOR, currency="EUR", per_usd=Decimal("0.95"), effective_from=datetime(2026, 7, 1, tzinfo=UTC)
    )
    assert selectors.fx_rate_in_force(currency="EUR", at=datetime(2025, 12, 31, tzinfo=UTC)) is None
    assert selectors.fx_rate_in_force(currency="EUR", at=datetime(2026, 6, 30, 23, 59, tzinfo=UTC)) == old
    assert selectors.fx_rate_in_force(currency="EUR", at=datetime(2026, 7, 1, tzinfo=UTC)) == new
    assert _audit_count("fx_rate.add") == 2
    with pytest.raises(Conflict):
        services.fx_rate_add(
            actor=ACTOR, currency="EUR", per_usd="0.90", effective_from=datetime(2026, 3, 1, tzinfo=UTC)
        )
    old.refresh_from_db()
    assert old.per_usd == Decimal("0.92")


@pytest.mark.django_db
def test_fx_add_refuses_floats_bad_rates_and_unknown_currencies() -> None:
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ValidationFailed):
        services.fx_rate_add(actor=ACTOR, currency="EUR", per_usd=0.92, effective_from=moment)  # type: ignore[arg-type]  # a float on purpose
    with pytest.raises(ValidationFailed):
        services.fx_rate_add(actor=ACTOR, currency="EUR", per_usd="0", effective_from=moment)
    with pytest.raises(ValidationFailed):
        services.fx_rate_add(actor=ACTOR, currency="XYZ", per_usd="1", effective_from=moment)
    with pytest.raises(ValidationFailed):
        services.fx_rate_add(actor=ACTOR, currency="USD", per_usd="1.1", effective_from=moment)
    assert FxRate.objects.count() == 0
    services.fx_rate_add(actor=ACTOR, currency="EUR", per_usd="0.92", effective_from=moment)
    assert FxRate.objects.count() == 1


@pytest.mark.django_db
def test_tax_versions_by_date() -> None:
    services.tax_rate_add(actor=ACTOR, country="ID", tax_name="VAT", rate_percent="11", effective_from=date(2025, 1, 1))
    services.tax_rate_add(actor=ACTOR, country="ID", tax_name="VAT", rate_percent="12", effective_from=date(2027, 1, 1))
    at_2026 = selectors.tax_rate_in_force(country="ID", at=datetime(2026, 12, 31, 23, 0, tzinfo=UTC))
    at_2027 = selectors.tax_rate_in_force(country="ID", at=datetime(2027, 1, 1, 0, 0, tzinfo=UTC))
    assert at_2026 is not None
    assert at_2027 is not None
    assert (at_2026.rate_percent, at_2027.rate_percent) == (Decimal(11), Decimal(12))
    with pytest.raises(ValidationFailed):
        services.tax_rate_add(
            actor=ACTOR, country="ID", tax_name="VAT", rate_percent="101", effective_from=date(2028, 1, 1)
        )


@pytest.mark.django_db
def test_ops_fx_api_adds_versions_for_staff_only(
    operator: User, operator_client: APIClient, customer_client: APIClient, customer_key_client: APIClient
) -> None:
    body = {"currency": "SGD", "per_usd": "1.3456", "effective_from": "2026-02-01T00:00:00Z", "source": "MAS"}
    assert customer_client.post("/api/v1/ops/fx-rates", body, format="json").status_code == 403
    assert customer_key_client.post("/api/v1/ops/fx-rates", body, format="json").status_code == 403
    assert FxRate.objects.count() == 0

    created = operator_client.post("/api/v1/ops/fx-rates", body, format="json")
    assert created.status_code == 201
    assert created.json()["per_usd"] == "1.34560000"
    [audit] = AuditEvent.objects.unscoped_all_orgs().filter(action="fx_rate.add")
    assert audit.actor_id == operator.pk

    earlier = operator_client.post(
        "/api/v1/ops/fx-rates", {**body, "effective_from": "2026-01-01T00:00:00Z"}, format="json"
    )
    assert earlier.status_code == 409
    assert earlier.json()["error"]["code"] == "rate_not_latest"
    later = operator_client.post(
        "/api/v1/ops/fx-rates", {**body, "per_usd": "1.35", "effective_from": "2026-03-01T00:00:00Z"}, format="json"
    )
    assert later.status_code == 201
    listed = operator_client.get("/api/v1/ops/fx-rates", {"currency": "SGD"}).json()["results"]
    assert [r["per_usd"] for r in listed] == ["1.35000000", "1.34560000"]
    unknown = operator_client.post("/api/v1/ops/fx-rates", {**body, "rate": "1"}, format="json")
    assert unknown.status_code == 400


@pytest.mark.django_db
def test_ops_tax_api_adds_versions_for_staff_only(operator_client: APIClient, customer_client: APIClient) -> None:
    body = {"country": "BR", "tax_name": "ISS", "rate_percent": "5", "effective_from": "2026-01-01"}
    assert customer_client.post("/api/v1/ops/tax-rates", body, format="json").status_code == 403
    created = operator_client.post("/api/v1/ops/tax-rates", body, format="json")
    assert created.status_code == 201
    assert created.json()["rate_percent"] == "5.000"
    assert operator_client.post("/api/v1/ops/tax-rates", body, format="json").status_code == 409
    at = datetime(2026, 5, 1, tzinfo=UTC)
    in_force = selectors.tax_rate_in_force(country="BR", at=at)
    assert in_force is not None
    assert in_force.rate_percent == Decimal(5)
    assert AuditEvent.objects.unscoped_all_orgs().filter(action="tax_rate.add").count() == 1
