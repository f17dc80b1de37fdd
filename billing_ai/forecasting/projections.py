"""From daily forecasts to the end of the billing cycle: projected quantity, tier, amount, crossing odds,
and whether a higher plan would be cheaper. Pure functions over Polars frames and the rating engine.

* **Period projection**: actual so far + the forecast of what is left of the period. Each forecast
  day counts by its overlap with ``[now, period_end)`` (today is partly past; the period may end at
  the subscription's anchor time, mid-day). The interval of the sum adds the days' spreads as
  independent (``sqrt`` of the sum of squares): summing the bounds themselves would assume every day
  errs the same way at once, far too wide for a month.
* **Crossing probability**: the period total taken as normal around the projection with the spread
  of that interval (floored); the chance it reaches the next tier's threshold. Certain (1.0) when the
  units used already passed it.
* **Days until the threshold**: along the expected path (actual + cumulative forecast), interpolated
  within the day it is reached; None when the expectation stays below it this period.
* **Amounts** come from :func:`billing_ai.rating.engine.rate` on the projected quantity (integer
  minor units, the one rounding rule); a plan comparison rates every component of each plan in the
  customer's currency on the same projected quantities, licensed fees at their current quantities.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from statistics import NormalDist

import polars as pl

from billing_ai.rating.engine import plan_change_proration, rate
from billing_ai.rating.plans import PricePlan

PLAN_ORDER = ("starter", "growth", "scale")  # higher index = higher plan


def z_of(level: int) -> float:
    return NormalDist().inv_cdf(0.5 + level / 200)


def period_projection(forecasts: pl.DataFrame, positions: pl.DataFrame, now: datetime, level: int = 80) -> pl.DataFrame:
    """Per item: remaining forecast inside its period, the projected total and its interval.

    ``forecasts``: ``series_id, ds, yhat, yhat_lo, yhat_hi`` (daily, ``ds`` the day's start, UTC);
    ``positions``: ``subscription_item_id, units_used, period_end``. Returns ``positions`` plus
    ``remaining, projected, projected_lo, projected_hi, sigma, days_until_threshold``-ready path columns.
    """
    z = z_of(level)
    day = pl.duration(days=1)
    f = (
        forecasts.rename({"series_id": "subscription_item_id"})
        .with_columns(pl.col("ds").cast(pl.Datetime("us", "UTC")))
        .join(positions.select("subscription_item_id", "period_end"), on="subscription_item_id")
    )
    now_ = pl.lit(now).cast(pl.Datetime("us", "UTC"))
    overlap = (
        (
            pl.min_horizontal(pl.col("ds") + day, pl.col("period_end")) - pl.max_horizontal(pl.col("ds"), now_)
        ).dt.total_seconds()
        / 86400
    ).clip(0.0, 1.0)
    f = f.with_columns(overlap.alias("frac")).filter(pl.col("frac") > 0)
    f = f.with_columns(
        (pl.col("yhat") * pl.col("frac")).alias("part"),
        (((pl.col("yhat_hi") - pl.col("yhat_lo")) / (2 * z)) * pl.col("frac")).alias("sd_part"),
    )
    sums = f.group_by("subscription_item_id").agg(
        pl.col("part").sum().alias("remaining"),
        (pl.col("sd_part") ** 2).sum().sqrt().alias("sigma"),
        pl.col("model").first() if "model" in f.columns else pl.lit(None, pl.String).alias("model"),
        pl.col("backtest_error").first()
        if "backtest_error" in f.columns
        else pl.lit(None, pl.Float64).alias("backtest_error"),
    )
    out = positions.join(sums, on="subscription_item_id", how="left").with_columns(
        pl.col("remaining").fill_null(0.0),
        pl.col("sigma").fill_null(0.0),
        pl.col("units_used").cast(pl.Float64).alias("_used"),
    )
    return out.with_columns(
        (pl.col("_used") + pl.col("remaining")).alias("projected"),
        (pl.col("_used") + (pl.col("remaining") - z * pl.col("sigma")).clip(0.0)).alias("projected_lo"),
        (pl.col("_used") + pl.col("remaining") + z * pl.col("sigma")).alias("projected_hi"),
    ).drop("_used")


def crossing_probability(projected: float, sigma: float, used: float, threshold: float | None) -> float:
    """P(period total >= threshold) under N(projected, sigma); 1 if already there, 0 without a threshold."""
    if threshold is None:
        return 0.0
    if used >= threshold:
        return 1.0
    s = max(sigma, 1e-9 * max(abs(projected), 1.0))
    return 1.0 - NormalDist(projected, s).cdf(threshold)


def days_until(path: list[tuple[datetime, float]], used: float, threshold: float | None, now: datetime) -> float | None:
    """Days from ``now`` until the expected path (``used`` + each day's ``(day_start_or_now, expected)``
    in order) reaches ``threshold``; interpolated within the day; None if it does not this period."""
    if threshold is None:
        return None
    if used >= threshold:
        return 0.0
    total = used
    for start, part in path:
        if part > 0 and total + part >= threshold:
            begin = max(start, now)
            return round(((begin - now).total_seconds() / 86400) + (threshold - total) / part, 2)
        total += part
    return None


def tier_for(plan: PricePlan, quantity: Decimal) -> int | None:
    """Index of the tier a period total falls in (None for untiered prices)."""
    if not plan.tiers:
        return None
    for i, t in enumerate(plan.tiers):
        if t.up_to is None or quantity <= t.up_to:
            return i
    return len(plan.tiers) - 1


def as_quantity(x: float) -> Decimal:
    """A projected quantity as the exact decimal the rating engine takes (9 places, never negative)."""
    return Decimal(repr(max(x, 0.0))).quantize(Decimal("0.000000001"))


@dataclass(frozen=True)
class PlanQuote:
    plan: str
    amount: int  # projected period bill under the plan, minor units
    lines: dict[str, int]  # component -> amount


def plan_bill(
    plan: str,
    currency: str,
    prices: dict[tuple[str, str, str], PricePlan],
    metered: dict[str, Decimal],
    licensed: dict[str, int],
) -> PlanQuote | None:
    """Projected bill of one plan: each metered component rated on its projected quantity, each licensed
    component at the customer's current quantity. None if the plan lacks a component the customer uses."""
    lines: dict[str, int] = {}
    for component, qty in metered.items():
        p = prices.get((plan, component, currency))
        if p is None:
            return None
        lines[component] = rate(p, qty).amount
    for component, qty in licensed.items():
        p = prices.get((plan, component, currency))
        if p is None:
            return None
        lines[component] = rate(p, qty).amount
    return PlanQuote(plan, sum(lines.values()), lines)


def cheaper_higher_plan(
    current: str,
    currency: str,
    prices: dict[tuple[str, str, str], PricePlan],
    metered: dict[str, Decimal],
    licensed: dict[str, int],
) -> tuple[PlanQuote, PlanQuote] | None:
    """(current bill, the cheapest *higher* plan's bill) when a higher plan costs less this period."""
    if current not in PLAN_ORDER:
        return None
    now_bill = plan_bill(current, currency, prices, metered, licensed)
    if now_bill is None:
        return None
    options = [
        b
        for p in PLAN_ORDER[PLAN_ORDER.index(current) + 1 :]
        if (b := plan_bill(p, currency, prices, metered, licensed)) is not None and b.amount < now_bill.amount
    ]
    if not options:
        return None
    return now_bill, min(options, key=lambda b: b.amount)


def switch_proration(
    old: dict[str, PricePlan],
    new: dict[str, PricePlan],
    licensed: dict[str, int],
    change_at: datetime,
    period_start: datetime,
    period_end: datetime,
) -> int:
    """Net proration (minor units) of moving the licensed components now: the credits for unused time on
    the old prices plus the charges for the rest of the period on the new ones, as Stripe bills them."""
    net = 0
    for component, qty in licensed.items():
        if component in old and component in new:
            net += plan_change_proration(
                old[component], new[component], change_at, period_start, period_end, quantity=qty
            ).net
    return net


def next_days(now: datetime, period_end: datetime) -> int:
    """Forecast horizon (days) that covers ``[now, period_end)``."""
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((period_end - start) / timedelta(days=1)) + 1)
