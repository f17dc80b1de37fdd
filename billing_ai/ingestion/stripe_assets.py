"""Stripe -> raw.stripe_* -> core.* (the platform objects; usage files live in usage_assets).

The raw asset pulls a full snapshot through the connector (HTTP only, no
warehouse connection held), then replaces every raw table in one transaction.
Core tables are SQL models in ``sql/core/<platform>/<table>.sql``, one asset
each, rebuilt in a transaction so a failed build leaves the previous table.
"""


import json
from datetime import UTC, date, datetime
from decimal import Decimal

import dagster as dg
import polars as pl

from billing_ai import warehouse as wh
from billing_ai.ingestion.checks import RULES_BY_TABLE, Scope, evaluate_table, tables_read_by_rules
from billing_ai.ingestion.partitions import PARTITION_START
from billing_ai.metadata import markdown_preview
from billing_ai.resources import WAREHOUSE_POOL, PipelineSettings, StripeResource, WarehouseResource

RAW_OBJECTS = ("customers", "products", "prices", "meters", "subscriptions", "invoices", "invoice_lines",
               "payment_intents", "credit_notes", "meter_event_summaries")


def raw_key(obj: str) -> dg.AssetKey:
    return dg.AssetKey(["raw", f"stripe_{obj}"])


def fetch_stripe_snapshot(conn, now: datetime, log=None) -> dict[str, list[dict]]:
    """Every object ingestion needs, as scrubbed dicts. HTTP only."""
    say = log or (lambda _m: None)
    out: dict[str, list[dict]] = {}
    for name in ("customers", "products", "prices", "meters", "subscriptions", "invoices", "payment_intents",
                 "credit_notes"):
        out[name] = list(getattr(conn, name)())
        say(f"stripe {name}: {len(out[name])}")
    out["invoice_lines"] = [ln for inv in out["invoices"] for ln in conn.invoice_lines(inv)]
    for inv in out["invoices"]:
        inv.pop("lines", None)  # landed separately, complete
    # meter event summaries: whole days up to the clock, per customer x meter, from the first subscription
    first_start: dict[str, int] = {}
    for s in out["subscriptions"]:
        first_start[s["customer"]] = min(first_start.get(s["customer"], 2**62), int(s["start_date"]))
    end = int(datetime(now.year, now.month, now.day, tzinfo=UTC).timestamp())
    summaries = []
    for m in out["meters"]:
        for cust, start in sorted(first_start.items()):
            start_day = start // 86400 * 86400
            if start_day >= end:
                continue
            for s in conn.meter_event_summaries(m["id"], cust, start_day, end):
                s["customer"] = cust
                summaries.append(s)
    out["meter_event_summaries"] = summaries
    say(f"stripe meter_event_summaries: {len(summaries)}")
    return out


def _exact(value) -> str:
    """The SDK parses JSON numbers as floats; recover the decimal text they were sent as."""
    return str(Decimal(repr(value))) if isinstance(value, float) else str(value)


def land_raw(con, snapshot: dict[str, list[dict]], landed_at: datetime) -> dict[str, int]:
    """Replace every raw.stripe_* table with the snapshot. Caller holds the transaction."""
    counts = {}
    for name, rows in snapshot.items():
        table = f"raw.stripe_{name}"
        if name == "meter_event_summaries":
            df = pl.DataFrame({
                "id": [r["id"] for r in rows], "meter_id": [r["meter"] for r in rows],
                "customer_id": [r["customer"] for r in rows],
                "start_time": [int(r["start_time"]) for r in rows], "end_time": [int(r["end_time"]) for r in rows],
                "aggregated_value": [_exact(r["aggregated_value"]) for r in rows],
                "payload": [json.dumps(r) for r in rows],
            }, schema={"id": pl.String, "meter_id": pl.String, "customer_id": pl.String, "start_time": pl.Int64,
                       "end_time": pl.Int64, "aggregated_value": pl.String, "payload": pl.String})
            cols = "id, meter_id, customer_id, start_time, end_time, aggregated_value, payload::JSON AS payload"
        else:
            df = pl.DataFrame({"id": [r["id"] for r in rows], "payload": [json.dumps(r) for r in rows]},
                              schema={"id": pl.String, "payload": pl.String})
            cols = "id, payload::JSON AS payload"
        con.register("_landing", df)
        wh.run(con, f"CREATE OR REPLACE TABLE {table} AS SELECT {cols}, ?::TIMESTAMPTZ AS landed_at FROM _landing",
               [landed_at])
        con.unregister("_landing")
        counts[name] = df.height
    return counts


