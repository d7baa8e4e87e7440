"""I4: the ledger write path's references, checked per statement instead of by foreign keys (migration 0007).

A hold's organisation, prices and FX rate must exist and never change; an entry carries its hold's and has
its hold; its postings carry its organisation, belong to an entry that exists and draw on that
organisation's grants; a referenced row cannot be deleted. The deferred ledger check verifies the entries'
part at commit with the balance, for a single settlement and for a batch alike. These tests write rows
directly (as a buggy service or a hand-written SQL fix would) and expect the refusal, each with a positive
control that passes the same check."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction

from billing.models import CreditGrant, CreditHold, FxRate, LedgerEntry, LedgerPosting, PriceBookEntry
from tests.billing.test_settle_sql import _check_deferred_now, _one, _unposted_entry
from tests.factories import BILLING_EPOCH, make_fx, make_grant, make_hold, make_org, make_prices

pytestmark = pytest.mark.django_db


def _balanced(org_id: int, entry: LedgerEntry) -> list[LedgerPosting]:
    return [
        LedgerPosting(organization_id=org_id, entry=entry, account="accounts_receivable", debit_micros=3000),
        LedgerPosting(organization_id=org_id, entry=entry, account="revenue", credit_micros=3000),
    ]


def _entries_with_balanced_postings(org_id: int, holds: list[CreditHold]) -> None:
    entries = LedgerEntry.objects.unscoped_all_orgs().bulk_create([_unposted_entry(hold) for hold in holds])
    LedgerPosting.objects.unscoped_all_orgs().bulk_create(
        [posting for entry in entries for posting in _balanced(org_id, entry)]
    )


def _other_price(hold: CreditHold) -> int:
    other: PriceBookEntry = make_prices(model_name="other-model", region=hold.region)[0]
    return int(other.pk)


ASTRAY: dict[str, Callable[[CreditHold], dict[str, Any]]] = {
    "organisation": lambda hold: {"organization_id": make_org(billing_mode="postpaid").pk},
    "input price": lambda hold: {"input_price_id": _other_price(hold)},
    "output price": lambda hold: {"output_price_id": _other_price(hold)},
    "FX rate": lambda hold: {"fx_rate_id": make_fx("AED", "3.6725").pk},
}


@pytest.mark.parametrize("batch", [False, True], ids=["one entry", "a batch"])
@pytest.mark.parametrize("field", list(ASTRAY))
def test_an_entry_that_does_not_carry_its_holds_references_is_refused(prices: object, field: str, batch: bool) -> None:
    org = make_org(billing_mode="postpaid")
    holds = [make_hold(org) for _ in range(3 if batch else 1)]
    with transaction.atomic():
        entries = [_unposted_entry(hold) for hold in holds]
        wrong = entries[len(entries) // 2]
        for name, value in ASTRAY[field](holds[len(holds) // 2]).items():
            setattr(wrong, name, value)
        entries = LedgerEntry.objects.unscoped_all_orgs().bulk_create(entries)
        postings = [posting for entry in entries for posting in _balanced(entry.organization_id, entry)]
        LedgerPosting.objects.unscoped_all_orgs().bulk_create(postings)
        match = f"ledger entry {wrong.pk} does not carry its hold's organisation, prices and FX rate"
        with pytest.raises(IntegrityError, match=match), transaction.atomic():
            _check_deferred_now()
        transaction.set_rollback(True)
    # Positive control: the same rows with the hold's references pass.
    _entries_with_balanced_postings(org.pk, holds)
    _check_deferred_now()


@pytest.mark.parametrize("batch", [False, True], ids=["one entry", "a batch"])
def test_a_posting_of_another_organisation_is_refused(prices: object, batch: bool) -> None:
    org, stranger = make_org(billing_mode="postpaid"), make_org(billing_mode="postpaid")
    holds = [make_hold(org) for _ in range(3 if batch else 1)]
    with transaction.atomic():
        entries = LedgerEntry.objects.unscoped_all_orgs().bulk_create([_unposted_entry(hold) for hold in holds])
        postings = [posting for entry in entries for posting in _balanced(org.pk, entry)]
        postings[-1].organization_id = stranger.pk
        LedgerPosting.objects.unscoped_all_orgs().bulk_create(postings)
        with (
            pytest.raises(IntegrityError, match=f"ledger entry {entries[-1].pk} has postings of another organisation"),
            transaction.atomic(),
        ):
            _check_deferred_now()
        transaction.set_rollback(True)
    # Positive control.
    _entries_with_balanced_postings(org.pk, holds)
    _check_deferred_now()


def test_postings_written_after_their_entry_was_checked_are_checked_again(prices: object) -> None:
    """The postings of a just-written entry ride on that entry's pending check; once it has run, they cannot."""
    org = make_org(billing_mode="postpaid")
    entry = _unposted_entry(make_hold(org))
    entry.amount_micros, entry.usd_amount = 0, 0
    with transaction.atomic():
        entry.save()
        _check_deferred_now()  # a zero entry without postings balances: checked, and its record cleared
        # (checks now run at once in this transaction, so the refusal comes with the write)
        with pytest.raises(IntegrityError, match=f"ledger entry {entry.pk} is unbalanced"), transaction.atomic():
            LedgerPosting.objects.unscoped_all_orgs().create(
                organization_id=org.pk, entry=entry, account="accounts_receivable", debit_micros=5
            )
        transaction.set_rollback(True)
    assert _one("SELECT count(*) FROM billing_ledger_unchecked", []) == (0,)


