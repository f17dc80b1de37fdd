"""Targeted refreshes: the scoped rating equals the full build; a signed invoice webhook refreshes that
invoice's reconciliation through the sensor and ``targeted_refresh_job``, without a full run."""

from __future__ import annotations

import json
import shutil

import dagster as dg
import pytest

from billing_ai import warehouse as wh
from billing_ai.rating.reconcile import refresh_rating_marts
from billing_ai.sandbox.server import SandboxServer
from billing_ai.webhooks import signatures as sig
from billing_ai.webhooks.receiver import WebhookInbox, WebhookSecrets, create_app
from billing_ai.webhooks.refresh import target_of, upsert_raw
from billing_ai_tests.conftest import ASGIClient, pipeline_resources

MARTS = {
    "rated_usage": "subscription_item_id, period_start",
    "tier_positions": "subscription_item_id",
    "invoice_reconciliation": "invoice_id, line_id, subscription_item_id, finding, period_start",
}


def rows(con, table: str, subs: list[str]) -> list[tuple]:
    return wh.run(
        con,
        f"SELECT * EXCLUDE (tiers) FROM marts.{table} WHERE subscription_id IN "
        f"(SELECT unnest(?::VARCHAR[])) ORDER BY {MARTS[table]}"
        if table == "rated_usage"
        else f"SELECT * FROM marts.{table} WHERE subscription_id IN (SELECT unnest(?::VARCHAR[])) "
        f"ORDER BY {MARTS[table]}",
        [subs],
    )


@pytest.fixture
def warehouse_copy(tiny_warehouse, tmp_path):
    path = tmp_path / "warehouse.duckdb"
    shutil.copy(tiny_warehouse, path)
    return path


def test_target_of_reads_each_platforms_vocabulary():
    assert target_of("stripe", "invoice.created") == "invoice"
    assert target_of("stripe", "customer.subscription.updated") == "subscription"
    assert target_of("stripe", "customer.updated") is None
    assert target_of("chargebee", "invoice_generated") == "invoice"
    assert target_of("recurly", "charge_invoice.created") == "invoice"
    assert target_of("zuora", "SubscriptionCreated") == "subscription"


def test_scoped_refresh_reproduces_the_full_build_for_those_subscriptions(warehouse_copy, tiny_world):
    now = tiny_world.config.as_of_dt()
    con = wh.connect(warehouse_copy)
    try:
        # two subscriptions with an invoice reconciliation finding other than a match, if any, else any two
        subs = [
            r[0]
            for r in wh.run(
                con,
                """SELECT subscription_id FROM marts.invoice_reconciliation
                                             WHERE subscription_id IS NOT NULL GROUP BY 1
                                             ORDER BY max(CASE WHEN finding <> 'match' THEN 1 ELSE 0 END) DESC,
                                                      subscription_id LIMIT 2""",
            )
        ]
        before = {t: rows(con, t, subs) for t in MARTS}
        others = {
            t: wh.run(
                con,
                f"SELECT count(*) FROM marts.{t} WHERE subscription_id NOT IN "
                "(SELECT unnest(?::VARCHAR[])) OR subscription_id IS NULL",
                [subs],
            )[0][0]
            for t in MARTS
        }
        assert all(before[t] for t in ("rated_usage", "invoice_reconciliation"))
        for t in MARTS:  # lose those subscriptions' rows, as if never computed
            wh.run(con, f"DELETE FROM marts.{t} WHERE subscription_id IN (SELECT unnest(?::VARCHAR[]))", [subs])
        written = refresh_rating_marts(con, now, subs)
        assert written["invoice_reconciliation"] == len(before["invoice_reconciliation"])
        for t in MARTS:
            assert rows(con, t, subs) == before[t], t
            assert (
                wh.run(
                    con,
                    f"SELECT count(*) FROM marts.{t} WHERE subscription_id NOT IN "
                    "(SELECT unnest(?::VARCHAR[])) OR subscription_id IS NULL",
                    [subs],
                )[0][0]
                == others[t]
            )
        assert not [
            r
            for r in wh.run(con, "SELECT table_name FROM duckdb_tables() WHERE temporary")
            if r[0].startswith(("_in_", "_out_"))
        ]
    finally:
        con.close()


