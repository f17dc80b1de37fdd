"""Dagster assets over the anomaly detectors: the nightly table and the hourly partitions, and the proposals
made from each (assets of their own, in the ledger)."""

from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl

from billing_ai import contract
from billing_ai import warehouse as wh
from billing_ai.actions.proposers import proposals_from_anomalies
from billing_ai.actions.resources import ActionsResource
from billing_ai.anomalies.detect import OUTPUT_SCHEMA, detect_anomalies, episodes
from billing_ai.clock import PARTITION_START
from billing_ai.metadata import markdown_preview
from billing_ai.resources import WAREHOUSE_POOL, PipelineSettings, WarehouseResource

HISTORY_DAYS = 42  # events the detectors see: six weeks of level, hour-of-day and weekday profile
PROPOSE_DAYS = 7  # the nightly run proposes actions for anomalies this recent (older ones are history)

USAGE_SQL = """
SELECT event_id, customer_id, meter_name, event_ts AS ts, quantity, endpoint, region, project, subscription_id
FROM core.usage_events WHERE event_ts >= $start AND event_ts < $end
"""
SUBSCRIPTIONS_SQL = "SELECT customer_id, started_at, canceled_at FROM core.subscriptions"
CUSTOMERS_SQL = "SELECT customer_id, success_manager, platform FROM core.customers"

usage_hourly_partitions = dg.HourlyPartitionsDefinition(
    start_date=f"{PARTITION_START}-00:00", timezone="UTC", end_offset=1
)


def detect_window(con, now: datetime, history_days: int = HISTORY_DAYS) -> pl.DataFrame:
    """Run the detectors over the events of the ``history_days`` before ``now``."""
    usage = con.sql(USAGE_SQL, params={"start": now - timedelta(days=history_days), "end": now}).pl()
    subs = con.sql(SUBSCRIPTIONS_SQL).pl()
    flags = detect_anomalies(usage, "1h", subscriptions=subs, now=now)
    return flags.with_columns(pl.lit(now).cast(pl.Datetime("us", "UTC")).alias("detected_at"))


def _metadata(flags: pl.DataFrame) -> dict:
    by_kind = flags.filter(pl.col("is_anomaly")).group_by("kind").len().sort("kind").rows()
    return {
        "dagster/row_count": flags.height,
        "anomalies": int(flags["is_anomaly"].sum() or 0),
        "by_kind": dg.MetadataValue.json(dict(by_kind)),
        "preview": markdown_preview(
            flags.filter(pl.col("is_anomaly")).select(
                "customer_id", "meter_name", "ts", "kind", "score", "observed", "expected", "root_cause"
            )
        ),
    }


USAGE_ANOMALIES = dg.AssetKey(["marts", "usage_anomalies"])
USAGE_ANOMALIES_HOURLY = dg.AssetKey(["marts", "usage_anomalies_hourly"])
DETECTOR_INPUTS = [
    dg.AssetKey(["core", "usage_events"]),
    dg.AssetKey(["core", "subscriptions"]),
    dg.AssetKey(["core", "customers"]),
]


@dg.asset(
    key=USAGE_ANOMALIES,
    deps=DETECTOR_INPUTS,
    group_name="anomalies",
    pool=WAREHOUSE_POOL,
    description="Nightly: flagged usage buckets (hourly grain) over the last six weeks, with evidence and a "
    "root-cause hint; candidates below the alert bar are kept for context.",
)
def usage_anomalies(warehouse: WarehouseResource, settings: PipelineSettings) -> dg.MaterializeResult:
    now = settings.clock().now()
    with warehouse.connect() as con:
        flags = detect_window(con, now)
        with wh.transaction(con):
            wh.replace_table(con, "marts.usage_anomalies", contract.table("marts.usage_anomalies").ddl(), flags)
    return dg.MaterializeResult(metadata=_metadata(flags))


