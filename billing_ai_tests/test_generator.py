"""The synthetic world: deterministic, shaped as specified, ground truth kept apart."""

from decimal import Decimal

import polars as pl
import pytest

from billing_ai.sandbox.generator import generate_world, write_world
from billing_ai.sandbox.invoicing import price_amount
from billing_ai.sandbox.world import WorldConfig, WorldPaths, add_months

SMALL = WorldConfig(seed=3, customers=15, days=40)


@pytest.fixture(scope="module")
def small_world():
    return generate_world(SMALL)


def test_same_seed_same_world(small_world):
    again = generate_world(SMALL)
    for name, df in small_world.tables.items():
        assert again.tables[name].equals(df), name
    assert again.events.equals(small_world.events)
    other = generate_world(WorldConfig(seed=4, customers=15, days=40))
    assert not other.events.equals(small_world.events)


def test_written_files_are_byte_identical(tmp_path, small_world):
    a = WorldPaths(tmp_path / "a", tmp_path / "a_inbox")
    b = WorldPaths(tmp_path / "b", tmp_path / "b_inbox")
    write_world(small_world, a)
    write_world(generate_world(SMALL), b)
    files_a = sorted(p.name for p in a.inbox_dir.iterdir())
    assert files_a == sorted(p.name for p in b.inbox_dir.iterdir())
    assert {p.rsplit(".", 1)[1] for p in files_a} == {"parquet", "ndjson", "csv"}
    for name in files_a:
        assert (a.inbox_dir / name).read_bytes() == (b.inbox_dir / name).read_bytes(), name
    # ground truth lives apart from the platform tables the sandbox serves
    assert (a.truth / "faults.parquet").exists() and not (a.platform / "faults.parquet").exists()


def test_world_covers_price_models_and_currencies(small_world):
    prices = small_world.tables["prices"]
    assert set(prices["currency"]) == {"usd", "eur", "jpy"}
    assert set(prices["billing_scheme"]) == {"per_unit", "tiered"}
    assert set(prices["tiers_mode"].drop_nulls()) == {"graduated", "volume"}
    assert prices.filter(pl.col("divide_by").is_not_null()).height == 3  # starter API calls, per currency
    assert set(small_world.tables["meters"]["meter_name"]) == {"api_calls", "storage_gb_hours", "compute_seconds"}


def test_events_never_before_their_subscription_started_and_faults_recorded(small_world):
    ev, subs = small_world.events, small_world.tables["subscriptions"]
    joined = ev.join(subs.select("subscription_id", "start"), on="subscription_id")
    assert joined.filter(pl.col("ts") < pl.col("start") - 3600).height == 0
    kinds = set(small_world.truth["faults"]["kind"])
    assert "duplicate" in kinds
    dups = small_world.truth["faults"].filter(pl.col("kind") == "duplicate")
    originals = ev.filter(pl.col("event_id").is_in(dups["original_event_id"].to_list()))
    assert originals.height == dups.height


def test_spike_magnitudes_within_spec():
    w = generate_world(WorldConfig(seed=5, customers=40, days=60, spike_rate=0.5, drop_rate=0.5))
    f = w.truth["faults"]
    spikes, drops = f.filter(pl.col("kind") == "spike"), f.filter(pl.col("kind") == "drop")
    assert spikes.height > 0 and drops.height > 0
    assert spikes["magnitude"].min() >= 3 and spikes["magnitude"].max() <= 10
    assert ((spikes["end"] - spikes["start"]) // 3600).is_between(1, 6).all()
    assert drops["magnitude"].max() <= 0.2
    assert ((drops["end"] - drops["start"]) // 3600).min() >= 6


def test_invoice_totals_add_up(small_world):
    inv, lines = small_world.tables["invoices"], small_world.tables["invoice_lines"]
    sums = lines.group_by("invoice_id").agg(
        pl.col("amount").sum().alias("s"), pl.col("discount_amount").sum().alias("d")
    )
    j = inv.join(sums, on="invoice_id", how="left").fill_null(0)
    assert (j["subtotal"] == j["s"]).all()
    assert (j["total"] == j["s"] - j["d"]).all()


def test_platform_price_amounts_hand_checked():
    # growth API calls, USD: 100k free, then 0.05c to 1M, then 0.03c
    growth = {
        "billing_scheme": "tiered",
        "tiers_mode": "graduated",
        "tiers_json": '[{"up_to": 100000, "unit_amount_decimal": "0", "flat_amount": 0},'
        ' {"up_to": 1000000, "unit_amount_decimal": "0.05", "flat_amount": 0},'
        ' {"up_to": null, "unit_amount_decimal": "0.03", "flat_amount": 0}]',
    }
    assert price_amount(growth, Decimal(230375)) == Decimal("6518.75")  # 130,375 x 0.05
    assert price_amount(growth, Decimal(1_500_000)) == Decimal(45000 + 15000)
    volume = {
        "billing_scheme": "tiered",
        "tiers_mode": "volume",
        "tiers_json": '[{"up_to": 1000000, "unit_amount_decimal": "0.04", "flat_amount": 2500},'
        ' {"up_to": null, "unit_amount_decimal": "0.025", "flat_amount": 0}]',
    }
    assert price_amount(volume, Decimal(1_000_000)) == Decimal(40000 + 2500)
    assert price_amount(volume, Decimal(1_000_001)) == Decimal("25000.025")
    package = {"billing_scheme": "per_unit", "unit_amount_decimal": "50", "divide_by": 1000, "round": "up"}
    assert price_amount(package, Decimal(1001)) == Decimal(100)
    assert price_amount(package, Decimal(1000)) == Decimal(50)


def test_add_months_keeps_anchor_day():
    from datetime import UTC, datetime

    jan31 = datetime(2026, 1, 31, tzinfo=UTC)
    assert add_months(jan31, 1).day == 28
    assert add_months(add_months(jan31, 1), 1, anchor_day=31).day == 31


def test_a_negative_invoice_total_becomes_credit_not_a_negative_amount_due():
    """Stripe never asks for a negative amount: a downgrade's net credit goes to the customer's balance."""
    w = generate_world(WorldConfig(seed=8, customers=40, days=75, downgrade_rate=0.6, upgrade_rate=0.3))
    inv = w.tables["invoices"]
    assert inv["amount_due"].min() >= 0
    negative = inv.filter(pl.col("total") < 0)
    assert negative.height > 0  # the case is exercised
    assert (negative["ending_balance"] == negative["starting_balance"] + negative["total"]).all()
    assert (negative["amount_due"] == 0).all()


def test_current_period_is_the_month_holding_as_of_with_month_ends_clamped():
    """The period every platform facade shows as current: Jan 31 anchors clamp to Feb 28, then Mar 31;
    a subscription anchored after as_of (created at the world's end) shows its first period."""
    from datetime import UTC, datetime

    from billing_ai.sandbox.invoicing import current_period

    def t(*ymd):
        return int(datetime(*ymd, tzinfo=UTC).timestamp())

    assert current_period(t(2026, 1, 31), t(2026, 3, 5)) == (t(2026, 2, 28), t(2026, 3, 31))
    assert current_period(t(2026, 1, 31), t(2026, 2, 28)) == (t(2026, 2, 28), t(2026, 3, 31))  # at a bound
    assert current_period(t(2026, 4, 10), t(2026, 3, 5)) == (t(2026, 4, 10), t(2026, 5, 10))