def test_a_signed_invoice_webhook_refreshes_that_invoice_without_a_full_run(
    warehouse_copy, tiny_world, tmp_path, monkeypatch
):
    from billing_ai.pipeline import platform_sync_job
    from billing_ai.webhooks.sensors import webhook_sensor

    con = wh.connect(warehouse_copy)
    try:
        # an invoice the warehouse has not seen yet: drop it (and its lines and reconciliation) everywhere
        invoice_id, sub_id = wh.run(
            con,
            """SELECT invoice_id, subscription_id FROM marts.invoice_reconciliation
                                            WHERE invoice_id IS NOT NULL AND subscription_id IS NOT NULL
                                            ORDER BY invoice_id LIMIT 1""",
        )[0]
        expected = wh.run(
            con,
            "SELECT * FROM marts.invoice_reconciliation WHERE invoice_id = ? ORDER BY line_id, finding",
            [invoice_id],
        )
        wh.run(con, "DELETE FROM raw.stripe_invoice_lines WHERE payload->>'invoice' = ?", [invoice_id])
        wh.run(con, "DELETE FROM raw.stripe_invoices WHERE id = ?", [invoice_id])
        for t in ("core.invoice_lines", "core.invoices", "marts.invoice_reconciliation"):
            wh.run(con, f"DELETE FROM {t} WHERE invoice_id = ?", [invoice_id])
        untouched = wh.run(con, "SELECT count(*) FROM marts.invoice_reconciliation")[0][0]
    finally:
        con.close()

    # the platform tells us, signed; a redelivery is deduplicated by the inbox
    inbox_path = tmp_path / "inbox.sqlite"
    inbox = WebhookInbox(inbox_path)
    now = 1_800_000_000
    client = ASGIClient(create_app(inbox, WebhookSecrets(stripe=["whsec_t"]), clock=lambda: now))
    body = json.dumps(
        {
            "id": "evt_new_invoice",
            "type": "invoice.created",
            "data": {"object": {"id": invoice_id, "object": "invoice"}},
        }
    ).encode()
    headers = {"Stripe-Signature": sig.stripe_header(body, "whsec_t", now), "Content-Type": "application/json"}
    for _ in range(2):
        assert client.post("/webhooks/stripe", content=body, headers=headers).status_code == 200
    monkeypatch.setenv("BILLING_AI_WEBHOOK_INBOX", str(inbox_path))
    sensor = webhook_sensor(platform_sync_job)
    ctx = dg.build_sensor_context(cursor=None)
    reqs = sensor(ctx)
    assert [r.job_name for r in reqs] == ["targeted_refresh_job"]
    assert isinstance(sensor(dg.build_sensor_context(cursor=ctx.cursor)), dg.SkipReason)  # the redelivery: nothing

    from billing_ai.webhooks.refresh import targeted_refresh_job

    with SandboxServer(tiny_world.paths.world_dir, tmp_path / "state") as server:
        res = targeted_refresh_job.execute_in_process(
            run_config=reqs[0].run_config, resources=pipeline_resources(server.url, warehouse_copy, tiny_world)
        )
    assert res.success
    out = res.output_for_node("refresh_named_objects")
    assert out["subscriptions"] == [sub_id] and out["raw_rows"]["invoices"] == 1
    mats = {
        e.event_specific_data.materialization.asset_key.to_user_string() for e in res.get_asset_materialization_events()
    }
    assert "marts/invoice_reconciliation" in mats and "core/invoices" in mats

    con = wh.connect(warehouse_copy)
    try:
        assert (
            wh.run(
                con,
                "SELECT * FROM marts.invoice_reconciliation WHERE invoice_id = ? ORDER BY line_id, finding",
                [invoice_id],
            )
            == expected
        )
        assert wh.run(con, "SELECT count(*) FROM marts.invoice_reconciliation")[0][0] == untouched + len(expected)
    finally:
        con.close()
    # analysts see it: the snapshot was published
    pub = wh.connect_published(warehouse_copy)
    try:
        assert wh.run(pub, "SELECT count(*) FROM marts.invoice_reconciliation WHERE invoice_id = ?", [invoice_id])[0][
            0
        ] == len(expected)
    finally:
        pub.close()


