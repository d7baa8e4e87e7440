"""Invoice rules: tax follows the billing country, reverse charge for businesses abroad, a country without a
rate cannot be invoiced (nothing half-written), months close in order and once, invoices are written once
and move draft -> finalized -> paid | void through audited services, credits, and the CSV/JSON exports."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

from billing import invoicing, services
from billing.models import BillingPeriod, CreditGrant, Invoice, InvoiceLine, LedgerEntry
from billing.reconcile import reconcile
from billing.tax import tax_id_valid
from controlplane.core import money
from controlplane.core.errors import Conflict, ValidationFailed
from controlplane.core.models import AuditEvent
from controlplane.core.services import Actor
from tenants.models import Organization
from tests.billing.world import expected_lines, price_world, request
from tests.factories import make_grant, make_org

pytestmark = pytest.mark.django_db

ACTOR = Actor.system("tests")
AUGUST = datetime(2026, 8, 1, tzinfo=UTC)
SEPTEMBER = datetime(2026, 9, 1, tzinfo=UTC)
OCTOBER = datetime(2026, 10, 1, tzinfo=UTC)


@pytest.fixture
def world(db: None) -> None:
    price_world()


def _org(country: str, *, currency: str = "USD", mode: str = "postpaid", tax_id: str = "") -> Organization:
    org = make_org(billing_country=country, billing_currency=currency, billing_mode=mode)
    if tax_id:
        Organization.objects.filter(pk=org.pk).update(tax_id=tax_id)
        org.refresh_from_db()
    return org


def _use(org: Organization, at: datetime, request_id: str, *, tokens: int = 50_000) -> LedgerEntry:
    entry = request(org, request_id=request_id, region="dxb", at=at, input_tokens=tokens, max_output_tokens=tokens,
                    output_tokens=tokens // 2)  # fmt: skip
    assert entry is not None
    return entry


def _close(org: Organization, month: datetime, *, finalize: bool = True) -> list[invoicing.PeriodClosed]:
    return invoicing.invoice_close_month(actor=ACTOR, organization=org, month=month.date(), finalize=finalize)


@pytest.mark.parametrize(
    ("country", "tax_id"),
    [
        ("DE", "DE136695976"),
        ("DE", "DE 811907980"),
        ("BR", "11.222.333/0001-81"),
        ("AE", "100123456700003"),
        ("SA", "310122393500003"),
        ("SG", "200312345A"),
        ("ID", "01.234.567.8-901.000"),
        ("CN", "91350100M000100Y43"),
        ("US", "12-3456789"),
    ],
)
def test_tax_ids_in_their_published_format_are_valid(country: str, tax_id: str) -> None:
    assert tax_id_valid(country=country, tax_id=tax_id.replace(" ", ""))


@pytest.mark.parametrize(
    ("country", "tax_id"),
    [
        ("DE", "DE136695977"),  # wrong check digit
        ("DE", "136695976"),  # no prefix
        ("BR", "11.222.333/0001-82"),  # wrong check digit
        ("BR", "11111111111111"),  # all one digit
        ("SA", "310122393500004"),  # must end with 3
        ("AE", "200123456700003"),  # must start with 100
        ("FR", "FR40303265045"),  # a country we have no format for
        ("DE", ""),
    ],
)
def test_malformed_tax_ids_are_not_valid(country: str, tax_id: str) -> None:
    assert not tax_id_valid(country=country, tax_id=tax_id)


def test_tax_follows_the_billing_country_and_a_business_abroad_is_reverse_charged(world: None, settings: Any) -> None:
    consumer_de = _org("DE", currency="EUR")
    business_de = _org("DE", currency="EUR", tax_id="DE136695976")
    bad_id_de = _org("DE", currency="EUR", tax_id="DE136695977")
    business_ae = _org("AE", currency="AED", tax_id="100123456700003")  # at home: the seller is in AE
    for index, org in enumerate((consumer_de, business_de, bad_id_de, business_ae)):
        _use(org, SEPTEMBER + timedelta(days=3), f"tax-{index}")
        _close(org, SEPTEMBER)
    invoices = {org.pk: Invoice.objects.unscoped_all_orgs().get(organization=org)
                for org in (consumer_de, business_de, bad_id_de, business_ae)}  # fmt: skip
    for org, percent in ((consumer_de, Decimal(19)), (bad_id_de, Decimal(19)), (business_ae, Decimal(5))):
        invoice = invoices[org.pk]
        assert (invoice.reverse_charge, invoice.tax_rate_percent, invoice.tax_note) == (False, percent, "")
        assert invoice.tax_micros > 0
    reverse = invoices[business_de.pk]
    assert (reverse.reverse_charge, reverse.tax_rate_percent, reverse.tax_micros) == (True, Decimal(0), 0)
    assert reverse.tax_name == "VAT (USt)"
    assert reverse.tax_note == "Reverse charge: the customer accounts for the tax (tax id DE136695976, DE)."
    assert reverse.total_micros == reverse.subtotal_micros
    # The same business is at home when the seller is established in Germany: taxed.
    settings.BILLING_SELLER_COUNTRY = "DE"
    _use(business_de, OCTOBER + timedelta(days=1), "tax-home")
    _close(business_de, OCTOBER)
    home = Invoice.objects.unscoped_all_orgs().get(organization=business_de, period_start=OCTOBER.date())
    assert (home.reverse_charge, home.tax_rate_percent) == (False, Decimal(19))


def test_a_country_without_a_rate_cannot_be_invoiced_and_nothing_is_half_written(world: None) -> None:
    brazil = _org("BR", currency="BRL", tax_id="11.222.333/0001-81")
    _use(brazil, SEPTEMBER + timedelta(days=2), "br-1")
    audits = AuditEvent.objects.unscoped_all_orgs().count()
    with pytest.raises(Conflict) as refused:
        _close(brazil, SEPTEMBER)
    assert refused.value.code == "tax_rate_missing"
    assert "BR" in refused.value.message
    assert not BillingPeriod.objects.unscoped_all_orgs().filter(organization=brazil).exists()
    assert not Invoice.objects.unscoped_all_orgs().filter(organization=brazil).exists()
    assert AuditEvent.objects.unscoped_all_orgs().count() == audits
    # The command says so and exits non-zero; other organisations are still closed.
    other = _org("SG", currency="SGD")
    _use(other, SEPTEMBER + timedelta(days=2), "sg-1")
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match="1 organisation"):
        call_command("invoice_close", month="2026-09", stdout=out, stderr=err)
    assert f"{brazil.slug} 2026-09: NOT invoiced (tax_rate_missing)" in err.getvalue()
    assert Invoice.objects.unscoped_all_orgs().filter(organization=other, status="draft").count() == 1
    # Positive control: once operators add a rate, the month closes.
    services.tax_rate_add(actor=ACTOR, country="BR", tax_name="ISS", rate_percent="5", effective_from=date(2026, 1, 1))
    [closed] = _close(brazil, SEPTEMBER)
    assert [invoice.tax_rate_percent for invoice in closed.invoices] == [Decimal(0)]  # a business abroad


def test_months_close_in_order_once_and_only_when_over(world: None) -> None:
    org = _org("SG", currency="SGD")
    august = _use(org, AUGUST + timedelta(days=10), "aug")
    september = _use(org, SEPTEMBER + timedelta(days=10), "sep")
    with pytest.raises(ValidationFailed) as early:
        invoicing.invoice_close_month(actor=ACTOR, organization=org, month=date(2026, 11, 1))
    assert early.value.code == "month_not_over"
    # Closing September closes August first: each month's usage on its own invoice.
    results = _close(org, SEPTEMBER)
    assert [(r.period.period_start, r.created) for r in results] == [(AUGUST.date(), True), (SEPTEMBER.date(), True)]
    assert [r.invoices[0].entry_count for r in results] == [1, 1]
    assert list(invoicing.period_entries(period=results[0].period)) == [august]
    assert list(invoicing.period_entries(period=results[1].period)) == [september]
    # Closing again changes nothing and says so.
    again = _close(org, SEPTEMBER)
    assert [(r.period.pk, r.created) for r in again] == [(results[1].period.pk, False)]
    assert Invoice.objects.unscoped_all_orgs().filter(organization=org).count() == 2
    with pytest.raises(Conflict):
        invoicing.invoice_close_month(actor=ACTOR, organization=org, month=date(2026, 7, 1))


def test_a_month_without_usage_closes_empty_and_late_usage_goes_to_the_next_invoice(world: None) -> None:
    org = _org("SG", currency="SGD")
    request(org, request_id="late", region="sin", at=OCTOBER - timedelta(seconds=5), input_tokens=10_000,
            max_output_tokens=10_000, output_tokens=None)  # fmt: skip
    [empty] = _close(org, SEPTEMBER)
    assert (empty.created, empty.invoices) == (True, [])
    late = services.hold_settle(request_id="late", input_tokens=10_000, output_tokens=9_000, api_key_id=None,
                                at=OCTOBER + timedelta(minutes=1))  # fmt: skip
    [october] = _close(org, OCTOBER)
    [invoice] = october.invoices
    assert list(invoicing.period_entries(period=october.period)) == [late]
    lines = InvoiceLine.objects.unscoped_all_orgs().filter(invoice=invoice)
    assert {line.usage_month for line in lines} == {SEPTEMBER.date()}


def test_invoices_are_written_once_and_move_through_audited_states(world: None) -> None:
    org = _org("SG", currency="SGD")
    _use(org, SEPTEMBER + timedelta(days=1), "states")
    [closed] = _close(org, SEPTEMBER, finalize=False)
    [draft] = closed.invoices
    assert (draft.status, draft.number) == ("draft", "")
    assert not invoicing.invoices_list(organization=org).exists()  # drafts stay with the operators
    with pytest.raises(Conflict):
        invoicing.invoice_mark_paid(actor=ACTOR, invoice=draft, reference="wire 1")
    final = invoicing.invoice_finalize(actor=ACTOR, invoice=draft)
    assert final.number == f"INV-202609-{final.pk:07d}"
    assert list(invoicing.invoices_list(organization=org)) == [final]
    with pytest.raises(Conflict):
        invoicing.invoice_finalize(actor=ACTOR, invoice=final)
    with pytest.raises(ValidationFailed):
        invoicing.invoice_void(actor=ACTOR, invoice=final, reason=" ")
    paid = invoicing.invoice_mark_paid(actor=ACTOR, invoice=final, reference="wire 2026-10-03")
    assert (paid.status, paid.status_note) == ("paid", "wire 2026-10-03")
    with pytest.raises(Conflict):
        invoicing.invoice_void(actor=ACTOR, invoice=paid, reason="too late")
    actions = list(AuditEvent.objects.unscoped_all_orgs().filter(target_type="Invoice", target_id=str(final.pk))
                   .order_by("pk").values_list("action", flat=True))  # fmt: skip
    assert actions == ["invoice.finalized", "invoice.paid"]
    # The database refuses to change what an invoice says, or to delete it and its lines.
    invoices = Invoice.objects.unscoped_all_orgs().filter(pk=final.pk)
    for change in ({"total_micros": 1, "subtotal_micros": 1}, {"number": "INV-OTHER"}, {"tax_micros": 0}):
        with pytest.raises(IntegrityError), transaction.atomic():
            invoices.update(**change)
    with pytest.raises(IntegrityError), transaction.atomic():
        invoices.delete()
    with pytest.raises(IntegrityError), transaction.atomic():
        InvoiceLine.objects.unscoped_all_orgs().filter(invoice=final).update(amount_micros=0)
    with pytest.raises(IntegrityError), transaction.atomic():
        BillingPeriod.objects.unscoped_all_orgs().filter(pk=final.period_id).update(entry_id_max=0)
    assert invoices.update(status_note="reference corrected") == 1  # positive control: status fields may change


def test_void_needs_a_finalised_invoice(world: None) -> None:
    org = _org("SG", currency="SGD")
    _use(org, SEPTEMBER + timedelta(days=1), "void")
    [closed] = _close(org, SEPTEMBER)
    voided = invoicing.invoice_void(actor=ACTOR, invoice=closed.invoices[0], reason="duplicate account")
    assert (voided.status, voided.status_note) == ("void", "duplicate account")
    assert voided.voided_at is not None


def test_credits_pay_what_grants_covered(world: None) -> None:
    prepaid = _org("SG", currency="SGD", mode="prepaid")
    make_grant(prepaid, "100.00")
    for index in range(3):
        _use(prepaid, SEPTEMBER + timedelta(days=index + 1), f"pre-{index}")
    [closed] = _close(prepaid, SEPTEMBER)
    [invoice] = closed.invoices
    assert invoice.credits_micros == invoice.subtotal_micros > 0
    assert (invoice.tax_micros, invoice.total_micros) == (0, 0)
    # A request that cost more than its hold (more tokens than reserved) is paid partly by the grant (what is
    # left of it) and partly receivable: credits are the grant's part, rounded once; the rest is due with tax.
    small = _org("SG", currency="SGD", mode="prepaid")
    make_grant(small, "0.50")
    request(small, request_id="over", region="dxb", at=SEPTEMBER + timedelta(days=2), input_tokens=10_000,
            max_output_tokens=10_000, output_tokens=None)  # fmt: skip
    entry = services.hold_settle(request_id="over", input_tokens=10_000, output_tokens=200_000, api_key_id=None,
                                 at=SEPTEMBER + timedelta(days=2, seconds=3))  # fmt: skip
    [closed] = _close(small, SEPTEMBER)
    [invoice] = closed.invoices
    grant = CreditGrant.objects.unscoped_all_orgs().get(organization=small)
    assert 0 < grant.consumed_micros < entry.amount_micros
    assert invoice.credits_micros == 500_000  # 0.50 SGD: the whole grant
    assert invoice.total_micros == invoice.subtotal_micros - 500_000 + invoice.tax_micros > 0


def test_csv_and_json_exports_add_up(world: None) -> None:
    org = _org("AE", currency="AED")
    for index, region in enumerate(("dxb", "ruh", "fra")):
        request(org, request_id=f"x-{index}", region=region, at=SEPTEMBER + timedelta(days=index), input_tokens=70_001,
                max_output_tokens=90_000, output_tokens=33_333)  # fmt: skip
    [closed] = _close(org, SEPTEMBER)
    [invoice] = closed.invoices
    document = invoicing.invoice_document(invoice=invoice)
    assert document["number"] == invoice.number
    assert len(document["lines"]) == 6  # three regions, input and output
    assert sum(Decimal(line["amount"]) for line in document["lines"]) == Decimal(document["subtotal"])
    total = Decimal(document["subtotal"]) - Decimal(document["credits"]) + Decimal(document["tax"]["amount"])
    assert total == Decimal(document["total"])
    assert document["tax"] == {"name": "VAT", "rate_percent": "5", "reverse_charge": False, "note": "",
                               "amount": document["tax"]["amount"]}  # fmt: skip
    rows = list(csv.reader(io.StringIO(invoicing.invoice_csv(invoice=invoice))))
    assert rows[0] == list(invoicing.CSV_HEADER)
    lines, summary = rows[1:7], {row[3]: row[8] for row in rows[7:]}
    assert sum(Decimal(row[8]) for row in lines) == Decimal(summary["subtotal"])
    assert {row[4] for row in lines} == {"dxb", "ruh", "fra"}
    assert all(row[5] in {"input", "output"} and row[9] == "AED" and row[2] == "2026-09" for row in lines)
    assert summary["total"] == document["total"]
    assert summary["tax: VAT 5%"] == document["tax"]["amount"]


def test_the_close_reads_a_watermark_under_the_organisations_lock(world: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry written after the watermark is read (a settlement that queued behind the close's lock) is not
    on the closed month's invoice, though it was admitted in that month: it is on the next one."""
    org = _org("SG", currency="SGD")
    _use(org, SEPTEMBER + timedelta(days=1), "before")
    request(org, request_id="queued", region="dxb", at=SEPTEMBER + timedelta(days=2), input_tokens=5_000,
            max_output_tokens=5_000, output_tokens=None)  # fmt: skip
    original = invoicing._watermark

    def watermark_then_settle(*, organization_id: int) -> int:
        mark = original(organization_id=organization_id)
        services.hold_settle(request_id="queued", input_tokens=5_000, output_tokens=10, api_key_id=None,
                             at=OCTOBER)  # fmt: skip
        return mark

    monkeypatch.setattr(invoicing, "_watermark", watermark_then_settle)
    [closed] = _close(org, SEPTEMBER)
    monkeypatch.undo()
    assert [entry.request_id for entry in invoicing.period_entries(period=closed.period)] == ["before"]
    [october] = _close(org, OCTOBER)
    assert [entry.request_id for entry in invoicing.period_entries(period=october.period)] == ["queued"]


