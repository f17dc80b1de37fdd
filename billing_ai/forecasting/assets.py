"""Dagster assets: weekly model selection, nightly end-of-cycle forecasts, tier projections, proposals."""

from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl

from billing_ai import contract
from billing_ai import warehouse as wh
from billing_ai.actions.resources import ActionsResource
from billing_ai.forecasting import projections as pj
from billing_ai.metadata import markdown_preview
from billing_ai.rating.plans import load_plans
from billing_ai.resources import RUN_RETRIES, WAREHOUSE_POOL, PipelineSettings, WarehouseResource

HISTORY_DAYS = 180
SELECTION_MAX_AGE = timedelta(days=7)  # the nightly run reuses a selection younger than this
SELECTION_HORIZON = 14  # cross-validation horizon (days) of the weekly selection
# the weekly selection also caches conformal calibration errors for nightly horizons up to this: a 31-day
# period counted from its first day (pj.next_days) -- longer periods raise it (see _calibration_horizon)
CALIBRATION_HORIZON = 32
LEVEL = 80

TIER_POSITIONS = dg.AssetKey(["marts", "tier_positions"])
USAGE_DAILY = dg.AssetKey(["marts", "usage_daily"])

HISTORY_SQL = """
SELECT subscription_item_id AS series_id, CAST(bucket_start AS TIMESTAMPTZ) AS ds, CAST(sum(quantity) AS DOUBLE) AS y
FROM marts.usage_daily
WHERE subscription_item_id IN (SELECT subscription_item_id FROM marts.tier_positions)
  AND bucket_start >= $start AND bucket_start < $today
GROUP BY ALL
"""
POSITIONS_SQL = """
SELECT t.*, p.plan, p.component FROM marts.tier_positions t JOIN core.prices p USING (price_id)
"""


def _history(con, now: datetime) -> pl.DataFrame:
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return con.sql(HISTORY_SQL, params={"start": today - timedelta(days=HISTORY_DAYS), "today": today}).pl()


@dg.asset(
    key=["marts", "forecast_model_selection"],
    deps=[USAGE_DAILY, TIER_POSITIONS],
    group_name="forecasting",
    pool=WAREHOUSE_POOL,
    description="Weekly: the forecasting model per series, chosen by rolling-origin cross-validation.",
)
def forecast_model_selection(warehouse: WarehouseResource, settings: PipelineSettings) -> dg.MaterializeResult:
    from billing_ai.forecasting.forecast import select_models

    now = settings.clock().now()
    with warehouse.connect() as con:
        history = _history(con, now)
        cal_h = _calibration_horizon(con)
        sel = select_models(history, SELECTION_HORIZON, "1d", calibration_horizon=cal_h).with_columns(
            pl.lit(now).cast(pl.Datetime("us", "UTC")).alias("chosen_at")
        )
        with wh.transaction(con):
            wh.replace_table(
                con, "marts.forecast_model_selection", contract.table("marts.forecast_model_selection").ddl(), sel
            )
    return dg.MaterializeResult(
        metadata={
            "series": sel.height,
            "by_model": dg.MetadataValue.json(dict(sel.group_by("model").len().rows())),
            "median_backtest_error": float(sel["backtest_error"].median() or 0.0),
            "calibration_horizon": cal_h,
            "calibrated": int(sel["calibration_errors"].is_not_null().sum()),
        }
    )


def _calibration_horizon(con) -> int:
    """The longest horizon a nightly run can ask for over the coming week: a whole current period."""
    periods = con.sql("SELECT period_start, period_end FROM marts.tier_positions").pl()
    return max([CALIBRATION_HORIZON, *(pj.next_days(s, e) for s, e in periods.iter_rows())])


def _selection(con, now: datetime) -> pl.DataFrame | None:
    if not wh.table_exists(con, "marts.forecast_model_selection"):
        return None
    sel = con.sql("SELECT * FROM marts.forecast_model_selection").pl()
    if sel.height == 0 or sel["chosen_at"].max() < now - SELECTION_MAX_AGE:
        return None  # stale: the nightly run selects again rather than reuse last month's choice
    return sel.drop("chosen_at")


