"""A world split over all four platforms lands in one core model equal to the Stripe-only world's.

The same seed with ``platforms`` weights is the same world (customers, invoices, events); only which
platform bills each customer changes. So every core table must hold the same rows apart from the platform
columns and the ids a platform mints itself where it has no field for the merchant's (docs/platforms.md:
invoice line and payment ids and invoice numbers on Chargebee and Recurly, Recurly's subscription-add-on
and measured-unit ids). The rating,
reconciliation and checks downstream run on the mixed model too (materialize_all asserts green checks).
"""

from __future__ import annotations

import duckdb
import polars as pl
import pytest

from billing_ai.ingestion.platform_assets import CORE_TABLES
from billing_ai.sandbox.server import SandboxServer
from billing_ai_tests.conftest import TINY_WORLD_CONFIG, pipeline_resources, write_test_world

ALL = {"stripe": 1.0, "chargebee": 1.0, "recurly": 1.0, "zuora": 1.0}
# platform-minted on some platforms (docs/platforms.md): lines and payments on Chargebee and Recurly,
# subscription add-ons and measured units (meters) on Recurly, invoice numbers on Chargebee and Recurly
MINTED = {"line_id", "payment_id", "subscription_item_id", "meter_id", "number"}


@pytest.fixture(scope="module")
def mixed_warehouse(tmp_path_factory):
    from dataclasses import replace

    from billing_ai.runner import materialize_all

    root = tmp_path_factory.mktemp("mixed")
    gw = write_test_world(root, replace(TINY_WORLD_CONFIG, platforms=ALL))
    cfg, world = gw.config, gw.world
    with SandboxServer(gw.paths.world_dir, root / "state") as server:
        materialize_all(
            cfg,
            resources=pipeline_resources(server.url, root / "warehouse.duckdb", gw, page_size=5),
            say=lambda m: None,
        )
    return root / "warehouse.duckdb", world, gw


def _comparable(df: pl.DataFrame) -> pl.DataFrame:
    df = df.drop([c for c in df.columns if c.startswith("platform") or c in MINTED or c in ("landed_at", "metadata")])
    return df.sort(sorted(df.columns), nulls_last=True)


@pytest.mark.slow
def test_a_four_platform_world_lands_in_the_same_core_model(mixed_warehouse, tiny_warehouse):
    path, world, _ = mixed_warehouse
    assert set(world.tables["customers"]["platform"]) == set(ALL)  # every platform has customers
    mixed = duckdb.connect(str(path), read_only=True)
    single = duckdb.connect(str(tiny_warehouse), read_only=True)
    try:
        by_platform = dict(mixed.sql("SELECT platform, count(*) FROM core.customers GROUP BY 1").fetchall())
        assert by_platform == dict(world.tables["customers"].group_by("platform").len().iter_rows())
        for table in CORE_TABLES:
            a = _comparable(single.sql(f"SELECT * FROM core.{table}").pl())
            b = _comparable(mixed.sql(f"SELECT * FROM core.{table}").pl()).select(a.columns)
            differing = [c for c in a.columns if not a[c].equals(b[c])] if a.height == b.height else ["(rows)"]
            assert a.height > 0 and differing == [], (table, differing)
        # one catalog: each price once, every platform's copy recorded (and agreeing: the check is green)
        copies = dict(
            mixed.sql(
                "SELECT platform, count(*) FROM core.catalog_platform_ids WHERE object = 'prices' GROUP BY 1"
            ).fetchall()
        )
        n_prices = mixed.sql("SELECT count(*) FROM core.prices").fetchall()[0][0]
        assert set(copies) == set(ALL) and all(n == n_prices for n in copies.values())
        # the reconciliation finds the same things on the mixed model as on the Stripe-only one
        q = "SELECT finding, count(*) FROM marts.invoice_reconciliation GROUP BY 1 ORDER BY 1"
        assert mixed.sql(q).fetchall() == single.sql(q).fetchall()
    finally:
        mixed.close()
        single.close()


@pytest.mark.slow
@pytest.mark.parametrize("platform", ["stripe", "chargebee", "zuora"])
def test_a_webhook_named_invoice_is_refreshed_alone_on_each_platform_that_can(mixed_warehouse, platform, tmp_path):
    """On every platform whose connector fetches single objects: an invoice the warehouse lost (as if it
    were created after the last snapshot) comes back, with exactly the reconciliation rows a full build
    gave it, and nothing else changes."""
    import shutil

    from billing_ai import warehouse as wh
    from billing_ai.platforms.registry import PLATFORM_SPECS
    from billing_ai.webhooks.refresh import refresh

    spec = next(s for s in PLATFORM_SPECS if s.name == platform)
    assert spec.fetches_single_objects
    path, _, gw = mixed_warehouse
    copy = tmp_path / "warehouse.duckdb"
    shutil.copy(path, copy)
    con = wh.connect(copy)
    try:
        invoice_id, platform_id = wh.run(
            con,
            """SELECT i.invoice_id, i.platform_invoice_id FROM core.invoices i
                                                 JOIN marts.invoice_reconciliation r USING (invoice_id)
                                                 WHERE i.platform = ? ORDER BY i.invoice_id LIMIT 1""",
            [platform],
        )[0]
        q = "SELECT * FROM marts.invoice_reconciliation WHERE invoice_id = ? ORDER BY ALL"
        expected, total = wh.run(con, q, [invoice_id]), wh.count(con, "marts.invoice_reconciliation")
        raw_invoices = spec.raw_table("invoices")
        child, (_, field) = next(iter(spec.children.items()))
        wh.run(con, f"DELETE FROM {spec.raw_table(child)} WHERE payload->>'{field}' = ?", [platform_id])
        wh.run(con, f"DELETE FROM {raw_invoices} WHERE id = ?", [platform_id])
        for t in ("core.invoice_lines", "core.invoices", "marts.invoice_reconciliation"):
            wh.run(con, f"DELETE FROM {t} WHERE invoice_id = ?", [invoice_id])
        with SandboxServer(gw.paths.world_dir, tmp_path / "state") as server:
            conn = pipeline_resources(server.url, copy, gw)[spec.resource_key].connector("test-pii-key")
            fetched = conn.fetch_objects("invoice", [platform_id])
        refresh(con, spec, "invoice", [platform_id], fetched, gw.config.as_of_dt())
        assert wh.run(con, q, [invoice_id]) == expected
        assert wh.count(con, "marts.invoice_reconciliation") == total
    finally:
        con.close()