def test_upsert_replaces_an_invoices_lines(warehouse_copy, tiny_world):
    from billing_ai.platforms.stripe import SPEC

    con = wh.connect(warehouse_copy)
    try:
        inv_id, payload = wh.run(con, "SELECT id, payload FROM raw.stripe_invoices ORDER BY id LIMIT 1")[0]
        lines = wh.run(con, "SELECT count(*) FROM raw.stripe_invoice_lines WHERE payload->>'invoice' = ?", [inv_id])
        assert lines[0][0] >= 2
        one_line = json.loads(
            wh.run(
                con,
                "SELECT payload FROM raw.stripe_invoice_lines WHERE payload->>'invoice' = ? ORDER BY id LIMIT 1",
                [inv_id],
            )[0][0]
        )
        with wh.transaction(con):
            upsert_raw(
                con,
                SPEC,
                {"invoices": [json.loads(payload)], "invoice_lines": [one_line]},
                tiny_world.config.as_of_dt(),
            )
        assert wh.run(con, "SELECT count(*) FROM raw.stripe_invoices WHERE id = ?", [inv_id])[0][0] == 1
        # the platform now has one line: the others went with the refresh
        assert (
            wh.run(con, "SELECT count(*) FROM raw.stripe_invoice_lines WHERE payload->>'invoice' = ?", [inv_id])[0][0]
            == 1
        )
    finally:
        con.close()


def test_a_webhook_for_an_unconfigured_platform_fails_with_a_clear_reason(warehouse_copy, tiny_world):
    from billing_ai.platforms.chargebee.resource import ChargebeeResource
    from billing_ai.webhooks.refresh import targeted_refresh_job

    res = pipeline_resources("http://127.0.0.1:9", warehouse_copy, tiny_world)
    res["chargebee"] = ChargebeeResource(api_base="")  # not configured in this deployment
    out = targeted_refresh_job.execute_in_process(
        run_config={
            "ops": {
                "refresh_named_objects": {
                    "config": {"platform": "chargebee", "kind": "invoice", "ids": ["inv_1"], "events": ["ev_1"]}
                }
            }
        },
        resources=res,
        raise_on_error=False,
    )
    assert not out.success
    failure = next(e for e in out.all_events if e.event_type_value == "STEP_FAILURE")
    assert "chargebee is not configured here" in failure.step_failure_data.error.message


def _future_invoice(con, days: int = 400) -> tuple[str, dict, dict]:
    """A Stripe invoice of the warehouse as the platform would now return it, created ``days`` after
    the clock's now (which no invoice can be), with its lines."""
    inv_id, payload = wh.run(con, "SELECT id, payload FROM raw.stripe_invoices ORDER BY id LIMIT 1")[0]
    invoice = json.loads(payload)
    invoice["created"] += days * 86400
    lines = [
        json.loads(p)
        for (p,) in wh.run(
            con, "SELECT payload FROM raw.stripe_invoice_lines WHERE payload->>'invoice' = ? ORDER BY id", [inv_id]
        )
    ]
    return inv_id, invoice, {"invoices": [invoice], "invoice_lines": lines}


