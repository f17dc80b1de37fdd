"""The Definitions object: jobs per partitions definition, the schedule and the sensors."""

from datetime import date

import dagster as dg

from billing_ai.definitions import defs
from billing_ai.pipeline import (
    LATE_WINDOW_DAYS,
    analytics_after_usage,
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
    graph = repo.asset_graph
    executable = {k for k in graph.get_all_asset_keys() if graph.get(k).is_executable}
    assert executable <= in_jobs
    # the rest are the side tables several assets write (their columns shown, never materialized alone)
    assert {k.to_user_string() for k in set(graph.get_all_asset_keys()) - executable} == {
        "core/quarantine",
        "core/catalog_platform_ids",
    }


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

    from billing_ai.pipeline import hour_that_ended, hourly_usage_intraday

    assert isinstance(defs.resolve_job_def("usage_anomalies_hourly_job").partitions_def, dg.HourlyPartitionsDefinition)
    ctx = dg.build_schedule_context(
        scheduled_execution_time=datetime(2026, 11, 1, 7, 5, tzinfo=UTC), repository_def=defs.get_repository_def()
    )
    (req,) = hourly_usage_intraday.evaluate_tick(ctx).run_requests
    assert req.partition_key == "2026-11-01" and hourly_usage_intraday.cron_schedule == "5 * * * *"
    assert hour_that_ended(datetime(2026, 11, 1, 7, 5, tzinfo=UTC)) == "2026-11-01-06:00"
    assert hour_that_ended(datetime(2026, 11, 1, 0, 0, tzinfo=UTC)) == "2026-10-31-23:00"


# ---- Dagster idioms the UI and the analysts rely on ------------------------------------------------------------
def test_every_asset_has_owners_and_a_description_and_every_check_its_assets_owners():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.owners and node.owners[0].startswith("team:"), key
        assert node.description and node.description.strip(), key
    checks = list(graph.asset_check_keys)
    assert len(checks) > 40  # the core checks, the reconciliation tolerance, the audit chain
    for check_key in checks:
        check = graph.get(check_key)
        assert check.description and check.description.strip(), check_key
        owners = check.metadata["owners"]
        assert list(getattr(owners, "value", owners)) == list(graph.get(check_key.asset_key).owners), check_key


def test_every_public_tables_asset_carries_the_contracts_columns():
    from billing_ai import contract

    graph = defs.resolve_asset_graph()
    public = {k.to_user_string(): graph.get(k) for k in graph.get_all_asset_keys() if k.path[0] in contract.SCHEMAS}
    # every table of the contract has its asset in the UI, and every public asset is a table of the contract
    assert set(public) == {t.asset_key for t in contract.TABLES.values()}
    for key, node in public.items():
        table = contract.for_asset(key)
        schema = node.metadata["dagster/column_schema"]
        schema = getattr(schema, "schema", schema)  # (a TableSchemaMetadataValue once serialized)
        assert [(c.name, c.type, c.description) for c in schema.columns] == [
            (c.name, c.type, c.description) for c in table.columns
        ], key
        table_name = node.metadata["dagster/table_name"]
        assert getattr(table_name, "value", table_name) == f"warehouse.{table.name}"


def test_no_job_is_named_by_a_string_where_it_is_started():
    """Sensors, schedules and run requests reference job objects (``job=``, ``request_job=``, ``job.name``),
    never a literal name that can drift from the job's."""
    import ast
    from pathlib import Path

    import billing_ai

    found = []
    for path in Path(billing_ai.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "job_name" and isinstance(node.value, ast.Constant):
                found.append(f"{path.name}:{node.value.lineno}")
    assert found == []


def test_loading_the_definitions_raises_no_deprecation_from_our_code():
    import subprocess
    import sys

    code = (
        "import warnings\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    import billing_ai.definitions\n"
        "import billing_ai, os\n"
        "ours = os.path.dirname(billing_ai.__file__)\n"
        "print([f'{w.filename}:{w.lineno} {w.message}' for w in seen\n"
        "       if issubclass(w.category, DeprecationWarning) and w.filename.startswith(ours)])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_anomaly_proposals_are_an_asset_of_their_own_downstream_of_the_mart():
    graph = defs.resolve_asset_graph()
    nightly = dg.AssetKey(["ledger", "anomaly_proposals"])
    hourly = dg.AssetKey(["ledger", "anomaly_proposals_hourly"])
    assert dg.AssetKey(["marts", "usage_anomalies"]) in graph.get(nightly).parent_keys
    assert dg.AssetKey(["marts", "usage_anomalies_hourly"]) in graph.get(hourly).parent_keys
    # the marts detect; they no longer open the action ledger
    for mart in ("usage_anomalies", "usage_anomalies_hourly"):
        assets_def = graph.assets_def_for_key(dg.AssetKey(["marts", mart]))
        assert "actions" not in assets_def.required_resource_keys
