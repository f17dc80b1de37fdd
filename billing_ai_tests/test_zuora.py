"""Zuora: the REST v1 facade, the connector (paging, OAuth refresh, 429, 5xx, exact money, quarantine), the
core mapping (a zuora-only tiny world's core tables equal the stripe-only one's), and the write-back.

The zuora world is the tiny world's config with every customer on Zuora (``platforms={"zuora": 1.0}``):
same seed, so the same 12 customers, 21 invoices and amounts as ``tiny_world``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import dagster as dg
import duckdb
import httpx
import polars as pl
import pytest

from billing_ai import warehouse as wh
from billing_ai.actions.ledger import Ledger
from billing_ai.actions.policy import Policy
from billing_ai.actions.push import Executor, PushIncomplete, Sinks, push_action
from billing_ai.clock import parse_instant
from billing_ai.ingestion.platform_assets import CORE_TABLES, build_core_table, land_raw
from billing_ai.platforms.registry import PLATFORM_SPECS
from billing_ai.platforms.spec import QUARANTINE_KEY
from billing_ai.platforms.zuora import SPEC
from billing_ai.platforms.zuora.client import MalformedMoney, ZuoraConnector, to_minor
from billing_ai.platforms.zuora.writer import ZuoraExecutor, to_major
from billing_ai.sandbox.faults import GET, POST, FaultPlan, burst, nth
from billing_ai.sandbox.server import SandboxServer
from billing_ai.sandbox.zuora_api import (
    ZUORA_CLIENT_ID,
    ZUORA_CLIENT_SECRET,
    ZUORA_READONLY_CLIENT_ID,
    ZUORA_READONLY_CLIENT_SECRET,
)
from billing_ai.sandbox.zuora_render import zid
from billing_ai_tests.conftest import (
    TEST_PII_KEY,
    TINY_WORLD_CONFIG,
    GeneratedWorld,
    make_proposal,
    pipeline_resources,
    propose_and_approve,
    write_test_world,
)

ZUORA_WORLD_CONFIG = replace(TINY_WORLD_CONFIG, platforms={"zuora": 1.0})
AS_OF = datetime.fromisoformat(ZUORA_WORLD_CONFIG.as_of)
POLICY = Policy.load()
EXP = {"eur": 2, "usd": 2, "jpy": 0}


@pytest.fixture(scope="session")
def zuora_world(tmp_path_factory) -> GeneratedWorld:
    return write_test_world(tmp_path_factory.mktemp("zuora_world"), ZUORA_WORLD_CONFIG)


@pytest.fixture
def zsandbox(zuora_world, tmp_path):
    with SandboxServer(zuora_world.paths.world_dir, tmp_path / "state") as server:
        yield server


def connector(server, page_size: int = 40, client=(ZUORA_READONLY_CLIENT_ID, ZUORA_READONLY_CLIENT_SECRET)):
    return ZuoraConnector(
        f"{server.url}/zuora", client[0], client[1], TEST_PII_KEY, requests_per_second=500, page_size=page_size
    )


def token(server, client_id=ZUORA_CLIENT_ID, secret=ZUORA_CLIENT_SECRET) -> httpx.Response:
    return httpx.post(
        f"{server.url}/zuora/oauth/token",
        data={"client_id": client_id, "client_secret": secret, "grant_type": "client_credentials"},
    )


def authed(server, client_id=ZUORA_CLIENT_ID, secret=ZUORA_CLIENT_SECRET) -> httpx.Client:
    tok = token(server, client_id, secret).json()["access_token"]
    return httpx.Client(base_url=f"{server.url}/zuora", headers={"Authorization": f"Bearer {tok}"}, timeout=10)


# ---- money: hand-checked ---------------------------------------------------------------------------------
def test_money_major_units_to_exact_minor_units():
    assert to_minor("45.08", "eur", "x") == 4508
    assert to_minor("5000", "jpy", "x") == 5000 and to_minor(5000, "jpy", "x") == 5000
    assert to_minor("1.234", "kwd", "x") == 1234
    assert to_minor("-2.14", "eur", "x") == -214
    assert to_minor("0.00016866666666", "eur", "x", whole=False) == "0.016866666666"  # a unit price, exact
    assert to_minor("0.000368", "eur", "x", whole=False) == "0.0368"
    with pytest.raises(MalformedMoney, match="finer than"):
        to_minor("12.345", "usd", "x")
    with pytest.raises(MalformedMoney, match="unknown currency"):
        to_minor("1.00", "xyz", "x")
    with pytest.raises(MalformedMoney):
        to_minor("twelve", "usd", "x")
    assert to_major(4508, "eur") == "45.08" and to_major(5000, "jpy") == "5000" and to_major(1234, "kwd") == "1.234"


# ---- the facade ------------------------------------------------------------------------------------------
def test_facade_oauth_errors_and_read_only_client(zsandbox):
    assert token(zsandbox, secret="wrong").status_code == 401
    r = httpx.get(f"{zsandbox.url}/zuora/object-query/accounts")
    assert r.status_code == 401 and r.json()["success"] is False and r.json()["reasons"][0]["code"] == "50000011"
    tok = token(zsandbox).json()
    assert tok["token_type"] == "bearer" and tok["expires_in"] > 0
    with authed(zsandbox, ZUORA_READONLY_CLIENT_ID, ZUORA_READONLY_CLIENT_SECRET) as c:
        r = c.put("/v1/accounts/nope", json={"x__c": "1"})
        assert r.status_code == 403 and r.json()["reasons"][0]["code"].endswith("10")
        r = c.get("/v1/accounts/nope")
        assert r.status_code == 404 and "Cannot find entity" in r.json()["reasons"][0]["message"]
        assert c.get("/v1/catalog/products", params={"pageSize": 41}).status_code == 400
        # money is a JSON number in major units, exactly as the world's minor units say
        acct = c.get("/object-query/accounts", params={"pageSize": 1}).json()["data"][0]["accountNumber"]
        inv = c.get(f"/v1/transactions/invoices/accounts/{acct}").text
        assert '"amount": 643.08' in inv  # 64308 EUR cents on the world's first invoice


def test_facade_idempotency_replay_409_and_422(zsandbox):
    facade = zsandbox.facades["zuora"]
    with authed(zsandbox) as c:
        acct = c.get("/object-query/accounts", params={"pageSize": 1}).json()["data"][0]
        body = {"accountNumber": acct["accountNumber"], "charges": [{"amount": "12.34", "comment": "x"}]}
        first = c.post("/v1/debitmemos", json=body, headers={"Idempotency-Key": "k1"})
        again = c.post("/v1/debitmemos", json=body, headers={"Idempotency-Key": "k1"})
        assert first.status_code == again.status_code == 200 and first.json() == again.json()
        other = c.post("/v1/debitmemos", json={**body, "comment": "changed"}, headers={"Idempotency-Key": "k1"})
        assert other.status_code == 422 and other.json()["success"] is False
        # a repeat while the first is still being processed
        facade.settings.write_delay = 0.5
        results = []
        t = threading.Thread(
            target=lambda: results.append(
                c.post("/v1/debitmemos", json=body, headers={"Idempotency-Key": "k2"}).status_code
            )
        )
        t.start()
        threading.Event().wait(0.15)
        second = c.post("/v1/debitmemos", json=body, headers={"Idempotency-Key": "k2"})
        t.join()
        facade.settings.write_delay = 0
        assert second.status_code == 409 and results == [200]
        memos = c.get("/v1/debitmemos", params={"accountNumber": acct["accountNumber"]}).json()["debitmemos"]
        assert len(memos) == 2  # k1 once, k2 once


# ---- the connector ---------------------------------------------------------------------------------------
def test_connector_pages_refreshes_its_token_and_rides_out_429_and_5xx(zsandbox, zuora_world):
    clean = connector(zsandbox, page_size=40).fetch_snapshot(AS_OF)
    facade = zsandbox.facades["zuora"]
    small = connector(zsandbox, page_size=3)
    facade.settings.faults = plan = FaultPlan(
        rate_limit=burst(3, start=2, methods=GET),
        retry_after=0,
        server_error=nth(6, 9, methods=GET),
        error_statuses=(503,),
    )
    snap = small.fetch_snapshot(AS_OF)
    facade.settings.faults = None
    assert plan.counts["rate_limit"] == 3 and plan.counts["server_error"] == 2
    assert small.stats["rate_limited"] == 3 and small.stats["retried"] == 2
    for name in SPEC.raw_objects:
        assert sorted(o["id"] for o in snap[name]) == sorted(o["id"] for o in clean[name]), name
    tables = zuora_world.world.tables
    assert len(snap["accounts"]) == 12 and len(snap["invoices"]) == tables["invoices"].height == 21
    assert len(snap["payments"]) == 21 and len(snap["credit_memos"]) == tables["credit_notes"].height
    assert len(snap["product_rate_plan_charges"]) == 45 and len(snap["products"]) == 5
    assert snap[QUARANTINE_KEY] == []
    # PII: tokens, no addresses
    a = snap["accounts"][0]
    assert a["name"].startswith("tok_name_") and a["billTo"]["workEmail"].startswith("tok_email_")
    assert "address1" not in a["billTo"]
    # an expired token: one 401, a fresh token, the same answer
    fetched = small.http.auth.fetched
    facade.expire_tokens()
    assert len(list(small.object_query("/object-query/accounts"))) == 12
    assert small.http.auth.fetched == fetched + 1


def test_malformed_objects_are_quarantined_through_dagster(zsandbox, zuora_world, tmp_path):
    """The raw asset and the core assets through dagster.materialize, with objects the connector refuses."""
    from billing_ai.ingestion.platform_assets import core_platform_assets, raw_platform_asset
    from billing_ai.platforms.stripe.resource import StripeResource

    store = zsandbox.facades["zuora"].store
    acct = store.page("account", 0, 1)[0][0]
    inv = store.page("invoice", 0, 1, account=acct["accountNumber"])[0][0]
    store.put(
        "invoice",
        {**inv, "id": zid("inv", "bad-1"), "invoiceNumber": "BAD-1", "amount": Decimal("12.345")},
        account=acct["accountNumber"],
    )
    store.put(
        "invoice",
        {**inv, "id": zid("inv", "bad-2"), "invoiceNumber": "BAD-2", "currency": "XYZ"},
        account=acct["accountNumber"],
    )
    store.put("account", {**acct, "id": zid("acct", "bad-3"), "accountNumber": None})
    res = pipeline_resources(zsandbox.url, tmp_path / "wh.duckdb", zuora_world, page_size=5)
    res["stripe"] = StripeResource(api_key="unused", api_base="")
    zuora_raw = raw_platform_asset(SPEC)
    result = dg.materialize(
        [zuora_raw, *[raw_platform_asset(s) for s in PLATFORM_SPECS if s.name != "zuora"], *core_platform_assets],
        resources=res,
        raise_on_error=False,
    )
    mats = {m.asset_key.path[-1]: m.metadata for m in result.asset_materializations_for_node("zuora_raw")}
    assert mats["zuora_invoices"]["quarantined"].value == 2
    assert mats["zuora_invoices"]["records_in"].value == 23 and mats["zuora_invoices"]["dagster/row_count"].value == 21
    assert mats["zuora_accounts"]["quarantined"].value == 1
    con = duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True)
    try:
        q = con.sql(
            "SELECT source, record_key, reason, detail FROM core.quarantine WHERE source LIKE 'zuora%' "
            "ORDER BY record_key"
        ).fetchall()
        assert [(s, k, r) for s, k, r, _ in q] == [
            ("zuora_invoices", "BAD-1", "malformed_money"),
            ("zuora_invoices", "BAD-2", "malformed_money"),
            ("zuora_accounts", zid("acct", "bad-3"), "missing_key"),
        ]
        assert "finer than" in q[0][3] and "unknown currency" in q[1][3]
        assert con.sql("SELECT count(*) FROM core.invoices WHERE platform = 'zuora'").fetchall()[0][0] == 21
    finally:
        con.close()


# ---- the core mapping --------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def zuora_warehouse(zuora_world, tmp_path_factory) -> Path:
    from billing_ai.platforms.stripe.resource import StripeResource
    from billing_ai.runner import materialize_all

    tmp = tmp_path_factory.mktemp("zuora_warehouse")
    with SandboxServer(zuora_world.paths.world_dir, tmp / "state") as server:
        res = pipeline_resources(server.url, tmp / "warehouse.duckdb", zuora_world, page_size=7)
        res["stripe"] = StripeResource(api_key="unused", api_base="")  # a Zuora-only deployment
        materialize_all(zuora_world.config, resources=res, say=lambda m: None)
    return tmp / "warehouse.duckdb"


def _core(path: Path, table: str, platform: str) -> pl.DataFrame:
    con = duckdb.connect(str(path), read_only=True)
    try:
        df = con.sql(f"SELECT * FROM core.{table} WHERE platform = '{platform}'").pl()
    finally:
        con.close()
    df = df.drop([c for c in df.columns if c == "platform" or c.startswith("platform_") or c == "landed_at"])
    if "metadata" in df.columns:  # JSON: compare the objects, not their key order
        df = df.with_columns(
            pl.col("metadata").map_elements(lambda s: json.dumps(json.loads(s), sort_keys=True), return_dtype=pl.String)
        )
    return df.sort(df.columns, nulls_last=True)


@pytest.mark.parametrize("table", CORE_TABLES)
def test_core_tables_of_a_zuora_world_equal_the_stripe_worlds(table, tiny_warehouse, zuora_warehouse):
    stripe, zuora = _core(tiny_warehouse, table, "stripe"), _core(zuora_warehouse, table, "zuora")
    assert stripe.height > 0
    assert zuora.schema == stripe.schema
    assert zuora.equals(stripe), zuora.join(stripe, on=zuora.columns, how="anti", nulls_equal=True).head(5)


def test_zuora_keeps_its_own_ids_beside_the_canonical_ones(zuora_warehouse):
    con = duckdb.connect(str(zuora_warehouse), read_only=True)
    try:
        rows = con.sql("SELECT customer_id, platform_customer_id FROM core.customers").fetchall()
        assert all(c.startswith("cus_") and len(p) == 32 and p == zid("acct", c) for c, p in rows)
        inv = con.sql("SELECT invoice_id, platform_invoice_id FROM core.invoices").fetchall()
        assert all(p == zid("inv", i) for i, p in inv)
    finally:
        con.close()


def test_two_platforms_minting_the_same_id_never_collide_in_core():
    """A Stripe customer whose id happens to be a Zuora account's id: two customers, told apart by platform."""
    con = duckdb.connect()
    wh.run(con, "CREATE SCHEMA raw; CREATE SCHEMA core")
    shared = "2c92a0fd55822b4d015587f3b6e73d4c"
    stripe_snap = {
        "customers": [
            {"id": shared, "object": "customer", "currency": "usd", "balance": 0, "created": 1, "metadata": {}}
        ]
    }
    zuora_snap = {
        "accounts": [
            {
                "id": shared,
                "accountNumber": "A-0001",
                "currency": "USD",
                "creditBalance_minor": 0,
                "createdDate": "2026-01-01T00:00:00+00:00",
                "billTo": {},
            }
        ],
        "invoices": [
            {
                "id": shared,
                "invoiceNumber": "INV-1",
                "accountNumber": "A-0001",
                "currency": "USD",
                "status": "Posted",
                "amount_minor": 100,
                "balance_minor": 0,
                "paymentAmount_minor": 100,
                "createdDate": "2026-01-01T00:00:00+00:00",
            }
        ],
    }
    now = datetime(2026, 1, 2, tzinfo=UTC)
    with wh.transaction(con):
        for spec in PLATFORM_SPECS:
            land_raw(con, spec, {"stripe": stripe_snap, "zuora": zuora_snap}.get(spec.name, {}), now)
    for t in ("customers", "invoices"):
        build_core_table(con, t)
    rows = con.sql("SELECT platform, customer_id, platform_customer_id FROM core.customers ORDER BY 1").fetchall()
    assert rows == [("stripe", shared, shared), ("zuora", "A-0001", shared)]
    inv = con.sql("SELECT platform, invoice_id, platform_invoice_id, customer_id FROM core.invoices").fetchall()
    assert inv == [("zuora", shared, shared, "A-0001")]  # no invoice_id__c: Zuora's id, owned by its account


