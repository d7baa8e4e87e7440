"""I4 invoices: a month of usage across the eight regions in seven currencies closes into invoices that equal
their ledger entries to the smallest currency unit; the independent reconciliation prints zero, and reports
the difference (exit non-zero) once one ledger row is altered directly in the database. Late settlements
land on the next invoice and never change a finalised one."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from billing import services
from billing.models import Invoice, InvoiceLine
from billing.reconcile import reconcile
from controlplane.core import money
from controlplane.core.regions import REGION_CODES
from controlplane.core.services import Actor
from tenants.models import Organization
from tests.billing.world import CUSTOMERS, customer, expected_lines, price_world, random_usage, request

pytestmark = pytest.mark.django_db

SEPTEMBER = datetime(2026, 9, 1, tzinfo=UTC)
OCTOBER = datetime(2026, 10, 1, tzinfo=UTC)
ACTOR = Actor.system("tests")


def _invoice(org: Organization, month: datetime) -> Invoice:
    invoice: Invoice = Invoice.objects.unscoped_all_orgs().get(organization=org, period_start=month.date())
    return invoice


def _lines(invoice: Invoice) -> dict[tuple[str, str, str], tuple[int, int]]:
    return {
        (f"{line.usage_month:%Y-%m}", line.region, line.token_kind): (line.tokens, line.amount_micros)
        for line in InvoiceLine.objects.unscoped_all_orgs().filter(invoice=invoice)
    }


def _reconcile_output() -> tuple[str, str | None]:
    out = StringIO()
    try:
        call_command("billing_reconcile", stdout=out)
    except CommandError as exc:
        return out.getvalue(), str(exc)
    return out.getvalue(), None


def _alter_ledger_row(pk: int, *, add_micros: int) -> None:
    """What a bad actor or a bug with database access could do: the append-only guard is switched off."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # the checks of what was written so far run now
        cursor.execute("SET session_replication_role = replica")  # triggers off for this session
        cursor.execute("UPDATE billing_ledgerentry SET amount_micros = amount_micros + %s WHERE id = %s",
                       [add_micros, pk])  # fmt: skip
        cursor.execute("SET session_replication_role = DEFAULT")


def test_a_month_across_eight_regions_and_seven_currencies_reconciles_to_the_minor_unit() -> None:
    price_world()
    orgs = [customer(spec) for spec in CUSTOMERS]
    rng = random.Random(20260901)
    september = random_usage(rng, orgs, start=SEPTEMBER, days=30, count=224, prefix="sep")
    assert {entry.region for entry in september} == set(REGION_CODES)
    # Requests admitted in the last minute of September: one settles before the close, one after it.
    last_minute = OCTOBER - timedelta(seconds=30)
    on_time = request(orgs[0], request_id="sep-on-time", region="fra", at=last_minute, input_tokens=700,
                      max_output_tokens=300, output_tokens=250)  # fmt: skip
    assert on_time is not None
    request(orgs[0], request_id="sep-late", region="fra", at=last_minute, input_tokens=900, max_output_tokens=300,
            output_tokens=None)  # fmt: skip
    october_early = random_usage(rng, orgs, start=OCTOBER, days=2, count=14, prefix="oct-early")

    out = StringIO()
    call_command("invoice_close", month="2026-09", finalize=True, stdout=out)
    assert out.getvalue().count("closed, invoice INV-202609-") == len(CUSTOMERS), out.getvalue()

    for org, spec in zip(orgs, CUSTOMERS, strict=True):
        invoice = _invoice(org, SEPTEMBER)
        covered = [entry for entry in [*september, on_time] if entry.organization_id == org.pk]
        digits = money.minor_units(spec.currency)
        assert (invoice.status, invoice.currency) == ("finalized", spec.currency)
        assert invoice.entry_count == len(covered)
        assert invoice.ledger_micros == sum(entry.amount_micros for entry in covered)
        # Each line is its entries' exact sum rounded once, half-even, to the minor unit: recomputed here with
        # Decimal.quantize from the ledger rows.
        assert _lines(invoice) == expected_lines(covered, minor_digits=digits)
        step = money.micros_per_minor_unit(spec.currency)
        lines = list(InvoiceLine.objects.unscoped_all_orgs().filter(invoice=invoice))
        assert all(line.amount_micros % step == 0 for line in lines)
        assert invoice.subtotal_micros == sum(line.amount_micros for line in lines)
        # Rounding once per line moves the subtotal at most half a minor unit per line from the ledger.
        assert abs(invoice.subtotal_micros - invoice.ledger_micros) * 2 <= step * len(lines)
        if spec.mode == "prepaid":
            assert invoice.credits_micros == invoice.subtotal_micros  # the grants paid for everything
        else:
            assert invoice.credits_micros == 0
        if spec.tax_id:
            assert (invoice.reverse_charge, invoice.tax_rate_percent, invoice.tax_micros) == (True, Decimal(0), 0)
            assert "Reverse charge" in invoice.tax_note
        else:
            taxable = invoice.subtotal_micros - invoice.credits_micros
            exact_tax = Decimal(taxable) * invoice.tax_rate.rate_percent / 100  # type: ignore[union-attr]  # set
            assert abs(invoice.tax_micros - exact_tax) * 2 <= step
            assert invoice.tax_rate_percent == invoice.tax_rate.rate_percent  # type: ignore[union-attr]  # set
        assert invoice.total_micros == invoice.subtotal_micros - invoice.credits_micros + invoice.tax_micros

    stdout, error = _reconcile_output()
    assert error is None, stdout
    assert "every difference 0" in stdout
    assert len(reconcile().rows) == len(CUSTOMERS)

    # The late settlement goes to October's invoice; September's stays exactly as issued.
    september_invoice = _invoice(orgs[0], SEPTEMBER)
    before = (september_invoice.total_micros, _lines(september_invoice))
    late = services.hold_settle(request_id="sep-late", input_tokens=900, output_tokens=120, api_key_id=None,
                                at=OCTOBER + timedelta(hours=1))  # fmt: skip
    september_invoice.refresh_from_db()
    assert (september_invoice.total_micros, _lines(september_invoice)) == before
    call_command("invoice_close", month="2026-10", finalize=True, stdout=StringIO())
    october_invoice = _invoice(orgs[0], OCTOBER)
    october_covered = [late, *(entry for entry in october_early if entry.organization_id == orgs[0].pk)]
    assert october_invoice.entry_count == len(october_covered)
    assert _lines(october_invoice) == expected_lines(october_covered, minor_digits=2)
    assert ("2026-09", "fra", "output") in _lines(october_invoice)  # September's late usage, on October's bill
    stdout, error = _reconcile_output()
    assert error is None, stdout

    # One ledger row altered directly in the database: reported for its organisation and currency only.
    victim = next(entry for entry in september if entry.organization_id == orgs[1].pk)
    _alter_ledger_row(victim.pk, add_micros=10_000)
    stdout, error = _reconcile_output()
    assert error == "reconciliation found differences: aed-ae/AED", stdout
    cells = {row.split()[0]: row for row in stdout.splitlines()[1:]}  # one row per organisation and currency
    assert set(cells) == {spec.slug for spec in CUSTOMERS}
    assert cells["aed-ae"].split()[2:] == ["0.01", "[1]", "-0.01", "[1]", "-0.01", "[1]", "-0.01", "[1]", "0", "0", "0"]
    for slug, row in cells.items():
        if slug != "aed-ae":
            assert row.split()[2:] == ["0"] * 7, row
