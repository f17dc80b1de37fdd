"""The one Definitions object: assets, jobs, schedules, sensors, resources.

Settings come from the environment (see README, Configuration); secrets only
through ``EnvVar``.
"""

import os
from datetime import UTC, timedelta

import dagster as dg

from billing_ai.actions.assets import (
    ACTION_ASSETS,
    ActionsResource,
    PushResource,
    approve_actions_job,
    ops_sync_on_ledger_change,
    ops_tables,
    push_action_job,
    push_approved_actions,
)
from billing_ai.anomalies.assets import ANOMALY_ASSETS, HOURLY_ANOMALY_ASSETS, usage_hourly_partitions
from billing_ai.evaluation.assets import EVALUATION_ASSETS, GroundTruth
from billing_ai.forecasting.assets import FORECAST_ASSETS, SELECTION_ASSETS
from billing_ai.ingestion.partitions import usage_daily_partitions
from billing_ai.ingestion.platform_assets import core_platform_assets, platform_raw_assets
from billing_ai.ingestion.publish import publish_asset
from billing_ai.ingestion.usage_assets import core_usage_events, raw_usage_events
from billing_ai.marts.usage import usage_bucket_assets
from billing_ai.platforms.chargebee.resource import ChargebeeResource
from billing_ai.platforms.recurly.resource import RecurlyResource
from billing_ai.platforms.stripe.resource import StripeResource
from billing_ai.platforms.zuora.resource import ZuoraResource
from billing_ai.rating.assets import rating_marts
from billing_ai.resources import DEFAULT_INBOX, DEFAULT_WAREHOUSE, PipelineSettings, WarehouseResource
from billing_ai.webhooks.refresh import targeted_refresh_job
from billing_ai.webhooks.sensors import webhook_sensor

PLATFORM_ASSETS = [*platform_raw_assets, raw_usage_events, *core_platform_assets]
USAGE_ASSETS = [core_usage_events, *usage_bucket_assets]
ANALYTICS_ASSETS = [rating_marts, *ANOMALY_ASSETS, *FORECAST_ASSETS, *ACTION_ASSETS]
published_warehouse = publish_asset(
    deps=[k for a in [*core_platform_assets, *USAGE_ASSETS, *ANALYTICS_ASSETS] for k in a.keys]
)
PUBLISH_ASSETS = [published_warehouse]

# a failed run is retried (run_retries in dagster.yaml); writes are idempotent, so retries never double-count
RUN_RETRIES = {"dagster/max_retries": "2"}

# One job per partitions definition: a job over mixed partitions does not resolve.
platform_sync_job = dg.define_asset_job(
    "platform_sync_job",
    selection=dg.AssetSelection.assets(*PLATFORM_ASSETS, *PUBLISH_ASSETS),
    description="Snapshot the billing platform and land new usage files (unpartitioned).",
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
    description="Rating, tier positions, invoice reconciliation and the proposals it makes, then publish.",
    tags=RUN_RETRIES,
)

# Within the hour: land new usage files and rebuild today's usage partition, then look for anomalies in the
# hour that just ended (a daily-partitioned job, then an hourly-partitioned one: one job per partitions def).
usage_intraday_job = dg.define_asset_job(
    "usage_intraday_job",
    selection=dg.AssetSelection.assets(raw_usage_events, *USAGE_ASSETS),
    description="Land new usage files and rebuild today's usage partition (hourly, for anomaly detection).",
    tags=RUN_RETRIES,
)
usage_anomalies_hourly_job = dg.define_asset_job(
    "usage_anomalies_hourly_job",
    selection=dg.AssetSelection.assets(*HOURLY_ANOMALY_ASSETS),
    partitions_def=usage_hourly_partitions,
    description="Anomalies revealed by the hour that just ended; confident ones proposed for review.",
    tags=RUN_RETRIES,
)

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

ops_sync_job = dg.define_asset_job(
    "ops_sync_job",
    selection=dg.AssetSelection.assets(ops_tables, *PUBLISH_ASSETS),
    description="Take approvals and push outcomes from the action ledger into the ops tables, then publish.",
)

evaluation_job = dg.define_asset_job(
    "evaluation_job",
    selection=dg.AssetSelection.assets(*EVALUATION_ASSETS),
    description="Score the analytics against the sandbox world's ground truth (sandbox only).",
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


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[usage_intraday_job],
    request_job=usage_anomalies_hourly_job,
    name="anomalies_after_intraday",
    description="After each intraday usage run: detect anomalies in the hour that just ended (pipeline clock).",
)
def anomalies_after_intraday(context: dg.RunStatusSensorContext):
    from billing_ai.clock import Clock

    now = Clock.from_setting(os.environ.get("BILLING_AI_AS_OF", "")).now()
    return dg.RunRequest(run_key=f"anomalies-{context.dagster_run.run_id}", partition_key=hour_that_ended(now))


