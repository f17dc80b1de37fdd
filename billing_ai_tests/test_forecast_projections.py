"""End-of-cycle projections: hand-checked sums, intervals, crossing odds, days, tiers and plan comparisons."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import polars as pl
import pytest

from billing_ai.forecasting import projections as pj
from billing_ai.rating.plans import PricePlan, Tier

NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)
END = datetime(2026, 11, 4, tzinfo=UTC)


def forecasts(item: str = "si_a") -> pl.DataFrame:
    days = [datetime(2026, 11, d, tzinfo=UTC) for d in (1, 2, 3, 4, 5)]
    return pl.DataFrame(
        {
            "series_id": item,
            "ds": days,
            "yhat": 10.0,
            "yhat_lo": 8.0,
            "yhat_hi": 12.0,
            "model": "MSTL",
            "backtest_error": 0.1,
        }
    )


def test_period_projection_by_hand():
    positions = pl.DataFrame({"subscription_item_id": ["si_a"], "units_used": [Decimal("100")], "period_end": [END]})
    p = pj.period_projection(forecasts(), positions, NOW, level=80).row(0, named=True)
    # half of Nov 1 (now is noon) + Nov 2 + Nov 3; Nov 4 starts at the period end
    assert p["remaining"] == pytest.approx(25.0)
    assert p["projected"] == pytest.approx(125.0)
    # each day's spread is (12 - 8) / 2 / z; the sum's is sqrt(0.5^2 + 1 + 1) = 1.5 times that, so the
    # interval is 125 -/+ 1.5 * 2 = 3
    assert p["projected_lo"] == pytest.approx(122.0) and p["projected_hi"] == pytest.approx(128.0)
    assert p["model"] == "MSTL"


def test_crossing_probability_and_days_until():
    sigma = 3.0 / pj.z_of(80)
    assert pj.crossing_probability(125.0, sigma, 100.0, 125.0) == pytest.approx(0.5)
    assert pj.crossing_probability(125.0, sigma, 100.0, 128.0) == pytest.approx(0.10, abs=1e-3)  # the 90% bound
    assert pj.crossing_probability(125.0, sigma, 130.0, 120.0) == 1.0  # already past it
    assert pj.crossing_probability(125.0, sigma, 100.0, None) == 0.0  # top tier
    path = [
        (datetime(2026, 11, 1, tzinfo=UTC), 5.0),
        (datetime(2026, 11, 2, tzinfo=UTC), 10.0),
        (datetime(2026, 11, 3, tzinfo=UTC), 10.0),
    ]
    # 100 + 5 by midnight (0.5 day), 7 more of Nov 2's 10 -> 0.5 + 0.7 days
    assert pj.days_until(path, 100.0, 112.0, NOW) == pytest.approx(1.2)
    assert pj.days_until(path, 100.0, 200.0, NOW) is None and pj.days_until(path, 120.0, 110.0, NOW) == 0.0
    assert pj.next_days(NOW, END) == 4


def plan(pid: str, unit: str | None = None, usage: str = "metered", tiers: tuple[Tier, ...] = ()) -> PricePlan:
    if tiers:
        return PricePlan(pid, "usd", usage, "tiered", "graduated", tiers=tiers)
    return PricePlan(pid, "usd", usage, "per_unit", unit_amount_decimal=Decimal(unit))


def test_tiers_and_plan_comparison_by_hand():
    graduated = plan("p_g", tiers=(Tier(Decimal(1000), Decimal(0)), Tier(None, Decimal(2))))
    assert pj.tier_for(graduated, Decimal(1000)) == 0 and pj.tier_for(graduated, Decimal("1000.5")) == 1
    assert pj.tier_for(plan("p_u", "5"), Decimal(10)) is None
    prices = {
        ("starter", "api_calls", "usd"): plan("s_api", "5"),
        ("starter", "platform", "usd"): plan("s_fee", "1000", "licensed"),
        ("growth", "api_calls", "usd"): plan("g_api", "2"),
        ("growth", "platform", "usd"): plan("g_fee", "5000", "licensed"),
    }
    # 2,000 calls: starter 2,000 x 5 + 1,000 = 11,000; growth 2,000 x 2 + 5,000 = 9,000 (cents)
    now_bill, better = pj.cheaper_higher_plan("starter", "usd", prices, {"api_calls": Decimal(2000)}, {"platform": 1})
    assert (now_bill.amount, better.plan, better.amount) == (11000, "growth", 9000)
    assert better.lines == {"api_calls": 4000, "platform": 5000}
    # 1,000 calls: starter 6,000 < growth 7,000 -> no recommendation; the top plan has nothing higher
    assert pj.cheaper_higher_plan("starter", "usd", prices, {"api_calls": Decimal(1000)}, {"platform": 1}) is None
    assert pj.cheaper_higher_plan("scale", "usd", prices, {"api_calls": Decimal(1)}, {"platform": 1}) is None
    # switching the platform fee half-way: credit -500 for the unused half of 1,000, charge 2,500 of 5,000
    start = datetime(2026, 11, 1, tzinfo=UTC)
    net = pj.switch_proration(
        {"platform": prices[("starter", "platform", "usd")]},
        {"platform": prices[("growth", "platform", "usd")]},
        {"platform": 1},
        start + timedelta(days=15),
        start,
        start + timedelta(days=30),
    )
    assert net == 2000
    assert pj.as_quantity(1234.5678901234) == Decimal("1234.567890123") and pj.as_quantity(-1.0) == Decimal(0)
