"""Every data quality rule can fail: a world that breaks exactly one rule fails exactly that check.

The good world is the tiny world's warehouse; each case applies one mutation
inside a transaction, evaluates every rule, and rolls back.
"""

import shutil
from datetime import date, timedelta

import dagster as dg
import pytest

from billing_ai import warehouse as wh
from billing_ai.clock import PARTITION_START, parse_instant
from billing_ai.ingestion.checks import RULES, Scope, evaluate
from billing_ai.pipeline import PLATFORM_ASSETS
from billing_ai.sandbox.server import SandboxServer
from billing_ai_tests.conftest import pipeline_resources

# an event row built from an existing one; {sets} overrides columns
_EVENT = """INSERT INTO core.usage_events SELECT * REPLACE ({sets}) FROM core.usage_events
            WHERE event_id = (SELECT max(event_id) FROM core.usage_events WHERE event_date BETWEEN $start AND $end)"""
# one landed record more in the landing's index, on that event's day ({sets}: unused, the index counts records)
_RAW = """UPDATE raw.usage_file_days SET events = events + 1 WHERE rowid = (
          SELECT min(rowid) FROM raw.usage_file_days WHERE event_date = (
              SELECT event_date FROM core.usage_events WHERE event_id =
                  (SELECT max(event_id) FROM core.usage_events WHERE event_date BETWEEN $start AND $end)))"""


def _copy(table: str, key: str, sets: str) -> str:
    return f"INSERT INTO core.{table} SELECT * REPLACE ({sets}) FROM core.{table} ORDER BY {key} LIMIT 1"


def _first(table: str, key: str) -> str:
    return f"(SELECT min({key}) FROM core.{table})"


# rule -> statements that break that rule and no other
def _disagreeing_copy(obj: str) -> str:
    """Another platform's copy of one catalog object, with different terms."""
    return (
        f"INSERT INTO core.catalog_platform_ids SELECT object, canonical_id, 'zuora', 'zuora-copy', 'other-terms' "
        f"FROM core.catalog_platform_ids WHERE object = '{obj}' ORDER BY canonical_id LIMIT 1"
    )


