"""Invoice reconciliation and tier positions, through dagster.materialize, scored against ground truth."""

import shutil
from decimal import Decimal

import dagster as dg
import pytest

from billing_ai import warehouse as wh
from billing_ai.evaluation.reconciliation import evaluate_reconciliation
from billing_ai.pipeline import ANALYTICS_ASSETS, PUBLISH_ASSETS
from billing_ai.rating.engine import rate
from billing_ai.rating.plans import load_plans
from billing_ai.resources import WarehouseResource
from billing_ai.runner import materialize_all
from billing_ai.sandbox.generator import generate_world, write_world
from billing_ai.sandbox.server import SandboxServer
from billing_ai.sandbox.world import WorldConfig, WorldPaths
from billing_ai_tests.conftest import GeneratedWorld, pipeline_resources

# a world where the platform gets many invoices wrong, in every way the generator knows
ERROR_WORLD = WorldConfig(seed=21, customers=25, days=75, billing_error_rate=0.4, upgrade_rate=0.4, downgrade_rate=0.2)


LENIENT = {"max_mismatched_line_share": 1.0, "max_difference_share": 1.0}


@pytest.fixture(scope="module")
def error_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("error_world")
    paths = WorldPaths(root / "world", root / "inbox")
    world = generate_world(ERROR_WORLD)
    write_world(world, paths)
    gw = GeneratedWorld(config=ERROR_WORLD, world=world, paths=paths)
    with SandboxServer(paths.world_dir, root / "state") as server:
        res = pipeline_resources(server.url, root / "warehouse.duckdb", gw)
        # errors are deliberately everywhere here: the systemic-mismatch check would (rightly) block
        materialize_all(ERROR_WORLD, resources=res, say=lambda m: None, reconciliation_tolerance=LENIENT)
    return gw, root / "warehouse.duckdb", res


@pytest.fixture(scope="module")
def con(error_world):
    c = wh.connect(error_world[1], read_only=True)
    yield c
    c.close()


def test_every_injected_billing_error_is_found(error_world, con):
    result = evaluate_reconciliation(con, error_world[0].paths.truth)
    kinds = result["per_kind"]
    assert set(kinds) == {"wrong_tier", "missing_line", "duplicate_line", "proration_error", "late_usage"}
    assert all(k["truth"] > 0 for k in kinds.values())
    assert {k: v["recall"] for k, v in kinds.items()} == {k: 1.0 for k in kinds}
    assert result["error_precision"] == 1.0 and result["late_precision"] == 1.0
    # our amounts equal the platform's on every clean line, to the minor unit
    assert result["clean_lines"] > 50 and result["clean_line_mismatches"] == 0
    assert result["false_findings_on_clean_invoices"] == 0


def test_differences_are_the_injected_amounts(error_world, con):
    import polars as pl

    truth = pl.read_parquet(error_world[0].paths.truth / "billing_errors.parquet").filter(
        pl.col("kind").is_in(["wrong_tier", "proration_error"])
    )
    rec = con.sql("SELECT line_id, expected_amount, billed_amount FROM marts.invoice_reconciliation").pl()
    joined = truth.join(rec, on="line_id", suffix="_ours")
    assert joined.height == truth.height
    assert (joined["expected_amount"] == joined["expected_amount_ours"]).all()
    assert (joined["billed_amount"] == joined["billed_amount_ours"]).all()


def test_tier_positions_agree_with_the_engine(con):
    plans = load_plans(con)
    rows = wh.run(
        con,
        """SELECT price_id, units_used, amount_so_far, current_tier, current_tier_up_to,
                                 units_to_next_tier, tiers_mode FROM marts.tier_positions""",
    )
    assert len(rows) > 20
    tiered = 0
    for price_id, units, amount, tier, up_to, to_next, mode in rows:
        assert rate(plans[price_id], units).amount == amount
        if mode is None:
            assert tier is None and to_next is None
            continue
        tiered += 1
        tiers = plans[price_id].tiers
        assert tiers[tier].up_to == up_to
        assert up_to is None or (units <= up_to and (tier == 0 or units > tiers[tier - 1].up_to))
        assert to_next == (None if up_to is None else up_to - units)
    assert tiered > 5


def test_usage_behind_a_line_is_traceable_to_event_ids(con):
    line_id, qty = wh.run(
        con,
        """SELECT line_id, quantity_expected FROM marts.invoice_reconciliation
                                  WHERE finding = 'match' AND quantity_expected > 0 AND line_type = 'subscription'
                                    AND NOT is_proration AND late_quantity = 0 ORDER BY line_id LIMIT 1""",
    )[0]
    ids, total = wh.run(
        con,
        "SELECT count(DISTINCT event_id), sum(quantity) FROM marts.reconciliation_events WHERE line_id = ?",
        [line_id],
    )[0]
    assert ids > 0 and Decimal(total) == Decimal(qty)