def project(con, now: datetime) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, str]:
    """Forecasts, per-item projections, tier projections and how the models were chosen."""
    from billing_ai.forecasting.forecast import forecast_usage, select_models

    positions = con.sql(POSITIONS_SQL).pl()
    history = _history(con, now)
    horizon = max((pj.next_days(now, e) for e in positions["period_end"].to_list()), default=1)
    sel = _selection(con, now)
    cached = sel is not None
    if not cached:  # no fresh weekly choice: choose now, with the weekly job's cross-validation horizon
        sel = select_models(history, SELECTION_HORIZON, "1d", calibration_horizon=horizon)
    fc = forecast_usage(history, horizon, "1d", level=LEVEL, selection=sel)
    proj = pj.period_projection(fc, positions, now, LEVEL)
    plans = load_plans(con)
    paths: dict[str, list] = {}
    for r in fc.sort("ds").iter_rows(named=True):
        paths.setdefault(r["series_id"], []).append(r)
    rows = []
    for r in proj.iter_rows(named=True):
        plan = plans[r["price_id"]]
        used = float(r["units_used"])
        threshold = float(r["current_tier_up_to"]) if r["current_tier_up_to"] is not None else None
        day_parts = []
        for f in paths.get(r["subscription_item_id"], []):
            start = f["ds"]
            frac = max(
                0.0,
                min(1.0, (min(start + timedelta(days=1), r["period_end"]) - max(start, now)).total_seconds() / 86400),
            )
            day_parts.append((start, f["yhat"] * frac))
        q = pj.as_quantity(r["projected"])
        rows.append(
            {
                "subscription_item_id": r["subscription_item_id"],
                "current_tier": r["current_tier"],
                "projected_tier": pj.tier_for(plan, q),
                "tier_count": r["tier_count"],
                "next_threshold": r["current_tier_up_to"],
                "crossing_probability": round(pj.crossing_probability(r["projected"], r["sigma"], used, threshold), 4),
                "days_until_threshold": pj.days_until(day_parts, used, threshold, now),
                "projected_amount": pj.rate(plan, q).amount,
                "amount_so_far": r["amount_so_far"],
            }
        )
    tiers = proj.select(
        "subscription_item_id",
        "subscription_id",
        "customer_id",
        "price_id",
        "meter_name",
        "currency",
        "period_start",
        "period_end",
    ).join(pl.DataFrame(rows, infer_schema_length=None), on="subscription_item_id")
    how = "cached weekly selection" if cached else "selected in this run (no fresh weekly selection)"
    return fc, proj, tiers, how


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            ["marts", "usage_forecasts"],
            deps=[TIER_POSITIONS, USAGE_DAILY, dg.AssetKey(["marts", "forecast_model_selection"])],
            group_name="forecasting",
            description="Per subscription item: projected quantity at period end (actual so far + "
            "forecast), interval, model, backtest error; and the daily forecasts.",
        ),
        dg.AssetSpec(
            ["marts", "usage_forecast_daily"],
            deps=[dg.AssetKey(["marts", "usage_forecasts"])],
            group_name="forecasting",
            description="The daily forecasts behind marts.usage_forecasts, per series and day, with intervals.",
        ),
        dg.AssetSpec(
            ["marts", "tier_projections"],
            deps=[dg.AssetKey(["marts", "usage_forecasts"])],
            group_name="forecasting",
            description="Per subscription item: current and projected tier, chance of crossing the "
            "next threshold this period, projected amount (rating engine), days until.",
        ),
    ],
    pool=WAREHOUSE_POOL,
)
def usage_forecasts(context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: PipelineSettings):
    now = settings.clock().now()
    with warehouse.connect() as con:
        fc, proj, tiers, how = project(con, now)
        out = proj.select(
            "subscription_item_id",
            "subscription_id",
            "customer_id",
            "meter_name",
            "price_id",
            "currency",
            "period_start",
            "period_end",
            pl.lit(now).cast(pl.Datetime("us", "UTC")).alias("as_of"),
            pl.col("units_used").cast(pl.Float64),
            pl.col("remaining").alias("remaining_forecast"),
            pl.col("projected").alias("projected_quantity"),
            "projected_lo",
            "projected_hi",
            pl.lit(LEVEL).alias("interval_level"),
            "model",
            "backtest_error",
        )
        with wh.transaction(con):
            for name, frame in (("usage_forecasts", out), ("usage_forecast_daily", fc), ("tier_projections", tiers)):
                wh.replace_table(con, f"marts.{name}", contract.table(f"marts.{name}").ddl(), frame)
    yield dg.MaterializeResult(
        asset_key=["marts", "usage_forecasts"],
        metadata={
            "dagster/row_count": out.height,
            "models": how,
            "by_model": dg.MetadataValue.json(dict(out.group_by("model").len().rows())),
            "preview": markdown_preview(
                out.select(
                    "subscription_item_id",
                    "meter_name",
                    "units_used",
                    "projected_quantity",
                    "projected_lo",
                    "projected_hi",
                    "model",
                )
            ),
        },
    )
    yield dg.MaterializeResult(
        asset_key=["marts", "usage_forecast_daily"],
        metadata={"dagster/row_count": fc.height, "series": fc["series_id"].n_unique()},
    )
    likely = tiers.filter(pl.col("crossing_probability") >= 0.5)
    yield dg.MaterializeResult(
        asset_key=["marts", "tier_projections"],
        metadata={
            "dagster/row_count": tiers.height,
            "likely_to_cross": likely.height,
            "preview": markdown_preview(
                tiers.sort("crossing_probability", descending=True).select(
                    "subscription_item_id",
                    "current_tier",
                    "projected_tier",
                    "crossing_probability",
                    "days_until_threshold",
                    "projected_amount",
                )
            ),
        },
    )