MUTATIONS: dict[str, list[str]] = {
    **{f"{t}_copies_agree": [_disagreeing_copy(t)] for t in ("products", "meters", "prices", "price_tiers")},
    "customers_schema": [
        f"UPDATE core.customers SET currency = 'xxx' WHERE customer_id = {_first('customers', 'customer_id')}"
    ],
    "products_schema": [f"UPDATE core.products SET name = NULL WHERE product_id = {_first('products', 'product_id')}"],
    "prices_schema": [
        f"UPDATE core.prices SET billing_scheme = 'weird' WHERE price_id = {_first('prices', 'price_id')}"
    ],
    "price_tiers_schema": [
        f"UPDATE core.price_tiers SET flat_amount = -1 WHERE price_id = {_first('price_tiers', 'price_id')}"
    ],
    "meters_schema": [f"UPDATE core.meters SET aggregation = 'median' WHERE meter_id = {_first('meters', 'meter_id')}"],
    "subscriptions_schema": [
        "UPDATE core.subscriptions SET status = NULL "
        f"WHERE subscription_id = {_first('subscriptions', 'subscription_id')}"
    ],
    "subscription_items_schema": [
        "UPDATE core.subscription_items SET quantity = -1 WHERE subscription_item_id = "
        "(SELECT min(subscription_item_id) FROM core.subscription_items WHERE quantity IS NOT NULL)"
    ],
    "invoices_schema": [
        f"UPDATE core.invoices SET amount_due = -5 WHERE invoice_id = {_first('invoices', 'invoice_id')}"
    ],
    "invoice_lines_schema": [
        f"UPDATE core.invoice_lines SET line_type = 'other' WHERE line_id = {_first('invoice_lines', 'line_id')}"
    ],
    "payments_schema": [f"UPDATE core.payments SET amount = -1 WHERE payment_id = {_first('payments', 'payment_id')}"],
    "credit_notes_schema": [
        f"INSERT INTO core.credit_notes (credit_note_id, platform, invoice_id, customer_id, amount, "
        f"currency, reason, status, created_at) VALUES ('cn_zero', 'stripe', "
        f"{_first('invoices', 'invoice_id')}, {_first('customers', 'customer_id')}, 0, 'usd', "
        f"'duplicate', 'issued', now())"
    ],
    "meter_usage_summaries_schema": [
        "UPDATE core.meter_usage_summaries SET meter_id = NULL WHERE "
        "(customer_id, meter_name, usage_date) = (SELECT (customer_id, meter_name, "
        "usage_date) FROM core.meter_usage_summaries ORDER BY ALL LIMIT 1)"
    ],
    "usage_events_schema": [
        "UPDATE core.usage_events SET source = 'bogus' WHERE event_id = (SELECT min(event_id) FROM core.usage_events)"
    ],
    "customers_unique_key": [_copy("customers", "customer_id", "customer_id AS customer_id")],
    "products_unique_key": [_copy("products", "product_id", "product_id AS product_id")],
    "prices_unique_key": [_copy("prices", "price_id", "price_id AS price_id")],
    "price_tiers_unique_key": [_copy("price_tiers", "price_id", "price_id AS price_id")],
    "meters_unique_key": [_copy("meters", "meter_id", "meter_id AS meter_id")],
    "subscriptions_unique_key": [_copy("subscriptions", "subscription_id", "subscription_id AS subscription_id")],
    "subscription_items_unique_key": [
        _copy("subscription_items", "subscription_item_id", "subscription_item_id AS subscription_item_id")
    ],
    "invoices_unique_key": [_copy("invoices", "invoice_id", "invoice_id AS invoice_id")],
    "invoice_lines_unique_key": [_copy("invoice_lines", "line_id", "line_id AS line_id")],
    "payments_unique_key": [_copy("payments", "payment_id", "payment_id AS payment_id")],
    "credit_notes_unique_key": [
        f"INSERT INTO core.credit_notes (credit_note_id, platform, invoice_id, customer_id, amount, currency, "
        f"reason, status, created_at) VALUES ('cn_1', 'stripe', {_first('invoices', 'invoice_id')}, "
        f"{_first('customers', 'customer_id')}, 100, 'usd', 'duplicate', 'issued', now())"
    ]
    * 2,
    # a zero-quantity copy: same key, same sums
    "meter_usage_summaries_unique_key": [
        _copy("meter_usage_summaries", "customer_id, usage_date", "CAST(0 AS DECIMAL(38, 9)) AS quantity")
    ],
    "usage_events_unique_key": [
        "UPDATE core.usage_events SET event_id = (SELECT min(event_id) FROM core.usage_events) "
        "WHERE event_id = (SELECT max(event_id) FROM core.usage_events)"
    ],
    "subscriptions_customer_exists": [
        _copy("subscriptions", "subscription_id", "'sub_new' AS subscription_id, 'cus_ghost' AS customer_id")
    ],
    "subscription_items_subscription_exists": [
        _copy(
            "subscription_items",
            "subscription_item_id",
            "'si_new' AS subscription_item_id, 'sub_ghost' AS subscription_id",
        )
    ],
    "subscription_items_price_exists": [
        _copy(
            "subscription_items", "subscription_item_id", "'si_new' AS subscription_item_id, 'price_ghost' AS price_id"
        )
    ],
    "price_tiers_price_exists": [_copy("price_tiers", "price_id", "'price_ghost' AS price_id")],
    "invoices_customer_exists": [_copy("invoices", "invoice_id", "'in_new' AS invoice_id, 'cus_ghost' AS customer_id")],
    "invoice_lines_invoice_exists": [
        _copy("invoice_lines", "line_id", "'il_new' AS line_id, 'in_ghost' AS invoice_id")
    ],
    "invoice_lines_item_exists": [
        _copy("invoice_lines", "line_id", "'il_new' AS line_id, 'si_ghost' AS subscription_item_id")
    ],
    "payments_invoice_exists": [_copy("payments", "payment_id", "'pi_new' AS payment_id, 'in_ghost' AS invoice_id")],
    # outside the usage days under test, so the platform reconciliation does not see it
    "meter_usage_summaries_non_negative": [
        _copy(
            "meter_usage_summaries",
            "customer_id, usage_date",
            "DATE '2020-01-01' AS usage_date, CAST(-1 AS DECIMAL(38, 9)) AS quantity",
        )
    ],
    "invoices_not_in_future": [
        _copy("invoices", "invoice_id", "'in_new' AS invoice_id, created_at + INTERVAL 400 DAY AS created_at")
    ],
    "customers_fresh": ["UPDATE core.customers SET landed_at = landed_at - INTERVAL 3 DAY"],
    # new events come with their raw record, so conservation holds
    "usage_events_customer_exists": [
        _EVENT.format(sets="'e_new' AS event_id, 'cus_ghost' AS customer_id, NULL AS subscription_id"),
        _RAW.format(sets="'e_new' AS event_id"),
    ],
    "usage_events_subscription_exists": [
        _EVENT.format(
            sets="'e_new' AS event_id, CAST(0 AS DECIMAL(38, 9)) AS quantity, "
            "(SELECT max(subscription_id) FROM core.subscriptions WHERE customer_id <> "
            "(SELECT customer_id FROM core.usage_events WHERE event_id = "
            "(SELECT max(event_id) FROM core.usage_events WHERE event_date BETWEEN $start AND $end)))"
            " AS subscription_id"
        ),
        _RAW.format(sets="'e_new' AS event_id"),
    ],
    "usage_events_item_exists": [
        _EVENT.format(sets="'e_new' AS event_id, 'phantom_meter' AS meter_name, CAST(0 AS DECIMAL(38, 9)) AS quantity"),
        _RAW.format(sets="'e_new' AS event_id"),
    ],
    "usage_events_non_negative": [
        _EVENT.format(sets="'e_neg' AS event_id, CAST(-1 AS DECIMAL(38, 9)) AS quantity"),
        _EVENT.format(sets="'e_pos' AS event_id, CAST(1 AS DECIMAL(38, 9)) AS quantity"),
        _RAW.format(sets="'e_neg' AS event_id"),
        _RAW.format(sets="'e_pos' AS event_id"),
    ],
    "usage_events_timestamps_plausible": [
        _EVENT.format(sets="'e_new' AS event_id, CAST(0 AS DECIMAL(38, 9)) AS quantity, event_date - 1 AS event_date"),
        _RAW.format(sets="'e_new' AS event_id"),
    ],
    "usage_events_conserved": [_RAW.format(sets="'e_raw_only' AS event_id")],
    "usage_events_fresh": [
        f"DELETE FROM {t} WHERE {c} >= $end - 3"
        for t, c in (
            ("core.usage_events", "event_date"),
            ("core.meter_usage_summaries", "usage_date"),
            ("core.quarantine", "partition_date"),
        )
    ]
    + ["DELETE FROM raw.usage_file_days WHERE event_date >= $end - 3"],
    "usage_events_match_platform_summaries": [
        "UPDATE core.meter_usage_summaries SET quantity = quantity + 1 WHERE (customer_id, meter_name, usage_date) = "
        "(SELECT (customer_id, meter_name, usage_date) FROM core.meter_usage_summaries "
        "WHERE usage_date BETWEEN $start AND $end - 1 ORDER BY ALL LIMIT 1)"
    ],
}