def test_amounts_never_mix_currencies(con):
    mixed = wh.run(
        con,
        """SELECT invoice_id FROM marts.invoice_reconciliation WHERE invoice_id IS NOT NULL
                           GROUP BY 1 HAVING count(DISTINCT currency) > 1""",
    )
    assert mixed == []


def test_a_systemic_mismatch_fails_the_blocking_check(error_world, tmp_path):
    """Prices changed on the platform but not synced: most lines mismatch, the check fails and the
    snapshot (downstream) is not published from a broken reconciliation."""
    path = tmp_path / "w.duckdb"
    shutil.copy(error_world[1], path)
    c = wh.connect(path)
    wh.run(c, "UPDATE core.prices SET unit_amount_decimal = unit_amount_decimal * 2")
    wh.run(c, "UPDATE core.price_tiers SET unit_amount_decimal = unit_amount_decimal * 2")
    c.close()
    res = dict(error_world[2], warehouse=WarehouseResource(path=str(path)))
    result = dg.materialize([*ANALYTICS_ASSETS, *PUBLISH_ASSETS], resources=res, raise_on_error=False)
    evals = {e.check_name: e for e in result.get_asset_check_evaluations()}
    check = evals["reconciliation_within_tolerance"]
    assert check.passed is False
    assert check.metadata["mismatched_line_share"].value > 0.05
    materialized = {
        m.event_specific_data.materialization.asset_key.to_user_string()
        for m in result.get_asset_materialization_events()
    }
    assert "marts/invoice_reconciliation" in materialized and "published/warehouse" not in materialized


def test_isolated_errors_pass_the_check_with_the_default_tolerance(tiny_warehouse, tiny_world, tmp_path):
    path = tmp_path / "w.duckdb"
    shutil.copy(tiny_warehouse, path)
    res = pipeline_resources("http://127.0.0.1:9", path, tiny_world)  # no platform call is made
    result = dg.materialize([*ANALYTICS_ASSETS], resources=res)
    (check,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "reconciliation_within_tolerance"]
    assert check.passed and check.metadata["mismatched_lines"].value <= 2