# ---- write-back --------------------------------------------------------------------------------------------
class Env:
    def __init__(self, server, tmp: Path, now):
        self.server, self.now, self.facade = server, now, server.facades["zuora"]
        self.ledger = Ledger(tmp / "ops" / "actions.sqlite")
        self.ledger.set_meta("clock", now.isoformat())
        self.zuora = ZuoraExecutor(f"{server.url}/zuora", ZUORA_CLIENT_ID, ZUORA_CLIENT_SECRET, requests_per_second=500)
        self.executor = Executor(
            {"zuora": self.zuora},
            Sinks(
                case_url=f"{server.url}/sinks/cases",
                chat_webhook_url=f"{server.url}/sinks/chat/T0/B0/secret",
                outbox_dir=tmp / "outbox",
            ),
        )
        store = self.facade.store
        self.sub = next(
            s
            for s in store.page("subscription", 0, 100)[0]
            if s["status"] == "Active" and sum(r["lastChangeType"] != "Remove" for r in s["ratePlans"]) >= 3
        )
        self.customer, self.currency = self.sub["accountNumber"], self.sub["currency"].lower()

    def propose(self, kind, target_type, target_id, params) -> str:
        p = make_proposal(kind, target_type, target_id, params, self.now, platform="zuora")
        return propose_and_approve(self.ledger, p, POLICY, self.now)

    def push(self, aid: str, **kw) -> dict:
        return push_action(self.ledger, self.executor, POLICY, aid, sleep=lambda s: None, **kw)

    def memos(self, typ: str, aid: str) -> list[dict]:
        return [
            m
            for m in self.facade.store.page(typ, 0, 1000)[0]
            if str(m.get("billing_ai_audit_id__c") or "").startswith(aid + "#")
        ]


