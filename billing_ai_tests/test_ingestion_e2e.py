"""End to end on a tiny world: the whole graph through dagster.materialize against the sandbox."""

import json
from datetime import date, timedelta

import dagster as dg
import polars as pl
import pytest

from billing_ai import warehouse as wh
from billing_ai.pipeline import PLATFORM_ASSETS, USAGE_ASSETS
from billing_ai.platforms.stripe.client import StripeConnector
from billing_ai.resources import WarehouseResource
from billing_ai.sandbox.server import SandboxServer
from billing_ai.sandbox.world import ts
from billing_ai_tests.conftest import TEST_PII_KEY as PII_KEY
from billing_ai_tests.conftest import pipeline_resources as resources_for


def _line_count(path) -> int:
    with open(path) as f:
        return sum(1 for _ in f)


@pytest.fixture(scope="module")
def pipeline(tiny_warehouse):
    con = wh.connect(tiny_warehouse, read_only=True)
    yield con
    con.close()


def test_core_tables_match_the_world(pipeline, tiny_world):
    t = tiny_world.world.tables
    con = pipeline
    assert wh.count(con, "core.customers") == t["customers"].height
    assert wh.count(con, "core.subscriptions") == t["subscriptions"].height
    assert wh.count(con, "core.invoices") == t["invoices"].height
    assert wh.count(con, "core.invoice_lines") == t["invoice_lines"].height
    assert wh.count(con, "core.payments") == t["payments"].height
    assert wh.count(con, "core.prices") == t["prices"].height
    tiers = sum(len(json.loads(j)) for j in t["prices"]["tiers_json"].drop_nulls())
    assert wh.count(con, "core.price_tiers") == tiers
    # money is integer minor units and totals survive the trip exactly
    (total,) = wh.run(con, "SELECT sum(total) FROM core.invoices")[0]
    assert total == t["invoices"]["total"].sum()
    types = dict(
        wh.run(
            con,
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema='core' AND table_name='invoice_lines'",
        )
    )
    assert types["amount"] == "BIGINT" and types["quantity"].startswith("DECIMAL")


def test_unit_prices_keep_twelve_decimals(pipeline):
    rows = wh.run(
        pipeline, "SELECT unit_amount_decimal FROM core.prices WHERE lookup_key = 'scale_storage_gb_hours_usd'"
    )
    assert str(rows[0][0]) == "0.018333333333"


def test_pii_is_tokenized_before_landing(pipeline, tiny_world):
    con = pipeline
    emails = tiny_world.world.tables["customers"]["email"].to_list()
    for table in ("raw.stripe_customers", "raw.stripe_invoices", "raw.stripe_payment_intents"):
        blob = " ".join(r[0] for r in wh.run(con, f"SELECT CAST(payload AS VARCHAR) FROM {table}"))
        assert "@" not in blob, table
        assert not any(e in blob for e in emails)
    tokens = [r[0] for r in wh.run(con, "SELECT email_token FROM core.customers")]
    assert all(tok.startswith("tok_email_") for tok in tokens)
    pm = wh.run(con, "SELECT count(*) FROM raw.stripe_payment_intents WHERE (payload->'payment_method') IS NOT NULL")
    assert pm[0][0] == 0


def test_every_invoiced_item_is_known(pipeline):
    missing = wh.run(
        pipeline,
        """
        SELECT count(*) FROM core.invoice_lines l
        WHERE l.subscription_item_id IS NOT NULL
          AND l.subscription_item_id NOT IN (SELECT subscription_item_id FROM core.subscription_items)""",
    )
    assert missing[0][0] == 0


def test_usage_events_records_in_equals_accepted_plus_quarantined(pipeline, tiny_world):
    con = pipeline
    landed = wh.run(con, "SELECT sum(records), sum(landed), sum(quarantined) FROM raw.usage_files")[0]
    assert landed[0] == landed[1] + landed[2]
    inbox_rows = sum(
        pl.scan_parquet(p).select(pl.len()).collect().item()
        if p.suffix == ".parquet"
        else _line_count(p) - (1 if p.suffix == ".csv" else 0)
        for p in tiny_world.paths.inbox_dir.iterdir()
    )
    assert landed[0] == inbox_rows
    accepted = wh.count(con, "core.usage_events")
    quarantined = wh.count(con, "core.quarantine", "source = 'usage_events'")
    assert accepted + quarantined == landed[1]


