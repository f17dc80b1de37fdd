"""Currencies, minor units and rounding: the only place money rules live.

Amounts are integers in the currency's minor unit (cents for USD, yen for JPY,
fils for KWD). Unit prices may be decimals with up to 12 places, so amounts are
computed as exact ``Decimal`` values in minor units and rounded **once per
line** with :func:`round_minor`. Floats never touch money.

Rounding rule: each platform documents how it rounds a line. Stripe rounds a
line's exact amount to the nearest minor unit with halves away from zero
(``half_up``); that is our default. ``half_even`` exists for platforms that
document banker's rounding. Nothing else rounds money.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Literal

# ISO 4217 minor-unit exponents for the currencies we accept. An unknown
# currency fails closed: guessing "2" would silently mis-scale JPY or KWD.
MINOR_UNITS: dict[str, int] = {
    "usd": 2,
    "eur": 2,
    "gbp": 2,
    "cad": 2,
    "aud": 2,
    "chf": 2,
    "sek": 2,
    "nok": 2,
    "dkk": 2,
    "nzd": 2,
    "sgd": 2,
    "hkd": 2,
    "inr": 2,
    "brl": 2,
    "mxn": 2,
    "pln": 2,
    "zar": 2,
    "jpy": 0,
    "krw": 0,
    "clp": 0,
    "vnd": 0,
    "isk": 0,
    "kwd": 3,
    "bhd": 3,
    "jod": 3,
    "omr": 3,
    "tnd": 3,
}

RoundingRule = Literal["half_up", "half_even"]
_ROUNDING = {"half_up": ROUND_HALF_UP, "half_even": ROUND_HALF_EVEN}

# How each platform rounds a line amount (see each platform's docs).
PLATFORM_ROUNDING: dict[str, RoundingRule] = {
    "stripe": "half_up",
    "chargebee": "half_up",
    "recurly": "half_up",
    "zuora": "half_up",
}

MAX_UNIT_PRICE_PLACES = 12


class UnknownCurrencyError(ValueError):
    """Raised for a currency we do not know the minor unit of."""


class MoneyTypeError(TypeError):
    """Raised when a float (or other inexact type) reaches the money path."""


def minor_unit_exponent(currency: str) -> int:
    """Decimal places of ``currency``'s minor unit (2 for USD, 0 for JPY)."""
    try:
        return MINOR_UNITS[currency.lower()]
    except (KeyError, AttributeError):
        raise UnknownCurrencyError(
            f"unknown currency {currency!r}: add it to billing_ai.money.MINOR_UNITS "
            "with its ISO 4217 minor-unit exponent"
        ) from None


def to_decimal(value: object) -> Decimal:
    """Exact decimal from an int, a Decimal or a decimal string. Floats are refused."""
    if isinstance(value, bool):
        raise MoneyTypeError("a bool is not an amount")
    if isinstance(value, float):
        raise MoneyTypeError(f"float {value!r} on the money path; pass a str or Decimal")
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, str):
        try:
            d = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"not a decimal number: {value!r}") from None
        if not d.is_finite():
            raise ValueError(f"not a finite decimal: {value!r}")
        return d
    raise MoneyTypeError(f"cannot use {type(value).__name__} as an amount")


def round_minor(amount_minor: Decimal | int | str, rule: RoundingRule = "half_up") -> int:
    """Round an exact amount already expressed in minor units to an integer.

    This is the one rounding function; it is applied per invoice line.
    """
    d = to_decimal(amount_minor)
    try:
        mode = _ROUNDING[rule]
    except KeyError:
        raise ValueError(f"unknown rounding rule {rule!r}") from None
    return int(d.quantize(Decimal(1), rounding=mode))


def major_to_minor(amount_major: Decimal | int | str, currency: str) -> Decimal:
    """Exact minor-unit value of an amount in major units ("12.34" USD -> 1234)."""
    return to_decimal(amount_major).scaleb(minor_unit_exponent(currency))


def format_minor(amount_minor: int, currency: str) -> str:
    """Human text for an integer minor-unit amount: 123456 usd -> '1,234.56 USD'."""
    if not isinstance(amount_minor, int) or isinstance(amount_minor, bool):
        raise MoneyTypeError("format_minor takes integer minor units")
    exp = minor_unit_exponent(currency)
    major = Decimal(amount_minor).scaleb(-exp)
    return f"{major:,.{exp}f} {currency.upper()}"
