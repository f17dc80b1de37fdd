"""The published read-only snapshot of the warehouse (what analysts and sensors read)."""

import dagster as dg

from billing_ai import warehouse as wh
from billing_ai.resources import WAREHOUSE_POOL, WarehouseResource

PUBLISHED_WAREHOUSE = dg.AssetKey(["published", "warehouse"])


def publish_asset(deps: list) -> dg.AssetsDefinition:
    @dg.asset(
        key=PUBLISHED_WAREHOUSE,
        deps=deps,
        group_name="ops",
        kinds={"duckdb"},
        pool=WAREHOUSE_POOL,
        description="A consistent read-only copy of the warehouse, swapped in atomically after writes: "
        "analysts and sensors query it while runs write the live file.",
    )
    def published_warehouse(warehouse: WarehouseResource) -> dg.MaterializeResult:
        with warehouse.connect() as con:
            target = wh.publish(con, warehouse.path)
            tables = wh.run(
                con, "SELECT count(*) FROM information_schema.tables WHERE table_schema IN ('core', 'marts', 'ops')"
            )[0][0]
        return dg.MaterializeResult(
            metadata={"path": str(target), "public_tables": tables, "bytes": target.stat().st_size}
        )

    return published_warehouse
