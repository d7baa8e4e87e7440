"""I4/I5: the ledger is append-only, one entry per request id, balanced double entry, and a
reconciliation that recomputes it independently finds any disagreement."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from billing import selectors, services
from billing.models import CreditGrant, CreditHold, LedgerEntry, LedgerPosting
from tests.factories import make_grant, make_hold, make_org

pytestmark = pytest.mark.django_db


def _settled(org: Any, request_id: str, input_tokens: int = 100, output_tokens: int = 100) -> LedgerEntry:
    make_hold(org, request_id=request_id)
    return services.hold_settle(
        request_id=request_id,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        api_key_id=None,
        at=timezone.now(),
    )


def _raw_delete_entry(pk: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM billing_ledgerentry WHERE id = %s", [pk])


def _check_deferred_now() -> None:
    """Run the deferred constraint triggers now (a test's transaction never commits)."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def test_prepaid_entry_debits_the_grant_and_credits_revenue(prices: object) -> None:
    org = make_org()
    grant = make_grant(org, "1.00")
    entry = _settled(org, "ok", 100, 100)  # 300 micros
    postings = LedgerPosting.objects.unscoped_all_orgs().filter(entry=entry).order_by("pk")
    assert [(p.account, p.grant_id, p.debit_micros, p.credit_micros) for p in postings] == [
        ("customer_credit", grant.pk, 300, 0),
        ("revenue", None, 0, 300),
    ]
    _check_deferred_now()  # the balance triggers accept it


def test_ledger_rows_are_append_only(prices: object) -> None:
    org = make_org(billing_mode="postpaid")
    entry = _settled(org, "frozen")
    posting = LedgerPosting.objects.unscoped_all_orgs().filter(entry=entry).first()
    assert posting is not None
    attempts: list[Callable[[], object]] = [
        lambda: LedgerEntry.objects.unscoped_all_orgs().filter(pk=entry.pk).update(amount_micros=1),
        lambda: LedgerPosting.objects.unscoped_all_orgs().filter(pk=posting.pk).update(debit_micros=1),
        lambda: LedgerPosting.objects.unscoped_all_orgs().filter(pk=posting.pk).delete(),
        # Below the ORM (which also refuses: the postings protect their entry), the database refuses.
        lambda: _raw_delete_entry(entry.pk),
    ]
    for attempt in attempts:
        with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
            attempt()
    with pytest.raises(IntegrityError, match="protected foreign keys"), transaction.atomic():
        LedgerEntry.objects.unscoped_all_orgs().filter(pk=entry.pk).delete()
    entry.refresh_from_db()
    assert entry.amount_micros == 300
    # Positive control: the hold next to it is an ordinary row that can change.
    assert CreditHold.objects.unscoped_all_orgs().filter(pk=entry.hold_id).update(release_reason="note") == 1


def test_one_entry_per_request_id_is_a_database_constraint(prices: object) -> None:
    org = make_org(billing_mode="postpaid")
    entry = _settled(org, "unique")
    other_hold = make_hold(org, request_id="unique-2")
    fields = {
        f.attname: getattr(entry, f.attname)
        for f in LedgerEntry._meta.concrete_fields
        if f.attname not in {"id", "hold_id", "created_at", "updated_at"}
    }
    with pytest.raises(IntegrityError), transaction.atomic():
        LedgerEntry.objects.unscoped_all_orgs().create(**{**fields, "hold_id": other_hold.pk})
    # Positive control: the same row with its own request id is accepted (and balanced by its postings).
    created = LedgerEntry.objects.unscoped_all_orgs().create(
        **{**fields, "hold_id": other_hold.pk, "request_id": "unique-2", "amount_micros": 0, "usd_amount": 0}
    )
    assert created.pk != entry.pk
    _check_deferred_now()


def test_an_unbalanced_entry_is_refused_at_commit(prices: object) -> None:
    org = make_org(billing_mode="postpaid")
    hold = make_hold(org, request_id="bad")
    entry = LedgerEntry.objects.unscoped_all_orgs().create(
        organization=org,
        request_id="bad",
        hold=hold,
        model_name=hold.model_name,
        region=hold.region,
        input_tokens=1000,
        output_tokens=1000,
        input_price_id=hold.input_price_id,
        output_price_id=hold.output_price_id,
        input_usd_per_million=hold.input_usd_per_million,
        output_usd_per_million=hold.output_usd_per_million,
        fx_per_usd=hold.fx_per_usd,
        currency="USD",
        usd_amount="0.003",
        amount_micros=3000,
        admitted_at=hold.admitted_at,
        settled_at=timezone.now(),
    )
    LedgerPosting.objects.unscoped_all_orgs().create(
        organization=org, entry=entry, account="accounts_receivable", debit_micros=3000
    )
    with transaction.atomic():
        LedgerPosting.objects.unscoped_all_orgs().create(
            organization=org, entry=entry, account="revenue", credit_micros=2999
        )
        with pytest.raises(IntegrityError, match="unbalanced"), transaction.atomic():
            _check_deferred_now()
        transaction.set_rollback(True)
    # Positive control: with the matching credit the same entry passes the same check.
    LedgerPosting.objects.unscoped_all_orgs().create(
        organization=org, entry=entry, account="revenue", credit_micros=3000
    )
    _check_deferred_now()


def test_a_grant_cannot_be_overdrawn_even_by_a_direct_write(prices: object) -> None:
    org = make_org()
    grant = make_grant(org, "0.01")  # 10000 micros
    make_hold(org)  # 3000 held
    grants = CreditGrant.objects.unscoped_all_orgs().filter(pk=grant.pk)
    with pytest.raises(IntegrityError), transaction.atomic():
        grants.update(consumed_micros=7001)
    assert grants.update(consumed_micros=7000) == 1  # positive control: exactly the grant is fine


def test_reconciliation_is_clean_and_finds_tampering(prices: object) -> None:
    org = make_org()
    postpaid = make_org(billing_mode="postpaid")
    grant = make_grant(org, "1.00")
    _settled(org, "a", 10, 20)
    _settled(org, "b", 1000, 0)
    make_hold(org, request_id="open")
    make_hold(org, request_id="freed")
    services.hold_release(request_id="freed", reason="test")
    _settled(postpaid, "p", 5, 5)
    assert selectors.ledger_reconcile(organization=org) == []
    assert selectors.ledger_reconcile(organization=postpaid) == []
    CreditGrant.objects.unscoped_all_orgs().filter(pk=grant.pk).update(consumed_micros=1, held_micros=2)
    problems = selectors.ledger_reconcile(organization=org)
    assert problems == [
        f"grant {grant.pk}: consumed 1 != postings 1050",
        f"grant {grant.pk}: held 2 != open allocations 3000",
    ]
    assert selectors.ledger_reconcile(organization=postpaid) == []
