"""The Definitions object: jobs per partitions definition, the schedule and the sensors."""

from datetime import date

import dagster as dg

from billing_ai.definitions import (
    LATE_WINDOW_DAYS,
    analytics_after_usage,
    defs,
    nightly_schedule,
    platform_sync_job,
    usage_after_platform_sync,
    usage_daily_job,
)


def test_definitions_load_and_every_asset_is_in_a_job():
    repo = defs.get_repository_def()
    in_jobs = set()
    for name in (
        "platform_sync_job",
        "usage_daily_job",
        "analytics_job",
        "usage_anomalies_hourly_job",
        "forecast_selection_job",
        "evaluation_job",
    ):
        job = defs.resolve_job_def(name)
        in_jobs |= set(job.asset_layer.executable_asset_keys)
    assert {k for k in repo.asset_graph.get_all_asset_keys()} <= in_jobs


def test_each_job_has_one_partitions_definition():
    platform = defs.resolve_job_def("platform_sync_job")
    usage = defs.resolve_job_def("usage_daily_job")
    assert platform.partitions_def is None
    assert isinstance(usage.partitions_def, dg.DailyPartitionsDefinition)
    assert usage.tags["dagster/max_retries"] == "2" and platform.tags["dagster/max_retries"] == "2"


def test_nightly_schedule_targets_the_platform_sync():
    ctx = dg.build_schedule_context(scheduled_execution_time=None)
    req = nightly_schedule.evaluate_tick(ctx).run_requests[0]
    assert nightly_schedule.job_name == platform_sync_job.name and nightly_schedule.cron_schedule == "0 2 * * *"
    assert req.job_name in (None, "platform_sync_job")


def test_after_the_sync_the_late_window_is_rebuilt_in_one_run(monkeypatch):
    monkeypatch.setenv("BILLING_AI_PII_KEY", "k")
    monkeypatch.setenv("STRIPE_API_KEY", "k")
    run_id = "7c3e2b9a-1d4f-4e6a-9b8c-0a1b2c3d4e5f"
    with dg.instance_for_test() as instance:
        run = instance.create_run_for_job(defs.resolve_job_def("analytics_job"), run_id=run_id)
        ctx = dg.build_run_status_sensor_context(
            sensor_name=usage_after_platform_sync.name,
            dagster_instance=instance,
            dagster_run=run,
            dagster_event=dg.DagsterEvent(event_type_value="PIPELINE_SUCCESS", job_name="platform_sync_job"),
        )
        req = usage_after_platform_sync(ctx)
    start, end = req.tags["dagster/asset_partition_range_start"], req.tags["dagster/asset_partition_range_end"]
    assert (date.fromisoformat(end) - date.fromisoformat(start)).days == LATE_WINDOW_DAYS - 1
    assert req.run_key == f"after-{run_id}"  # a re-evaluated tick launches nothing twice
    assert usage_after_platform_sync.job_name == usage_daily_job.name
    assert analytics_after_usage.job_name == "analytics_job"


def test_hourly_chain_lands_today_then_scores_the_hour_that_ended():
    from datetime import UTC, datetime

    from billing_ai.definitions import hour_that_ended, hourly_usage_intraday

    assert isinstance(defs.resolve_job_def("usage_anomalies_hourly_job").partitions_def, dg.HourlyPartitionsDefinition)
    ctx = dg.build_schedule_context(
        scheduled_execution_time=datetime(2026, 11, 1, 7, 5, tzinfo=UTC), repository_def=defs.get_repository_def()
    )
    (req,) = hourly_usage_intraday.evaluate_tick(ctx).run_requests
    assert req.partition_key == "2026-11-01" and hourly_usage_intraday.cron_schedule == "5 * * * *"
    assert hour_that_ended(datetime(2026, 11, 1, 7, 5, tzinfo=UTC)) == "2026-11-01-06:00"
    assert hour_that_ended(datetime(2026, 11, 1, 0, 0, tzinfo=UTC)) == "2026-10-31-23:00"
