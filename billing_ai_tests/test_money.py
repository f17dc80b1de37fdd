"""Money rules: minor units, the one rounding function, fail-closed currencies."""

from decimal import Decimal

import pytest

from billing_ai.money import (
    MoneyTypeError,
    UnknownCurrencyError,
    format_minor,
    major_to_minor,
    minor_unit_exponent,
    round_minor,
    to_decimal,
)


def test_minor_unit_exponents():
    assert minor_unit_exponent("USD") == 2
    assert minor_unit_exponent("jpy") == 0
    assert minor_unit_exponent("kwd") == 3


def test_unknown_currency_fails_closed():
    with pytest.raises(UnknownCurrencyError, match="xyz"):
        minor_unit_exponent("xyz")


@pytest.mark.parametrize(
    "exact,half_up,half_even",
    [
        ("2.5", 3, 2),
        ("3.5", 4, 4),
        ("-2.5", -3, -2),
        ("6518.75", 6519, 6519),
        ("0.499999999999", 0, 0),
        ("1234.5000000001", 1235, 1235),
    ],
)
def test_round_minor_rules(exact, half_up, half_even):
    assert round_minor(Decimal(exact)) == half_up
    assert round_minor(exact, "half_even") == half_even


def test_floats_are_refused_on_the_money_path():
    with pytest.raises(MoneyTypeError):
        round_minor(2.5)  # type: ignore[arg-type]
    with pytest.raises(MoneyTypeError):
        to_decimal(0.1)


def test_major_to_minor_and_format():
    assert major_to_minor("12.34", "usd") == Decimal("1234")
    assert major_to_minor("1.234", "kwd") == Decimal("1234")
    assert major_to_minor("500", "jpy") == Decimal("500")
    assert format_minor(123456, "usd") == "1,234.56 USD"
    assert format_minor(1234, "kwd") == "1.234 KWD"
    assert format_minor(5000, "jpy") == "5,000 JPY"
