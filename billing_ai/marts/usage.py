"""marts.usage_daily and marts.usage_hourly: usage per item and time bucket."""

from datetime import date, timedelta

import dagster as dg
import duckdb

from billing_ai import warehouse as wh
from billing_ai.ingestion.partitions import SINGLE_RUN_BACKFILL, usage_daily_partitions
from billing_ai.metadata import markdown_preview
from billing_ai.resources import WAREHOUSE_POOL, WarehouseResource

GRAINS = {"daily": "day", "hourly": "hour"}

DDL = """
CREATE TABLE IF NOT EXISTS marts.usage_{grain} (
    customer_id VARCHAR NOT NULL, subscription_id VARCHAR, subscription_item_id VARCHAR, meter_name VARCHAR NOT NULL,
    bucket_start TIMESTAMPTZ NOT NULL, quantity DECIMAL(38, 9) NOT NULL, event_count BIGINT NOT NULL,
    late_quantity DECIMAL(38, 9) NOT NULL)
"""


def build_usage_buckets(con: duckdb.DuckDBPyConnection, grain: str, start: date, end: date) -> int:
    """Replace the buckets of event days [start, end] in one transaction."""
    bucket = GRAINS[grain]
    wh.run(con, DDL.format(grain=grain))
    lo = "CAST($start AS TIMESTAMPTZ)"
    hi = "CAST($end AS TIMESTAMPTZ) + INTERVAL 1 DAY"
    params = {"start": start, "end": end}
    with wh.transaction(con):
        wh.run(con, f"DELETE FROM marts.usage_{grain} WHERE bucket_start >= {lo} AND bucket_start < {hi}", params)
        wh.run(
            con,
            f"INSERT INTO marts.usage_{grain} {wh.read_sql('marts/usage_buckets.sql')}",
            {**params, "bucket": bucket},
        )
    return wh.run(
        con, f"SELECT count(*) FROM marts.usage_{grain} WHERE bucket_start >= {lo} AND bucket_start < {hi}", params
    )[0][0]


def _usage_asset(grain: str) -> dg.AssetsDefinition:
    @dg.asset(
        key=dg.AssetKey(["marts", f"usage_{grain}"]),
        deps=[dg.AssetKey(["core", "usage_events"]), dg.AssetKey(["core", "subscription_items"])],
        partitions_def=usage_daily_partitions,
        backfill_policy=SINGLE_RUN_BACKFILL,
        group_name="usage",
        kinds={"duckdb", "sql"},
        pool=WAREHOUSE_POOL,
        description=f"Usage per customer, subscription item, meter and {GRAINS[grain]} "
        "(quantity, event count, late quantity).",
    )
    def _build(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        window = context.partition_time_window
        start, end = window.start.date(), window.end.date() - timedelta(days=1)
        with warehouse.connect() as con:
            n = build_usage_buckets(con, grain, start, end)
            preview = con.sql(f"SELECT * FROM marts.usage_{grain} ORDER BY bucket_start DESC LIMIT 5").pl()
        return dg.MaterializeResult(metadata={"dagster/row_count": n, "preview": markdown_preview(preview)})

    _build.__name__ = f"marts_usage_{grain}"
    return _build


usage_bucket_assets = [_usage_asset(g) for g in GRAINS]
