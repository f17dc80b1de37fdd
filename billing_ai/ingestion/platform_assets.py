"""Billing platforms -> raw.<platform>_* -> core.* (usage files live in usage_assets).

One raw multi-asset per platform pulls a full snapshot through that platform's
connector (HTTP only, no warehouse connection held), then replaces every raw
table of the platform in one transaction. A platform that is not configured
(its resource has no ``api_base``) lands empty tables, so the core model's
union over platforms needs no special case. Core tables are SQL models,
``sql/core/<platform>/<table>.sql`` united by name over every platform, one
asset each, rebuilt in a transaction so a failed build leaves the previous
table.
"""

import contextlib
import json
from datetime import datetime

import dagster as dg
import polars as pl

from billing_ai import contract
from billing_ai import warehouse as wh
from billing_ai.ingestion.checks import RULES_BY_TABLE, Outcome, Scope, evaluate_table, tables_read_by_rules
from billing_ai.ingestion.quarantine import QUARANTINE_DDL
from billing_ai.metadata import check_owners, markdown_preview
from billing_ai.platforms.registry import PLATFORM_SPECS
from billing_ai.platforms.spec import QUARANTINE_KEY, PlatformSpec
from billing_ai.resources import WAREHOUSE_POOL, PipelineSettings, WarehouseResource

CORE_TABLES = (
    "customers",
    "products",
    "prices",
    "price_tiers",
    "meters",
    "subscriptions",
    "subscription_items",
    "invoices",
    "invoice_lines",
    "payments",
    "credit_notes",
    "meter_usage_summaries",
)


def raw_key(platform: str, obj: str) -> dg.AssetKey:
    return dg.AssetKey(["raw", f"{platform}_{obj}"])


def raw_ids(spec: PlatformSpec, obj: str, rows: list[dict]) -> list[str | None]:
    """The raw ``id`` column of ``rows``: each payload's id field, as text."""
    field = spec.id_field(obj)
    return [None if r.get(field) is None else str(r.get(field)) for r in rows]


def write_raw(con, spec: PlatformSpec, obj: str, rows: list[dict], landed_at: datetime, replace: bool) -> int:
    """Write ``rows`` as raw.<platform>_<obj> rows (``id``, ``payload`` JSON, ``landed_at``): the whole table
    (``replace``, a snapshot) or appended (a targeted refresh, after deleting what it replaces)."""
    df = pl.DataFrame(
        {"id": raw_ids(spec, obj, rows), "payload": [json.dumps(r) for r in rows]},
        schema={"id": pl.String, "payload": pl.String},
    )
    select = "SELECT id, payload::JSON AS payload, ?::TIMESTAMPTZ AS landed_at FROM _raw_rows"
    con.register("_raw_rows", df)
    try:
        table = spec.raw_table(obj)
        wh.run(
            con,
            f"CREATE OR REPLACE TABLE {table} AS {select}" if replace else f"INSERT INTO {table} {select}",
            [landed_at],
        )
    finally:
        con.unregister("_raw_rows")
    return df.height


def land_raw(con, spec: PlatformSpec, snapshot: dict[str, list[dict]], landed_at: datetime) -> dict[str, int]:
    """Replace every raw.<platform>_* table with the snapshot (missing objects land empty), and this
    platform's rows of core.quarantine with the objects its connector refused. Caller holds the transaction."""
    wh.run(con, QUARANTINE_DDL)
    wh.run(con, "DELETE FROM core.quarantine WHERE source LIKE ? ESCAPE '\\'", [f"{spec.name}\\_%"])
    bad = snapshot.get(QUARANTINE_KEY, [])
    if bad:
        q = pl.DataFrame(
            {
                "source": [f"{spec.name}_{b['object']}" for b in bad],
                "record_key": [b["record_key"] for b in bad],
                "partition_date": [None] * len(bad),
                "reason": [b["reason"] for b in bad],
                "detail": [b.get("detail", "") for b in bad],
                "record": [b["record"] for b in bad],
                "quarantined_at": [landed_at] * len(bad),
            },
            schema={
                "source": pl.String,
                "record_key": pl.String,
                "partition_date": pl.Date,
                "reason": pl.String,
                "detail": pl.String,
                "record": pl.String,
                "quarantined_at": pl.Datetime("us", "UTC"),
            },
        )
        wh.write_frame(con, "core.quarantine", q)
    counts = {QUARANTINE_KEY: len(bad)}
    for name in spec.raw_objects:
        counts[name] = write_raw(con, spec, name, snapshot.get(name, []), landed_at, replace=True)
    return counts


