"""I4 money: holds reserve the most a request can cost, settlement bills it exactly once, release frees it.

Prices in these tests: $1.00 per million input tokens and $2.00 per million output tokens, so a
request of 1000 input tokens and at most 1000 output tokens costs at most 3000 USD micros ($0.003).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from billing import selectors, services
from billing.models import CreditGrant, CreditHold, FxRate, HoldAllocation, LedgerEntry, LedgerPosting, PriceBookEntry
from controlplane.core.errors import Conflict, NotFound, ServiceUnavailable, ValidationFailed
from controlplane.core.models import AuditEvent
from controlplane.core.scoping import org_scope
from tests.billing.conftest import MODEL, REGION
from tests.factories import TEST_ACTOR, make_fx, make_grant, make_hold, make_org, make_prices

pytestmark = pytest.mark.django_db

MAX_COST_USD_MICROS = 3000  # 1000 input + 1000 output tokens at $1/$2 per million


def _settle(request_id: str, input_tokens: int = 1000, output_tokens: int = 1000) -> LedgerEntry:
    return services.hold_settle(
        request_id=request_id,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        api_key_id=None,
        at=timezone.now(),
    )


def test_prepaid_holds_are_admitted_up_to_the_balance_and_then_refused(prices: object) -> None:
    org = make_org()
    make_grant(org, "0.03")  # 30000 micros: exactly ten holds of 3000
    admitted = [make_hold(org, request_id=f"r{i}") for i in range(10)]
    assert all(hold.amount_micros == MAX_COST_USD_MICROS for hold in admitted)
    assert selectors.balance_get(organization=org).available == 0
    with pytest.raises(services.InsufficientCredit) as refused:
        make_hold(org, request_id="r10")
    assert (refused.value.code, refused.value.http_status) == ("insufficient_credit", 402)
    assert refused.value.details == {"currency": "USD", "required_micros": 3000, "available_micros": 0}
    # A refusal writes nothing; the admitted ten are all there and hold the whole grant.
    assert not CreditHold.objects.unscoped_all_orgs().filter(request_id="r10").exists()
    balance = selectors.balance_get(organization=org)
    assert (balance.granted, balance.settled, balance.held, balance.available) == (30000, 0, 30000, 0)
    # Positive control: freeing one hold admits the next request.
    services.hold_release(request_id="r0", reason="client went away")
    assert make_hold(org, request_id="r10").status == CreditHold.Status.OPEN


def test_a_prepaid_organisation_without_credit_is_refused_and_a_postpaid_one_is_not(prices: object) -> None:
    prepaid, postpaid = make_org(billing_mode="prepaid"), make_org(billing_mode="postpaid")
    with pytest.raises(services.InsufficientCredit):
        make_hold(prepaid)
    hold = make_hold(postpaid, request_id="post-1")
    assert (hold.billing_mode, hold.amount_micros) == ("postpaid", MAX_COST_USD_MICROS)
    assert not HoldAllocation.objects.unscoped_all_orgs().filter(hold=hold).exists()
    balance = selectors.balance_get(organization=postpaid)
    assert (balance.held, balance.available) == (3000, -3000)
    entry = _settle("post-1", 10, 20)
    [receivable, revenue] = LedgerPosting.objects.unscoped_all_orgs().filter(entry=entry).order_by("pk")
    assert (receivable.account, receivable.debit_micros) == ("accounts_receivable", 50)
    assert (revenue.account, revenue.credit_micros) == ("revenue", 50)


def test_fx_conversion_holds_round_up_and_entries_round_half_even(prices: object, aed: FxRate) -> None:
    org = make_org(billing_currency="AED")
    make_grant(org, "1.00")
    # 200 input tokens at $1/M = 200 USD micros = 734.5 AED micros at 3.6725 AED per USD.
    hold = make_hold(org, request_id="fx-1", input_tokens=200, max_output_tokens=0)
    assert (hold.currency, hold.amount_micros, hold.fx_per_usd) == ("AED", 735, Decimal("3.6725"))
    assert hold.fx_rate_id == aed.pk
    entry = _settle("fx-1", 200, 0)
    assert (entry.currency, entry.amount_micros, entry.usd_amount) == ("AED", 734, Decimal("0.0002"))
    assert (entry.fx_rate_id, entry.fx_per_usd) == (aed.pk, Decimal("3.6725"))
    # 1000 + 1000 tokens: 3000 USD micros = 11017.5 AED micros; the tie goes to the even 11018.
    make_hold(org, request_id="fx-2")
    assert _settle("fx-2").amount_micros == 11018
    balance = selectors.balance_get(organization=org)
    assert (balance.currency, balance.settled, balance.held) == ("AED", 734 + 11018, 0)
    assert balance.available == 1_000_000 - 734 - 11018


def test_a_currency_without_a_rate_cannot_be_priced(prices: object) -> None:
    org = make_org(billing_currency="EUR", billing_mode="postpaid")
    with pytest.raises(ServiceUnavailable) as missing:
        make_hold(org)
    assert (missing.value.code, missing.value.http_status) == ("fx_unavailable", 503)
    make_fx("EUR", "0.92")  # positive control
    assert make_hold(org).amount_micros == 2760  # 3000 USD micros x 0.92


def test_no_price_in_force_is_price_unavailable(prices: object) -> None:
    org = make_org(billing_mode="postpaid")
    with pytest.raises(ServiceUnavailable) as missing:
        make_hold(org, region="fra")
    assert (missing.value.code, missing.value.http_status) == ("price_unavailable", 503)
    later = timezone.now() + timedelta(days=30)
    make_prices(region="fra", effective_from=later)
    with pytest.raises(ServiceUnavailable):
        make_hold(org, region="fra")  # a scheduled price is not in force yet
    assert make_hold(org, region="fra", at=later).region == "fra"  # positive control


def test_settlement_uses_the_prices_and_rate_recorded_at_admission(prices: object, aed: FxRate) -> None:
    org = make_org(billing_currency="AED")
    make_grant(org, "5.00")
    admitted_at = timezone.now()
    hold = make_hold(org, request_id="priced", at=admitted_at)
    # After admission the list price triples and the rate changes; the request keeps its prices.
    new_start = admitted_at + timedelta(seconds=1)
    make_prices(input_usd_per_million="3.00", output_usd_per_million="6.00", effective_from=new_start)
    make_fx("AED", "4.00", effective_from=new_start)
    entry = services.hold_settle(
        request_id="priced", input_tokens=1000, output_tokens=1000, api_key_id=7, at=new_start + timedelta(seconds=5)
    )
    assert entry.amount_micros == 11018
    assert (entry.input_price_id, entry.output_price_id) == (hold.input_price_id, hold.output_price_id)
    assert (entry.admitted_at, entry.api_key_id) == (admitted_at, 7)
    # Positive control: a request admitted now is priced with the new versions.
    make_hold(org, request_id="repriced", at=new_start + timedelta(seconds=5))
    assert _settle("repriced").amount_micros == 36000  # 9000 USD micros x 4.00


def test_settling_twice_gives_one_entry(prices: object) -> None:
    org = make_org()
    make_grant(org, "1.00")
    make_hold(org, request_id="once")
    first = _settle("once", 100, 200)
    second = _settle("once", 999, 999)  # a retry with other counts changes nothing
    assert second.pk == first.pk
    assert (second.input_tokens, second.output_tokens, second.amount_micros) == (100, 200, 500)
    assert LedgerEntry.objects.unscoped_all_orgs().filter(request_id="once").count() == 1
    assert LedgerPosting.objects.unscoped_all_orgs().filter(entry=first).count() == 2
    assert selectors.balance_get(organization=org).settled == 500


def test_settlement_frees_the_unused_part_of_the_hold(prices: object) -> None:
    org = make_org()
    grant = make_grant(org, "0.01")  # 10000 micros
    make_hold(org, request_id="partial")
    assert selectors.balance_get(organization=org).available == 7000
    entry = _settle("partial", 100, 100)  # 300 micros of the 3000 held
    assert entry.amount_micros == 300
    grant.refresh_from_db()
    assert (grant.consumed_micros, grant.held_micros) == (300, 0)
    balance = selectors.balance_get(organization=org)
    assert (balance.settled, balance.held, balance.available) == (300, 0, 9700)
    hold = CreditHold.objects.unscoped_all_orgs().get(request_id="partial")
    assert (hold.status, hold.closed_at is not None) == ("captured", True)
    assert selectors.ledger_reconcile(organization=org) == []


def test_release_is_idempotent_and_bills_nothing(prices: object) -> None:
    org = make_org()
    make_grant(org, "0.01")
    make_hold(org, request_id="gone")
    services.hold_release(request_id="gone", reason="worker failed 3 times")
    services.hold_release(request_id="gone", reason="again")
    services.hold_release(request_id="never-placed", reason="refused before the hold")
    hold = CreditHold.objects.unscoped_all_orgs().get(request_id="gone")
    assert (hold.status, hold.release_reason) == ("released", "worker failed 3 times")
    assert not LedgerEntry.objects.unscoped_all_orgs().exists()
    assert selectors.balance_get(organization=org).available == 10000
    with pytest.raises(Conflict) as conflict:
        _settle("gone")
    assert conflict.value.code == "hold_released"
    with pytest.raises(NotFound):
        _settle("never-placed")
    # Positive control: a settled hold stays settled when a late release arrives.
    make_hold(org, request_id="kept")
    entry = _settle("kept")
    services.hold_release(request_id="kept", reason="late reaper")
    assert CreditHold.objects.unscoped_all_orgs().get(request_id="kept").status == "captured"
    assert LedgerEntry.objects.unscoped_all_orgs().get(request_id="kept").pk == entry.pk
    assert selectors.balance_get(organization=org).available == 7000


def test_grants_burn_by_priority_then_expiry_then_age(prices: object) -> None:
    org = make_org()
    now = timezone.now()
    late = make_grant(org, "0.02", priority=5)  # 20000 micros, spent last
    never = make_grant(org, "0.02", priority=1)  # 20000 micros, no expiry: after `soon`
    soon = make_grant(org, "0.01", priority=1, expires_at=now + timedelta(days=1))  # 10000 micros: first
    hold = make_hold(org, request_id="burn", input_tokens=10_000, max_output_tokens=10_000)  # 30000 micros
    allocations = list(HoldAllocation.objects.unscoped_all_orgs().filter(hold=hold).order_by("pk"))
    assert [(a.grant_id, a.amount_micros) for a in allocations] == [(soon.pk, 10000), (never.pk, 20000)]
    _settle("burn", 10_000, 5_000)  # 20000 micros
    consumed = dict(CreditGrant.objects.unscoped_all_orgs().values_list("pk", "consumed_micros"))
    assert consumed == {soon.pk: 10000, never.pk: 10000, late.pk: 0}
    postings = LedgerPosting.objects.unscoped_all_orgs().filter(account="customer_credit").order_by("pk")
    assert [(p.grant_id, p.debit_micros) for p in postings] == [(soon.pk, 10000), (never.pk, 10000)]
    assert selectors.ledger_reconcile(organization=org) == []


def test_expired_grants_are_not_spent(prices: object) -> None:
    org = make_org()
    now = timezone.now()
    make_grant(org, "0.01", expires_at=now + timedelta(hours=1))
    with pytest.raises(services.InsufficientCredit):
        make_hold(org, at=now + timedelta(hours=2))
    assert selectors.balance_get(organization=org, at=now + timedelta(hours=2)).granted == 0
    assert make_hold(org, at=now).amount_micros == 3000  # positive control: before the expiry


def test_a_cost_above_the_hold_draws_free_credit_then_receivable(prices: object) -> None:
    org = make_org()
    grant = make_grant(org, "0.04")  # 40000 micros
    make_hold(org, request_id="short", input_tokens=10_000, max_output_tokens=0)  # 10000 held
    make_hold(org, request_id="other", input_tokens=20_000, max_output_tokens=0)  # 20000 held
    # The engine reports more than was reserved: 10000 + 10000 tokens = 30000 micros.
    entry = _settle("short", 10_000, 10_000)
    assert entry.amount_micros == 30000
    grant.refresh_from_db()
    # 10000 from the hold, 10000 free credit; the other hold's 20000 stay reserved; 10000 to receivable.
    assert (grant.consumed_micros, grant.held_micros) == (20000, 20000)
    with org_scope(org.pk):
        postings = {p.account: p.debit_micros or p.credit_micros for p in entry.postings.all()}
    assert postings == {"customer_credit": 20000, "accounts_receivable": 10000, "revenue": 30000}
    assert selectors.balance_get(organization=org).available == 0
    assert selectors.ledger_reconcile(organization=org) == []


def test_the_same_request_id_is_one_hold(prices: object) -> None:
    org, other = make_org(), make_org()
    make_grant(org, "1.00")
    make_grant(other, "1.00")
    first = make_hold(org, request_id="dup")
    again = make_hold(org, request_id="dup")
    assert again.pk == first.pk
    assert selectors.balance_get(organization=org).held == 3000  # reserved once
    with pytest.raises(Conflict) as conflict:
        make_hold(other, request_id="dup")
    assert conflict.value.code == "request_id_reused"
    assert selectors.balance_get(organization=other).held == 0


def test_bad_arguments_are_refused(prices: object) -> None:
    org = make_org(billing_mode="postpaid")
    cases: list[dict[str, Any]] = [{"input_tokens": -1}, {"max_output_tokens": 10**10}, {"request_id": "x" * 65}]
    for kwargs in cases:
        with pytest.raises(ValidationFailed):
            make_hold(org, **kwargs)
    with pytest.raises(ValidationFailed):
        make_hold(org, at=timezone.now().replace(tzinfo=None))
    assert not CreditHold.objects.unscoped_all_orgs().exists()
    assert make_hold(org).status == "open"  # positive control


def test_credit_grants_are_validated_and_audited(db: None) -> None:
    org = make_org(billing_currency="SGD")
    future = timezone.now() + timedelta(days=30)
    bad: list[dict[str, Any]] = [
        {"amount": "10.00", "currency": "USD"},  # not the billing currency
        {"amount": "10.001", "currency": "SGD"},  # finer than a cent
        {"amount": "0", "currency": "SGD"},
        {"amount": "1E+40", "currency": "SGD"},  # beyond what 64-bit micros hold
        {"amount": 10.0, "currency": "SGD"},  # a float
        {"amount": "10", "currency": "SGD", "expires_at": timezone.now() - timedelta(seconds=1)},
        {"amount": "10", "currency": "SGD", "reason": " "},
    ]
    for case in bad:
        arguments: dict[str, Any] = {"expires_at": None, "reason": "promo", **case}
        with pytest.raises(ValidationFailed):
            services.credit_grant_create(actor=TEST_ACTOR, organization=org, **arguments)
    assert not CreditGrant.objects.unscoped_all_orgs().exists()
    grant = services.credit_grant_create(
        actor=TEST_ACTOR,
        organization=org,
        amount="25.50",
        currency="sgd",
        expires_at=future,
        priority=3,
        reason="promo",
    )
    assert (grant.amount_micros, grant.currency, grant.priority, grant.granted_by) == (25_500_000, "SGD", 3, "tests")
    [audit] = AuditEvent.objects.unscoped_all_orgs().filter(action="credit_grant.create")
    assert (audit.organization_id, audit.target_id, audit.changes["amount"]) == (org.pk, str(grant.pk), "25.5")


def test_price_entries_used_for_pricing_cannot_be_deleted(prices: tuple[PriceBookEntry, PriceBookEntry]) -> None:
    from django.db.models import ProtectedError

    org = make_org(billing_mode="postpaid")
    make_hold(org)
    with pytest.raises(ProtectedError):
        prices[0].delete()
    unused_input, _ = make_prices(model_name="Qwen2.5-0.5B-Instruct")
    unused_input.delete()  # positive control: an unused entry has no such protection
    assert selectors.price_quote(model_name=MODEL, region=REGION, at=timezone.now()).input_entry_id == prices[0].pk
