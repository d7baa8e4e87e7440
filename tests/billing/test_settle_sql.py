"""I4/I5: settlement on PostgreSQL is one statement (`billing_hold_settle`, migration 0006). Its pricing is
the money module's to the micro, its draws and postings are the Python settlement's, and the balance check
that runs once per statement refuses an unbalanced entry whether it came alone or in a batch."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from billing import services
from billing.models import CreditGrant, CreditHold, LedgerEntry, LedgerPosting
from controlplane.core import money
from controlplane.core.errors import Conflict, NotFound
from tests.factories import make_grant, make_hold, make_org

pytestmark = pytest.mark.django_db

_HYPOTHESIS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _one(query: str, params: list[Any]) -> tuple[Any, ...]:
    with transaction.atomic(), connection.cursor() as cursor:  # a savepoint: one failing example fails alone
        cursor.execute(query, params)
        row = cursor.fetchone()
    assert row is not None
    return tuple(row)


@_HYPOTHESIS
@given(value=st.decimals(min_value=Decimal(-(10**15)), max_value=Decimal(10**15), places=14))
@example(value=Decimal("2.5"))  # a tie goes to the even neighbour: 2
@example(value=Decimal("3.5"))  # 4
@example(value=Decimal("-2.5"))  # -2
@example(value=Decimal("-3.5"))  # -4
@example(value=Decimal("11017.5"))  # 11018
@example(value=Decimal("0.49999999999999"))  # 0
def test_sql_half_even_matches_the_money_module(value: Decimal) -> None:
    (rounded,) = _one("SELECT billing_round_half_even(%s::numeric)", [value])
    assert rounded == money.round_micros_half_even(value)


@_HYPOTHESIS
@given(
    input_tokens=st.integers(min_value=0, max_value=10**9),
    output_tokens=st.integers(min_value=0, max_value=10**9),
    # up to $1,000 per million tokens, so that 2 x 10^9 tokens at the largest rate still fit the 64-bit micros
    input_price=st.decimals(min_value=0, max_value=Decimal("999.999999"), places=6),
    output_price=st.decimals(min_value=0, max_value=Decimal("999.999999"), places=6),
    per_usd=st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("99999.99999999"), places=8),
)
@example(input_tokens=1000, output_tokens=1000, input_price=Decimal(1), output_price=Decimal(2),
         per_usd=Decimal("3.6725"))  # 11017.5 AED micros -> 11018  # fmt: skip
@example(input_tokens=1, output_tokens=0, input_price=Decimal("0.5"), output_price=Decimal(0),
         per_usd=Decimal(1))  # 0.5 -> 0  # fmt: skip
def test_sql_price_matches_the_python_settlement(
    input_tokens: int, output_tokens: int, input_price: Decimal, output_price: Decimal, per_usd: Decimal
) -> None:
    """The expression `billing_hold_settle` prices with, against the money module's steps in `hold_settle`."""
    usd_micros = money.token_cost_usd_micros(tokens=input_tokens, usd_per_million=input_price)
    usd_micros += money.token_cost_usd_micros(tokens=output_tokens, usd_per_million=output_price)
    expected = money.round_micros_half_even(money.usd_to_currency(usd_micros=usd_micros, per_usd=per_usd))
    amount, usd_amount = _one(
        "SELECT billing_round_half_even(usd * %s::numeric), usd * 0.000001"
        " FROM (SELECT %s::bigint * %s::numeric + %s::bigint * %s::numeric AS usd) t",
        [per_usd, input_tokens, input_price, output_tokens, output_price],
    )
    assert amount == expected
    assert usd_amount == usd_micros.scaleb(-6)


# --- the function against the Python settlement ---------------------------------------------------------

Settle = Callable[..., LedgerEntry]
PATHS: dict[str, Settle] = {"database": services._hold_settle_in_database, "python": services._hold_settle_here}


def _settled_world(path: str, *, mode: str, output_tokens: int, late_grant: bool) -> dict[str, Any]:
    """One organisation, its grants, a hold of 1000 + 1000 tokens (11018 AED micros) and its settlement."""
    org = make_org(billing_mode=mode, billing_currency="AED")
    grants = [make_grant(org, "0.01", priority=1), make_grant(org, "0.05", priority=2)] if mode == "prepaid" else []
    hold = make_hold(org)  # prepaid: 10000 micros from the first grant, 1018 from the second
    if late_grant:
        grants.append(make_grant(org, "0.03", priority=0))  # spent first by whatever exceeds the hold
    entry = PATHS[path](request_id=hold.request_id, input_tokens=1000, output_tokens=output_tokens, api_key_id=7,
                        at=timezone.now(), organization_id=org.pk)  # fmt: skip
    index = {grant.pk: position for position, grant in enumerate(grants)}
    postings = LedgerPosting.objects.unscoped_all_orgs().filter(entry=entry).order_by("pk")
    stored = LedgerEntry.objects.unscoped_all_orgs().get(pk=entry.pk)
    return {
        "entry": (entry.amount_micros, entry.usd_amount, entry.currency, entry.api_key_id, entry.hold_id == hold.pk),
        "stored": (stored.amount_micros, stored.usd_amount, stored.input_tokens, stored.output_tokens),
        "postings": [
            (p.account, index.get(p.grant_id) if p.grant_id else None, p.debit_micros, p.credit_micros)
            for p in postings
        ],
        "grants": [
            (grant.consumed_micros, grant.held_micros)
            for grant in CreditGrant.objects.unscoped_all_orgs().filter(organization=org).order_by("pk")
        ],
        "hold": CreditHold.objects.unscoped_all_orgs().get(pk=hold.pk).status,
    }