def raw_platform_asset(spec: PlatformSpec) -> dg.AssetsDefinition:
    @dg.multi_asset(
        name=f"{spec.name}_raw",
        specs=[
            dg.AssetSpec(
                raw_key(spec.name, o),
                group_name="ingestion",
                kinds={spec.name, "duckdb", *spec.kinds},
                description=f"{spec.name.title()} {o.replace('_', ' ')} as landed (PII tokenized).",
            )
            for o in spec.raw_objects
        ],
        pool=WAREHOUSE_POOL,
        required_resource_keys={"warehouse", "settings", spec.resource_key},
        # a platform outage longer than the client's own retries: try the step again later
        retry_policy=dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL),
    )
    def _raw(context: dg.AssetExecutionContext):
        settings: PipelineSettings = context.resources.settings
        warehouse: WarehouseResource = context.resources.warehouse
        platform = getattr(context.resources, spec.resource_key)
        now = settings.clock().now()
        stats: dict = {}
        if platform.enabled:
            conn = platform.connector(settings.pii_key)
            snapshot = conn.fetch_snapshot(now, context.log.info)
            stats = dict(conn.stats)
        else:
            snapshot = {}
            context.log.info(f"{spec.name} is not configured (no api_base): its raw tables land empty")
        with warehouse.connect() as con, wh.transaction(con):
            counts = land_raw(con, spec, snapshot, now)
        refused: dict[str, int] = {}
        for b in snapshot.get(QUARANTINE_KEY, []):
            refused[b["object"]] = refused.get(b["object"], 0) + 1
        for obj in spec.raw_objects:
            # records in = landed + quarantined, per object
            yield dg.MaterializeResult(
                asset_key=raw_key(spec.name, obj),
                metadata={
                    "dagster/row_count": counts[obj],
                    "quarantined": refused.get(obj, 0),
                    "records_in": counts[obj] + refused.get(obj, 0),
                    "configured": platform.enabled,
                    **{k: v for k, v in stats.items() if isinstance(v, int)},
                },
            )

    return _raw


# The catalog: every platform serving the same merchant price (same canonical id) holds its own copy of it.
# core keeps one row per canonical id -- the copy of the first platform in registry order -- so everything
# downstream joins on the canonical id alone; core.catalog_platform_ids keeps every copy's platform id and
# a hash of its terms, and the blocking check ``catalog_copies_agree`` fails when two copies of one id
# differ in anything that rating reads (then the id does not name one price, and rating would be wrong).
CATALOG: dict[str, tuple[tuple[str, ...], str | None, tuple[str, ...]]] = {
    # table: (key, its platform-id column, terms that must agree across copies)
    "products": (("product_id",), "platform_product_id", ("name", "component")),
    # a meter is known by its name everywhere (usage events carry it); Recurly mints the meter's id
    "meters": (("meter_name",), "platform_meter_id", ("aggregation",)),
    "prices": (
        ("price_id",),
        "platform_price_id",
        (
            "product_id",
            "plan",
            "component",
            "currency",
            "usage_type",
            "billing_scheme",
            "tiers_mode",
            "unit_amount_decimal",
            "package_size",
            "package_rounding",
            "meter_name",
            "billing_interval",
            "billing_interval_count",
        ),
    ),
    "price_tiers": (("price_id", "tier_index"), None, ("up_to", "unit_amount_decimal", "flat_amount")),
}
CATALOG_IDS_DDL = """
CREATE TABLE IF NOT EXISTS core.catalog_platform_ids (
    object VARCHAR, canonical_id VARCHAR, platform VARCHAR, platform_id VARCHAR, terms_hash VARCHAR)"""


def _platform_rank() -> str:
    return "CASE platform " + " ".join(f"WHEN '{s.name}' THEN {i}" for i, s in enumerate(PLATFORM_SPECS)) + " END"