@dg.multi_asset(
    specs=[dg.AssetSpec(raw_key(o), group_name="ingestion", kinds={"stripe", "duckdb"},
                        description=f"Stripe {o.replace('_', ' ')} as landed (PII tokenized).") for o in RAW_OBJECTS],
    pool=WAREHOUSE_POOL,
    # a platform outage longer than the client's own retries: try the step again later
    retry_policy=dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL),
)
def stripe_raw(context: dg.AssetExecutionContext, warehouse: WarehouseResource, stripe: StripeResource,
               settings: PipelineSettings):
    """Pull a full snapshot of the Stripe objects ingestion needs."""
    now = settings.clock().now()
    conn = stripe.connector(settings.pii_key)
    snapshot = fetch_stripe_snapshot(conn, now, context.log.info)
    with warehouse.connect() as con, wh.transaction(con):
        counts = land_raw(con, snapshot, now)
    for obj in RAW_OBJECTS:
        yield dg.MaterializeResult(asset_key=raw_key(obj), metadata={
            "dagster/row_count": counts[obj], "requests": conn.stats["requests"],
            "rate_limited_retries": conn.stats["rate_limited"]})


# core table -> raw objects it reads (for lineage)
CORE_SOURCES: dict[str, tuple[str, ...]] = {
    "customers": ("customers",),
    "products": ("products",),
    "prices": ("prices", "products", "meters"),
    "price_tiers": ("prices",),
    "meters": ("meters",),
    "subscriptions": ("subscriptions",),
    "subscription_items": ("subscriptions", "invoice_lines", "prices", "meters"),
    "invoices": ("invoices",),
    "invoice_lines": ("invoice_lines",),
    "payments": ("payment_intents",),
    "credit_notes": ("credit_notes",),
    "meter_usage_summaries": ("meter_event_summaries", "meters"),
}
PLATFORMS = ("stripe",)


def build_core_table(con, table: str) -> int:
    """Rebuild core.<table> from every platform's mapping, in one transaction."""
    selects = [wh.read_sql(f"core/{p}/{table}.sql") for p in PLATFORMS]
    body = "\nUNION ALL BY NAME\n".join(f"({s})" for s in selects)
    with wh.transaction(con):
        wh.run(con, f"CREATE OR REPLACE TABLE core.{table} AS {body}")
    return wh.count(con, f"core.{table}")


def check_specs(table: str) -> list[dg.AssetCheckSpec]:
    key = dg.AssetKey(["core", table])
    return [dg.AssetCheckSpec(r.name, asset=key, blocking=r.blocking, description=r.description)
            for r in RULES_BY_TABLE.get(table, [])]


def check_results(con, table: str, scope: Scope) -> list[dg.AssetCheckResult]:
    """Evaluate the table's rules on the step's own connection."""
    out = []
    for o in evaluate_table(con, table, scope):
        meta = {"violations": o.violations, **o.extra}
        if o.violations:
            meta["sample"] = markdown_preview(o.sample)
        out.append(dg.AssetCheckResult(
            check_name=o.rule.name, passed=o.passed, metadata=meta,
            severity=dg.AssetCheckSeverity.WARN if o.rule.warn_only else dg.AssetCheckSeverity.ERROR))
    return out


def _core_asset(table: str) -> dg.AssetsDefinition:
    @dg.asset(
        key=dg.AssetKey(["core", table]),
        check_specs=check_specs(table),
        deps=[raw_key(o) for o in CORE_SOURCES[table]]
        + [dg.AssetKey(["core", t]) for t in sorted(tables_read_by_rules(table))],
        group_name="core",
        kinds={"duckdb", "sql"},
        pool=WAREHOUSE_POOL,
        description=f"Canonical {table.replace('_', ' ')} (see README: Warehouse tables).",
    )
    def _build(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
               settings: PipelineSettings) -> dg.MaterializeResult:
        scope = Scope(now=settings.clock().now(), window_start=date.fromisoformat(PARTITION_START))
        with warehouse.connect() as con:
            n = build_core_table(con, table)
            preview = con.sql(f"SELECT * FROM core.{table} LIMIT 5").pl()
            checks = check_results(con, table, scope)
        return dg.MaterializeResult(metadata={
            "dagster/row_count": n,
            "preview": markdown_preview(preview),
        }, check_results=checks)

    _build.__name__ = f"core_{table}"
    return _build


core_platform_assets = [_core_asset(t) for t in CORE_SOURCES]
