"""The nightly chain and the hourly loop: which assets run together, the jobs over them, the schedules that
start them and the sensors that chain them.

Nightly, 02:00 UTC: ``platform_sync_job`` (platform snapshot, new usage files, core tables, publish) ->
on success ``usage_daily_job`` over the last ``BILLING_AI_LATE_WINDOW_DAYS`` days, where late events can
land, as one run -> on success ``analytics_job`` (rating, reconciliation, anomalies, forecasts, the
proposals they make, the ops tables, publish). Hourly at :05: ``usage_intraday_job`` (new files, today's
partition) -> ``usage_anomalies_hourly_job`` for the hour that ended. One job per partitions definition:
a job over assets with different partitions does not resolve. Run keys derive from the triggering run or
tick, so a re-evaluated tick launches nothing twice.

The write-back's jobs and sensors live with it (``billing_ai.actions.assets``), the weekly model selection
with the forecasts, the evaluation with its assets, the webhook-driven refresh in ``billing_ai.webhooks``.
"""

from __future__ import annotations

import os
import warnings
from datetime import UTC, datetime, timedelta

import dagster as dg

from billing_ai import contract
from billing_ai.actions.assets import ACTION_ASSETS
from billing_ai.anomalies.assets import ANOMALY_ASSETS, HOURLY_ANOMALY_ASSETS
from billing_ai.clock import Clock
from billing_ai.forecasting.assets import FORECAST_ASSETS
from billing_ai.ingestion.partitions import usage_daily_partitions
from billing_ai.ingestion.platform_assets import core_platform_assets, platform_raw_assets
from billing_ai.ingestion.publish import publish_asset
from billing_ai.ingestion.usage_assets import core_usage_events, raw_usage_events
from billing_ai.marts.usage import usage_bucket_assets
from billing_ai.rating.assets import rating_marts
from billing_ai.resources import RUN_RETRIES
from billing_ai.webhooks.sensors import webhook_sensor

PLATFORM_ASSETS = [*platform_raw_assets, raw_usage_events, *core_platform_assets]
USAGE_ASSETS = [core_usage_events, *usage_bucket_assets]
ANALYTICS_ASSETS = [rating_marts, *ANOMALY_ASSETS, *FORECAST_ASSETS, *ACTION_ASSETS]
# the snapshot analysts and sensors read: after everything that writes a public table
published_warehouse = publish_asset(
    deps=[k for a in [*core_platform_assets, *USAGE_ASSETS, *ANALYTICS_ASSETS] for k in a.keys]
)
PUBLISH_ASSETS = [published_warehouse]


def _side_table(name: str) -> dg.AssetSpec:
    """A public table several assets write on the side, each its own rows: in the graph downstream of its
    writers (the contract's ``written_by``), with its columns, never materialized on its own."""
    table = contract.table(name)
    writers = [k for a in [*PLATFORM_ASSETS, *USAGE_ASSETS] for k in a.keys]
    deps = [k for k in writers if table in contract.written_by(k.to_user_string())]
    return dg.AssetSpec(
        table.asset_key.split("/"), deps=deps, group_name="core", kinds={"duckdb"}, description=table.description
    )


SIDE_TABLES = [_side_table("core.quarantine"), _side_table("core.catalog_platform_ids")]

# Dagster's run_status_sensor passes `owners=` to SensorDefinition itself, which then warns that the
# parameter is beta (a BetaWarning raised inside Dagster for a parameter we never set): only that notice.
warnings.filterwarnings(
    "ignore", message=r"Parameter `owners` of initializer `SensorDefinition.__init__`", category=dg.BetaWarning
)

LATE_WINDOW_DAYS = int(os.environ.get("BILLING_AI_LATE_WINDOW_DAYS", "14"))