@pytest.fixture
def env(zsandbox, zuora_world, tmp_path) -> Env:
    return Env(zsandbox, tmp_path, parse_instant(zuora_world.config.as_of))


def charge(env: Env, amount: int = 1234) -> str:
    return env.propose(
        "pending_invoice_item",
        "customer",
        env.customer,
        {"amount": amount, "currency": env.currency, "description": "Correction for invoice X"},
    )


def test_a_corrective_charge_is_one_debit_memo_however_often_pushed(env):
    aid = charge(env)
    first, second = env.push(aid), env.push(aid)
    memos = env.memos("debit_memo", aid)
    assert first["status"] == second["status"] == "succeeded" and len(memos) == 1
    assert (
        memos[0]["amount"] == Decimal(1234).scaleb(-EXP[env.currency])
        and first["platform_object"] == memos[0]["number"]
    )


@pytest.mark.parametrize("mode", ["drop", "500"])
def test_apply_then_fail_changes_zuora_once(env, mode):
    aid = charge(env)
    plan = env.facade.settings.faults = FaultPlan(apply_then_fail=nth(1, methods=POST), apply_then_fail_mode=mode)
    row = env.push(aid)
    env.facade.settings.faults = None
    assert plan.counts["apply_then_fail"] == 1
    # the resend carries the same Idempotency-Key: Zuora replays the first answer, nothing is created twice
    assert row["status"] == "succeeded" and len(env.memos("debit_memo", aid)) == 1


