"""Operators' admin of budgets and invoices: budgets go through their audited service, invoices are finalised,
paid and voided by admin actions through theirs, exported as CSV and JSON, and never edited; each price
version shows its audit trail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client

from billing import invoicing
from billing.models import Budget, Invoice, PriceBookEntry
from controlplane.core.models import AuditEvent
from controlplane.core.services import Actor
from tenants.models import User
from tests.billing.world import price_world, request
from tests.factories import make_operator, make_org

pytestmark = pytest.mark.django_db
SEPTEMBER = datetime(2026, 9, 1, tzinfo=UTC)


@pytest.fixture
def operator(db: None) -> User:
    return make_operator(email="root@sovereign.test")


@pytest.fixture
def admin_client(operator: User) -> Client:
    client = Client()
    client.force_login(operator)
    return client


def test_budgets_are_set_and_removed_through_the_service(operator: User, admin_client: Client) -> None:
    org = make_org(billing_mode="postpaid")
    prepaid = make_org()
    form = {"organization": org.pk, "amount": "250.00", "alert_thresholds": "[50, 90]", "hard_stop": "on"}
    added = admin_client.post("/admin/billing/budget/add/", form)
    assert added.status_code == 302, added.content.decode()[:3000]
    budget = Budget.objects.unscoped_all_orgs().get(organization=org)
    assert (budget.amount_micros, budget.alert_thresholds, budget.hard_stop) == (250_000_000, [50, 90], True)
    refused = admin_client.post("/admin/billing/budget/add/", {**form, "organization": prepaid.pk})
    assert refused.status_code == 200
    assert "postpaid" in refused.content.decode()
    changed = admin_client.post(f"/admin/billing/budget/{budget.pk}/change/",
                                {"amount": "300", "alert_thresholds": "[100]"})  # fmt: skip
    assert changed.status_code == 302, changed.content.decode()[:3000]
    budget.refresh_from_db()
    assert (budget.amount_micros, budget.hard_stop) == (300_000_000, False)
    deleted = admin_client.post(f"/admin/billing/budget/{budget.pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 302
    assert not Budget.objects.unscoped_all_orgs().filter(organization=org).exists()
    actions = AuditEvent.objects.unscoped_all_orgs().filter(target_type="Budget").order_by("pk")
    assert [(a.action, a.actor_id) for a in actions] == [("budget.set", operator.pk)] * 2 + [
        ("budget.delete", operator.pk)
    ]


def test_invoices_move_through_admin_actions_and_export(operator: User, admin_client: Client) -> None:
    price_world()
    org = make_org(billing_mode="postpaid", billing_currency="USD", billing_country="US")
    request(org, request_id="adm", region="iad", at=SEPTEMBER + timedelta(days=3), input_tokens=10_000,
            max_output_tokens=10_000, output_tokens=10_000)  # fmt: skip
    [closed] = invoicing.invoice_close_month(actor=Actor.system("tests"), organization=org, month=SEPTEMBER.date())
    [invoice] = closed.invoices
    listing = admin_client.get("/admin/billing/invoice/")
    assert listing.status_code == 200
    assert "Mark the selected invoices paid" in listing.content.decode()
    finalize = {"action": "finalize_invoices", "_selected_action": [invoice.pk], "note": ""}
    assert admin_client.post("/admin/billing/invoice/", finalize).status_code == 302
    invoice.refresh_from_db()
    assert invoice.status == "finalized"
    paid = {"action": "mark_invoices_paid", "_selected_action": [invoice.pk], "note": "wire 77"}
    assert admin_client.post("/admin/billing/invoice/", paid).status_code == 302
    invoice.refresh_from_db()
    assert (invoice.status, invoice.status_note) == ("paid", "wire 77")
    # Voiding a paid invoice is refused by the service: nothing changes, the operator is told.
    void = {"action": "void_invoices", "_selected_action": [invoice.pk], "note": "oops"}
    refused = admin_client.post("/admin/billing/invoice/", void, follow=True)
    assert "is paid" in refused.content.decode()
    assert Invoice.objects.unscoped_all_orgs().get(pk=invoice.pk).status == "paid"
    audits = AuditEvent.objects.unscoped_all_orgs().filter(target_type="Invoice").order_by("pk")
    assert [(a.action, a.actor_id) for a in audits] == [
        ("invoice.finalized", operator.pk),
        ("invoice.paid", operator.pk),
    ]
    page = admin_client.get(f"/admin/billing/invoice/{invoice.pk}/change/")
    assert page.status_code == 200
    assert "iad" in page.content.decode()
    assert admin_client.post(f"/admin/billing/invoice/{invoice.pk}/change/", {"total_micros": 1}).status_code == 403
    exported = admin_client.get(f"/admin/billing/invoice/{invoice.pk}/csv/")
    assert exported["Content-Type"].startswith("text/csv")
    assert invoice.number in exported.content.decode()
    assert admin_client.get(f"/admin/billing/invoice/{invoice.pk}/json/").json()["number"] == invoice.number
    assert Client().get(f"/admin/billing/invoice/{invoice.pk}/json/").status_code == 302  # operators only


def test_each_price_version_shows_its_audit_trail(operator: User, admin_client: Client) -> None:
    price_world()
    entry = PriceBookEntry.objects.get(region="gru", token_kind="input")
    page = admin_client.get(f"/admin/billing/pricebookentry/{entry.pk}/change/").content.decode()
    assert "price_entry.add" in page
    assert "system:tests" in page or "tests" in page