platform_sync_job = dg.define_asset_job(
    "platform_sync_job",
    selection=dg.AssetSelection.assets(*PLATFORM_ASSETS, *PUBLISH_ASSETS),
    description="Snapshot the billing platforms and land new usage files (unpartitioned).",
    tags=RUN_RETRIES,
)
usage_daily_job = dg.define_asset_job(
    "usage_daily_job",
    selection=dg.AssetSelection.assets(*USAGE_ASSETS),
    description="Validate and deduplicate usage events by event day (a date range runs as one run).",
    tags=RUN_RETRIES,
)
analytics_job = dg.define_asset_job(
    "analytics_job",
    selection=dg.AssetSelection.assets(*ANALYTICS_ASSETS, *PUBLISH_ASSETS),
    description="Rating, reconciliation, anomalies, forecasts and the proposals they make, the ops tables, "
    "then publish.",
    tags=RUN_RETRIES,
)
# Within the hour: land new usage files and rebuild today's usage partition, then look for anomalies in the
# hour that just ended (a daily-partitioned job, then an hourly-partitioned one).
usage_intraday_job = dg.define_asset_job(
    "usage_intraday_job",
    selection=dg.AssetSelection.assets(raw_usage_events, *USAGE_ASSETS),
    description="Land new usage files and rebuild today's usage partition (hourly, for anomaly detection).",
    tags=RUN_RETRIES,
)
usage_anomalies_hourly_job = dg.define_asset_job(
    "usage_anomalies_hourly_job",
    selection=dg.AssetSelection.assets(*HOURLY_ANOMALY_ASSETS),
    description="Anomalies revealed by the hour that just ended; confident ones proposed for review.",
    tags=RUN_RETRIES,
)

nightly_schedule = dg.ScheduleDefinition(
    name="nightly_platform_sync",
    job=platform_sync_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    description="02:00 UTC: platform snapshot; on success the usage job rebuilds the late window.",
)


@dg.schedule(
    job=usage_intraday_job,
    cron_schedule="5 * * * *",
    execution_timezone="UTC",
    name="hourly_usage_intraday",
    description="Every hour at :05: land the new usage files and rebuild today's usage partition.",
)
def hourly_usage_intraday(context: dg.ScheduleEvaluationContext):
    day = context.scheduled_execution_time.astimezone(UTC).date().isoformat()
    return dg.RunRequest(run_key=f"intraday-{context.scheduled_execution_time.isoformat()}", partition_key=day)


def hour_that_ended(now: datetime) -> str:
    """The hourly partition to score at ``now``: the last complete hour."""
    return (now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)).strftime("%Y-%m-%d-%H:%M")


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[usage_intraday_job],
    request_job=usage_anomalies_hourly_job,
    name="anomalies_after_intraday",
    description="After each intraday usage run: detect anomalies in the hour that just ended (pipeline clock).",
)
def anomalies_after_intraday(context: dg.RunStatusSensorContext):
    now = Clock.from_setting(os.environ.get("BILLING_AI_AS_OF", "")).now()
    return dg.RunRequest(run_key=f"anomalies-{context.dagster_run.run_id}", partition_key=hour_that_ended(now))


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[platform_sync_job],
    request_job=usage_daily_job,
    name="usage_after_platform_sync",
    description="After each successful platform sync, rebuild the usage days that late events can still touch.",
)
def usage_after_platform_sync(context: dg.RunStatusSensorContext):
    keys = usage_daily_partitions.get_partition_keys()
    window = keys[-LATE_WINDOW_DAYS:]
    if not window:
        return dg.SkipReason("no partitions yet")
    return dg.RunRequest(
        run_key=f"after-{context.dagster_run.run_id}",
        tags={"dagster/asset_partition_range_start": window[0], "dagster/asset_partition_range_end": window[-1]},
    )


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[usage_daily_job],
    request_job=analytics_job,
    name="analytics_after_usage",
    description="After each successful usage run, rebuild the analytics marts and publish the snapshot.",
)
def analytics_after_usage(context: dg.RunStatusSensorContext):
    return dg.RunRequest(run_key=f"analytics-{context.dagster_run.run_id}")


webhook_events = webhook_sensor(platform_sync_job)

JOBS = [platform_sync_job, usage_daily_job, analytics_job, usage_intraday_job, usage_anomalies_hourly_job]
SCHEDULES = [nightly_schedule, hourly_usage_intraday]
SENSORS = [usage_after_platform_sync, analytics_after_usage, anomalies_after_intraday, webhook_events]
