"""Money arithmetic: integer micro-units, exact Decimal products, and the few places where we round.

One unit of a currency is 1_000_000 micros. List prices are US dollars per million tokens, so the cost
of `n` tokens in USD micros is exactly `n * usd_per_million`. Conversion multiplies by the FX rate
(units of the billing currency per US dollar). Products are computed exactly; rounding happens only
where a caller asks for it: half-even to whole micros for a ledger entry, half-even to the currency's
minor unit for an invoice line, and upwards (ceiling) for a hold, so that a hold never reserves less
than the exact price. A float is refused everywhere: it cannot represent most decimal prices.
"""

from __future__ import annotations

from decimal import (
    ROUND_CEILING,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    localcontext,
)

MICROS_PER_UNIT = 1_000_000
_MICRO_DIGITS = 6

# ISO 4217 minor units of the billing currencies; billing/data/tax.json carries the same table, and a
# test keeps the two equal.
MINOR_UNITS: dict[str, int] = {
    "USD": 2,
    "SGD": 2,
    "IDR": 2,
    "AED": 2,
    "SAR": 2,
    "EUR": 2,
    "BRL": 2,
    "CNY": 2,
}

# Every product here is exact: 60 significant digits hold tokens (< 10^12) x price (18 digits) x rate
# (20 digits) with room to spare, and the Inexact trap turns any silent rounding into an error.
_EXACT = Context(prec=60, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, Inexact, Overflow, DivisionByZero])


class MoneyError(ValueError):
    """A programming error: a float, a non-finite value or an unknown currency reached the money path."""


def as_decimal(value: Decimal | int | str) -> Decimal:
    """A finite Decimal from a Decimal, an int or a decimal string; floats are refused."""
    if isinstance(value, bool | float) or not isinstance(value, Decimal | int | str):
        raise MoneyError(f"money must be a Decimal, an int or a decimal string, not {type(value).__name__}")
    try:
        number = value if isinstance(value, Decimal) else Decimal(value)
    except InvalidOperation as exc:
        raise MoneyError(f"not a decimal number: {value!r}") from exc
    if not number.is_finite():
        raise MoneyError(f"money must be finite, not {number}")
    return number


def minor_units(currency: str) -> int:
    """Digits after the decimal point of the currency's smallest unit (ISO 4217)."""
    try:
        return MINOR_UNITS[currency.upper()]
    except KeyError as exc:
        raise MoneyError(f"unknown currency {currency!r}") from exc


def micros_per_minor_unit(currency: str) -> int:
    return int(10 ** (_MICRO_DIGITS - minor_units(currency)))


def units_to_micros(amount: Decimal | int | str) -> int:
    """An amount in currency units as whole micros; more than six decimal places is an error."""
    number = as_decimal(amount)
    with localcontext(_EXACT):
        scaled = number * MICROS_PER_UNIT
    if scaled != scaled.to_integral_value():
        raise MoneyError(f"{number} has more precision than a micro-unit")
    return int(scaled)


def micros_to_units(micros: int) -> Decimal:
    """Whole micros as an exact Decimal amount in currency units (six decimal places)."""
    if isinstance(micros, bool) or not isinstance(micros, int):
        raise MoneyError(f"micros must be an int, not {type(micros).__name__}")
    return Decimal(micros).scaleb(-_MICRO_DIGITS)


def token_cost_usd_micros(*, tokens: int, usd_per_million: Decimal) -> Decimal:
    """The exact list cost of `tokens` tokens, in USD micros (a Decimal: prices may have sub-micro parts)."""
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise MoneyError(f"tokens must be a non-negative int, not {tokens!r}")
    price = as_decimal(usd_per_million)
    if price < 0:
        raise MoneyError("a price cannot be negative")
    with localcontext(_EXACT):
        return price * tokens


def usd_to_currency(*, usd_micros: Decimal | int, per_usd: Decimal | int | str) -> Decimal:
    """Exact conversion of USD micros to micros of a currency quoted at `per_usd` units per US dollar."""
    rate = as_decimal(per_usd)
    if rate <= 0:
        raise MoneyError("an FX rate must be positive")
    with localcontext(_EXACT):
        return as_decimal(usd_micros) * rate


def round_micros_half_even(value: Decimal | int) -> int:
    """Whole micros, ties to even: how a ledger entry stores an exact amount."""
    return int(as_decimal(value).to_integral_value(rounding=ROUND_HALF_EVEN))


def ceil_micros(value: Decimal | int) -> int:
    """Whole micros, rounded up: how a hold stores the most a request can cost."""
    return int(as_decimal(value).to_integral_value(rounding=ROUND_CEILING))


def round_to_minor_unit(micros: Decimal | int, currency: str) -> int:
    """Micros rounded half-even to the currency's smallest unit (an invoice line), still in micros."""
    step = micros_per_minor_unit(currency)
    with localcontext(_EXACT):
        steps = (as_decimal(micros) / step).to_integral_value(rounding=ROUND_HALF_EVEN)
    return int(steps) * step


def ceil_to_minor_unit(micros: Decimal | int, currency: str) -> int:
    """Micros rounded up to the currency's smallest unit, still in micros."""
    step = micros_per_minor_unit(currency)
    with localcontext(_EXACT):
        steps = (as_decimal(micros) / step).to_integral_value(rounding=ROUND_CEILING)
    return int(steps) * step


def micros_to_minor(micros: int, currency: str) -> int:
    """A count of the currency's smallest unit (cents), from micros, rounded half-even."""
    return round_to_minor_unit(micros, currency) // micros_per_minor_unit(currency)


def format_micros(micros: int, currency: str) -> str:
    """Micros as a decimal string at the currency's precision, rounded half-even ("12.35")."""
    places = minor_units(currency)
    return str(micros_to_units(round_to_minor_unit(micros, currency)).quantize(Decimal(1).scaleb(-places)))