def hour_that_ended(now) -> str:
    """The hourly partition to score at ``now``: the last complete hour."""
    return (now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)).strftime("%Y-%m-%d-%H:%M")


LATE_WINDOW_DAYS = int(os.environ.get("BILLING_AI_LATE_WINDOW_DAYS", "14"))


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


def _secret_if_set(name: str) -> str:
    """An EnvVar for a platform that may not be used here: a deployment without it needs no such variable."""
    return dg.EnvVar(name) if os.environ.get(name) else ""


def default_resources() -> dict:
    return {
        "warehouse": WarehouseResource(path=os.environ.get("BILLING_AI_WAREHOUSE", DEFAULT_WAREHOUSE)),
        "stripe": StripeResource(
            api_key=dg.EnvVar("STRIPE_API_KEY"),
            api_base=os.environ.get("STRIPE_API_BASE", "https://api.stripe.com"),
            requests_per_second=float(os.environ.get("STRIPE_REQUESTS_PER_SECOND", "20")),
        ),
        "zuora": ZuoraResource(
            api_base=os.environ.get("ZUORA_API_BASE", ""),
            client_id=_secret_if_set("ZUORA_CLIENT_ID"),
            client_secret=_secret_if_set("ZUORA_CLIENT_SECRET"),
            requests_per_second=float(os.environ.get("ZUORA_REQUESTS_PER_SECOND", "10")),
        ),
        "recurly": RecurlyResource(
            api_base=os.environ.get("RECURLY_API_BASE", ""),
            api_key=_secret_if_set("RECURLY_API_KEY"),
            requests_per_second=float(os.environ.get("RECURLY_REQUESTS_PER_SECOND", "20")),
        ),
        "chargebee": ChargebeeResource(
            api_base=os.environ.get("CHARGEBEE_API_BASE", ""),
            api_key=_secret_if_set("CHARGEBEE_API_KEY"),
            requests_per_second=float(os.environ.get("CHARGEBEE_REQUESTS_PER_SECOND", "10")),
        ),
        "actions": ActionsResource(
            ledger_path=os.environ.get("BILLING_AI_LEDGER", "data/ops/actions.sqlite"),
            heads_file=os.environ.get("BILLING_AI_AUDIT_HEADS", "data/ops/audit_heads.jsonl"),
        ),
        "push": PushResource(
            stripe_api_key=dg.EnvVar("STRIPE_PUSH_API_KEY"),
            stripe_api_base=os.environ.get("STRIPE_API_BASE", "https://api.stripe.com"),
            recurly_api_key=_secret_if_set("RECURLY_PUSH_API_KEY"),
            recurly_api_base=os.environ.get("RECURLY_API_BASE", ""),
            chargebee_api_key=_secret_if_set("CHARGEBEE_PUSH_API_KEY"),
            chargebee_api_base=os.environ.get("CHARGEBEE_API_BASE", ""),
            case_url=os.environ.get("BILLING_AI_CASE_URL", "http://127.0.0.1:12111/sinks/cases"),
            chat_webhook_url=dg.EnvVar("BILLING_AI_CHAT_WEBHOOK_URL"),
            outbox_dir=os.environ.get("BILLING_AI_OUTBOX", "data/outbox"),
            zuora_api_base=os.environ.get("ZUORA_API_BASE", ""),
            zuora_client_id=_secret_if_set("ZUORA_PUSH_CLIENT_ID"),
            zuora_client_secret=_secret_if_set("ZUORA_PUSH_CLIENT_SECRET"),
        ),
        "truth": GroundTruth(path=os.environ.get("BILLING_AI_TRUTH_DIR", "data/world/truth")),
        "settings": PipelineSettings(
            as_of=os.environ.get("BILLING_AI_AS_OF", ""),
            inbox_dir=os.environ.get("BILLING_AI_INBOX", DEFAULT_INBOX),
            pii_key=dg.EnvVar("BILLING_AI_PII_KEY"),
        ),
    }


defs = dg.Definitions(
    assets=[
        *PLATFORM_ASSETS,
        *USAGE_ASSETS,
        *ANALYTICS_ASSETS,
        *HOURLY_ANOMALY_ASSETS,
        *SELECTION_ASSETS,
        *PUBLISH_ASSETS,
        *EVALUATION_ASSETS,
    ],
    jobs=[
        targeted_refresh_job,
        platform_sync_job,
        usage_daily_job,
        analytics_job,
        usage_intraday_job,
        usage_anomalies_hourly_job,
        forecast_selection_job,
        ops_sync_job,
        approve_actions_job,
        push_action_job,
        evaluation_job,
    ],
    schedules=[nightly_schedule, hourly_usage_intraday, weekly_forecast_selection],
    sensors=[
        usage_after_platform_sync,
        analytics_after_usage,
        anomalies_after_intraday,
        push_approved_actions,
        ops_sync_on_ledger_change,
        webhook_sensor(platform_sync_job),
    ],
    resources=default_resources(),
)