def test_a_refresh_that_breaks_a_blocking_core_check_keeps_nothing(warehouse_copy, tiny_world):
    """The rebuilt core tables are checked as in the nightly run, in the refresh's transaction: an invoice
    created after now fails invoices_not_in_future (blocking), so raw, core and the rating marts are
    left exactly as they were (a later refresh of something else cannot publish it)."""
    from billing_ai.platforms.stripe import SPEC
    from billing_ai.webhooks.refresh import refresh

    con = wh.connect(warehouse_copy)
    state = [
        "SELECT * FROM marts.invoice_reconciliation ORDER BY ALL",
        "SELECT * FROM core.invoices ORDER BY ALL",
        "SELECT id, payload FROM raw.stripe_invoices ORDER BY ALL",
    ]
    try:
        before = [wh.run(con, q) for q in state]
        _, _, as_it_was = _future_invoice(con, days=0)
        inv_id, _, fetched = _future_invoice(con)
        out = refresh(con, SPEC, "invoice", [inv_id], fetched, tiny_world.config.as_of_dt())
        assert out["blocked"] == ["invoices_not_in_future"]
        assert out["mart_rows"] == {} and out["raw_rows"] == {}
        assert {o.rule.name: o.violations for o in out["checks"]["invoices"]}["invoices_not_in_future"] == 1
        assert [wh.run(con, q) for q in state] == before
        # the same refresh with the invoice as it was passes its checks and refreshes the marts
        out = refresh(con, SPEC, "invoice", [inv_id], as_it_was, tiny_world.config.as_of_dt())
        assert out["blocked"] == [] and out["mart_rows"]
    finally:
        con.close()


def test_a_targeted_run_whose_checks_fail_does_not_publish(warehouse_copy, tiny_world, monkeypatch):
    from billing_ai.platforms.stripe.client import StripeConnector
    from billing_ai.webhooks.refresh import targeted_refresh_job

    con = wh.connect(warehouse_copy)
    try:
        inv_id, _, fetched = _future_invoice(con)
    finally:
        con.close()
    monkeypatch.setattr(StripeConnector, "fetch_objects", lambda self, kind, ids: fetched)
    published = wh.published_path_for(warehouse_copy)
    assert not published.exists()
    out = targeted_refresh_job.execute_in_process(
        run_config={
            "ops": {
                "refresh_named_objects": {
                    "config": {"platform": "stripe", "kind": "invoice", "ids": [inv_id], "events": ["evt_1"]}
                }
            }
        },
        resources=pipeline_resources("http://127.0.0.1:9", warehouse_copy, tiny_world),
        raise_on_error=False,
    )
    assert not out.success
    failure = next(e for e in out.all_events if e.event_type_value == "STEP_FAILURE")
    assert "blocking checks failed" in failure.step_failure_data.error.message
    assert "invoices_not_in_future" in failure.step_failure_data.error.message
    evaluations = {
        e.event_specific_data.check_name: e.event_specific_data.passed
        for e in out.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    assert evaluations["invoices_not_in_future"] is False
    assert out.get_asset_materialization_events() == []  # rolled back: nothing materialized
    assert not published.exists()  # analysts keep the last good snapshot
    assert len([e for e in out.all_events if e.event_type_value == "STEP_START"]) == 1  # not retried

    # a later refresh of something else publishes a snapshot in which the blocked invoice never landed
    con = wh.connect(warehouse_copy)
    try:
        ((sub_id,),) = wh.run(con, "SELECT id FROM raw.stripe_subscriptions ORDER BY id LIMIT 1")
    finally:
        con.close()
    monkeypatch.undo()
    from billing_ai.sandbox.server import SandboxServer as Server

    with Server(tiny_world.paths.world_dir, warehouse_copy.parent / "state") as server:
        out = targeted_refresh_job.execute_in_process(
            run_config={
                "ops": {
                    "refresh_named_objects": {
                        "config": {"platform": "stripe", "kind": "subscription", "ids": [sub_id], "events": ["evt_2"]}
                    }
                }
            },
            resources=pipeline_resources(server.url, warehouse_copy, tiny_world),
        )
    assert out.success and published.exists()
    pub = wh.connect_published(warehouse_copy)
    try:
        assert wh.run(
            pub, "SELECT count(*) FROM core.invoices WHERE created_at > ?", [tiny_world.config.as_of_dt()]
        ) == [(0,)]
    finally:
        pub.close()
