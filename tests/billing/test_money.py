"""controlplane.core.money: exact products, rounding only where asked, floats refused (properties and examples)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.core import money

CURRENCIES = sorted(money.MINOR_UNITS)
# Rates as the FX table stores them: positive, at most 8 decimal places, up to IDR-sized magnitudes.
rates = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal(100_000), places=8)
prices = st.decimals(min_value=Decimal(0), max_value=Decimal(1_000_000), places=6)
tokens = st.integers(min_value=0, max_value=10**9)
exact_micros = st.decimals(min_value=Decimal(-(10**15)), max_value=Decimal(10**15), places=8)
whole_micros = st.integers(min_value=-(10**15), max_value=10**15)


def test_minor_units_agree_with_the_tax_data() -> None:
    data = json.loads((Path(__file__).resolve().parents[2] / "billing" / "data" / "tax.json").read_text())
    assert data["currency_minor_units"] == money.MINOR_UNITS
    assert money.micros_per_minor_unit("usd") == 10_000


def test_examples_by_hand() -> None:
    # 200 tokens at $1/M are 200 USD micros; at 3.6725 AED per USD that is 734.5 AED micros exactly.
    cost = money.token_cost_usd_micros(tokens=200, usd_per_million=Decimal("1.00"))
    aed = money.usd_to_currency(usd_micros=cost, per_usd=Decimal("3.6725"))
    assert aed == Decimal("734.5")
    assert money.round_micros_half_even(aed) == 734  # the tie goes to the even neighbour
    assert money.ceil_micros(aed) == 735  # a hold never reserves less than the price
    assert money.round_micros_half_even(Decimal("735.5")) == 736
    assert money.round_to_minor_unit(12_345_000, "USD") == 12_340_000  # 12.345 -> 12.34 (tie, 4 is even)
    assert money.round_to_minor_unit(12_355_000, "USD") == 12_360_000  # 12.355 -> 12.36 (tie, 6 is even)
    assert money.ceil_to_minor_unit(12_340_001, "USD") == 12_350_000
    assert money.micros_to_minor(12_355_000, "EUR") == 1236
    assert money.format_micros(12_345_000, "SGD") == "12.34"
    assert money.units_to_micros("0.000001") == 1
    assert money.micros_to_units(1_500_000) == Decimal("1.5")


@pytest.mark.parametrize("bad", [0.1, float("nan"), True, None, [1]])
def test_floats_and_non_numbers_are_refused(bad: object) -> None:
    with pytest.raises(money.MoneyError):
        money.as_decimal(bad)  # type: ignore[arg-type]  # wrong types on purpose
    # Positive control: the same value as a decimal string is accepted.
    assert money.as_decimal("0.1") == Decimal("0.1")


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity", "abc"])
def test_non_finite_decimals_are_refused(bad: str) -> None:
    with pytest.raises(money.MoneyError):
        money.as_decimal(bad)


def test_sub_micro_amounts_and_unknown_currencies_are_refused() -> None:
    with pytest.raises(money.MoneyError):
        money.units_to_micros("0.0000001")
    with pytest.raises(money.MoneyError):
        money.minor_units("XYZ")
    with pytest.raises(money.MoneyError):
        money.usd_to_currency(usd_micros=1, per_usd="0")
    with pytest.raises(money.MoneyError):
        money.token_cost_usd_micros(tokens=-1, usd_per_million=Decimal(1))
    assert money.units_to_micros("0.000001") == 1  # positive control: six places are fine


@given(st.decimals(min_value=Decimal(-(10**12)), max_value=Decimal(10**12), places=6))
def test_units_and_micros_round_trip(amount: Decimal) -> None:
    micros = money.units_to_micros(amount)
    assert isinstance(micros, int)
    assert money.micros_to_units(micros) == amount


@given(tokens, tokens, prices, prices)
def test_cost_is_exact_and_additive(
    input_tokens: int, output_tokens: int, price_in: Decimal, price_out: Decimal
) -> None:
    cost = money.token_cost_usd_micros(tokens=input_tokens, usd_per_million=price_in)
    # tokens x USD per million tokens = USD micros, with no rounding at all.
    assert cost == price_in * input_tokens
    split = money.token_cost_usd_micros(tokens=input_tokens // 2, usd_per_million=price_in) + (
        money.token_cost_usd_micros(tokens=input_tokens - input_tokens // 2, usd_per_million=price_in)
    )
    assert split == cost
    both = cost + money.token_cost_usd_micros(tokens=output_tokens, usd_per_million=price_out)
    assert both >= cost


@given(tokens, prices, rates)
def test_hold_rounding_covers_the_settled_amount(count: int, price: Decimal, rate: Decimal) -> None:
    usd = money.token_cost_usd_micros(tokens=count, usd_per_million=price)
    exact = money.usd_to_currency(usd_micros=usd, per_usd=rate)
    held, settled = money.ceil_micros(exact), money.round_micros_half_even(exact)
    assert held >= exact > held - 1
    assert abs(settled - exact) <= Decimal("0.5")
    assert settled <= held


@given(st.integers(min_value=0, max_value=10**9), st.integers(min_value=0, max_value=10**9), prices, rates)
def test_a_hold_for_more_tokens_never_costs_less(fewer: int, extra: int, price: Decimal, rate: Decimal) -> None:
    def held(count: int) -> int:
        usd = money.token_cost_usd_micros(tokens=count, usd_per_million=price)
        return money.ceil_micros(money.usd_to_currency(usd_micros=usd, per_usd=rate))

    assert held(fewer + extra) >= held(fewer)


@given(exact_micros)
def test_usd_at_rate_one_is_the_identity(value: Decimal) -> None:
    assert money.usd_to_currency(usd_micros=value, per_usd=1) == value


@given(exact_micros, st.sampled_from(CURRENCIES))
def test_half_even_to_the_minor_unit(value: Decimal, currency: str) -> None:
    step = money.micros_per_minor_unit(currency)
    rounded = money.round_to_minor_unit(value, currency)
    assert rounded % step == 0
    distance = abs(Decimal(rounded) - value)
    assert distance <= Decimal(step) / 2
    if distance == Decimal(step) / 2:  # a tie: the even multiple wins
        assert (rounded // step) % 2 == 0
    ceiling = money.ceil_to_minor_unit(value, currency)
    assert ceiling % step == 0
    assert value <= ceiling < value + step


@given(whole_micros, st.sampled_from(CURRENCIES))
def test_rounding_is_idempotent_and_minor_counts_agree(value: int, currency: str) -> None:
    once = money.round_to_minor_unit(value, currency)
    assert money.round_to_minor_unit(once, currency) == once
    assert money.micros_to_minor(value, currency) * money.micros_per_minor_unit(currency) == once


@given(st.lists(st.integers(min_value=0, max_value=10**12), max_size=30), st.sampled_from(CURRENCIES))
def test_rounding_a_total_once_is_within_half_a_unit(lines: list[int], currency: str) -> None:
    # Rounding happens once, on the total (an invoice line), never per ledger entry.
    total = sum(lines)
    rounded = money.round_to_minor_unit(total, currency)
    assert abs(rounded - total) <= money.micros_per_minor_unit(currency) // 2