def build_core_table(con, table: str, in_transaction: bool = False) -> int:
    """Rebuild core.<table> from every platform's mapping, in one transaction (catalog tables: one row per
    canonical id, every platform's copy recorded in core.catalog_platform_ids). ``in_transaction``: in
    the caller's, which decides whether it lands (see webhooks.refresh)."""
    selects = [wh.read_sql(f"core/{s.name}/{table}.sql") for s in PLATFORM_SPECS if table in s.core_sources]
    body = "\nUNION ALL BY NAME\n".join(f"({s})" for s in selects)
    with contextlib.nullcontext() if in_transaction else wh.transaction(con):
        if table not in CATALOG:
            wh.run(con, f"CREATE OR REPLACE TABLE core.{table} AS {body}")
        else:
            key, id_col, terms = CATALOG[table]
            wh.run(con, f"CREATE OR REPLACE TEMP TABLE _copies AS SELECT *, {_platform_rank()} AS _rank FROM ({body})")
            wh.run(
                con,
                f"""CREATE OR REPLACE TABLE core.{table} AS SELECT * EXCLUDE (_rank) FROM _copies
                            QUALIFY row_number() OVER (PARTITION BY {", ".join(key)} ORDER BY _rank) = 1
                            ORDER BY {", ".join(key)}""",
            )
            wh.run(con, CATALOG_IDS_DDL)
            wh.run(con, "DELETE FROM core.catalog_platform_ids WHERE object = ?", [table])
            canonical = " || '#' || ".join(f"CAST({k} AS VARCHAR)" for k in key)
            wh.run(
                con,
                f"""INSERT INTO core.catalog_platform_ids
                            SELECT ?, {canonical}, platform, {id_col or "NULL"},
                                   md5(CAST(to_json(struct_pack({", ".join(terms)})) AS VARCHAR))
                            FROM _copies""",
                [table],
            )
            wh.run(con, "DROP TABLE _copies")
    return wh.count(con, f"core.{table}")


def check_specs(table: str) -> list[dg.AssetCheckSpec]:
    key = dg.AssetKey(["core", table])
    return [
        dg.AssetCheckSpec(
            r.name, asset=key, blocking=r.blocking, description=r.description, metadata=check_owners("core")
        )
        for r in RULES_BY_TABLE.get(table, [])
    ]


def _reported(o: Outcome, **extra) -> dict:
    """What Dagster is told of a rule's outcome: name, verdict, violations (with a sample), severity."""
    meta = {"violations": o.violations, **o.extra, **extra}
    if o.violations:
        meta["sample"] = markdown_preview(o.sample)
    return {
        "check_name": o.rule.name,
        "passed": o.passed,
        "metadata": meta,
        "severity": dg.AssetCheckSeverity.WARN if o.rule.warn_only else dg.AssetCheckSeverity.ERROR,
    }


def check_results(con, table: str, scope: Scope) -> list[dg.AssetCheckResult]:
    """Evaluate the table's rules on the step's own connection."""
    return [dg.AssetCheckResult(**_reported(o)) for o in evaluate_table(con, table, scope)]


def check_evaluation(table: str, o: Outcome, **extra) -> dg.AssetCheckEvaluation:
    """A rule's outcome on core.<table> evaluated outside the table's asset (an op, e.g. a targeted refresh)."""
    return dg.AssetCheckEvaluation(asset_key=dg.AssetKey(["core", table]), **_reported(o, **extra))


def _core_asset(table: str) -> dg.AssetsDefinition:
    @dg.asset(
        key=dg.AssetKey(["core", table]),
        check_specs=check_specs(table),
        deps=[raw_key(s.name, o) for s in PLATFORM_SPECS for o in s.core_sources.get(table, ())]
        + [dg.AssetKey(["core", t]) for t in sorted(tables_read_by_rules(table))],
        group_name="core",
        kinds={"duckdb", "sql"},
        pool=WAREHOUSE_POOL,
        description=contract.table(f"core.{table}").description,  # the analyst contract's words
    )
    def _build(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: PipelineSettings
    ) -> dg.MaterializeResult:
        scope = Scope(now=settings.clock().now())
        with warehouse.connect() as con:
            n = build_core_table(con, table)
            preview = con.sql(f"SELECT * FROM core.{table} LIMIT 5").pl()
            by_platform = dict(wh.run(con, f"SELECT platform, count(*) FROM core.{table} GROUP BY 1 ORDER BY 1"))
            checks = check_results(con, table, scope)
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": n,
                "rows_by_platform": dg.MetadataValue.json(by_platform),
                "preview": markdown_preview(preview),
            },
            check_results=checks,
        )

    _build.__name__ = f"core_{table}"
    return _build


platform_raw_assets = [raw_platform_asset(s) for s in PLATFORM_SPECS]
core_platform_assets = [_core_asset(t) for t in CORE_TABLES]