def test_rating_by_pieces_equals_the_rules_applied_event_by_event(error_world, tmp_path):
    """rate_periods sums the events once per piece of their subscription's time line (reconcile.PIECES); the
    quantities, on-time quantities and event counts per window, and the usage no window covers, must be
    exactly those of the rules applied to every event. Edge cases added to the error world: events on every
    window edge and landed exactly at / just before the invoice, a day with several cuts (an item valid for
    hours on a renewal day) and a period with two invoices (windows disagreeing on finalized_at)."""
    from billing_ai.clock import parse_instant
    from billing_ai.rating import reconcile

    path = tmp_path / "w.duckdb"
    shutil.copy(error_world[1], path)
    con = wh.connect(path)
    now = parse_instant(ERROR_WORLD.as_of)
    with wh.transaction(con):
        wh.run(con, reconcile.PERIODS, {"now": now})
        wh.run(con, reconcile.WINDOWS, {"now": now})
        # an extra item, valid two to five hours after one renewal, and a second invoice for another period
        wh.run(
            con,
            """INSERT INTO core.subscription_items
                       SELECT i.* REPLACE ('si_edge' AS subscription_item_id,
                                           w.period_start + INTERVAL 2 HOUR AS valid_from,
                                           w.period_start + INTERVAL 5 HOUR AS valid_to)
                       FROM core.subscription_items i JOIN _windows w USING (subscription_item_id)
                       WHERE w.k = 1 ORDER BY w.w LIMIT 1""",
        )
        wh.run(
            con,
            """INSERT INTO core.invoices
                       SELECT * REPLACE ('in_edge' AS invoice_id, finalized_at + INTERVAL 1 DAY AS finalized_at)
                       FROM core.invoices WHERE invoice_id = (SELECT min(invoice_id) FROM _windows
                                                              WHERE finalized_at IS NOT NULL AND k = 1)""",
        )
        edges = ["usage_from", "usage_from + INTERVAL 1 MICROSECOND", "usage_to - INTERVAL 1 MICROSECOND", "usage_to"]
        landed = ["finalized_at - INTERVAL 1 MICROSECOND", "finalized_at", "NULL"]
        for i, ts in enumerate(edges):
            for j, at in enumerate(landed):
                wh.run(
                    con,
                    f"""INSERT INTO core.usage_events
                                SELECT u.* REPLACE ('edge_{i}_{j}_' || w.w AS event_id, w.{ts} AS event_ts,
                                                    CAST(w.{ts} AS DATE) AS event_date, {at} AS landed_at)
                                FROM _windows w JOIN core.usage_events u USING (subscription_id, meter_name)
                                QUALIFY row_number() OVER (PARTITION BY w.w ORDER BY u.event_id) = 1""",
                )
    with wh.transaction(con):
        reconcile.rate_periods(con, now)
        wh.run(con, reconcile.UNCOVERED)
        # the edge cases reached the general path
        assert wh.run(con, "SELECT count(*) FROM _slots WHERE piece IS NULL")[0][0] >= 2
        assert wh.run(con, "SELECT count(*) FROM _windows WHERE invoice_id = 'in_edge'")[0][0] > 0
        per_event = wh.run(
            con,
            """
            SELECT w.subscription_item_id, w.period_start, w.invoice_id,
                   coalesce(sum(u.quantity), 0),
                   coalesce(sum(u.quantity) FILTER (WHERE w.finalized_at IS NULL OR u.landed_at < w.finalized_at), 0),
                   count(u.event_id)
            FROM _windows w
            LEFT JOIN core.usage_events u ON u.subscription_id = w.subscription_id AND u.meter_name = w.meter_name
                                         AND u.event_ts >= w.usage_from AND u.event_ts < w.usage_to
            GROUP BY ALL ORDER BY ALL""",
        )
        ours = wh.run(
            con,
            """SELECT subscription_item_id, period_start, invoice_id, quantity, quantity_on_time,
                                     event_count FROM marts.rated_usage ORDER BY ALL""",
        )
        assert ours == per_event and sum(r[5] for r in ours) > 0
        uncovered_per_event = wh.run(
            con,
            """
            WITH uncovered AS (
                SELECT u.subscription_id, u.meter_name, u.event_ts, u.quantity,
                       CASE WHEN u.event_ts < s.started_at THEN 'before'
                            WHEN s.ended_at IS NOT NULL AND u.event_ts >= s.ended_at THEN 'after'
                            ELSE 'during' END AS phase
                FROM core.usage_events u
                JOIN core.subscriptions s ON s.subscription_id = u.subscription_id
                WHERE NOT EXISTS (SELECT 1 FROM _windows w WHERE w.subscription_id = u.subscription_id
                                    AND w.meter_name = u.meter_name
                                    AND u.event_ts >= w.usage_from AND u.event_ts < w.usage_to))
            SELECT u.subscription_id, u.meter_name, u.phase, p.k, sum(u.quantity), count(*),
                   min(u.event_ts), max(u.event_ts)
            FROM uncovered u
            ASOF LEFT JOIN _periods p ON p.subscription_id = u.subscription_id AND u.event_ts >= p.period_start
            GROUP BY ALL ORDER BY ALL""",
        )
        uncovered = wh.run(
            con,
            """SELECT subscription_id, meter_name, phase, k, quantity, event_count, first_ts,
                                          last_ts FROM _usage_agg ORDER BY ALL""",
        )
        assert uncovered == uncovered_per_event and len(uncovered) > 0
    con.close()


def test_usage_after_a_subscription_ended_keeps_its_window_and_counts(con):
    """Usage after a subscription ended is a row of its own (no period will bill it), with the window it
    spans, its units and events, and nothing billed -- every column named, so none goes missing in the union."""
    rows = con.sql("""
        SELECT r.*, (SELECT count(*) FROM core.usage_events u
                     WHERE u.subscription_id = r.subscription_id AND u.meter_name = r.meter_name
                       AND u.event_ts >= r.usage_from AND u.event_ts < r.usage_to) AS events_in_window,
                    s.ended_at
        FROM marts.invoice_reconciliation r JOIN core.subscriptions s USING (subscription_id)
        WHERE r.description LIKE 'usage after the subscription ended:%'""").pl()
    assert rows.height > 0  # the error world cancels subscriptions whose usage goes on
    for r in rows.iter_rows(named=True):
        assert r["finding"] == "unbilled_usage" and r["line_type"] == "usage"
        assert r["billed_amount"] == 0 and r["expected_amount"] is None
        assert r["period_start"] == r["usage_from"] and r["usage_from"] >= r["ended_at"]
        assert r["quantity_expected"] > 0 and r["event_count"] == r["events_in_window"] > 0