@pytest.mark.parametrize(
    ("mode", "output_tokens", "late_grant"),
    [
        ("prepaid", 500, False),  # inside the hold: from the first grant only, the rest freed
        ("prepaid", 1000, False),  # the whole hold: both allocations
        ("prepaid", 3000, False),  # above the hold: the second grant again (one posting for it)
        ("prepaid", 3000, True),  # above the hold: the late grant of priority 0 first
        ("prepaid", 30000, True),  # above every grant: the rest to accounts receivable
        ("prepaid", 0, False),
        ("postpaid", 777, False),
        ("postpaid", 0, False),  # nothing to pay: no postings
    ],
)
def test_the_function_settles_exactly_as_the_python_settlement(
    prices: object, aed: object, mode: str, output_tokens: int, late_grant: bool
) -> None:
    database = _settled_world("database", mode=mode, output_tokens=output_tokens, late_grant=late_grant)
    python = _settled_world("python", mode=mode, output_tokens=output_tokens, late_grant=late_grant)
    assert database == python
    assert database["hold"] == "captured"
    debit_total = sum(debit for _, _, debit, _ in database["postings"])
    credit_total = sum(credit for _, _, _, credit in database["postings"])
    assert debit_total == credit_total == database["entry"][0]


def test_the_function_answers_a_repeat_a_release_and_an_unknown_request(prices: object) -> None:
    org = make_org(billing_mode="postpaid")
    hold = make_hold(org)
    at = timezone.now()
    first = services.hold_settle(request_id=hold.request_id, input_tokens=10, output_tokens=5, api_key_id=None, at=at)
    again = services.hold_settle(request_id=hold.request_id, input_tokens=99, output_tokens=99, api_key_id=None, at=at)
    assert (again.pk, again.amount_micros, again.output_tokens) == (first.pk, first.amount_micros, 5)
    assert LedgerEntry.objects.unscoped_all_orgs().filter(request_id=hold.request_id).count() == 1
    released = make_hold(org)
    services.hold_release(request_id=released.request_id, reason="test")
    with pytest.raises(Conflict) as refused:
        services.hold_settle(request_id=released.request_id, input_tokens=1, output_tokens=1, api_key_id=None, at=at)
    assert refused.value.code == "hold_released"
    for organization_id in (None, org.pk):
        with pytest.raises(NotFound) as missing:
            services.hold_settle(request_id="nope", input_tokens=1, output_tokens=1, api_key_id=None, at=at,
                                 organization_id=organization_id)  # fmt: skip
        assert missing.value.code == "hold_not_found"
    # The caller's transaction is still usable after the refusals (they are answers, not database errors).
    assert LedgerEntry.objects.unscoped_all_orgs().filter(organization=org).count() == 1


# --- the balance check of a batch ---------------------------------------------------------------------------


def _unposted_entry(hold: CreditHold) -> LedgerEntry:
    return LedgerEntry(
        organization_id=hold.organization_id,
        request_id=hold.request_id,
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
        usd_amount=Decimal("0.003"),
        amount_micros=3000,
        admitted_at=hold.admitted_at,
        settled_at=timezone.now(),
    )


def _entries_in_one_statement(org: Any, count: int) -> list[LedgerEntry]:
    rows = [_unposted_entry(make_hold(org)) for _ in range(count)]
    return LedgerEntry.objects.unscoped_all_orgs().bulk_create(rows)


def _postings_in_one_statement(org: Any, entries: list[LedgerEntry], *, short_by: int) -> None:
    rows: list[LedgerPosting] = []
    for position, entry in enumerate(entries):
        credit = 3000 - (short_by if position == len(entries) // 2 else 0)
        rows.append(LedgerPosting(organization=org, entry=entry, account="accounts_receivable", debit_micros=3000))
        rows.append(LedgerPosting(organization=org, entry=entry, account="revenue", credit_micros=credit))
    LedgerPosting.objects.unscoped_all_orgs().bulk_create(rows)


def _check_deferred_now() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def test_a_batch_with_one_unbalanced_entry_is_refused_at_commit(prices: object) -> None:
    org = make_org(billing_mode="postpaid")
    with transaction.atomic():
        entries = _entries_in_one_statement(org, 5)
        _postings_in_one_statement(org, entries, short_by=1)
        with pytest.raises(IntegrityError, match=f"ledger entry {entries[2].pk} is unbalanced"), transaction.atomic():
            _check_deferred_now()
        transaction.set_rollback(True)
    # Positive control: the same batch, balanced, passes the same check.
    entries = _entries_in_one_statement(org, 5)
    _postings_in_one_statement(org, entries, short_by=0)
    _check_deferred_now()
    assert LedgerPosting.objects.unscoped_all_orgs().filter(entry__in=entries).count() == 10


def test_a_batch_of_entries_without_postings_is_refused_at_commit(prices: object) -> None:
    org = make_org(billing_mode="postpaid")
    with transaction.atomic():
        _entries_in_one_statement(org, 3)
        with pytest.raises(IntegrityError, match="unbalanced"), transaction.atomic():
            _check_deferred_now()
        transaction.set_rollback(True)
    # Positive control: checked rows leave nothing behind to check again.
    entries = _entries_in_one_statement(org, 3)
    _postings_in_one_statement(org, entries, short_by=0)
    _check_deferred_now()
    assert _one("SELECT count(*) FROM billing_ledger_unchecked", []) == (0,)