@dg.asset(
    key=USAGE_ANOMALIES_HOURLY,
    deps=DETECTOR_INPUTS,
    partitions_def=usage_hourly_partitions,
    group_name="anomalies",
    pool=WAREHOUSE_POOL,
    description="Within the hour: the anomalies whose window ends in this hour, detected as soon as its events "
    "landed (usage_intraday_job).",
)
def usage_anomalies_hourly(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    hour = context.partition_time_window.start
    with warehouse.connect() as con:
        flags = detect_window(con, hour + timedelta(hours=1))
        # the windows ending in this hour reach back up to six hours (spikes) and two days (drops): keep the
        # buckets they flag, once, keyed by the hour that revealed them
        flags = flags.filter(pl.col("ts") >= hour - timedelta(hours=48)).with_columns(
            pl.lit(hour).cast(pl.Datetime("us", "UTC")).alias("partition_hour")
        )
        with wh.transaction(con):
            wh.run(
                con,
                f"CREATE TABLE IF NOT EXISTS marts.usage_anomalies_hourly "
                f"({contract.table('marts.usage_anomalies_hourly').ddl()})",
            )
            wh.run(con, "DELETE FROM marts.usage_anomalies_hourly WHERE partition_hour = $h", {"h": hour})
            wh.write_frame(con, "marts.usage_anomalies_hourly", flags)
    return dg.MaterializeResult(metadata=_metadata(flags))


# ---- proposals: each confident anomaly episode, for people to review ------------------------------------
ANOMALY_PROPOSER_COLUMNS = (
    "customer_id, meter_name, ts, kind, score, confidence, observed, expected, root_cause, evidence"
)


def propose_anomalies(con, flags_sql: str, params: dict, now: datetime, actions: ActionsResource, run_id: str) -> dict:
    """The anomalies ``flags_sql`` selects (``is_anomaly`` and recent), merged into episodes and proposed in
    the ledger: a support case, a success-manager message and, where it concerns the customer, a heads-up.
    Returns the ledger's counts and the number of episodes."""
    recent = con.sql(f"SELECT {ANOMALY_PROPOSER_COLUMNS} FROM ({flags_sql}) ORDER BY ALL", params=params).pl()
    if recent.height == 0:
        return {"episodes": 0, "new": 0, "existing": 0}
    eps = episodes(recent, "1h")
    policy, ledger = actions.policy(), actions.ledger()
    proposals = proposals_from_anomalies(eps, con.sql(CUSTOMERS_SQL).pl(), policy, now)
    counts = ledger.propose(proposals, policy, now)
    ledger.record_head(Path(actions.heads_file), run_id)
    return {"episodes": eps.height, **counts}


def _proposal_metadata(counts: dict) -> dict:
    return {
        f"proposals_{k}" if k != "episodes" else k: v
        for k, v in counts.items()
        if k in ("episodes", "new", "existing", "invalid")
    }


@dg.asset(
    key=["ledger", "anomaly_proposals"],
    deps=[USAGE_ANOMALIES, dg.AssetKey(["core", "customers"])],
    group_name="anomalies",
    pool=WAREHOUSE_POOL,
    description="Each confident anomaly of the last week (marts.usage_anomalies), proposed for review: a "
    "support case, a message to the success manager and, where it concerns the customer, a heads-up e-mail.",
)
def anomaly_proposals(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    settings: PipelineSettings,
    actions: ActionsResource,
) -> dg.MaterializeResult:
    now = settings.clock().now()
    with warehouse.connect() as con:
        counts = propose_anomalies(
            con,
            "SELECT * FROM marts.usage_anomalies WHERE is_anomaly AND ts >= $since",
            {"since": now - timedelta(days=PROPOSE_DAYS)},
            now,
            actions,
            context.run.run_id,
        )
    return dg.MaterializeResult(metadata=_proposal_metadata(counts))


@dg.asset(
    key=["ledger", "anomaly_proposals_hourly"],
    deps=[USAGE_ANOMALIES_HOURLY, dg.AssetKey(["core", "customers"])],
    partitions_def=usage_hourly_partitions,
    group_name="anomalies",
    pool=WAREHOUSE_POOL,
    description="Within the hour: each confident anomaly the hour revealed (its last six hours), proposed for "
    "review right away.",
)
def anomaly_proposals_hourly(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, actions: ActionsResource
) -> dg.MaterializeResult:
    hour = context.partition_time_window.start
    with warehouse.connect() as con:
        counts = propose_anomalies(
            con,
            "SELECT * FROM marts.usage_anomalies_hourly WHERE partition_hour = $hour AND is_anomaly AND ts >= $since",
            {"hour": hour, "since": hour - timedelta(hours=6)},
            hour + timedelta(hours=1),
            actions,
            context.run.run_id,
        )
    return dg.MaterializeResult(metadata=_proposal_metadata(counts))


ANOMALY_ASSETS = [usage_anomalies, anomaly_proposals]
HOURLY_ANOMALY_ASSETS = [usage_anomalies_hourly, anomaly_proposals_hourly]
__all__ = ["ANOMALY_ASSETS", "HOURLY_ANOMALY_ASSETS", "OUTPUT_SCHEMA", "usage_hourly_partitions"]