def test_usage_reconciles_with_platform_meter_summaries(pipeline, tiny_world):
    """Every event that reached the sandbox platform is in the files too: per customer x meter x
    complete day, our sums equal the platform's summaries exactly."""
    as_of_day = tiny_world.config.as_of_dt().date()
    rows = wh.run(
        pipeline,
        """
        WITH u AS (SELECT customer_id, meter_name, event_date AS d, sum(quantity) AS q
                   FROM core.usage_events WHERE event_date < ? GROUP BY ALL),
             s AS (SELECT customer_id, meter_name, usage_date AS d, quantity AS q FROM core.meter_usage_summaries)
        SELECT count(*), count(*) FILTER (WHERE u.q IS DISTINCT FROM s.q)
        FROM u FULL JOIN s USING (customer_id, meter_name, d)""",
        [as_of_day],
    )
    n, diff = rows[0]
    assert n > 100 and diff == 0


def test_late_events_are_kept_and_flagged(pipeline):
    late = wh.run(pipeline, "SELECT count(*) FROM core.usage_events WHERE is_late")[0][0]
    assert late > 0


@pytest.mark.slow  # materializes a world end to end
def test_replaying_a_partition_changes_nothing(tiny_world, tmp_path):
    with SandboxServer(tiny_world.paths.world_dir, tmp_path / "state") as server:
        res = resources_for(server.url, tmp_path / "w.duckdb", tiny_world)
        assert dg.materialize(PLATFORM_ASSETS, resources=res).success
        day = tiny_world.config.start_dt().date() + timedelta(days=20)
        counts = []
        for _ in range(3):
            assert dg.materialize(
                [*USAGE_ASSETS, *PLATFORM_ASSETS], selection=USAGE_ASSETS, resources=res, partition_key=day.isoformat()
            ).success
            assert dg.materialize(PLATFORM_ASSETS, resources=res).success  # re-landing lands no file twice
            with WarehouseResource(path=str(tmp_path / "w.duckdb")).connect(read_only=True) as con:
                counts.append(
                    wh.run(con, "SELECT count(*), sum(quantity) FROM core.usage_events WHERE event_date=?", [day])[0]
                    + wh.run(con, "SELECT count(*) FROM raw.usage_events")[0]
                    + wh.run(con, "SELECT sum(events) FROM raw.usage_file_days")[0]
                )
        assert counts[0][0] > 0 and counts[0] == counts[1] == counts[2]


def test_connector_pages_through_the_sdk(tiny_world, tmp_path):
    with SandboxServer(tiny_world.paths.world_dir, tmp_path / "state") as server:
        conn = StripeConnector("sk_test_sandbox", server.url, PII_KEY, page_size=3, requests_per_second=500)
        customers = list(conn.customers())
        n = tiny_world.world.tables["customers"].height
        assert len(customers) == n and len({c["id"] for c in customers}) == n
        assert conn.stats["requests"] == -(-n // 3)  # has_more is exact: no empty trailing page
        cust = customers[0]["id"]
        start = ts(tiny_world.config.start_dt())
        end = ts(tiny_world.config.as_of_dt()) // 86400 * 86400
        meter = next(iter(conn.meters()))
        days = list(conn.meter_event_summaries(meter["id"], cust, start, end))
        assert len({d["id"] for d in days}) == len(days)
        assert all(start <= d["start_time"] < end for d in days)


def test_asset_partitions_cover_the_world(tiny_world):
    from billing_ai.ingestion.partitions import usage_daily_partitions

    keys = usage_daily_partitions.get_partition_keys()
    assert tiny_world.config.start_dt().date().isoformat() in keys
    assert date.fromisoformat(keys[0]) <= tiny_world.config.start_dt().date()
