"""The reconciliation's own half-even rounding, in SQL, agrees with the money module's on any amount: ties
to the even multiple, negatives included (an invoice line's output part may be a fraction below zero)."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

import pytest
from django.db import connection
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from billing.reconcile import _HALF_EVEN
from controlplane.core import money

pytestmark = pytest.mark.django_db

amounts = st.decimals(min_value=Decimal(-(10**12)), max_value=Decimal(10**15), places=14)


def _sql_half_even(value: Decimal, step: int) -> Decimal:
    with connection.cursor() as cursor:
        cursor.execute(_HALF_EVEN)
        cursor.execute("SELECT pg_temp.half_even(%s::numeric, %s::numeric)", [value, step])
        row = cursor.fetchone()
    assert row is not None
    result: Decimal = row[0]
    return result


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=amounts, currency=st.sampled_from(sorted(money.MINOR_UNITS)))
@example(value=Decimal("12345000"), currency="USD")  # 12.345 -> 12.34
@example(value=Decimal("12355000"), currency="USD")  # 12.355 -> 12.36
@example(value=Decimal("-5000"), currency="USD")  # -0.005 -> 0.00
@example(value=Decimal("-15000"), currency="USD")  # -0.015 -> -0.02
def test_sql_half_even_matches_the_money_module(value: Decimal, currency: str) -> None:
    step = money.micros_per_minor_unit(currency)
    assert _sql_half_even(value, step) == money.round_to_minor_unit(value, currency)
    assert _sql_half_even(value, 1) == value.to_integral_value(rounding=ROUND_HALF_EVEN)