def test_a_settlement_records_one_check_and_leaves_nothing_behind(prices: object) -> None:
    """Its entry and postings share one pending check (not one each), and the check empties the table."""
    org = make_org(billing_mode="postpaid")
    hold = make_hold(org)
    with transaction.atomic():
        entry = LedgerEntry.objects.unscoped_all_orgs().create(**{
            field.attname: getattr(_unposted_entry(hold), field.attname)
            for field in LedgerEntry._meta.concrete_fields if field.attname != "id"
        })  # fmt: skip
        LedgerPosting.objects.unscoped_all_orgs().bulk_create(_balanced(org.pk, entry))
        assert _one("SELECT count(*) FROM billing_ledger_unchecked", []) == (1,)
        _check_deferred_now()
        assert _one("SELECT count(*) FROM billing_ledger_unchecked", []) == (0,)
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('billing.ledger_recorded', true)")
        assert cursor.fetchone()[0] in (None, "")


MISSING = 2**62  # an id no row has
LATER = BILLING_EPOCH + timedelta(days=1)


@pytest.mark.parametrize("field", ["organization_id", "input_price_id", "output_price_id", "fx_rate_id"])
def test_a_hold_must_refer_to_rows_that_exist(prices: object, field: str) -> None:
    org = make_org(billing_mode="postpaid")
    hold = make_hold(org)
    columns = {f.attname: getattr(hold, f.attname) for f in CreditHold._meta.concrete_fields if f.attname != "id"}
    with (
        pytest.raises(IntegrityError, match="refers to an organisation, price or FX rate that does not exist"),
        transaction.atomic(),
    ):
        CreditHold.objects.unscoped_all_orgs().create(**{**columns, "request_id": "dangling", field: MISSING})
    # Positive control: the same row with the real references is written.
    CreditHold.objects.unscoped_all_orgs().create(**{**columns, "request_id": "sound"})


@pytest.mark.parametrize("field", ["organization_id", "input_price_id", "fx_rate_id"])
def test_a_holds_references_never_change(prices: object, field: str) -> None:
    org = make_org(billing_mode="postpaid", billing_currency="AED")
    make_fx("AED", "3.6725")
    hold = make_hold(org)
    replacement = {
        "organization_id": make_org(billing_mode="postpaid").pk,
        "input_price_id": hold.output_price_id,
        "fx_rate_id": make_fx("AED", "3.7", effective_from=LATER).pk,
    }[field]
    holds = CreditHold.objects.unscoped_all_orgs().filter(pk=hold.pk)
    with (
        pytest.raises(IntegrityError, match=f"hold {hold.pk} keeps its organisation, prices and FX rate"),
        transaction.atomic(),
    ):
        holds.update(**{field: replacement})
    # Positive control: its status may change.
    holds.update(status="released", closed_at=hold.admitted_at)