def test_credits_rule_by_example() -> None:
    # Grants paid for everything: the whole subtotal, even where rounding each line lifted it above the ledger.
    assert invoicing.credits_applied(credit_micros=30_000, ledger_micros=30_000, subtotal_micros=40_000,
                                     currency="USD") == 40_000  # fmt: skip
    # Nothing from grants: no credits, whatever the rounding.
    assert invoicing.credits_applied(credit_micros=0, ledger_micros=30_000, subtotal_micros=40_000,
                                     currency="USD") == 0  # fmt: skip
    # Partly: the grants' part rounded once half-even (0.015 -> 0.02), never above the subtotal.
    assert invoicing.credits_applied(credit_micros=15_000, ledger_micros=30_000, subtotal_micros=40_000,
                                     currency="USD") == 20_000  # fmt: skip
    assert invoicing.credits_applied(credit_micros=25_000, ledger_micros=30_000, subtotal_micros=20_000,
                                     currency="USD") == 20_000  # fmt: skip
    assert invoicing.tax_amount(taxable_micros=1_050_000, percent=Decimal(9), currency="SGD") == 90_000  # 0.0945
    assert invoicing.tax_amount(taxable_micros=1_250_000, percent=Decimal(2), currency="SGD") == 20_000  # 0.025


def test_the_monthly_close_of_many_organisations_is_one_pass_and_agrees_with_closing_one(world: None) -> None:
    orgs = [_org("SG", currency="SGD"), _org("AE", currency="AED"), _org("US"), _org("DE", currency="EUR")]
    for index, org in enumerate(orgs):
        _use(org, SEPTEMBER + timedelta(days=index + 1), f"sep-{index}")
        _close(org, SEPTEMBER)
        request(org, request_id=f"late-{index}", region="sin", at=OCTOBER - timedelta(seconds=9), input_tokens=4_000,
                max_output_tokens=4_000, output_tokens=None)  # fmt: skip
        services.hold_settle(request_id=f"late-{index}", input_tokens=4_000, output_tokens=3_000, api_key_id=None,
                             at=OCTOBER + timedelta(minutes=5))  # fmt: skip
        for day in range(3):
            _use(org, OCTOBER + timedelta(days=day, hours=index), f"oct-{index}-{day}")
    [alone] = _close(orgs[0], OCTOBER)  # one organisation on its own
    with CaptureQueriesContext(connection) as queries:
        report = invoicing.invoices_close_all(actor=ACTOR, month=OCTOBER.date(), finalize=True)
    grouped = [
        q["sql"]
        for q in queries.captured_queries
        if 'FROM "billing_ledgerentry"' in q["sql"] and "GROUP BY" in q["sql"]
    ]
    assert len(grouped) == 1  # the three others together, though their last months closed separately
    assert sorted((r.period.organization_id, r.created) for r in report.closed) == sorted(
        [(orgs[0].pk, False), *((org.pk, True) for org in orgs[1:])]
    )
    for org in orgs:
        [invoice] = Invoice.objects.unscoped_all_orgs().filter(organization=org, period_start=OCTOBER.date())
        covered = list(invoicing.period_entries(period=invoice.period))
        assert sorted(entry.request_id for entry in covered) == sorted(
            [f"late-{orgs.index(org)}", *(f"oct-{orgs.index(org)}-{day}" for day in range(3))]
        )
        digits = money.minor_units(invoice.currency)
        lines = {(f"{line.usage_month:%Y-%m}", line.region, line.token_kind): (line.tokens, line.amount_micros)
                 for line in InvoiceLine.objects.unscoped_all_orgs().filter(invoice=invoice)}  # fmt: skip
        assert lines == expected_lines(covered, minor_digits=digits)
    assert alone.invoices[0].organization_id == orgs[0].pk
    assert reconcile().clean