def test_an_outcome_still_unknown_is_read_back_by_the_next_run(env):
    aid = charge(env)
    env.facade.settings.faults = FaultPlan(server_error=nth(*range(1, 30), methods=POST), error_statuses=(503,))
    with pytest.raises(PushIncomplete):
        env.push(aid, max_attempts=2)
    env.facade.settings.faults = None
    assert env.ledger.get(aid)["status"] == "unknown" and env.memos("debit_memo", aid) == []
    assert env.push(aid)["status"] == "succeeded" and len(env.memos("debit_memo", aid)) == 1
    outcomes = [a["outcome"] for a in env.ledger.table("attempts") if a["action_id"] == aid]
    assert outcomes[:2] == ["unknown", "unknown"] and outcomes[-1] in ("succeeded", "already_applied")


def test_metadata_credit_memo_and_subscription_change_apply_once(env):
    # custom fields on the account, with the audit pointer
    aid = env.propose("metadata_update", "customer", env.customer, {"metadata": {"health": "green"}})
    assert env.push(aid)["status"] == "succeeded" and env.push(aid)["status"] == "succeeded"
    acct = env.facade.store.find("account", "accountNumber", env.customer)
    assert acct["health__c"] == "green" and acct["billing_ai_audit_id__c"].startswith(aid + "#")
    # a credit memo from a paid invoice
    inv = env.facade.store.page("invoice", 0, 100, account=env.customer)[0][0]
    aid = env.propose(
        "credit_note",
        "invoice",
        inv["invoice_id__c"],
        {"amount": 150, "currency": env.currency, "reason": "order_change", "memo": "sorry"},
    )
    assert env.push(aid)["status"] == "succeeded" and env.push(aid)["status"] == "succeeded"
    memos = env.memos("credit_memo", aid)
    assert len(memos) == 1 and memos[0]["referredInvoiceId"] == inv["id"] and memos[0]["reasonCode"] == "order_change"
    too_much = env.propose(
        "credit_note",
        "invoice",
        inv["invoice_id__c"],
        {
            "amount": int(inv["amount"].scaleb(EXP[env.currency])) + 1,
            "currency": env.currency,
            "reason": "duplicate",
            "memo": "no",
        },
    )
    row = env.push(too_much)
    assert row["status"] == "blocked" and "uncredited" in row["status_reason"]
    # a subscription change is an order: remove the item's rate plan, add the target price's
    rp = next(
        r
        for r in env.sub["ratePlans"]
        if r["lastChangeType"] != "Remove" and r["ratePlanCharges"][0]["type"] == "Usage"
    )
    item = rp["ratePlanCharges"][0]["number"]
    prices = [
        ch
        for prod in env.facade.store.page("product", 0, 100)[0]
        for prp in prod["productRatePlans"]
        for ch in prp["productRatePlanCharges"]
    ]
    cur = next(ch for ch in prices if ch["id"] == rp["ratePlanCharges"][0]["productRatePlanChargeId"])
    other = next(
        ch
        for ch in prices
        if ch["component__c"] == cur["component__c"]
        and ch["id"] != cur["id"]
        and ch["pricing"][0]["currency"] == cur["pricing"][0]["currency"]
    )
    aid = env.propose(
        "subscription_change",
        "subscription",
        env.sub["subscriptionNumber"],
        {"item": item, "to_price": other["price_id__c"]},
    )
    assert env.push(aid)["status"] == "succeeded" and env.push(aid)["status"] == "succeeded"
    after = env.facade.store.find("subscription", "subscriptionNumber", env.sub["subscriptionNumber"])
    current = [r for r in after["ratePlans"] if r["lastChangeType"] != "Remove"]
    assert rp["id"] not in [r["id"] for r in current]
    assert sum(r["ratePlanCharges"][0]["productRatePlanChargeId"] == other["id"] for r in current) == 1
    orders = env.facade.store.page("order", 0, 100, parent=after["id"])[0]
    assert len(orders) == 1 and orders[0]["billing_ai_audit_id__c"].startswith(aid + "#")