FORECAST_PROPOSER = "analytics:usage_forecasts"
NOTICE_PROBABILITY = 0.7


def forecast_proposals(con, now: datetime, policy) -> list:
    """Tier-crossing notices, and upgrade quotes where a higher plan's projected bill is lower."""
    from billing_ai.money import format_minor
    from billing_ai.writeback.kinds import Proposal, action_id

    tiers = con.sql(
        "SELECT t.*, f.projected_quantity, f.units_used FROM marts.tier_projections t "
        "JOIN marts.usage_forecasts f USING (subscription_item_id)"
    ).pl()
    items = con.sql("""SELECT i.subscription_item_id, i.subscription_id, i.customer_id, i.price_id, i.usage_type,
                              i.quantity, p.plan, p.component, p.currency
                       FROM core.subscription_items i JOIN core.prices p USING (price_id)
                       WHERE i.is_current""").pl()
    plans = load_plans(con)
    platforms = dict(con.sql("SELECT customer_id, platform FROM core.customers").fetchall())
    by_key = {
        (r["plan"], r["component"], r["currency"]): plans[r["price_id"]]
        for r in con.sql("SELECT price_id, plan, component, currency FROM core.prices").pl().iter_rows(named=True)
    }
    out = []
    for r in tiers.filter(
        (pl.col("crossing_probability") >= NOTICE_PROBABILITY) & (pl.col("current_tier") < pl.col("tier_count") - 1)
    ).iter_rows(named=True):
        key = f"{r['subscription_item_id']}|{r['period_start']:%Y-%m-%d}|tier{r['current_tier']}"
        when = (
            f"in about {r['days_until_threshold']:.0f} days"
            if r["days_until_threshold"] is not None
            else "before the period ends"
        )
        summary = (
            f"{r['meter_name']}: {float(r['units_used']):,.0f} units used, {float(r['projected_quantity']):,.0f} "
            f"projected by {r['period_end']:%Y-%m-%d} against a tier threshold of "
            f"{float(r['next_threshold']):,.0f} ({r['crossing_probability']:.0%} likely to cross {when}); "
            f"projected amount {format_minor(r['projected_amount'], r['currency'])}"
        )
        out.append(
            Proposal(
                action_id=action_id(FORECAST_PROPOSER, "customer_email", key),
                kind="customer_email",
                platform=platforms[r["customer_id"]],
                target_type="customer",
                target_id=r["customer_id"],
                params={
                    "template": "tier_crossing_notice",
                    "subject": "Your usage is about to reach the next tier",
                    "variables": {"meter": r["meter_name"], "date": f"{r['period_end']:%Y-%m-%d}", "summary": summary},
                },
                rationale=f"Likely tier crossing: {summary}.",
                evidence={k: str(v) for k, v in r.items()},
                confidence=float(r["crossing_probability"]),
                proposer=FORECAST_PROPOSER,
                created_at=now,
                expires_at=now + policy.ttl("customer_email"),
            )
        )
    for (sub, cust), group in items.group_by(["subscription_id", "customer_id"]):
        cur_plans = set(group["plan"].to_list())
        if len(cur_plans) != 1:
            continue
        current, currency = cur_plans.pop(), group["currency"][0]
        proj = tiers.filter(pl.col("subscription_id") == sub)
        metered = {row["meter_name"]: pj.as_quantity(row["projected_quantity"]) for row in proj.iter_rows(named=True)}
        licensed = {
            row["component"]: int(row["quantity"] or 1)
            for row in group.filter(pl.col("usage_type") == "licensed").iter_rows(named=True)
        }
        if not metered:
            continue
        found = pj.cheaper_higher_plan(current, currency, by_key, metered, licensed)
        if not found:
            continue
        now_bill, better = found
        saving = now_bill.amount - better.amount
        driver = max(metered, key=lambda c: now_bill.lines[c] - better.lines[c])
        item = group.filter(pl.col("component") == driver).row(0, named=True)
        period = proj.filter(pl.col("meter_name") == driver).row(0, named=True)
        old = {c: by_key[(current, c, currency)] for c in licensed}
        new = {c: by_key[(better.plan, c, currency)] for c in licensed}
        proration = pj.switch_proration(old, new, licensed, now, period["period_start"], period["period_end"])
        lines = ", ".join(
            f"{c} {format_minor(now_bill.lines[c], currency)} -> {format_minor(better.lines[c], currency)}"
            for c in now_bill.lines
        )
        rationale = (
            f"At its projected usage this period the customer pays {format_minor(now_bill.amount, currency)} "
            f"on {current} and would pay {format_minor(better.amount, currency)} on {better.plan} "
            f"(saves {format_minor(saving, currency)}): {lines}. Switching now prorates the licensed fees "
            f"to a net {format_minor(proration, currency)} on the next invoice."
        )
        out.append(
            Proposal(
                action_id=action_id(
                    FORECAST_PROPOSER, "tier_upgrade_quote", f"{sub}|{period['period_start']:%Y-%m-%d}"
                ),
                kind="tier_upgrade_quote",
                platform=platforms[cust],
                target_type="customer",
                target_id=cust,
                params={
                    "subscription": sub,
                    "item": item["subscription_item_id"],
                    "from_price": item["price_id"],
                    "to_price": by_key[(better.plan, driver, currency)].price_id,
                    "currency": currency,
                    "projected_saving": saving,
                    "prorated_change": proration,
                    "to_plan": better.plan,
                },
                rationale=rationale,
                evidence={
                    "current_plan": current,
                    "target_plan": better.plan,
                    "current_bill": now_bill.amount,
                    "target_bill": better.amount,
                    "lines_current": now_bill.lines,
                    "lines_target": better.lines,
                    "projected_quantities": {k: str(v) for k, v in metered.items()},
                    "licensed": licensed,
                },
                confidence=0.8,
                proposer=FORECAST_PROPOSER,
                created_at=now,
                expires_at=now + policy.ttl("tier_upgrade_quote"),
            )
        )
    return out


