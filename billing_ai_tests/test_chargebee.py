"""Chargebee: the sandbox facade's wire format, the connector against it (pages, 429s, 5xx, quarantine),
the core mapping (equal to Stripe's for the same world, hand-checked pieces), and the write-back."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb
import httpx
import pytest

from billing_ai import warehouse as wh
from billing_ai.actions.ledger import Ledger
from billing_ai.actions.policy import Policy
from billing_ai.actions.push import Executor, Sinks, push_action
from billing_ai.ingestion.platform_assets import CORE_TABLES, build_core_table, land_raw
from billing_ai.platforms.chargebee import SPEC
from billing_ai.platforms.chargebee.client import ChargebeeConnector
from billing_ai.platforms.chargebee.resource import ChargebeeResource
from billing_ai.platforms.chargebee.writer import ChargebeeExecutor, ChargebeeWriter
from billing_ai.platforms.registry import PLATFORM_SPECS
from billing_ai.platforms.stripe.resource import StripeResource
from billing_ai.retry import RetryPolicy
from billing_ai.sandbox.chargebee_api import DEFAULT_API_KEY, DEFAULT_READONLY_KEY
from billing_ai.sandbox.chargebee_render import item_price, major
from billing_ai.sandbox.faults import GET, POST, FaultPlan, burst, nth
from billing_ai.sandbox.server import SandboxServer
from billing_ai.sandbox.world import WorldConfig
from billing_ai.writeback.kinds import AUDIT_POINTER_KEY
from billing_ai_tests.conftest import (
    TEST_PII_KEY,
    GeneratedWorld,
    make_proposal,
    pipeline_resources,
    propose_and_approve,
    write_test_world,
)

# a small world with plan changes (prorations, replaced items), cancellations and failed payments
CB_CONFIG = WorldConfig(seed=5, customers=14, days=70, upgrade_rate=0.5, downgrade_rate=0.2, cancel_rate=0.3)
FAST = RetryPolicy(max_attempts=6, base_delay=0.01, max_delay=0.05)
POLICY = Policy.load()
# ids Chargebee mints itself (docs/platforms.md, Chargebee): compared apart from the rest
PLATFORM_MINTED = {"invoice_lines": {"line_id"}, "payments": {"payment_id"}, "invoices": {"number"}}


def _world(tmp: Path, platform: str) -> GeneratedWorld:
    return write_test_world(tmp, WorldConfig(**{**CB_CONFIG.__dict__, "platforms": {platform: 1.0}}))


@pytest.fixture(scope="module")
def cb_world(tmp_path_factory) -> GeneratedWorld:
    return _world(tmp_path_factory.mktemp("cb_world"), "chargebee")


@pytest.fixture
def server(cb_world, tmp_path):
    with SandboxServer(cb_world.paths.world_dir, tmp_path / "state") as s:
        yield s


def connector(server, page_size=100, **kw) -> ChargebeeConnector:
    return ChargebeeConnector(
        DEFAULT_READONLY_KEY,
        f"{server.url}/chargebee",
        TEST_PII_KEY,
        requests_per_second=1000,
        page_size=page_size,
        policy=FAST,
        **kw,
    )


def api(server, method, path, key=DEFAULT_API_KEY, **kw) -> httpx.Response:
    return httpx.request(method, f"{server.url}/chargebee/api/v2{path}", auth=(key, ""), **kw)


# ---- the facade's wire format ---------------------------------------------------------------------
def test_facade_speaks_chargebee_v2(server):
    bad = api(server, "GET", "/customers", key="nope")
    assert bad.status_code == 401 and bad.json()["api_error_code"] == "api_authentication_failed"
    assert set(bad.json()) >= {"message", "api_error_code", "error_code", "error_msg", "http_status_code"}
    page = api(server, "GET", "/customers", params={"limit": 2}).json()
    assert len(page["list"]) == 2 and set(page["list"][0]) == {"customer"} and page["next_offset"]
    rest = api(server, "GET", "/customers", params={"limit": 100, "offset": page["next_offset"]}).json()
    ids = [e["customer"]["id"] for e in page["list"] + rest["list"]]
    assert len(ids) == len(set(ids)) == CB_CONFIG.customers and "next_offset" not in rest
    cancelled = api(server, "GET", "/subscriptions", params={"limit": 100, "status[is]": "cancelled"}).json()
    assert cancelled["list"] and all(e["subscription"]["status"] == "cancelled" for e in cancelled["list"])
    sub = cancelled["list"][0]["subscription"]
    assert all("item_price_id" in e for e in sub["subscription_items"])
    assert api(server, "GET", "/subscriptions/nope").json()["api_error_code"] == "resource_not_found"
    wrong = api(server, "GET", "/customers", params={"limit": 101})
    assert wrong.status_code == 400 and wrong.json()["param"] == "limit" and wrong.json()["type"] == "invalid_request"
    ro = api(
        server,
        "POST",
        "/comments",
        key=DEFAULT_READONLY_KEY,
        data={"entity_type": "customer", "entity_id": ids[0], "notes": "x"},
    )
    assert ro.status_code == 403 and ro.json()["api_error_code"] == "api_authorization_failed"
    prices = api(server, "GET", "/item_prices", params={"limit": 100, "pricing_model[in]": '["tiered","volume"]'})
    tiers = prices.json()["list"][0]["item_price"]["tiers"]
    assert tiers[0]["starting_unit"] == 1 and "ending_unit" not in tiers[-1]


def test_facade_rate_limit_answers_429_with_retry_after(server):
    server.facades["chargebee"].settings.rate_limit_per_second = 1.0
    codes = [api(server, "GET", "/items", params={"limit": 1}) for _ in range(5)]
    limited = [r for r in codes if r.status_code == 429]
    assert limited and limited[0].headers["retry-after"].isdigit()
    assert limited[0].json()["api_error_code"] == "api_request_limit_exceeded"


def test_idempotency_key_replays_the_first_response(server):
    cust = api(server, "GET", "/customers", params={"limit": 1}).json()["list"][0]["customer"]["id"]
    body = {"entity_type": "customer", "entity_id": cust, "notes": "hello"}
    hdr = {"chargebee-idempotency-key": "k-1"}
    first = api(server, "POST", "/comments", data=body, headers=hdr)
    again = api(server, "POST", "/comments", data=body, headers=hdr)
    assert first.status_code == again.status_code == 200 and again.headers["chargebee-idempotency-replayed"] == "true"
    assert first.json() == again.json()
    listed = api(server, "GET", "/comments", params={"entity_type": "customer", "entity_id": cust}).json()["list"]
    assert len(listed) == 1
    other = api(server, "POST", "/comments", data={**body, "notes": "other"}, headers=hdr)
    assert other.status_code == 409


def test_usage_records_deduplicate_by_id(server):
    sub = next(
        e["subscription"]
        for e in api(server, "GET", "/subscriptions", params={"limit": 100}).json()["list"]
        if e["subscription"]["status"] == "active"
    )
    metered = [e["item_price_id"] for e in sub["subscription_items"] if "quantity" not in e]
    body = {"id": "usage-dedup-1", "item_price_id": metered[0], "quantity": "12.5", "usage_date": "1790000000"}
    assert api(server, "POST", f"/subscriptions/{sub['id']}/usages", data=body).json()["usage"]["quantity"] == "12.5"
    dup = api(server, "POST", f"/subscriptions/{sub['id']}/usages", data=body)
    assert dup.status_code == 400 and dup.json()["api_error_code"] == "duplicate_entry"
    skip = api(
        server, "POST", f"/subscriptions/{sub['id']}/usages", data={**body, "dedupe_option": "skip", "quantity": "99"}
    )
    assert skip.json()["usage"]["quantity"] == "12.5"


# ---- the connector ------------------------------------------------------------------------------
def test_connector_pages_and_rides_out_429s_and_5xx(server, cb_world):
    now = cb_world.config.as_of_dt()
    clean = connector(server).fetch_snapshot(now)
    plan = server.facades["chargebee"].settings.faults = FaultPlan(
        rate_limit=burst(3, start=2, methods=GET),
        retry_after=0,
        server_error=nth(7, 9, methods=GET),
        error_statuses=(500, 503),
    )
    conn = connector(server, page_size=3)
    snap = conn.fetch_snapshot(now)
    server.facades["chargebee"].settings.faults = None
    assert plan.counts["rate_limit"] == 3 and plan.counts["server_error"] == 2
    assert conn.stats["rate_limited"] == 3 and conn.stats["retried"] == 2
    assert conn.stats["requests"] > len(snap["invoices"]) // 3 + len(snap["usages"]) // 3
    assert {k: len(v) for k, v in snap.items()} == {k: len(v) for k, v in clean.items()}
    assert snap["customers"] == clean["customers"] and not snap["quarantine"]
    c = snap["customers"][0]
    assert c["email"].startswith("tok_email_") and c["company"].startswith("tok_name_")
    assert "billing_address" not in c and all("masked_card_number" not in t for t in snap["transactions"])


def test_malformed_objects_are_quarantined_with_their_reason(server, cb_world, tmp_path):
    store = server.facades["chargebee"].store
    txn = store.list("transaction", limit=1)[0][0]
    store.put("transaction", {**txn, "amount": "12.50"})  # money must be an integer of minor units
    usage = store.list("usage", limit=1, newest_first=False)[0][0]  # a whole past day: the connector reads it
    store.put("usage", {**usage, "quantity": "lots"})
    served = len(store.list("transaction", limit=10_000)[0])
    res = pipeline_resources(server.url, tmp_path / "wh.duckdb", cb_world, page_size=50)
    res["stripe"] = StripeResource(api_key="unused", api_base="")  # a Chargebee-only deployment
    from billing_ai import pipeline as d

    result = dg.materialize(d.PLATFORM_ASSETS, resources=res, raise_on_error=True)
    meta = {
        m.asset_key.path[-1]: m.metadata
        for m in (e.event_specific_data.materialization for e in result.get_asset_materialization_events())
    }
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        rows = con.sql("SELECT source, record_key, reason FROM core.quarantine ORDER BY source").fetchall()
        assert rows == [
            ("chargebee_transactions", txn["id"], "malformed_money"),
            ("chargebee_usages", usage["id"], "malformed_decimal"),
        ]
        for obj in ("transactions", "usages"):
            assert meta[f"chargebee_{obj}"]["quarantined"].value == 1
            got = meta[f"chargebee_{obj}"]
            assert got["records_in"].value == got["dagster/row_count"].value + 1
        assert meta["chargebee_transactions"]["records_in"].value == served  # records in = landed + quarantined
        by_platform = dict(con.sql("SELECT platform, count(*) FROM core.customers GROUP BY 1").fetchall())
        assert by_platform == {"chargebee": CB_CONFIG.customers}


# ---- the core mapping ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def twin_warehouses(tmp_path_factory) -> dict[str, Path]:
    """The same world materialized twice: every customer on Stripe, then every customer on Chargebee."""
    from billing_ai.runner import materialize_all

    out = {}
    for plat in ("stripe", "chargebee"):
        tmp = tmp_path_factory.mktemp(f"twin_{plat}")
        gw = _world(tmp, plat)
        with SandboxServer(gw.paths.world_dir, tmp / "state") as s:
            res = pipeline_resources(s.url, tmp / "warehouse.duckdb", gw, page_size=7)
            if plat == "chargebee":
                res["stripe"] = StripeResource(api_key="unused", api_base="")
            materialize_all(gw.config, resources=res, say=lambda m: None)
        out[plat] = tmp / "warehouse.duckdb"
    return out


@pytest.mark.parametrize("table", CORE_TABLES)
def test_core_tables_equal_stripes_for_the_same_world(twin_warehouses, table):
    s = duckdb.connect(str(twin_warehouses["stripe"]), read_only=True)
    c = duckdb.connect(str(twin_warehouses["chargebee"]), read_only=True)
    scols = s.sql(f"DESCRIBE core.{table}").fetchall()
    assert [r[:2] for r in scols] == [r[:2] for r in c.sql(f"DESCRIBE core.{table}").fetchall()]
    cols = [
        r[0]
        for r in scols
        if r[0] != "platform" and not r[0].startswith("platform_") and r[0] not in PLATFORM_MINTED.get(table, ())
    ]
    q = f"SELECT {', '.join(f'CAST({x} AS VARCHAR)' for x in cols)} FROM core.{table} WHERE platform = ?"
    a, b = sorted(s.execute(q, ["stripe"]).fetchall(), key=str), sorted(c.execute(q, ["chargebee"]).fetchall(), key=str)
    assert a == b
    assert a or table == "credit_notes"  # this world happens to issue none (2% of paid invoices)
    if table == "invoice_lines":  # the platform-minted ids still tie out one to one
        n = c.sql("SELECT count(DISTINCT line_id), count(*) FROM core.invoice_lines").fetchall()[0]
        assert n[0] == n[1] == len(a)


def test_the_twin_world_exercises_what_is_hard_to_map(twin_warehouses):
    with duckdb.connect(str(twin_warehouses["chargebee"]), read_only=True) as c:
        one = lambda sql: c.sql(sql).fetchall()[0][0]  # noqa: E731 -- a one-line local helper reads best inline
        assert one("SELECT count(*) FROM core.invoice_lines WHERE is_proration") > 0
        assert one("SELECT count(*) FROM core.invoice_lines WHERE amount < 0") > 0
        assert one("SELECT count(*) FROM core.invoice_lines WHERE line_type = 'invoice_item'") >= 0
        assert one("SELECT count(*) FROM core.subscription_items WHERE NOT is_current") > 0
        assert one("SELECT count(*) FROM core.invoices WHERE billing_reason = 'subscription_cancel'") > 0
        assert one("SELECT count(*) FROM core.payments WHERE failure_code IS NOT NULL") > 0
        assert one("SELECT count(*) FROM core.price_tiers WHERE flat_amount > 0") > 0
        assert one("SELECT count(*) FROM core.prices WHERE package_size IS NOT NULL") > 0


def _land(con, spec, snapshot):
    wh.run(con, "CREATE SCHEMA IF NOT EXISTS raw; CREATE SCHEMA IF NOT EXISTS core")
    land_raw(con, spec, snapshot, datetime(2026, 11, 1, tzinfo=UTC))


def test_prices_scale_major_unit_decimals_to_exact_minor_units():
    # hand-checked: $0.000375 = 0.0375 cents; JPY has no minor unit; KWD has three places
    assert major("0.0375", "usd") == "0.000375" and major(1500, "jpy") == "1500" and major("12.5", "kwd") == "0.0125"
    base = {
        "price_id": "price_a",
        "product_id": "prod_a",
        "plan": "growth",
        "component": "api_calls",
        "usage_type": "metered",
        "billing_scheme": "per_unit",
        "tiers_mode": None,
        "tiers_json": None,
        "divide_by": None,
        "round": None,
        "meter_id": "mtr_a",
        "meter_name": "api_calls",
        "created": 1,
    }
    prices = [
        item_price(
            {**base, "price_id": "p_usd", "currency": "usd", "unit_amount_decimal": "0.0375", "lookup_key": "a"},
            "addon",
        ),
        item_price(
            {**base, "price_id": "p_jpy", "currency": "jpy", "unit_amount_decimal": "12.5", "lookup_key": "b"}, "addon"
        ),
        item_price(
            {**base, "price_id": "p_kwd", "currency": "kwd", "unit_amount_decimal": "12.5", "lookup_key": "c"}, "addon"
        ),
        item_price(
            {
                **base,
                "price_id": "p_tier",
                "currency": "usd",
                "unit_amount_decimal": None,
                "lookup_key": "d",
                "billing_scheme": "tiered",
                "tiers_mode": "graduated",
                "tiers_json": json.dumps(
                    [
                        {"up_to": 1000, "unit_amount_decimal": "0.04", "flat_amount": 2500},
                        {"up_to": 5000, "unit_amount_decimal": "0", "flat_amount": 700},
                        {"up_to": None, "unit_amount_decimal": "0.015", "flat_amount": 0},
                    ]
                ),
            },
            "addon",
        ),
        item_price(
            {
                **base,
                "price_id": "p_pkg",
                "currency": "usd",
                "unit_amount_decimal": "75",
                "lookup_key": "e",
                "divide_by": 1000,
                "round": "up",
            },
            "addon",
        ),
    ]
    assert prices[3]["tiers"][1] == {
        "starting_unit": 1001,
        "pricing_type": "flat_fee",
        "price": 700,
        "price_in_decimal": "7",
        "ending_unit": 5000,
    }
    assert prices[3]["metadata"]["tier_flat_amounts"] == [2500, 0, 0]
    con = duckdb.connect()
    _land(
        con,
        SPEC,
        {"item_prices": prices, "items": [{"id": "prod_a", "metered": True, "metadata": {"component": "api_calls"}}]},
    )
    got = dict(
        con.sql(
            f"SELECT price_id, CAST(unit_amount_decimal AS VARCHAR) FROM ({wh.read_sql('core/chargebee/prices.sql')})"
        ).fetchall()
    )
    assert got == {
        "p_usd": "0.037500000000",
        "p_jpy": "12.500000000000",
        "p_kwd": "12.500000000000",
        "p_tier": None,
        "p_pkg": "75.000000000000",
    }
    pkg = con.sql(
        f"SELECT billing_scheme, package_size, package_rounding FROM ({wh.read_sql('core/chargebee/prices.sql')}) "
        "WHERE price_id = 'p_pkg'"
    ).fetchall()[0]
    assert pkg == ("per_unit", 1000, "up")
    tiers = con.sql(
        f"SELECT tier_index, CAST(up_to AS VARCHAR), CAST(unit_amount_decimal AS VARCHAR), flat_amount "
        f"FROM ({wh.read_sql('core/chargebee/price_tiers.sql')}) ORDER BY tier_index"
    ).fetchall()
    assert tiers == [
        (0, "1000.000000000", "0.040000000000", 2500),
        (1, "5000.000000000", "0.000000000000", 700),
        (2, None, "0.015000000000", 0),
    ]


def test_invoice_starting_balance_follows_the_customers_credit():
    # hand-checked: 5000 of credit; 3000 used, then 2000 (all of it); a -500 invoice adds 500 of credit
    invs = [
        {
            "id": f"in_{k}",
            "customer_id": "cus_a",
            "subscription_id": "sub_a",
            "date": 100 * k,
            "total": t,
            "sub_total": t,
            "credits_applied": c,
            "amount_paid": max(t - c, 0),
            "amount_due": 0,
            "first_invoice": k == 1,
            "recurring": True,
            "status": "paid",
            "generated_at": 100 * k + 1,
            "currency_code": "USD",
            "dunning_attempts": [],
            "discounts": [],
        }
        for k, (t, c) in enumerate([(3000, 3000), (4000, 2000), (-500, 0), (1000, 500)], start=1)
    ]
    con = duckdb.connect()
    _land(
        con,
        SPEC,
        {
            "invoices": invs,
            "customers": [{"id": "cus_a", "promotional_credits": 5000}],
            "subscriptions": [{"id": "sub_a", "started_at": 100}],
        },
    )
    rows = con.sql(
        f"SELECT invoice_id, starting_balance, amount_due, billing_reason, epoch(period_start)::BIGINT "
        f"FROM ({wh.read_sql('core/chargebee/invoices.sql')}) ORDER BY invoice_id"
    ).fetchall()
    assert rows == [
        ("in_1", -5000, 0, "subscription_create", 100),
        ("in_2", -2000, 2000, "subscription_cycle", 100),
        ("in_3", 0, 0, "subscription_cycle", 200),
        ("in_4", -500, 500, "subscription_cycle", 300),
    ]


def test_two_platforms_minting_the_same_id_never_collide_in_core():
    con = duckdb.connect()
    for spec in PLATFORM_SPECS:  # every platform's raw tables exist (empty): core unions them all
        _land(con, spec, {})
    stripe_spec = next(s for s in PLATFORM_SPECS if s.name == "stripe")
    same = "li_0000000000SAME"
    _land(
        con,
        stripe_spec,
        {
            "invoice_lines": [
                {
                    "id": same,
                    "invoice": "in_s",
                    "amount": 100,
                    "currency": "usd",
                    "quantity": 1,
                    "period": {"start": 0, "end": 1},
                    "parent": {"type": "invoice_item_details"},
                }
            ],
            "payment_intents": [
                {
                    "id": "txn_SAME",
                    "amount": 100,
                    "currency": "usd",
                    "status": "succeeded",
                    "created": 0,
                    "metadata": {},
                }
            ],
        },
    )
    _land(
        con,
        SPEC,
        {
            "invoice_line_items": [
                {
                    "id": same,
                    "invoice_id": "in_c",
                    "amount": 100,
                    "date_from": 0,
                    "date_to": 1,
                    "entity_type": "adhoc",
                    "quantity": 1,
                }
            ],
            "transactions": [
                {
                    "id": "txn_SAME",
                    "type": "payment",
                    "amount": 100,
                    "status": "success",
                    "date": 0,
                    "currency_code": "USD",
                    "linked_invoices": [{"invoice_id": "in_c"}],
                }
            ],
        },
    )
    for table, key in (("invoice_lines", "line_id"), ("payments", "payment_id")):
        build_core_table(con, table)
        rows = con.sql(f"SELECT platform, {key} FROM core.{table} ORDER BY platform").fetchall()
        assert [r[0] for r in rows] == ["chargebee", "stripe"] and rows[0][1] == rows[1][1]
        assert con.sql(f"SELECT count(DISTINCT (platform, {key})) FROM core.{table}").fetchall()[0][0] == 2


def test_resource_is_off_without_a_base_address():
    assert not ChargebeeResource().enabled
    assert ChargebeeResource(api_base="https://acme.chargebee.com", api_key="k").enabled
    with pytest.raises(ValueError):
        ChargebeeResource(api_base="https://acme.chargebee.com").connector("pii")


# ---- write-back ------------------------------------------------------------------------------------
class Push:
    def __init__(self, server, tmp: Path, now: datetime):
        self.server, self.now = server, now
        self.ledger = Ledger(tmp / "ops" / "actions.sqlite")
        self.ledger.set_meta("clock", now.isoformat())
        sinks = Sinks(
            case_url=f"{server.url}/sinks/cases",
            chat_webhook_url=f"{server.url}/sinks/chat/T/B/s",
            outbox_dir=tmp / "outbox",
        )
        self.writer = ChargebeeWriter(
            DEFAULT_API_KEY,
            f"{server.url}/chargebee",
            requests_per_second=1000,
            policy=RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.02),
        )
        self.executor = Executor({"chargebee": ChargebeeExecutor(self.writer)}, sinks)
        subs = self.writer.listing("subscriptions", {"status[is]": "active"})
        self.sub = next(s for s in subs if len(s["subscription_items"]) >= 3)
        self.customer = self.sub["customer_id"]
        self.currency = self.sub["currency_code"].lower()

    def propose(self, kind, target_type, target_id, params) -> str:
        p = make_proposal(kind, target_type, target_id, params, self.now, platform="chargebee")
        return propose_and_approve(self.ledger, p, POLICY, self.now)

    def push(self, aid: str) -> dict:
        return push_action(self.ledger, self.executor, POLICY, aid, sleep=lambda s: None)

    def charges(self) -> list[dict]:
        return self.writer.listing("unbilled_charges", {"subscription_id[is]": self.sub["id"]})


@pytest.fixture
def push(server, cb_world, tmp_path) -> Push:
    return Push(server, tmp_path, cb_world.config.as_of_dt())


@pytest.mark.parametrize("mode", ["drop", "500"])
def test_a_pending_charge_lands_once_even_after_apply_then_fail(push, mode):
    aid = push.propose(
        "pending_invoice_item",
        "customer",
        push.customer,
        {"amount": 1234, "currency": push.currency, "description": "Correction for invoice X"},
    )
    plan = push.server.facades["chargebee"].settings.faults = FaultPlan(
        apply_then_fail=nth(1, methods=POST), apply_then_fail_mode=mode
    )
    first = push.push(aid)
    push.server.facades["chargebee"].settings.faults = None
    second = push.push(aid)
    charges = push.charges()
    assert plan.counts["apply_then_fail"] == 1
    assert first["status"] == second["status"] == "succeeded" and len(charges) == 1
    assert charges[0]["amount"] == 1234 and f"{AUDIT_POINTER_KEY}={aid}#" in charges[0]["description"]
    notes = push.writer.listing("comments", {"entity_type": "subscription", "entity_id": push.sub["id"]})
    assert any(charges[0]["id"] in n["notes"] for n in notes)


def test_an_unknown_outcome_is_read_back_not_resent(push):
    """(With a single 500 after applying, the writer's own retry with the same key gets the replay.)"""
    aid = push.propose(
        "credit_note",
        "invoice",
        _paid_invoice(push)["id"],
        {"amount": 100, "currency": push.currency, "reason": "duplicate", "memo": "sorry"},
    )
    # the POST is applied, then answered 500; the writer's retries (same idempotency key) get 503s until they
    # run out: the outcome is unknown, and the push loop's next attempt reads the credit note back by its pointer
    push.server.facades["chargebee"].settings.faults = FaultPlan(
        apply_then_fail=nth(1, methods=POST), server_error=nth(2, 3, methods=POST), error_statuses=(503,)
    )
    row = push.push(aid)
    push.server.facades["chargebee"].settings.faults = None
    cns = [c for c in push.writer.listing("credit_notes", {"limit": 100}) if c["total"] == 100]
    assert row["status"] == "succeeded" and len(cns) == 1
    assert cns[0]["reason_code"] == "other" and cns[0]["type"] == "refundable"
    assert [a["outcome"] for a in push.ledger.table("attempts")] == ["unknown", "already_applied"]


def _paid_invoice(push: Push) -> dict:
    return next(
        i
        for i in push.writer.listing("invoices", {"customer_id[is]": push.customer, "status[is]": "paid"})
        if i["total"] > 1000
    )


def test_a_credit_note_over_the_uncredited_amount_is_blocked(push):
    inv = _paid_invoice(push)
    aid = push.propose(
        "credit_note",
        "invoice",
        inv["id"],
        {"amount": inv["total"] + 1, "currency": push.currency, "reason": "order_change", "memo": "x"},
    )
    row = push.push(aid)
    assert row["status"] == "blocked" and "uncredited" in row["status_reason"]


def test_subscription_change_moves_the_item_and_keeps_its_id(push):
    sub = push.sub
    items = json.loads(json.dumps(sub["meta_data"]["billing_ai_items"]))
    licensed = next(e for e in sub["subscription_items"] if e.get("quantity") and e["item_type"] == "addon")
    old = push.writer.get("item_price", licensed["item_price_id"])
    to = next(
        p
        for p in push.writer.listing(
            "item_prices", {"item_id[is]": old["item_id"], "currency_code[is]": old["currency_code"]}
        )
        if p["id"] != old["id"]
    )
    si = items[old["id"]]["id"]
    aid = push.propose(
        "subscription_change",
        "subscription",
        sub["id"],
        {"item": si, "to_price": to["id"], "proration_behavior": "none"},
    )
    assert push.push(aid)["status"] == "succeeded"
    assert push.push(aid)["status"] == "succeeded"
    after = push.writer.get("subscription", sub["id"])
    prices = [e["item_price_id"] for e in after["subscription_items"]]
    assert to["id"] in prices and old["id"] not in prices and len(prices) == len(sub["subscription_items"])
    assert after["meta_data"]["billing_ai_items"][to["id"]]["id"] == si
    assert after["meta_data"][AUDIT_POINTER_KEY].startswith(aid + "#")
    assert len(push.ledger.table("attempts")) == 1


def test_metadata_update_merges_and_kinds_chargebee_cannot_do_are_blocked(push):
    aid = push.propose("metadata_update", "customer", push.customer, {"metadata": {"tier": "gold", "region": ""}})
    assert push.push(aid)["status"] == "succeeded"
    meta = push.writer.get("customer", push.customer)["meta_data"]
    assert meta["tier"] == "gold" and "region" not in meta and meta["segment"]
    assert meta[AUDIT_POINTER_KEY].startswith(aid + "#")
    inv = _paid_invoice(push)
    blocked = push.push(
        push.propose("payment_retry", "invoice", inv["id"], {"amount_due": 100, "currency": push.currency})
    )
    assert blocked["status"] == "blocked" and "chargebee can carry out" in blocked["status_reason"]
    contact = push.executor.platforms["chargebee"].contact(push.customer)
    assert contact.email and "@" in contact.email and contact.currency == push.currency


def test_a_webhook_can_refresh_one_invoice(server):
    inv = api(server, "GET", "/invoices", params={"limit": 1}).json()["list"][0]["invoice"]
    got = connector(server).fetch_objects("invoice", [inv["id"], "in_gone"])
    assert [i["id"] for i in got["invoices"]] == [inv["id"]] and "line_items" not in got["invoices"][0]
    assert len(got["invoice_line_items"]) == len(inv["line_items"])
    assert {li["invoice_id"] for li in got["invoice_line_items"]} == {inv["id"]}
    subs = connector(server).fetch_objects("subscription", [inv["subscription_id"]])
    assert [s["id"] for s in subs["subscriptions"]] == [inv["subscription_id"]]
