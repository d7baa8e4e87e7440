"""Operators' admin of billing: price versions and grants go through the audited services; holds and
the ledger are read-only."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.test import Client
from django.utils import timezone

from billing import services
from billing.models import CreditGrant, CreditHold, LedgerEntry, PriceBookEntry
from controlplane.core.models import AuditEvent
from tenants.models import User
from tests.factories import make_grant, make_hold, make_operator, make_org

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(db: None) -> User:
    return make_operator(email="root@sovereign.test")


@pytest.fixture
def admin_client(operator: User) -> Client:
    client = Client()
    client.force_login(operator)
    return client


def _split(moment: datetime) -> dict[str, str]:
    local = timezone.localtime(moment)
    return {"effective_from_0": local.strftime("%Y-%m-%d"), "effective_from_1": local.strftime("%H:%M:%S")}


def test_price_versions_are_added_and_corrected_through_the_service(operator: User, admin_client: Client) -> None:
    now = timezone.now().replace(microsecond=0)
    form = {"model_name": "SmolLM2-135M-Instruct", "region": "sin", "token_kind": "input", "usd_per_million": "0.5"}
    added = admin_client.post("/admin/billing/pricebookentry/add/", {**form, **_split(now - timedelta(days=1))})
    assert added.status_code == 302, added.content.decode()[:2000]
    entry = PriceBookEntry.objects.get()
    [audit] = AuditEvent.objects.unscoped_all_orgs().filter(action="price_entry.add")
    assert (audit.actor_id, audit.target_id) == (operator.pk, str(entry.pk))
    earlier = admin_client.post("/admin/billing/pricebookentry/add/", {**form, **_split(now - timedelta(days=2))})
    assert earlier.status_code == 200
    assert "must start later" in earlier.content.decode()
    # The version in force is history: view only.
    in_force = admin_client.post(
        f"/admin/billing/pricebookentry/{entry.pk}/change/", {"usd_per_million": "9", **_split(now)}
    )
    assert in_force.status_code == 403
    assert admin_client.get(f"/admin/billing/pricebookentry/{entry.pk}/change/").status_code == 200
    # Positive control: a scheduled version can be corrected, and the correction is audited.
    scheduled = admin_client.post(
        "/admin/billing/pricebookentry/add/", {**form, "usd_per_million": "0.6", **_split(now + timedelta(days=5))}
    )
    assert scheduled.status_code == 302
    future = PriceBookEntry.objects.get(usd_per_million="0.6")
    fixed = admin_client.post(
        f"/admin/billing/pricebookentry/{future.pk}/change/",
        {"usd_per_million": "0.55", "note": "typo", **_split(now + timedelta(days=6))},
    )
    assert fixed.status_code == 302, fixed.content.decode()[:2000]
    future.refresh_from_db()
    assert str(future.usd_per_million) == "0.550000"
    [update] = AuditEvent.objects.unscoped_all_orgs().filter(action="price_entry.update")
    assert update.actor_id == operator.pk
    assert admin_client.post(f"/admin/billing/pricebookentry/{future.pk}/delete/", {"post": "yes"}).status_code == 403


def test_grants_are_added_through_the_service_and_never_edited(operator: User, admin_client: Client) -> None:
    org = make_org(billing_currency="SAR")
    form = {"organization": str(org.pk), "amount": "100.00", "currency": "SAR", "priority": "10", "reason": "pilot"}
    wrong = admin_client.post("/admin/billing/creditgrant/add/", {**form, "currency": "USD"})
    assert wrong.status_code == 200
    assert "billed in SAR" in wrong.content.decode()
    assert not CreditGrant.objects.unscoped_all_orgs().exists()
    created = admin_client.post("/admin/billing/creditgrant/add/", form)
    assert created.status_code == 302, created.content.decode()[:2000]
    grant = CreditGrant.objects.unscoped_all_orgs().get()
    assert (grant.amount_micros, grant.granted_by) == (100_000_000, "admin:root@sovereign.test")
    [audit] = AuditEvent.objects.unscoped_all_orgs().filter(action="credit_grant.create")
    assert (audit.actor_id, audit.organization_id) == (operator.pk, org.pk)
    assert admin_client.get("/admin/billing/creditgrant/").status_code == 200
    edit = admin_client.post(f"/admin/billing/creditgrant/{grant.pk}/change/", {**form, "amount": "1000"})
    assert edit.status_code == 403
    assert admin_client.get(f"/admin/billing/creditgrant/{grant.pk}/change/").status_code == 200


def test_holds_and_the_ledger_are_read_only(prices: object, admin_client: Client) -> None:
    org = make_org()
    make_grant(org, "1.00")
    make_hold(org, request_id="seen")
    services.hold_settle(request_id="seen", input_tokens=10, output_tokens=10, api_key_id=None, at=timezone.now())
    make_hold(org, request_id="open-one")
    entry = LedgerEntry.objects.unscoped_all_orgs().get()
    hold = CreditHold.objects.unscoped_all_orgs().get(request_id="open-one")
    for listing in ("/admin/billing/ledgerentry/", "/admin/billing/credithold/"):
        page = admin_client.get(listing)
        assert page.status_code == 200
        assert "seen" in page.content.decode()
    detail = admin_client.get(f"/admin/billing/ledgerentry/{entry.pk}/change/")
    assert detail.status_code == 200
    assert "revenue" in detail.content.decode()  # its postings are shown inline
    assert admin_client.get(f"/admin/billing/credithold/{hold.pk}/change/").status_code == 200
    for path in (f"/admin/billing/ledgerentry/{entry.pk}/change/", f"/admin/billing/credithold/{hold.pk}/change/"):
        assert admin_client.post(path, {"amount_micros": "1"}).status_code == 403
    for path in ("/admin/billing/ledgerentry/add/", "/admin/billing/credithold/add/"):
        assert admin_client.get(path).status_code == 403
    assert admin_client.post(f"/admin/billing/ledgerentry/{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    assert LedgerEntry.objects.unscoped_all_orgs().get().amount_micros == entry.amount_micros
