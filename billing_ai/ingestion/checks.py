"""Data quality rules on the core tables, as plain functions over a DuckDB connection.

Each rule is a :class:`Rule`: a name, the table it guards, whether it blocks
downstream assets, and how to count violations (a SQL query returning the
violating rows, or a pandera schema). The core assets attach them as asset
checks (``check_specs``) and evaluate them in the same step, on the same
connection, right after writing: checks never open the warehouse on their own,
so they cannot trip over DuckDB's single-writer lock.

A rule "can fail": the tests build worlds that break exactly one rule and see
exactly that check fail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

import duckdb
import pandera.polars as pa
import polars as pl

from billing_ai import warehouse as wh
from billing_ai.clock import PARTITION_START
from billing_ai.money import MINOR_UNITS

UTC_TS = pl.Datetime("us", "UTC")
DEC_Q = pl.Decimal(38, 9)
DEC_P = pl.Decimal(38, 12)


def _c(dtype, nullable: bool = False, checks=None, unique: bool = False) -> pa.Column:
    return pa.Column(dtype, checks=checks, nullable=nullable, unique=unique)


CURRENCY = pa.Check.isin(sorted(MINOR_UNITS))
USAGE_SOURCES = ["inbox"]  # where core.usage_events rows come from
NON_NEG = pa.Check.ge(0)

# pandera schemas of the public core tables (the analyst contract, typed)
SCHEMAS: dict[str, pa.DataFrameSchema] = {
    "customers": pa.DataFrameSchema(
        {
            "customer_id": _c(pl.String),
            "platform": _c(pl.String),
            "platform_customer_id": _c(pl.String),
            "name_token": _c(pl.String, True, pa.Check.str_startswith("tok_name_")),
            "email_token": _c(pl.String, True, pa.Check.str_startswith("tok_email_")),
            "segment": _c(pl.String, True),
            "region": _c(pl.String, True),
            "currency": _c(pl.String, True, CURRENCY),
            "success_manager": _c(pl.String, True),
            "email_opt_out": _c(pl.Boolean),
            "balance": _c(pl.Int64, True),
            "delinquent": _c(pl.Boolean, True),
            "created_at": _c(UTC_TS),
            "landed_at": _c(UTC_TS),
        }
    ),
    "products": pa.DataFrameSchema(
        {
            "product_id": _c(pl.String),
            "platform": _c(pl.String),
            "name": _c(pl.String),
            "active": _c(pl.Boolean),
            "created_at": _c(UTC_TS),
        }
    ),
    "prices": pa.DataFrameSchema(
        {
            "price_id": _c(pl.String),
            "platform": _c(pl.String),
            "product_id": _c(pl.String),
            "currency": _c(pl.String, checks=CURRENCY),
            "usage_type": _c(pl.String, checks=pa.Check.isin(["licensed", "metered"])),
            "billing_scheme": _c(pl.String, checks=pa.Check.isin(["per_unit", "tiered"])),
            "tiers_mode": _c(pl.String, True, pa.Check.isin(["graduated", "volume"])),
            "unit_amount_decimal": _c(DEC_P, True, NON_NEG),
            "package_size": _c(pl.Int64, True, pa.Check.gt(0)),
            "package_rounding": _c(pl.String, True, pa.Check.isin(["up", "down"])),
        }
    ),
    "price_tiers": pa.DataFrameSchema(
        {
            "price_id": _c(pl.String),
            "tier_index": _c(pl.Int32, checks=NON_NEG),
            "up_to": _c(DEC_Q, True, NON_NEG),
            "unit_amount_decimal": _c(DEC_P, checks=NON_NEG),
            "flat_amount": _c(pl.Int64, checks=NON_NEG),
        }
    ),
    "meters": pa.DataFrameSchema(
        {
            "meter_id": _c(pl.String),
            "meter_name": _c(pl.String),
            "aggregation": _c(pl.String, checks=pa.Check.isin(["sum", "count", "last"])),
        }
    ),
    "subscriptions": pa.DataFrameSchema(
        {
            "subscription_id": _c(pl.String),
            "customer_id": _c(pl.String),
            "status": _c(pl.String),
            "currency": _c(pl.String, checks=CURRENCY),
            "started_at": _c(UTC_TS),
            "minimum_commitment": _c(pl.Int64, True, NON_NEG),
        }
    ),
    "subscription_items": pa.DataFrameSchema(
        {
            "subscription_item_id": _c(pl.String),
            "subscription_id": _c(pl.String),
            "price_id": _c(pl.String),
            "quantity": _c(pl.Int64, True, NON_NEG),
            "valid_from": _c(UTC_TS),
            "valid_to": _c(UTC_TS, True),
            "is_current": _c(pl.Boolean),
        }
    ),
    "invoices": pa.DataFrameSchema(
        {
            "invoice_id": _c(pl.String),
            "customer_id": _c(pl.String),
            "currency": _c(pl.String, checks=CURRENCY),
            "status": _c(pl.String, checks=pa.Check.isin(["draft", "open", "paid", "void", "uncollectible"])),
            "subtotal": _c(pl.Int64),
            "total_discount": _c(pl.Int64, checks=NON_NEG),
            "total": _c(pl.Int64),
            "amount_due": _c(pl.Int64, checks=NON_NEG),
            "amount_paid": _c(pl.Int64, checks=NON_NEG),
            "amount_remaining": _c(pl.Int64, checks=NON_NEG),
            "created_at": _c(UTC_TS),
            "period_start": _c(UTC_TS),
            "period_end": _c(UTC_TS),
        }
    ),
    "invoice_lines": pa.DataFrameSchema(
        {
            "line_id": _c(pl.String),
            "invoice_id": _c(pl.String),
            "amount": _c(pl.Int64),
            "discount_amount": _c(pl.Int64),
            "quantity": _c(DEC_Q, True),
            "currency": _c(pl.String, checks=CURRENCY),
            "line_type": _c(pl.String, checks=pa.Check.isin(["subscription", "invoice_item"])),
            "period_start": _c(UTC_TS),
            "period_end": _c(UTC_TS),
            "is_proration": _c(pl.Boolean),
        }
    ),
    "payments": pa.DataFrameSchema(
        {
            "payment_id": _c(pl.String),
            "amount": _c(pl.Int64, checks=NON_NEG),
            "currency": _c(pl.String, checks=CURRENCY),
            "status": _c(pl.String),
            "created_at": _c(UTC_TS),
        }
    ),
    "credit_notes": pa.DataFrameSchema(
        {
            "credit_note_id": _c(pl.String),
            "invoice_id": _c(pl.String),
            "amount": _c(pl.Int64, checks=pa.Check.gt(0)),
            "currency": _c(pl.String, checks=CURRENCY),
        }
    ),
    "meter_usage_summaries": pa.DataFrameSchema(
        {
            "meter_id": _c(pl.String),
            "customer_id": _c(pl.String),
            "usage_date": _c(pl.Date),
            "quantity": _c(DEC_Q),
        }
    ),
    "usage_events": pa.DataFrameSchema(
        {
            "event_id": _c(pl.String),
            "source": _c(pl.String, checks=pa.Check.isin(USAGE_SOURCES)),
            "customer_id": _c(pl.String),
            "subscription_id": _c(pl.String, True),
            "meter_name": _c(pl.String),
            "quantity": _c(DEC_Q),
            "event_ts": _c(UTC_TS),
            "event_date": _c(pl.Date),
            "is_late": _c(pl.Boolean),
        }
    ),
}

KEYS: dict[str, tuple[str, ...]] = {
    # the catalog holds one row per canonical id, whichever platforms carry it (see platform_assets.CATALOG)
    "customers": ("platform", "customer_id"),
    "products": ("product_id",),
    "prices": ("price_id",),
    "price_tiers": ("price_id", "tier_index"),
    "meters": ("meter_id",),
    "subscriptions": ("platform", "subscription_id"),
    "subscription_items": ("platform", "subscription_item_id"),
    "invoices": ("platform", "invoice_id"),
    "invoice_lines": ("platform", "line_id"),
    "payments": ("platform", "payment_id"),
    "credit_notes": ("platform", "credit_note_id"),
    "meter_usage_summaries": ("platform", "meter_id", "customer_id", "usage_date"),
    "usage_events": ("source", "event_id"),
}


@dataclass(frozen=True)
class Scope:
    """What a rule evaluates against: the clock, and for usage the event days just written."""

    now: datetime
    window_start: date = date.fromisoformat(PARTITION_START)  # the pipeline's first day
    start: date | None = None  # usage partitions written in this step (inclusive)
    end: date | None = None
    freshness_hours: int = 36
    summary_tolerance: Decimal = Decimal("0")


@dataclass(frozen=True)
class Rule:
    name: str
    table: str
    description: str
    blocking: bool = True
    sql: str | None = None  # SELECT of violating rows; may use $now, $window_start, $start, $end
    schema: bool = False
    warn_only: bool = False  # severity WARN instead of ERROR
    params: tuple[str, ...] = field(default=())


def _usage_range(alias: str = "") -> str:
    a = f"{alias}." if alias else ""
    return f"{a}event_date BETWEEN $start AND $end"


def _fk(child: str, col: str, parent: str, pcol: str, extra: str = "") -> str:
    return (
        f"SELECT c.* FROM core.{child} c WHERE c.{col} IS NOT NULL {extra} AND NOT EXISTS "
        f"(SELECT 1 FROM core.{parent} p WHERE p.{pcol} = c.{col})"
    )


RULES: list[Rule] = []
for _t, _k in KEYS.items():
    RULES.append(
        Rule(f"{_t}_schema", _t, f"pandera schema of core.{_t}: types, nullability, allowed values.", schema=True)
    )
    _where = f"WHERE {_usage_range()}" if _t == "usage_events" else ""
    RULES.append(
        Rule(
            f"{_t}_unique_key",
            _t,
            f"({', '.join(_k)}) is unique.",
            sql=f"SELECT {', '.join(_k)}, count(*) AS copies FROM core.{_t} {_where} GROUP BY ALL HAVING count(*) > 1",
        )
    )

RULES += [
    Rule(
        "subscriptions_customer_exists",
        "subscriptions",
        "Every subscription's customer exists.",
        sql=_fk("subscriptions", "customer_id", "customers", "customer_id"),
    ),
    Rule(
        "subscription_items_subscription_exists",
        "subscription_items",
        "Every item's subscription exists.",
        sql=_fk("subscription_items", "subscription_id", "subscriptions", "subscription_id"),
    ),
    Rule(
        "subscription_items_price_exists",
        "subscription_items",
        "Every item's price exists.",
        sql=_fk("subscription_items", "price_id", "prices", "price_id"),
    ),
    Rule(
        "price_tiers_price_exists",
        "price_tiers",
        "Every tier belongs to a known price.",
        sql=_fk("price_tiers", "price_id", "prices", "price_id"),
    ),
    Rule(
        "invoices_customer_exists",
        "invoices",
        "Every invoice's customer exists.",
        sql=_fk("invoices", "customer_id", "customers", "customer_id"),
    ),
    Rule(
        "invoice_lines_invoice_exists",
        "invoice_lines",
        "Every line's invoice exists.",
        sql=_fk("invoice_lines", "invoice_id", "invoices", "invoice_id"),
    ),
    Rule(
        "invoice_lines_item_exists",
        "invoice_lines",
        "Every subscription line's item exists.",
        sql=_fk("invoice_lines", "subscription_item_id", "subscription_items", "subscription_item_id"),
    ),
    Rule(
        "payments_invoice_exists",
        "payments",
        "Every payment's invoice exists.",
        sql=_fk("payments", "invoice_id", "invoices", "invoice_id"),
    ),
    Rule(
        "meter_usage_summaries_non_negative",
        "meter_usage_summaries",
        "Platform usage totals are >= 0.",
        sql="SELECT * FROM core.meter_usage_summaries WHERE quantity < 0",
    ),
    Rule(
        "invoices_not_in_future",
        "invoices",
        "No invoice was created after the clock's now.",
        sql="SELECT * FROM core.invoices WHERE created_at > $now",
    ),
    Rule(
        "customers_fresh",
        "customers",
        "The platform snapshot is at most freshness_hours old.",
        sql="SELECT max(landed_at) AS landed_at FROM core.customers "
        "HAVING max(landed_at) IS NULL OR max(landed_at) < $now - to_hours($freshness_hours)",
        blocking=False,
        warn_only=True,
    ),
    # usage: referential integrity along usage -> subscription item -> subscription -> customer
    Rule(
        "usage_events_customer_exists",
        "usage_events",
        "Every event's customer exists.",
        sql=_fk("usage_events", "customer_id", "customers", "customer_id", f"AND {_usage_range('c')}"),
    ),
    Rule(
        "usage_events_subscription_exists",
        "usage_events",
        "Every event's subscription exists and belongs to the event's customer.",
        sql=f"""SELECT u.* FROM core.usage_events u WHERE {_usage_range("u")} AND u.subscription_id IS NOT NULL
                 AND NOT EXISTS (SELECT 1 FROM core.subscriptions s WHERE s.subscription_id = u.subscription_id
                                 AND s.customer_id = u.customer_id)""",
    ),
    Rule(
        "usage_events_item_exists",
        "usage_events",
        "Every event with a subscription maps to a subscription item of its meter.",
        sql=f"""SELECT u.* FROM core.usage_events u WHERE {_usage_range("u")} AND u.subscription_id IS NOT NULL
                 AND NOT EXISTS (SELECT 1 FROM core.subscription_items i WHERE i.subscription_id = u.subscription_id
                                 AND i.meter_name = u.meter_name)""",
    ),
    Rule(
        "usage_events_non_negative",
        "usage_events",
        "Quantities are >= 0.",
        sql=f"SELECT * FROM core.usage_events WHERE {_usage_range()} AND quantity < 0",
    ),
    Rule(
        "usage_events_timestamps_plausible",
        "usage_events",
        "Event times lie between the pipeline's first day and the clock's now plus one day.",
        sql=f"""SELECT * FROM core.usage_events WHERE {_usage_range()}
                 AND (event_ts < CAST($window_start AS DATE) OR event_ts > $now + INTERVAL 1 DAY
                      OR event_date <> CAST(event_ts AT TIME ZONE 'UTC' AS DATE))""",
    ),
    Rule(
        "usage_events_conserved",
        "usage_events",
        "Records in = accepted + quarantined for the days written (nothing lost, nothing doubled).",
        sql="""WITH r AS (SELECT coalesce(sum(events), 0) AS n FROM raw.usage_file_days
                           WHERE event_date BETWEEN $start AND $end),
                     a AS (SELECT count(*) AS n FROM core.usage_events WHERE event_date BETWEEN $start AND $end),
                     q AS (SELECT count(*) AS n FROM core.quarantine
                           WHERE source = 'usage_events' AND partition_date BETWEEN $start AND $end)
                SELECT r.n AS records_in, a.n AS accepted, q.n AS quarantined FROM r, a, q
                WHERE r.n <> a.n + q.n""",
    ),
    Rule(
        "usage_events_fresh",
        "usage_events",
        "The newest event is at most freshness_hours old.",
        sql="SELECT max(event_ts) AS newest FROM core.usage_events "
        "HAVING max(event_ts) IS NULL OR max(event_ts) < $now - to_hours($freshness_hours)",
        blocking=False,
        warn_only=True,
    ),
    Rule(
        "usage_events_match_platform_summaries",
        "usage_events",
        "Per customer x meter x complete day, our quantity equals the platform's meter event summary. "
        "A gap is usage that never reached billing (revenue leakage at the source) or billed usage we "
        "never saw.",
        sql=f"""WITH u AS (SELECT customer_id, meter_name, event_date AS d, sum(quantity) AS ours
                            FROM core.usage_events WHERE {_usage_range()}
                              AND event_date < CAST($now AT TIME ZONE 'UTC' AS DATE)
                              AND customer_id IN (SELECT customer_id FROM core.meter_usage_summaries) GROUP BY ALL),
                      s AS (SELECT customer_id, meter_name, usage_date AS d, sum(quantity) AS platform
                            FROM core.meter_usage_summaries WHERE usage_date BETWEEN $start AND $end
                              AND usage_date < CAST($now AT TIME ZONE 'UTC' AS DATE) GROUP BY ALL)
                 SELECT customer_id, meter_name, d, coalesce(ours, 0) AS ours, coalesce(platform, 0) AS platform,
                        coalesce(ours, 0) - coalesce(platform, 0) AS gap
                 FROM u FULL JOIN s USING (customer_id, meter_name, d)
                 WHERE abs(coalesce(ours, 0) - coalesce(platform, 0)) > $summary_tolerance
                 ORDER BY abs(gap) DESC""",
        blocking=False,
    ),
]

# every platform's copy of a catalog object agrees (see platform_assets.CATALOG)
RULES += [
    Rule(
        f"{_t}_copies_agree",
        _t,
        f"Every platform's copy of a {_t[:-1].replace('_', ' ')} with the same canonical id has the same terms: "
        "otherwise the id does not name one object and rating cannot be trusted.",
        sql="SELECT object, canonical_id, count(DISTINCT terms_hash) AS versions, list(DISTINCT platform) AS "
        f"platforms FROM core.catalog_platform_ids WHERE object = '{_t}' GROUP BY ALL "
        "HAVING count(DISTINCT terms_hash) > 1",
    )
    for _t in ("products", "meters", "prices", "price_tiers")
]

RULES_BY_TABLE: dict[str, list[Rule]] = {}
for _r in RULES:
    RULES_BY_TABLE.setdefault(_r.table, []).append(_r)


def tables_read_by_rules(table: str) -> set[str]:
    """Other core tables the rules of ``table`` read: they must be built first."""
    found = set()
    for r in RULES_BY_TABLE.get(table, []):
        found |= set(re.findall(r"core\.(\w+)", r.sql or ""))
    return found - {table, "quarantine", "catalog_platform_ids"}


@dataclass(frozen=True)
class Outcome:
    rule: Rule
    violations: int
    sample: pl.DataFrame
    extra: dict

    @property
    def passed(self) -> bool:
        return self.violations == 0


def _params(sql: str, scope: Scope) -> dict:
    values = {
        "now": scope.now,
        "window_start": scope.window_start,
        "start": scope.start or scope.window_start,
        "end": scope.end or (scope.now.date() + timedelta(days=1)),
        "freshness_hours": scope.freshness_hours,
        "summary_tolerance": scope.summary_tolerance,
    }
    return {k: v for k, v in values.items() if f"${k}" in sql}


def evaluate(con: duckdb.DuckDBPyConnection, rule: Rule, scope: Scope) -> Outcome:
    if rule.schema:
        return _evaluate_schema(con, rule, scope)
    params = _params(rule.sql, scope)
    n = wh.run(con, f"SELECT count(*) FROM ({rule.sql})", params)[0][0]
    sample = con.sql(f"SELECT * FROM ({rule.sql}) LIMIT 5", params=params).pl() if n else pl.DataFrame()
    extra = {}
    if rule.name == "usage_events_match_platform_summaries" and n:
        ((leak, unseen),) = wh.run(
            con,
            f"SELECT coalesce(sum(gap) FILTER (WHERE gap > 0), 0), "
            f"coalesce(-sum(gap) FILTER (WHERE gap < 0), 0) FROM ({rule.sql})",
            params,
        )
        extra = {"units_never_reached_billing": _plain(leak), "billed_units_not_in_our_events": _plain(unseen)}
    return Outcome(rule, n, sample, extra)


def _plain(d: Decimal) -> str:
    return format(Decimal(d).normalize(), "f")


def _evaluate_schema(con: duckdb.DuckDBPyConnection, rule: Rule, scope: Scope) -> Outcome:
    where = f"WHERE {_usage_range()}" if rule.table == "usage_events" else ""
    params = _params(where, scope)
    df = con.sql(f"SELECT * FROM core.{rule.table} {where}", params=params or None).pl()
    # DuckDB names UTC "Etc/UTC"; the contract says UTC
    df = df.with_columns(pl.col(pl.Datetime).dt.convert_time_zone("UTC"))
    try:
        SCHEMAS[rule.table].validate(df, lazy=True)
        return Outcome(rule, 0, pl.DataFrame(), {})
    except pa.errors.SchemaErrors as e:
        fc = e.failure_cases
        return Outcome(
            rule,
            fc.height,
            fc.head(5).select([c for c in ("column", "check", "failure_case") if c in fc.columns]).cast(pl.String),
            {},
        )


def evaluate_table(con: duckdb.DuckDBPyConnection, table: str, scope: Scope) -> list[Outcome]:
    return [evaluate(con, r, scope) for r in RULES_BY_TABLE.get(table, [])]