def test_kinds_zuora_cannot_carry_out_are_blocked_and_contact_is_read_at_push_time(env):
    inv = env.facade.store.page("invoice", 0, 100, account=env.customer)[0][0]
    aid = env.propose("payment_retry", "invoice", inv["invoice_id__c"], {"amount_due": 100, "currency": env.currency})
    row = env.push(aid)
    assert row["status"] == "blocked" and "not something zuora can carry out" in row["status_reason"]
    contact = env.zuora.contact(env.customer)
    cust = next(
        c for c in env.server.facades["zuora"].store.page("account", 0, 100)[0] if c["accountNumber"] == env.customer
    )
    assert contact.email == cust["billTo"]["workEmail"] and contact.currency == env.currency
    env.zuora.leave_pointer(env.customer, "k", {"billing_ai_audit_id": "act_x#7"})
    assert env.facade.store.find("account", "accountNumber", env.customer)["billing_ai_audit_id__c"] == "act_x#7"


def test_a_callout_named_invoice_or_subscription_is_fetched_alone_as_the_snapshot_has_it(zsandbox):
    """What a targeted refresh lands for one invoice (with its items) or one subscription is exactly what the
    full snapshot lands for it; an unknown id is left out."""
    conn = connector(zsandbox)
    snap = conn.fetch_snapshot(AS_OF)
    inv = next(i for i in snap["invoices"] if any(it["invoiceId"] == i["id"] for it in snap["invoice_items"]))
    got = conn.fetch_objects("invoice", [inv["id"], "2c92c0f9_no_such_invoice"])
    assert got["invoices"] == [inv]
    assert sorted(got["invoice_items"], key=lambda x: x["id"]) == sorted(
        [it for it in snap["invoice_items"] if it["invoiceId"] == inv["id"]], key=lambda x: x["id"]
    )
    sub = snap["subscriptions"][0]
    assert conn.fetch_objects("subscription", [sub["id"]]) == {"subscriptions": [sub]}
    from billing_ai.platforms.zuora import SPEC

    assert SPEC.fetches_single_objects and SPEC.children == {"invoice_items": ("invoices", "invoiceId")}
