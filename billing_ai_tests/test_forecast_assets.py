"""The nightly forecast assets through dagster.materialize on the tiny world: tables, tiers, proposals."""

from __future__ import annotations

import shutil
from decimal import Decimal

import dagster as dg

from billing_ai import warehouse as wh
from billing_ai_tests.conftest import pipeline_resources


def test_forecasts_tier_projections_and_proposals(tiny_warehouse, tiny_world, tmp_path):
    from billing_ai.forecasting.assets import SELECTION_ASSETS, forecast_proposals_asset, usage_forecasts
    from billing_ai.pipeline import ANALYTICS_ASSETS
    from billing_ai.rating.engine import rate
    from billing_ai.rating.plans import load_plans

    path = tmp_path / "w.duckdb"
    shutil.copy(tiny_warehouse, path)
    res = pipeline_resources("http://127.0.0.1:9", path, tiny_world)
    weekly = dg.materialize([*SELECTION_ASSETS, *ANALYTICS_ASSETS], resources=res, selection=[*SELECTION_ASSETS])
    assert weekly.success
    # the weekly choice carries the conformal calibration the nightly run reuses (45 days of history are
    # too few for its windows here, so the errors are null: the nightly run calibrates what lacks them)
    wmeta = weekly.asset_materializations_for_node("marts__forecast_model_selection")[0].metadata
    assert wmeta["calibration_horizon"].value >= 32
    con = wh.connect(path)
    cols = dict(
        wh.run(
            con,
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'forecast_model_selection'",
        )
    )
    con.close()
    assert list(cols)[:4] == ["series_id", "model", "backtest_error", "chosen_at"]
    assert cols["calibration_horizon"] == "INTEGER" and cols["calibration_errors"] == "DOUBLE[]"
    result = dg.materialize([*ANALYTICS_ASSETS], resources=res, selection=[usage_forecasts, forecast_proposals_asset])
    assert result.success
    meta = result.asset_materializations_for_node("usage_forecasts")[0].metadata
    assert meta["models"].value == "cached weekly selection"
    con = wh.connect(path)
    f = con.sql("SELECT * FROM marts.usage_forecasts").pl()
    t = con.sql("SELECT * FROM marts.tier_projections").pl()
    positions = wh.run(con, "SELECT count(*) FROM marts.tier_positions")[0][0]
    assert f.height == positions == t.height > 0
    assert (f["projected_quantity"] >= f["units_used"] - 1e-9).all()
    assert (f["projected_lo"] <= f["projected_quantity"]).all() and (f["projected_quantity"] <= f["projected_hi"]).all()
    assert f["model"].null_count() == 0
    assert t["crossing_probability"].is_between(0, 1).all()
    # the projected amount is the rating engine's on the projected quantity, to the minor unit
    plans = load_plans(con)
    for r in (
        t.join(f.select("subscription_item_id", "projected_quantity"), on="subscription_item_id")
        .head(20)
        .iter_rows(named=True)
    ):
        q = Decimal(repr(max(r["projected_quantity"], 0.0))).quantize(Decimal("0.000000001"))
        assert rate(plans[r["price_id"]], q).amount == r["projected_amount"]
    con.close()
    quotes = [a for a in res["actions"].ledger().actions() if a["kind"] == "tier_upgrade_quote"]
    for q in quotes:  # every quote's saving is reproduced by the rating engine from its own evidence
        import json

        ev = json.loads(q["evidence"])
        assert (
            sum(ev["lines_current"].values()) - sum(ev["lines_target"].values())
            == json.loads(q["params"])["projected_saving"]
            > 0
        )