@pytest.fixture(scope="module")
def con(tiny_warehouse, tmp_path_factory):
    path = tmp_path_factory.mktemp("checks") / "w.duckdb"
    shutil.copy(tiny_warehouse, path)
    c = wh.connect(path)
    yield c
    c.close()


@pytest.fixture(scope="module")
def scope(tiny_world):
    as_of = parse_instant(tiny_world.config.as_of)
    return Scope(
        now=as_of,
        window_start=date.fromisoformat(PARTITION_START),
        start=tiny_world.config.start_dt().date(),
        end=as_of.date(),
    )


def failing(con, scope) -> set[str]:
    return {r.name for r in RULES if not evaluate(con, r, scope).passed}


def test_every_rule_has_a_breaking_case():
    assert set(MUTATIONS) == {r.name for r in RULES}


def test_the_good_world_passes_every_rule(con, scope):
    assert failing(con, scope) == set()


@pytest.mark.parametrize("rule", sorted(MUTATIONS))
def test_breaking_one_rule_fails_exactly_that_check(con, scope, rule):
    params = {"start": scope.start, "end": scope.end}
    wh.run(con, "BEGIN TRANSACTION")
    try:
        for stmt in MUTATIONS[rule]:
            wh.run(con, stmt, {k: v for k, v in params.items() if f"${k}" in stmt} or None)
        assert failing(con, scope) == {rule}
    finally:
        wh.run(con, "ROLLBACK")


def test_reconciliation_reports_leakage_in_units(con, scope):
    rule = next(r for r in RULES if r.name == "usage_events_match_platform_summaries")
    wh.run(con, "BEGIN TRANSACTION")
    try:
        wh.run(con, MUTATIONS[rule.name][0], {"start": scope.start, "end": scope.end})
        out = evaluate(con, rule, scope)
        assert out.violations == 1
        assert out.extra == {"units_never_reached_billing": "0", "billed_units_not_in_our_events": "1"}
    finally:
        wh.run(con, "ROLLBACK")


@pytest.mark.slow  # materializes a world end to end
def test_a_failing_blocking_check_stops_downstream(tiny_world, tmp_path):
    """A subscription pointing at an unknown customer fails core.subscriptions' blocking check;
    subscription items (which depend on it) are not built in that run."""
    with SandboxServer(tiny_world.paths.world_dir, tmp_path / "state") as server:
        res = pipeline_resources(server.url, tmp_path / "w.duckdb", tiny_world)
        raw_only = [a for a in PLATFORM_ASSETS if all(k.path[0] == "raw" for k in a.keys)]
        assert dg.materialize(raw_only, resources=res).success
        con = wh.connect(tmp_path / "w.duckdb")
        wh.run(
            con,
            "UPDATE raw.stripe_subscriptions SET payload = json_merge_patch(payload, "
            '\'{"customer": "cus_ghost"}\') WHERE id = (SELECT min(id) FROM raw.stripe_subscriptions)',
        )
        con.close()
        core = [a for a in PLATFORM_ASSETS if a not in raw_only]
        result = dg.materialize([*core, *raw_only], selection=core, resources=res, raise_on_error=False)
    evals = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert evals["subscriptions_customer_exists"] is False
    materialized = {
        m.asset_key.path[-1]
        for m in result.get_asset_materialization_events()
        for m in [m.event_specific_data.materialization]
    }
    assert "subscriptions" in materialized and "customers" in materialized
    assert "subscription_items" not in materialized and "invoice_lines" not in materialized
    assert not result.success


def test_scope_defaults_cover_today(scope):
    assert scope.end - scope.start > timedelta(days=30)