def test_postings_of_an_entry_that_does_not_exist_are_refused(prices: object) -> None:
    org = make_org(billing_mode="postpaid")
    with transaction.atomic():
        LedgerPosting.objects.unscoped_all_orgs().create(
            organization_id=org.pk, entry_id=MISSING, account="accounts_receivable", debit_micros=5
        )
        with (
            pytest.raises(IntegrityError, match=f"postings of ledger entry {MISSING}, which does not exist"),
            transaction.atomic(),
        ):
            _check_deferred_now()
        transaction.set_rollback(True)


def test_an_entry_without_its_hold_is_refused(prices: object) -> None:
    org = make_org(billing_mode="postpaid")
    with transaction.atomic():
        entry = _unposted_entry(make_hold(org))
        entry.hold_id = MISSING
        entry.save()
        LedgerPosting.objects.unscoped_all_orgs().bulk_create(_balanced(org.pk, entry))
        with pytest.raises(IntegrityError, match=f"ledger entry {entry.pk} has no hold"), transaction.atomic():
            _check_deferred_now()
        transaction.set_rollback(True)


def test_a_posting_that_draws_on_another_organisations_grant_is_refused(prices: object) -> None:
    org, other = make_org(billing_mode="prepaid"), make_org(billing_mode="prepaid")
    own, foreign = make_grant(org), make_grant(other)
    hold = make_hold(org)
    for grant, refused in ((foreign, True), (own, False)):  # the second is the positive control
        with transaction.atomic():
            entry = LedgerEntry.objects.unscoped_all_orgs().create(**{
                field.attname: getattr(_unposted_entry(hold), field.attname)
                for field in LedgerEntry._meta.concrete_fields if field.attname != "id"
            })  # fmt: skip
            LedgerPosting.objects.unscoped_all_orgs().bulk_create([
                LedgerPosting(organization_id=org.pk, entry=entry, account="customer_credit", grant=grant,
                              debit_micros=3000),
                LedgerPosting(organization_id=org.pk, entry=entry, account="revenue", credit_micros=3000),
            ])  # fmt: skip
            if refused:
                match = f"ledger entry {entry.pk} has postings of another organisation or its grants"
                with pytest.raises(IntegrityError, match=match), transaction.atomic():
                    _check_deferred_now()
            else:
                _check_deferred_now()
            transaction.set_rollback(True)


def test_a_referenced_row_cannot_be_deleted(prices: object) -> None:
    org = make_org(billing_mode="prepaid", billing_currency="AED")
    rate = make_fx("AED", "3.6725")
    grant = make_grant(org)
    hold = make_hold(org)
    assert hold.fx_rate_id == rate.pk
    entry = LedgerEntry.objects.unscoped_all_orgs().create(**{
        field.attname: getattr(_unposted_entry(hold), field.attname)
        for field in LedgerEntry._meta.concrete_fields if field.attname != "id"
    } | {"fx_rate_id": rate.pk, "currency": "AED"})  # fmt: skip
    LedgerPosting.objects.unscoped_all_orgs().bulk_create([
        LedgerPosting(organization_id=org.pk, entry=entry, account="customer_credit", grant=grant, debit_micros=3000),
        LedgerPosting(organization_id=org.pk, entry=entry, account="revenue", credit_micros=3000),
    ])  # fmt: skip
    _check_deferred_now()
    referenced = {
        "tenants_organization": org.pk,
        "billing_pricebookentry": hold.input_price_id,
        "billing_fxrate": rate.pk,
        "billing_creditgrant": grant.pk,
        "billing_credithold": hold.pk,
    }
    for table, row_id in referenced.items():
        with (
            pytest.raises(IntegrityError, match=f"billing: {table} {row_id} is still referenced by"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(f"DELETE FROM {table} WHERE id = %s", [row_id])  # noqa: S608  # names from above
    # Positive control: rows nothing refers to can be deleted.
    spare_rate, spare_grant = make_fx("AED", "4.0", effective_from=LATER), make_grant(make_org())
    FxRate.objects.filter(pk=spare_rate.pk).delete()
    CreditGrant.objects.unscoped_all_orgs().filter(pk=spare_grant.pk).delete()
    assert not PriceBookEntry.objects.filter(pk=MISSING).exists()