@dg.asset(
    key=["ledger", "forecast_proposals"],
    deps=[dg.AssetKey(["marts", "tier_projections"]), dg.AssetKey(["marts", "usage_forecasts"])],
    group_name="actions",
    pool=WAREHOUSE_POOL,
    description="Proactive notices for likely tier crossings and upgrade quotes where a higher plan is cheaper "
    "at the projected usage, proposed in the action ledger for review.",
)
def forecast_proposals_asset(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    settings: PipelineSettings,
    actions: ActionsResource,
) -> dg.MaterializeResult:
    now = settings.clock().now()
    policy, ledger = actions.policy(), actions.ledger()
    with warehouse.connect() as con:
        proposals = forecast_proposals(con, now, policy)
    counts = ledger.propose(proposals, policy, now)
    ledger.record_head(Path(actions.heads_file), context.run.run_id)
    kinds = pl.Series([p.kind for p in proposals], dtype=pl.String).value_counts().rows() if proposals else []
    return dg.MaterializeResult(
        metadata={
            "proposals": len(proposals),
            "by_kind": dg.MetadataValue.json(dict(kinds)),
            **{f"ledger_{k}": v for k, v in counts.items()},
        }
    )


FORECAST_ASSETS = [usage_forecasts, forecast_proposals_asset]
SELECTION_ASSETS = [forecast_model_selection]

forecast_selection_job = dg.define_asset_job(
    "forecast_selection_job",
    selection=dg.AssetSelection.assets(*SELECTION_ASSETS),
    description="Choose the forecasting model per series by rolling-origin cross-validation (weekly).",
    tags=RUN_RETRIES,
)
weekly_forecast_selection = dg.ScheduleDefinition(
    name="weekly_forecast_selection",
    job=forecast_selection_job,
    cron_schedule="0 1 * * 0",
    execution_timezone="UTC",
    description="Sundays 01:00 UTC: refresh the model choice; the nightly forecasts reuse it for a week.",
)
