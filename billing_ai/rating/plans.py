"""Price plans as data: what ``core.prices`` + ``core.price_tiers`` say, validated.

A :class:`PricePlan` is one price (Stripe's ``price`` object, platform-neutral):
a per-unit price (optionally per package of ``package_size`` units) or a tiered
price (``graduated`` or ``volume`` tiers). Plans are plain frozen values, so a
pricing simulation can build plans that do not exist on any platform yet and
rate usage under them exactly as it rates the real ones.

Validation happens on construction and fails closed:

* the currency must be one :mod:`billing_ai.money` knows the minor unit of
  (:class:`~billing_ai.money.UnknownCurrencyError` otherwise);
* unit prices are exact decimals in minor units with at most 12 decimal places
  (Stripe's ``unit_amount_decimal``), non-negative; floats are refused
  (:class:`~billing_ai.money.MoneyTypeError`);
* tier bounds ascend strictly, only the last tier is open-ended (``up_to=None``
  means infinity) and it must be, so every quantity falls in some tier;
* flat fees are non-negative integers in minor units.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from billing_ai.money import (
    MAX_UNIT_PRICE_PLACES,
    MoneyTypeError,
    minor_unit_exponent,
    to_decimal,
)

USAGE_TYPES = ("licensed", "metered")
BILLING_SCHEMES = ("per_unit", "tiered")
TIERS_MODES = ("graduated", "volume")
PACKAGE_ROUNDINGS = ("up", "down")

#: Places a quantity or tier bound may have: ``core.price_tiers.up_to`` is
#: DECIMAL(38,9), and the vectorized rating works on DECIMAL(38,9) quantities.
MAX_QUANTITY_PLACES = 9
#: Magnitude limits of the warehouse columns (DECIMAL(38,12), DECIMAL(38,9), BIGINT),
#: so that any valid plan can be stored in ``core`` and rated in SQL too.
MAX_UNIT_AMOUNT = Decimal(10) ** (38 - MAX_UNIT_PRICE_PLACES)
MAX_UP_TO = Decimal(10) ** (38 - MAX_QUANTITY_PLACES)
MAX_BIGINT = 2**63 - 1


def decimal_places(d: Decimal) -> int:
    """Significant decimal places of ``d`` (trailing zeros do not count): 0.0500 -> 2."""
    if d.is_zero():
        return 0
    exponent = d.normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


def exact_decimal(value: object, what: str, max_places: int, limit: Decimal) -> Decimal:
    """``value`` as an exact, finite, non-negative Decimal with at most ``max_places`` places."""
    d = to_decimal(value)  # refuses floats and bools
    if not d.is_finite():
        raise ValueError(f"{what} must be finite, got {value!r}")
    if d < 0:
        raise ValueError(f"{what} must not be negative, got {value!r}")
    if decimal_places(d) > max_places:
        raise ValueError(f"{what} has more than {max_places} decimal places: {value!r}")
    if d >= limit:
        raise ValueError(f"{what} is too large for the warehouse columns: {value!r}")
    return d


def _minor_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float):
            raise MoneyTypeError(f"float {value!r} for {what}; minor units are integers")
        raise MoneyTypeError(f"{what} must be an int of minor units, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{what} must not be negative, got {value}")
    if value > MAX_BIGINT:
        raise ValueError(f"{what} does not fit a BIGINT: {value}")
    return value


@dataclass(frozen=True)
class Tier:
    """One tier of a tiered price.

    ``up_to``: inclusive upper bound in units (``None`` = infinity);
    ``unit_amount_decimal``: minor units per unit in this tier;
    ``flat_amount``: minor units charged once when a line reaches this tier.
    """

    up_to: Decimal | None
    unit_amount_decimal: Decimal
    flat_amount: int = 0

    def __post_init__(self) -> None:
        if self.up_to is not None:
            up_to = exact_decimal(self.up_to, "tier up_to", MAX_QUANTITY_PLACES, MAX_UP_TO)
            if up_to == 0:
                raise ValueError("tier up_to must be positive (None means infinity)")
            object.__setattr__(self, "up_to", up_to)
        object.__setattr__(
            self,
            "unit_amount_decimal",
            exact_decimal(self.unit_amount_decimal, "tier unit_amount_decimal", MAX_UNIT_PRICE_PLACES, MAX_UNIT_AMOUNT),
        )
        object.__setattr__(self, "flat_amount", _minor_int(self.flat_amount, "tier flat_amount"))


@dataclass(frozen=True)
class PricePlan:
    """One price, as data. Amounts are in the currency's minor unit.

    ``per_unit``: ``unit_amount_decimal`` per unit, or per package of
    ``package_size`` units with the package count rounded ``package_rounding``
    (``up``/``down``). ``tiered``: ``tiers`` in ``tiers_mode`` ``graduated`` (each
    tier's units at its own price) or ``volume`` (all units at the reached tier).
    """

    price_id: str
    currency: str
    usage_type: str
    billing_scheme: str
    tiers_mode: str | None = None
    unit_amount_decimal: Decimal | None = None
    package_size: int | None = None
    package_rounding: str | None = None
    tiers: tuple[Tier, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.price_id, str) or not self.price_id:
            raise ValueError("price_id must be a non-empty string")
        if not isinstance(self.currency, str):
            raise ValueError(f"currency must be a string, got {self.currency!r}")
        minor_unit_exponent(self.currency)  # fails closed on an unknown currency
        object.__setattr__(self, "currency", self.currency.lower())
        if self.usage_type not in USAGE_TYPES:
            raise ValueError(f"{self.price_id}: usage_type must be one of {USAGE_TYPES}, got {self.usage_type!r}")
        if self.billing_scheme not in BILLING_SCHEMES:
            raise ValueError(
                f"{self.price_id}: billing_scheme must be one of {BILLING_SCHEMES}, got {self.billing_scheme!r}"
            )
        tiers = tuple(self.tiers)
        if self.billing_scheme == "per_unit":
            self._validate_per_unit(tiers)
        else:
            self._validate_tiered(tiers)
        object.__setattr__(self, "tiers", tiers)

    def _validate_per_unit(self, tiers: tuple[Tier, ...]) -> None:
        pid = self.price_id
        if self.unit_amount_decimal is None:
            raise ValueError(f"{pid}: a per_unit price needs unit_amount_decimal")
        object.__setattr__(
            self,
            "unit_amount_decimal",
            exact_decimal(
                self.unit_amount_decimal, f"{pid}: unit_amount_decimal", MAX_UNIT_PRICE_PLACES, MAX_UNIT_AMOUNT
            ),
        )
        if tiers or self.tiers_mode is not None:
            raise ValueError(f"{pid}: a per_unit price has no tiers or tiers_mode")
        if self.package_size is None:
            if self.package_rounding is not None:
                raise ValueError(f"{pid}: package_rounding without package_size")
            return
        if isinstance(self.package_size, bool) or not isinstance(self.package_size, int):
            raise MoneyTypeError(f"{pid}: package_size must be an int, got {type(self.package_size).__name__}")
        if not 0 < self.package_size <= MAX_BIGINT:
            raise ValueError(f"{pid}: package_size must be a positive BIGINT, got {self.package_size}")
        if self.package_rounding not in PACKAGE_ROUNDINGS:
            raise ValueError(
                f"{pid}: package_rounding must be one of {PACKAGE_ROUNDINGS}, got {self.package_rounding!r}"
            )

    def _validate_tiered(self, tiers: tuple[Tier, ...]) -> None:
        pid = self.price_id
        if self.tiers_mode not in TIERS_MODES:
            raise ValueError(f"{pid}: tiers_mode must be one of {TIERS_MODES}, got {self.tiers_mode!r}")
        if self.unit_amount_decimal is not None or self.package_size is not None or self.package_rounding is not None:
            raise ValueError(f"{pid}: a tiered price has no unit_amount_decimal or package")
        if not tiers:
            raise ValueError(f"{pid}: a tiered price needs at least one tier")
        for t in tiers:
            if not isinstance(t, Tier):
                raise TypeError(f"{pid}: tiers must be Tier values, got {type(t).__name__}")
        if tiers[-1].up_to is not None:
            raise ValueError(f"{pid}: the last tier must be open-ended (up_to=None)")
        lower = Decimal(0)
        for i, t in enumerate(tiers[:-1]):
            if t.up_to is None:
                raise ValueError(f"{pid}: only the last tier may be open-ended (tier {i} is)")
            if t.up_to <= lower:
                raise ValueError(f"{pid}: tier bounds must ascend strictly (tier {i} up_to {t.up_to} after {lower})")
            lower = t.up_to

    # -- convenience constructors for simulations ---------------------------------

    @classmethod
    def per_unit(
        cls, price_id: str, currency: str, unit_amount_decimal: Decimal | int | str, usage_type: str = "metered"
    ) -> PricePlan:
        return cls(price_id, currency, usage_type, "per_unit", unit_amount_decimal=unit_amount_decimal)

    @classmethod
    def package(
        cls,
        price_id: str,
        currency: str,
        unit_amount_decimal: Decimal | int | str,
        package_size: int,
        package_rounding: str = "up",
        usage_type: str = "metered",
    ) -> PricePlan:
        return cls(
            price_id,
            currency,
            usage_type,
            "per_unit",
            unit_amount_decimal=unit_amount_decimal,
            package_size=package_size,
            package_rounding=package_rounding,
        )

    @classmethod
    def graduated(cls, price_id: str, currency: str, tiers: Iterable[Tier], usage_type: str = "metered") -> PricePlan:
        return cls(price_id, currency, usage_type, "tiered", tiers_mode="graduated", tiers=tuple(tiers))

    @classmethod
    def volume(cls, price_id: str, currency: str, tiers: Iterable[Tier], usage_type: str = "metered") -> PricePlan:
        return cls(price_id, currency, usage_type, "tiered", tiers_mode="volume", tiers=tuple(tiers))


_PRICES_SQL = """
SELECT price_id, currency, usage_type, billing_scheme, tiers_mode,
       unit_amount_decimal, package_size, package_rounding
FROM {prices}
ORDER BY price_id
"""

_TIERS_SQL = """
SELECT price_id, tier_index, up_to, unit_amount_decimal, flat_amount
FROM {tiers}
ORDER BY price_id, tier_index
"""


def load_plans(
    con: Any, prices_table: str = "core.prices", tiers_table: str = "core.price_tiers"
) -> dict[str, PricePlan]:
    """Every price in ``core.prices`` (+ its tiers) as a validated :class:`PricePlan`.

    ``con`` is a DuckDB connection. DECIMAL columns arrive as exact ``Decimal``
    values. Any invalid price (unknown currency, malformed tiers, ...) raises:
    rating must not quietly skip a price.
    """
    tiers: dict[str, list[tuple[int, Tier]]] = {}
    for price_id, tier_index, up_to, unit, flat in con.sql(_TIERS_SQL.format(tiers=tiers_table)).fetchall():
        tiers.setdefault(price_id, []).append(
            (tier_index, Tier(up_to, unit if unit is not None else Decimal(0), flat if flat is not None else 0))
        )
    plans: dict[str, PricePlan] = {}
    rows = con.sql(_PRICES_SQL.format(prices=prices_table)).fetchall()
    for price_id, currency, usage_type, scheme, mode, unit, package_size, package_rounding in rows:
        price_tiers = tiers.pop(price_id, [])
        indexes = [i for i, _ in price_tiers]
        if indexes != list(range(len(indexes))):
            raise ValueError(f"{price_id}: tier_index must run 0..n-1 without gaps, got {indexes}")
        try:
            plans[price_id] = PricePlan(
                price_id=price_id,
                currency=currency,
                usage_type=usage_type,
                billing_scheme=scheme,
                tiers_mode=mode,
                unit_amount_decimal=unit,
                package_size=package_size,
                package_rounding=package_rounding,
                tiers=tuple(t for _, t in price_tiers),
            )
        except (ValueError, TypeError) as e:
            if str(price_id) in str(e):
                raise
            raise type(e)(f"{price_id}: {e}") from e
    if tiers:
        raise ValueError(f"tiers for prices not in {prices_table}: {sorted(tiers)[:5]}")
    return plans
