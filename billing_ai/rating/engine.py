"""The rating engine: pure functions from a price plan and a quantity to money.

Everything here is exact ``Decimal`` arithmetic in minor units (a context with
100 digits of precision that *traps* ``Inexact``, so a product can never be
silently rounded), and each line is rounded exactly once, by
:func:`billing_ai.money.round_minor`, under a ``rule`` (default ``half_up``:
Stripe rounds a line's exact amount half away from zero).

Price models (Stripe semantics):

* **per unit** -- ``quantity x unit_amount_decimal``; licensed seats and flat
  fees are per-unit licensed prices (a flat fee is quantity 1);
* **package** -- ``ceil`` (``up``) or ``floor`` (``down``) of
  ``quantity / package_size`` packages, times the unit amount (per package);
* **graduated tiers** -- each tier's units at that tier's price, plus the
  tier's flat fee when the quantity reaches into the tier (a quantity ``q``
  reaches tier ``i`` when ``q > lower_i``, the previous tier's ``up_to``); a
  zero-priced first tier is an included allowance;
* **volume tiers** -- all units at the price of the tier the quantity falls in
  (``lower < q <= up_to``), plus that tier's flat fee; a zero quantity costs 0.

Prorations (licensed items and flat fees on a plan change) scale the exact full
amount by the seconds remaining, ``(period_end - change_at) / (period_end -
period_start)``, and round once; metered usage is not prorated (it is billed per
item for the time the item ran).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import (
    ROUND_DOWN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    Rounded,
    localcontext,
)
from fractions import Fraction

from billing_ai.money import MoneyTypeError, RoundingRule, round_minor, to_decimal
from billing_ai.rating.plans import PricePlan

__all__ = [
    "PlanChangeProration",
    "ProratedAmount",
    "RatedLine",
    "TierCharge",
    "minimum_commitment_true_up",
    "plan_change_proration",
    "prorate",
    "prorated",
    "proration_fraction",
    "rate",
]

# Exact arithmetic: 100 significant digits is far beyond any amount (a
# DECIMAL(38,9) quantity times a DECIMAL(38,12) price has at most 76 digits),
# and Inexact/Rounded are trapped, so an operation that could not be exact raises
# instead of rounding. Rounding money happens only in money.round_minor.
_EXACT = Context(prec=100, traps=[Inexact, Rounded, InvalidOperation, DivisionByZero, Overflow])
# Digits kept for a proration quotient, which need not terminate (see _quotient).
_QUOTIENT_DIGITS = 80


@dataclass(frozen=True)
class TierCharge:
    """What one tier contributes to a tiered line (exact, unrounded)."""

    tier_index: int
    units: Decimal  # units charged at this tier's price
    unit_amount_decimal: Decimal  # minor units per unit
    flat_amount: int  # minor units; 0 unless the tier is reached and has a flat fee
    exact: Decimal  # units * unit_amount_decimal + flat_amount


@dataclass(frozen=True)
class RatedLine:
    """One rated line: the exact amount and the amount rounded once under ``rule``."""

    price_id: str
    currency: str
    quantity: Decimal
    amount: int  # minor units, round_minor(exact, rule)
    exact: Decimal  # minor units, unrounded
    tiers: tuple[TierCharge, ...] = ()  # tiered prices: the tiers charged, in order
    packages: int | None = None  # package prices: the number of packages billed
    rule: RoundingRule = "half_up"


def _quantity(quantity: object) -> Decimal:
    q = to_decimal(quantity)  # floats and bools refused
    if not q.is_finite():
        raise ValueError(f"quantity must be finite, got {quantity!r}")
    if q < 0:
        raise ValueError(f"quantity must not be negative, got {quantity!r}")
    return q


def rate(plan: PricePlan, quantity: Decimal | int | str, rule: RoundingRule = "half_up") -> RatedLine:
    """Rate ``quantity`` units (seats for licensed prices, usage for metered) under ``plan``.

    Quantities may be decimals (metered usage such as GB-hours); they are never
    floats. The line is rounded once, with :func:`billing_ai.money.round_minor`.
    """
    if not isinstance(plan, PricePlan):
        raise TypeError(f"rate() takes a PricePlan, got {type(plan).__name__}")
    q = _quantity(quantity)
    tiers: tuple[TierCharge, ...] = ()
    packages: int | None = None
    with localcontext(_EXACT):
        if plan.billing_scheme == "per_unit":
            unit = plan.unit_amount_decimal
            assert unit is not None  # validated by PricePlan
            if plan.package_size is None:
                exact = q * unit
            else:
                packages = _packages(q, plan.package_size, plan.package_rounding)
                exact = packages * unit
        elif plan.tiers_mode == "graduated":
            tiers = _graduated(plan, q)
            exact = sum((t.exact for t in tiers), Decimal(0))
        else:
            tiers = _volume(plan, q)
            exact = sum((t.exact for t in tiers), Decimal(0))
    return RatedLine(
        price_id=plan.price_id,
        currency=plan.currency,
        quantity=q,
        amount=round_minor(exact, rule),
        exact=exact,
        tiers=tiers,
        packages=packages,
        rule=rule,
    )


def _packages(q: Decimal, size: int, rounding: str | None) -> int:
    """Whole packages of ``size`` units in ``q``: a started package counts when rounding up."""
    whole, rest = divmod(q, Decimal(size))  # exact for q >= 0
    return int(whole) + (1 if rounding == "up" and rest != 0 else 0)


def _graduated(plan: PricePlan, q: Decimal) -> tuple[TierCharge, ...]:
    charges = []
    lower = Decimal(0)
    for i, t in enumerate(plan.tiers):
        if q <= lower:  # the quantity does not reach into this tier
            break
        top = q if t.up_to is None or q < t.up_to else t.up_to
        units = top - lower
        charges.append(
            TierCharge(i, units, t.unit_amount_decimal, t.flat_amount, units * t.unit_amount_decimal + t.flat_amount)
        )
        if t.up_to is None:
            break
        lower = t.up_to
    return tuple(charges)


def _volume(plan: PricePlan, q: Decimal) -> tuple[TierCharge, ...]:
    if q == 0:
        return ()  # nothing used, nothing charged (not even a tier's flat fee)
    for i, t in enumerate(plan.tiers):
        if t.up_to is None or q <= t.up_to:
            return (TierCharge(i, q, t.unit_amount_decimal, t.flat_amount, q * t.unit_amount_decimal + t.flat_amount),)
    raise AssertionError("unreachable: PricePlan guarantees an open-ended last tier")


# -- prorations -------------------------------------------------------------------

Instant = datetime | int


def _ticks(value: Instant, what: str) -> int | datetime:
    if isinstance(value, (bool, float)):
        raise MoneyTypeError(f"{what} must be a datetime or integer unix seconds, got {value!r}")
    if not isinstance(value, (int, datetime)):
        raise TypeError(f"{what} must be a datetime or integer unix seconds, got {type(value).__name__}")
    return value


def proration_fraction(change_at: Instant, period_start: Instant, period_end: Instant) -> Fraction:
    """Share of the period left after ``change_at``, by time: ``(end - change) / (end - start)``.

    Instants are all aware ``datetime`` values or all integer unix seconds.
    Datetimes count to the microsecond, which for whole-second instants is the
    same ratio as counting seconds.
    """
    c, s, e = (
        _ticks(v, n) for v, n in ((change_at, "change_at"), (period_start, "period_start"), (period_end, "period_end"))
    )
    if isinstance(c, datetime) or isinstance(s, datetime) or isinstance(e, datetime):
        if not (isinstance(c, datetime) and isinstance(s, datetime) and isinstance(e, datetime)):
            raise TypeError("change_at, period_start and period_end must all be datetimes or all ints")
        remaining = (e - c) // timedelta(microseconds=1)
        length = (e - s) // timedelta(microseconds=1)
    else:
        remaining, length = e - c, e - s
    if length <= 0:
        raise ValueError("period_end must be after period_start")
    if not 0 <= remaining <= length:
        raise ValueError("change_at must lie within [period_start, period_end]")
    return Fraction(remaining, length)


def _quotient(numerator: Decimal, denominator: int) -> tuple[Decimal, Decimal]:
    """``numerator / denominator`` as (a display value, a value that rounds exactly like it).

    The quotient need not terminate (a third of a month), so it cannot always
    be a Decimal. It is computed to 80 significant digits, truncated. When the
    division was inexact the true value lies strictly between the truncation
    ``t`` and ``t + ulp`` (away from zero); every rounding tie point ``k + 0.5``
    lies on that 80-digit grid, so none falls strictly inside, and ``t`` nudged
    half an ulp away from zero rounds exactly as the true quotient does under
    any rule. That nudged value is what goes to ``money.round_minor``.
    """
    ctx = Context(prec=_QUOTIENT_DIGITS, rounding=ROUND_DOWN, traps=[InvalidOperation, DivisionByZero, Overflow])
    t = ctx.divide(numerator, Decimal(denominator))
    if not ctx.flags[Inexact]:
        return t, t
    exponent = t.as_tuple().exponent  # an inexact quotient has exactly 80 digits
    assert isinstance(exponent, int)
    if exponent >= 0:  # pragma: no cover - an amount with 80 integer digits
        raise OverflowError("proration amount too large to round exactly")
    with localcontext(Context(prec=_QUOTIENT_DIGITS + 2, traps=[Inexact, Rounded])):
        half_ulp = Decimal(5).scaleb(exponent - 1)
        return t, (t + half_ulp if numerator > 0 else t - half_ulp)


@dataclass(frozen=True)
class ProratedAmount:
    amount: int  # minor units, rounded once
    exact: Decimal  # the prorated amount (to 80 significant digits when it does not terminate)
    fraction: Fraction  # share of the period remaining


def prorated(
    exact_full_amount: Decimal | int | str,
    change_at: Instant,
    period_start: Instant,
    period_end: Instant,
    rule: RoundingRule = "half_up",
) -> ProratedAmount:
    """:func:`prorate` with the exact amount and the fraction alongside the rounded amount."""
    full = to_decimal(exact_full_amount)  # floats refused
    if not full.is_finite():
        raise ValueError(f"amount must be finite, got {exact_full_amount!r}")
    frac = proration_fraction(change_at, period_start, period_end)
    with localcontext(_EXACT):
        numerator = full * frac.numerator
    shown, roundable = _quotient(numerator, frac.denominator)
    return ProratedAmount(amount=round_minor(roundable, rule), exact=shown, fraction=frac)


def prorate(
    exact_full_amount: Decimal | int | str,
    change_at: Instant,
    period_start: Instant,
    period_end: Instant,
    rule: RoundingRule = "half_up",
) -> int:
    """The full-period amount scaled by the seconds remaining after ``change_at``, rounded once.

    ``exact_full_amount`` is the unrounded full-period amount in minor units
    (e.g. ``rate(plan, seats).exact``); a negative amount (a credit) rounds
    away from zero under ``half_up``, symmetric with the charge. Use it for
    licensed items and flat fees only: Stripe does not prorate metered usage.
    """
    return prorated(exact_full_amount, change_at, period_start, period_end, rule).amount


@dataclass(frozen=True)
class PlanChangeProration:
    """The two proration lines of a mid-period change of a licensed item.

    ``credit`` (negative) gives back the unused time on the old price, ``charge``
    (positive) bills the remaining time on the new one; each is its own invoice
    line, rounded separately, as Stripe does.
    """

    credit: int
    charge: int
    credit_exact: Decimal
    charge_exact: Decimal
    fraction: Fraction

    @property
    def net(self) -> int:
        return self.credit + self.charge


def plan_change_proration(
    old_plan: PricePlan,
    new_plan: PricePlan,
    change_at: Instant,
    period_start: Instant,
    period_end: Instant,
    quantity: Decimal | int | str = 1,
    new_quantity: Decimal | int | str | None = None,
    rule: RoundingRule = "half_up",
) -> PlanChangeProration:
    """Credit for unused time on ``old_plan`` x ``quantity`` and charge for the rest on ``new_plan``.

    Both prices must be licensed (metered usage is not prorated) and in the same
    currency. ``new_quantity`` defaults to ``quantity`` (a plan change); pass
    the same plan twice with different quantities for a seat change.
    """
    for p in (old_plan, new_plan):
        if p.usage_type != "licensed":
            raise ValueError(f"{p.price_id}: only licensed prices are prorated, not {p.usage_type}")
    if old_plan.currency != new_plan.currency:
        raise ValueError(f"cannot prorate across currencies ({old_plan.currency} -> {new_plan.currency})")
    old_full = rate(old_plan, quantity, rule).exact
    new_full = rate(new_plan, quantity if new_quantity is None else new_quantity, rule).exact
    with localcontext(_EXACT):
        neg_old_full = -old_full
    credit = prorated(neg_old_full, change_at, period_start, period_end, rule)
    charge = prorated(new_full, change_at, period_start, period_end, rule)
    return PlanChangeProration(
        credit=credit.amount,
        charge=charge.amount,
        credit_exact=credit.exact,
        charge_exact=charge.exact,
        fraction=credit.fraction,
    )


# -- minimum commitments ------------------------------------------------------------


def minimum_commitment_true_up(usage_amounts_minor: Iterable[int] | int, commitment_minor: int | None) -> int:
    """The invoice item that tops usage up to the commitment: ``max(0, commitment - usage)``.

    ``usage_amounts_minor`` is the period's (already rounded) usage line amounts
    or their total, in minor units; ``None`` or 0 commitment means none (0).
    """
    if isinstance(usage_amounts_minor, int) and not isinstance(usage_amounts_minor, bool):
        amounts = [usage_amounts_minor]
    else:
        amounts = list(usage_amounts_minor)  # type: ignore[arg-type]
    for a in amounts:
        if isinstance(a, bool) or not isinstance(a, int):
            raise MoneyTypeError(f"usage amounts must be int minor units, got {a!r}")
    if commitment_minor is None:
        return 0
    if isinstance(commitment_minor, bool) or not isinstance(commitment_minor, int):
        raise MoneyTypeError(f"commitment must be int minor units, got {commitment_minor!r}")
    if commitment_minor < 0:
        raise ValueError(f"commitment must not be negative, got {commitment_minor}")
    return max(0, commitment_minor - sum(amounts))
