"""Assets over the usage event files: the landing ledger and core.usage_events."""

from datetime import date, timedelta

import dagster as dg

from billing_ai import warehouse as wh
from billing_ai.clock import PARTITION_START
from billing_ai.ingestion.checks import Scope
from billing_ai.ingestion.partitions import SINGLE_RUN_BACKFILL, usage_daily_partitions
from billing_ai.ingestion.platform_assets import check_results, check_specs
from billing_ai.ingestion.usage_events import build_usage_events
from billing_ai.ingestion.usage_files import land_inbox
from billing_ai.metadata import markdown_preview
from billing_ai.resources import WAREHOUSE_POOL, PipelineSettings, WarehouseResource


@dg.asset(
    key=dg.AssetKey(["raw", "usage_events"]),
    group_name="ingestion",
    kinds={"duckdb", "files"},
    pool=WAREHOUSE_POOL,
    description="Usage event files from the inbox, landed whole and once (ledger: raw.usage_files).",
)
def raw_usage_events(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: PipelineSettings
) -> dg.MaterializeResult:
    now = settings.clock().now()
    with warehouse.connect() as con:
        results = land_inbox(con, settings.inbox(), now, date.fromisoformat(PARTITION_START))
        ((total,),) = wh.run(con, "SELECT coalesce(sum(events), 0) FROM raw.usage_file_days")
        # event days touched by this landing: the partitions downstream should (re)build
        touched = [
            r[0].isoformat()
            for r in wh.run(
                con,
                """
            SELECT DISTINCT event_date FROM raw.usage_file_days
            WHERE file_id IN (SELECT file_id FROM raw.usage_files WHERE file_name IN (SELECT unnest(?::VARCHAR[])))
            ORDER BY 1""",
                [[r.file_name for r in results]],
            )
        ]
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        context.log.warning(f"unreadable usage file {r.file_name}: {r.error}")
    records = sum(r.records for r in results)
    landed = sum(r.landed for r in results)
    quarantined = sum(r.quarantined for r in results)
    return dg.MaterializeResult(
        metadata={
            "new_files": len(results),
            "failed_files": len(failed),
            "records_in": records,
            "records_landed": landed,
            "records_quarantined": quarantined,
            "dagster/row_count": int(total),
            "event_days_touched": len(touched),
            "first_day_touched": touched[0] if touched else "",
            "last_day_touched": touched[-1] if touched else "",
        }
    )


@dg.asset(
    key=dg.AssetKey(["core", "usage_events"]),
    deps=[
        dg.AssetKey(["raw", "usage_events"]),
        dg.AssetKey(["core", "customers"]),
        dg.AssetKey(["core", "subscriptions"]),
        dg.AssetKey(["core", "meters"]),
        dg.AssetKey(["core", "invoices"]),
        dg.AssetKey(["core", "subscription_items"]),
        dg.AssetKey(["core", "meter_usage_summaries"]),
    ],
    partitions_def=usage_daily_partitions,
    backfill_policy=SINGLE_RUN_BACKFILL,
    group_name="core",
    kinds={"duckdb", "sql"},
    pool=WAREHOUSE_POOL,
    check_specs=check_specs("usage_events"),
    description="Validated, deduplicated usage events by UTC event day; rejects go to core.quarantine.",
)
def core_usage_events(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: PipelineSettings
) -> dg.MaterializeResult:
    window = context.partition_time_window
    start = window.start.date()
    end = window.end.date() - timedelta(days=1)
    now = settings.clock().now()
    scope = Scope(now=now, start=start, end=end)
    with warehouse.connect() as con:
        stats = build_usage_events(con, start, end, now)
        checks = check_results(con, "usage_events", scope)
        preview = con.sql(
            "SELECT event_id, customer_id, meter_name, quantity, event_ts, is_late "
            "FROM core.usage_events WHERE event_date BETWEEN ? AND ? LIMIT 5",
            params=[start, end],
        ).pl()
    context.log.info(f"usage {start}..{end}: {stats}")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": stats["accepted"],
            "records_in": stats["records"],
            "records_accepted": stats["accepted"],
            "records_quarantined": stats["quarantined"],
            "late_events": stats["late"],
            "preview": markdown_preview(preview),
        },
        check_results=checks,
    )
