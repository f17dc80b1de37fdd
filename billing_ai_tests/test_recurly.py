"""Recurly: the API v3 facade, the connector against it, the core mapping (equal to Stripe's on the same
world), the raw and core assets through Dagster, and exactly-once write-back."""

from __future__ import annotations

import json
import shutil
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import dagster as dg
import duckdb
import httpx
import polars as pl
import pytest

from billing_ai.actions.ledger import Ledger
from billing_ai.actions.policy import Policy
from billing_ai.actions.push import Executor, Sinks, push_action
from billing_ai.clock import parse_instant
from billing_ai.ingestion.platform_assets import CORE_TABLES, build_core_table
from billing_ai.money import major_to_minor
from billing_ai.platforms.recurly.client import BadRecord, RecurlyConnector, normalize
from billing_ai.platforms.recurly.resource import RecurlyResource
from billing_ai.platforms.recurly.writer import RecurlyExecutor, RecurlyWriter
from billing_ai.platforms.stripe.resource import StripeResource
from billing_ai.sandbox import recurly_render as R
from billing_ai.sandbox.faults import GET, POST, FaultPlan, burst, nth
from billing_ai.sandbox.recurly_api import ACCEPT, DEFAULT_API_KEY, READONLY_API_KEY, add_note
from billing_ai.sandbox.server import SandboxServer
from billing_ai.writeback.kinds import AUDIT_POINTER_KEY, Proposal
from billing_ai_tests.conftest import (
    TEST_PII_KEY,
    TINY_WORLD_CONFIG,
    GeneratedWorld,
    make_proposal,
    pipeline_resources,
    propose_and_approve,
    write_test_world,
)

RECURLY_CONFIG = TINY_WORLD_CONFIG.__class__(**{**TINY_WORLD_CONFIG.__dict__, "platforms": {"recurly": 1.0}})
POLICY = Policy.load()


@pytest.fixture(scope="session")
def recurly_world(tmp_path_factory) -> GeneratedWorld:
    """The tiny world with every customer on Recurly (otherwise the very same world)."""
    return write_test_world(tmp_path_factory.mktemp("recurly_world"), RECURLY_CONFIG)


@pytest.fixture
def server(recurly_world, tmp_path):
    with SandboxServer(recurly_world.paths.world_dir, tmp_path / "state") as s:
        yield s


def recurly_only(url: str, warehouse: Path, world: GeneratedWorld, page_size: int = 7) -> dict:
    res = pipeline_resources(url, warehouse, world, page_size=page_size)
    res["stripe"] = StripeResource(api_key="unused", api_base="")  # not configured: its raw tables land empty
    return res


@pytest.fixture(scope="session")
def recurly_warehouse(recurly_world, tmp_path_factory) -> Path:
    from billing_ai.runner import materialize_all

    tmp = tmp_path_factory.mktemp("recurly_warehouse")
    with SandboxServer(recurly_world.paths.world_dir, tmp / "state") as s:
        materialize_all(
            RECURLY_CONFIG, resources=recurly_only(s.url, tmp / "warehouse.duckdb", recurly_world), say=lambda m: None
        )
    return tmp / "warehouse.duckdb"


def client(server, key: str = DEFAULT_API_KEY, accept: str = ACCEPT) -> httpx.Client:
    return httpx.Client(base_url=f"{server.url}/recurly", auth=(key, ""), headers={"Accept": accept})


def connector(server, page_size: int = 200) -> RecurlyConnector:
    return RecurlyConnector(
        DEFAULT_API_KEY, f"{server.url}/recurly", TEST_PII_KEY, requests_per_second=500, page_size=page_size
    )


# ---- pure mapping logic, hand-checked ------------------------------------------------------------------
def test_money_is_exact_both_ways():
    # 10.5 USD is 1050 cents; a JPY amount has no minor unit; a unit price keeps every place
    out = normalize(
        {
            "object": "line_item",
            "currency": "USD",
            "amount": Decimal("10.5"),
            "unit_amount_decimal": "0.00018333333333",
        },
        "k",
    )
    assert out["amount_minor"] == 1050 and out["amount"] == "10.5"
    assert out["unit_amount_decimal_minor"] == "0.018333333333"
    assert normalize({"currency": "JPY", "total": 75}, "k")["total_minor"] == 75
    assert normalize({"currency": "KWD", "total": Decimal("1.234")}, "k")["total_minor"] == 1234
    with pytest.raises(BadRecord, match="whole number of minor units"):
        normalize({"currency": "USD", "amount": Decimal("10.555")}, "k")
    with pytest.raises(BadRecord) as e:
        normalize({"currency": "XXX", "amount": 1}, "k")
    assert e.value.reason == "unknown_currency"
    # the facade writes Decimals as exact JSON numbers, and reads them back as Decimals
    text = R.dumps({"a": Decimal("0.00018333333333"), "b": R.major(4900, "usd"), "c": R.major(7350, "jpy")})
    assert text == '{"a": 0.00018333333333, "b": 49, "c": 7350}'
    assert R.loads(text)["a"] == Decimal("0.00018333333333")


def test_pii_is_tokenized_and_addresses_dropped():
    acct = {
        "object": "account",
        "id": "a1",
        "code": "cus_1",
        "email": "x@y.example",
        "company": "Acme",
        "address": {"street1": "1 Main"},
        "billing_info": {"last_four": "1111"},
        "hosted_login_token": "t",
    }
    out = normalize(acct, "k")
    assert out["email"].startswith("tok_email_") and out["company"].startswith("tok_name_")
    assert not {"address", "billing_info", "hosted_login_token"} & set(out)


# ---- the facade speaks Recurly -----------------------------------------------------------------------------
def test_facade_auth_version_errors_and_headers(server):
    with client(server) as c:
        r = c.get("/accounts", params={"limit": 2})
        assert r.status_code == 200 and r.headers["recurly-version"] == "recurly.v2021-02-25"
        assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"} <= set(r.headers)
        body = r.json()
        assert body["object"] == "list" and body["has_more"] and body["next"].startswith("/accounts?")
        code = body["data"][0]["code"]
        assert c.get(f"/accounts/code-{code}").json()["id"] == body["data"][0]["id"]
        err = c.get("/accounts/code-nobody").json()["error"]
        assert err["type"] == "not_found" and "params" in err
    assert httpx.get(f"{server.url}/recurly/accounts", headers={"Accept": ACCEPT}).status_code == 401
    with client(server, accept="application/json") as c:
        assert c.get("/accounts").json()["error"]["type"] == "invalid_api_version"
    with client(server, accept="application/vnd.recurly.v2019-10-10") as c:
        assert c.get("/accounts").json()["error"]["type"] == "unknown_api_version"
    with client(server, key=READONLY_API_KEY) as c:
        r = c.put(f"/accounts/code-{code}", json={"custom_fields": [{"name": "x", "value": "1"}]})
        assert r.status_code == 403 and r.json()["error"]["type"] == "unauthorized"


def test_facade_rate_limit_answers_429_with_retry_after(server):
    facade = server.facades["recurly"]
    facade.settings.rate_limit_per_second = 1
    with client(server) as c:
        answers = [c.get("/items", params={"limit": 1}) for _ in range(5)]
    facade.settings.rate_limit_per_second = 400
    limited = [r for r in answers if r.status_code == 429]
    assert limited and limited[0].json()["error"]["type"] == "rate_limited" and limited[0].headers["retry-after"]


def test_idempotency_key_replays_the_first_answer(server):
    with client(server) as c:
        code = c.get("/accounts", params={"limit": 1}).json()["data"][0]["code"]
        body = {"currency": "USD", "unit_amount": "12.34", "quantity": 1, "description": "fix", "type": "charge"}
        acct = c.get(f"/accounts/code-{code}").json()
        body["currency"] = c.get(f"/accounts/{acct['id']}/balance").json()["balances"][0]["currency"]
        first = c.post(f"/accounts/code-{code}/line_items", json=body, headers={"Idempotency-Key": "k1"})
        again = c.post(f"/accounts/code-{code}/line_items", json=body, headers={"Idempotency-Key": "k1"})
        other = c.post(
            f"/accounts/code-{code}/line_items", json={**body, "unit_amount": "1"}, headers={"Idempotency-Key": "k1"}
        )
        pending = c.get(f"/accounts/code-{code}/line_items", params={"state": "pending"}).json()["data"]
    assert first.status_code == 201 and again.status_code == 201 and again.headers["idempotency-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"] and len(pending) == 1
    assert other.status_code == 400 and other.json()["error"]["type"] == "bad_request"


def test_account_notes_are_listed(server):
    facade = server.facades["recurly"]
    with client(server) as c:
        acct = c.get("/accounts", params={"limit": 1}).json()["data"][0]
        add_note(facade.store, acct["code"], "Called about the invoice")
        notes = c.get(f"/accounts/code-{acct['code']}/notes").json()["data"]
        assert [n["message"] for n in notes] == ["Called about the invoice"]
        assert c.get(f"/accounts/{acct['id']}/notes/{notes[0]['id']}").json()["account_id"] == acct["id"]


# ---- the connector against the facade --------------------------------------------------------------------
def test_connector_pages_and_rides_out_429s_and_5xx(server, recurly_world):
    now = parse_instant(RECURLY_CONFIG.as_of)
    clean = connector(server, page_size=200).fetch_snapshot(now)
    conn = connector(server, page_size=3)
    conn.http.policy = conn.http.policy.__class__(max_attempts=6, base_delay=0.01, max_delay=0.05)
    plan = server.facades["recurly"].settings.faults = FaultPlan(
        rate_limit=burst(3, start=2, methods=GET), retry_after=0, server_error=nth(9, 20, methods=GET)
    )
    snap = conn.fetch_snapshot(now)
    server.facades["recurly"].settings.faults = None
    assert plan.counts["rate_limit"] == 3 and plan.counts["server_error"] == 2
    assert conn.stats["rate_limited"] == 3 and conn.stats["retried"] == 2
    assert conn.stats["requests"] > len(snap["accounts"]) + len(snap["invoices"]) // 3  # many small pages
    for name, rows in clean.items():
        assert sorted(json.dumps(r, sort_keys=True) for r in rows) == sorted(
            json.dumps(r, sort_keys=True) for r in snap[name]
        ), name
    t = recurly_world.world.tables
    assert len(snap["accounts"]) == t["customers"].height
    assert len([i for i in snap["invoices"] if i["type"] == "charge"]) == t["invoices"].height
    assert len(snap["line_items"]) == t["invoice_lines"].height + t["credit_notes"].height
    assert snap["quarantine"] == []


def test_malformed_objects_are_quarantined_with_their_reason(server):
    store = server.facades["recurly"].store
    acct = store.find("account", "1=1", ())
    store.put("account", {**acct, "id": "nocode000001", "code": None}, created=1)
    inv = store.find("invoice", "json_extract(body, '$.type') = 'charge'", ())
    store.put(
        "invoice",
        {**inv, "id": "badmoney0001", "total": Decimal("10.555"), "line_items": []},
        account=acct["code"],
        created=2,
    )
    snap = connector(server, page_size=50).fetch_snapshot(parse_instant(RECURLY_CONFIG.as_of))
    bad = {(q["object"], q["record_key"]): q for q in snap["quarantine"]}
    assert bad[("accounts", "nocode000001")]["reason"] == "missing_code"
    assert bad[("invoices", "badmoney0001")]["reason"] == "bad_money"
    assert "10.555" in bad[("invoices", "badmoney0001")]["detail"]
    assert "nocode000001" not in {a["id"] for a in snap["accounts"]}
    assert acct["email"] not in bad[("accounts", "nocode000001")]["record"]  # PII tokenized in quarantine too


# ---- core: the same world through Recurly equals it through Stripe -------------------------------------------
def _world_ids(stripe_con) -> dict[str, dict[str, str]]:
    """Recurly-minted canonical ids -> the world's (the facade mints deterministically; docs/platforms.md, Recurly)."""
    col = lambda sql: [r[0] for r in stripe_con.sql(sql).fetchall()]  # noqa: E731 -- a one-line local helper reads best inline
    return {
        "meter_id": {R.rid("mu", m): m for m in col("SELECT meter_id FROM core.meters")},
        "subscription_item_id": {
            R.rid("sao", i): i for i in col("SELECT subscription_item_id FROM core.subscription_items")
        },
        "line_id": {R.rid("li", i): i for i in col("SELECT line_id FROM core.invoice_lines")},
        "payment_id": {R.rid("txn", i, 1): i for i in col("SELECT payment_id FROM core.payments")},
    }


def _comparable(df: pl.DataFrame, ids: dict | None = None) -> pl.DataFrame:
    df = df.drop([c for c in df.columns if c == "platform" or c.startswith("platform_") or c == "landed_at"])
    for c, m in (ids or {}).items():
        if c in df.columns:
            df = df.with_columns(pl.col(c).replace_strict(m, default=None).alias(c))
    if "metadata" in df.columns:
        df = df.with_columns(
            pl.col("metadata").map_elements(lambda x: json.dumps(json.loads(x), sort_keys=True), return_dtype=pl.String)
        )
    return df.sort(sorted(df.columns), nulls_last=True)


@pytest.mark.slow
def test_core_tables_equal_stripes_for_the_same_world(recurly_warehouse, tiny_warehouse):
    s = duckdb.connect(str(tiny_warehouse), read_only=True)
    r = duckdb.connect(str(recurly_warehouse), read_only=True)
    ids = _world_ids(s)
    for table in CORE_TABLES:
        a, b = s.sql(f"SELECT * FROM core.{table}").pl(), r.sql(f"SELECT * FROM core.{table}").pl()
        assert set(b["platform"]) <= {"recurly"} and set(a["platform"]) <= {"stripe"}
        assert {c: t for c, t in b.schema.items() if not c.startswith("platform")} == {
            c: t for c, t in a.schema.items() if not c.startswith("platform")
        }, table
        ca, cb = _comparable(a), _comparable(b.select(a.columns), ids)
        assert ca.height > 0 and ca.equals(cb), table
    # hand-checked: a price with tiers and a flat fee, and an exact 12-place unit price, survive the trip
    assert r.sql("SELECT count(*) FROM core.price_tiers WHERE flat_amount > 0").fetchall()[0][0] > 0
    assert (
        r.sql("SELECT count(*) FROM core.prices WHERE package_size = 1000 AND package_rounding = 'up'").fetchall()[0][0]
        == 3
    )


@pytest.mark.slow
def test_two_platforms_minting_the_same_id_do_not_collide(recurly_warehouse, tiny_warehouse, tmp_path):
    from billing_ai.clock import PARTITION_START
    from billing_ai.ingestion.checks import Scope, evaluate_table

    path = tmp_path / "both.duckdb"
    shutil.copy(recurly_warehouse, path)
    con = duckdb.connect(str(path))
    con.execute(f"ATTACH '{tiny_warehouse}' AS s (READ_ONLY)")
    for (t,) in con.sql(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = 's' AND schema_name = 'raw' "
        "AND table_name LIKE 'stripe_%'"
    ).fetchall():
        con.execute(f"CREATE OR REPLACE TABLE raw.{t} AS SELECT * FROM s.raw.{t}")
    # Recurly happens to mint a line item id that Stripe also uses
    stripe_line = con.sql("SELECT id FROM raw.stripe_invoice_lines LIMIT 1").fetchall()[0][0]
    recurly_line = con.sql("SELECT id FROM raw.recurly_line_items LIMIT 1").fetchall()[0][0]
    con.execute(
        "UPDATE raw.recurly_line_items SET id = ?, payload = json_merge_patch(payload, ?) WHERE id = ?",
        [stripe_line, json.dumps({"id": stripe_line}), recurly_line],
    )
    for t in CORE_TABLES:
        build_core_table(con, t)
    rows = con.sql("SELECT platform FROM core.invoice_lines WHERE line_id = ?", params=[stripe_line]).fetchall()
    assert sorted(rows) == [("recurly",), ("stripe",)]
    for t in CORE_TABLES:
        outcome = next(
            o
            for o in evaluate_table(
                con, t, Scope(now=parse_instant(RECURLY_CONFIG.as_of), window_start=date.fromisoformat(PARTITION_START))
            )
            if o.rule.name.endswith("unique_key")
        )
        assert outcome.passed, t
    per = dict(con.sql("SELECT platform, count(*) FROM core.customers GROUP BY 1").fetchall())
    assert per == {"stripe": 12, "recurly": 12}


# ---- assets through Dagster ------------------------------------------------------------------------------------
def test_raw_and_core_assets_materialize_with_the_recurly_resource(server, recurly_world, tmp_path):
    from billing_ai import pipeline as d

    store = server.facades["recurly"].store
    acct = store.find("account", "1=1", ())
    store.put("account", {**acct, "id": "nocode000002", "code": ""}, created=1)
    res = recurly_only(server.url, tmp_path / "wh.duckdb", recurly_world, page_size=50)
    result = dg.materialize(d.PLATFORM_ASSETS, resources=res, raise_on_error=True)
    assert result.success
    mats = {
        m.asset_key.to_user_string(): m.metadata
        for e in result.get_asset_materialization_events()
        for m in [e.event_specific_data.materialization]
    }
    accounts = mats["raw/recurly_accounts"]
    assert accounts["dagster/row_count"].value == 12 and accounts["quarantined"].value == 1
    assert accounts["records_in"].value == 13
    assert mats["raw/stripe_customers"]["configured"].value is False
    con = duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True)
    assert con.sql("SELECT source, reason FROM core.quarantine").fetchall() == [("recurly_accounts", "missing_code")]
    assert con.sql("SELECT count(*) FROM core.customers WHERE platform = 'recurly'").fetchall()[0][0] == 12
    for ev in result.get_asset_check_evaluations():
        assert ev.passed or ev.severity == dg.AssetCheckSeverity.WARN, ev.check_name


# ---- write-back --------------------------------------------------------------------------------------------------
class Env:
    def __init__(self, server, tmp: Path, now):
        self.server, self.now = server, now
        self.ledger = Ledger(tmp / "ops" / "actions.sqlite")
        self.ledger.set_meta("clock", now.isoformat())
        self.writer = RecurlyWriter(DEFAULT_API_KEY, f"{server.url}/recurly", requests_per_second=500)
        self.executor = Executor(
            {"recurly": RecurlyExecutor(self.writer)},
            Sinks(
                case_url=f"{server.url}/sinks/cases",
                chat_webhook_url=f"{server.url}/sinks/chat/T0/B0/secret",
                outbox_dir=tmp / "outbox",
            ),
        )
        self.http = client(server)
        sub = self.http.get("/subscriptions", params={"limit": 1}).json()["data"][0]
        self.sub_rid, self.customer = sub["id"], sub["account"]["code"]
        self.sub = {f["name"]: f["value"] for f in sub["custom_fields"]}["merchant_ref"]
        self.currency = sub["currency"].lower()
        inv = next(
            i
            for i in self.http.get(
                f"/accounts/code-{self.customer}/invoices", params={"type": "charge", "limit": 200}
            ).json()["data"]
            if i["state"] == "paid" and Decimal(str(i["total"])) > 0
        )
        self.invoice = {f["name"]: f["value"] for f in inv["custom_fields"]}["merchant_ref"]
        self.invoice_rid, self.invoice_total = inv["id"], inv["total"]

    def propose(self, kind, target_type, target_id, params) -> str:
        p = make_proposal(kind, target_type, target_id, params, self.now, platform="recurly")
        aid = propose_and_approve(self.ledger, p, POLICY, self.now, approvers=("ana",))
        assert self.ledger.get(aid)["status"] == "approved"
        return aid

    def push(self, aid: str, **kw) -> dict:
        return push_action(self.ledger, self.executor, POLICY, aid, sleep=lambda s: None, **kw)

    def pending(self) -> list[dict]:
        return self.http.get(f"/accounts/code-{self.customer}/line_items", params={"state": "pending"}).json()["data"]


@pytest.fixture
def env(server, tmp_path) -> Env:
    return Env(server, tmp_path, parse_instant(RECURLY_CONFIG.as_of))


def test_a_corrective_charge_is_one_pending_line_item_even_when_pushed_twice(env):
    aid = env.propose(
        "pending_invoice_item",
        "customer",
        env.customer,
        {"amount": 1234, "currency": env.currency, "description": "Correction", "subscription": env.sub},
    )
    first, second = env.push(aid), env.push(aid)
    items = env.pending()
    assert first["status"] == second["status"] == "succeeded" and len(items) == 1
    li = items[0]
    assert li["id"] == first["platform_object"] and li["subscription_id"] == env.sub_rid
    assert R.major(1234, env.currency) == Decimal(str(li["amount"]))  # 12.34 USD, or 1234 JPY
    fields = {f["name"]: f["value"] for f in li["custom_fields"]}
    assert fields[AUDIT_POINTER_KEY].startswith(aid + "#")


@pytest.mark.parametrize("mode", ["drop", "500"])
def test_apply_then_fail_is_read_back_not_resent(env, mode):
    aid = env.propose(
        "pending_invoice_item",
        "customer",
        env.customer,
        {"amount": 500, "currency": env.currency, "description": "Late usage"},
    )
    plan = env.server.facades["recurly"].settings.faults = FaultPlan(
        apply_then_fail=nth(1, methods=POST), apply_then_fail_mode=mode
    )
    row = env.push(aid)
    env.server.facades["recurly"].settings.faults = None
    assert plan.counts["apply_then_fail"] == 1
    assert row["status"] == "succeeded" and len(env.pending()) == 1
    assert [a["outcome"] for a in env.ledger.table("attempts")] == ["unknown", "already_applied"]


def test_metadata_update_and_credit_note(env):
    aid = env.propose("metadata_update", "subscription", env.sub, {"metadata": {"renewal_owner": "csm_chen"}})
    assert env.push(aid)["status"] == "succeeded"
    sub = env.http.get(f"/subscriptions/{env.sub_rid}").json()
    fields = {f["name"]: f["value"] for f in sub["custom_fields"]}
    assert fields["renewal_owner"] == "csm_chen" and fields[AUDIT_POINTER_KEY].startswith(aid + "#")
    assert fields["merchant_ref"] == env.sub  # other fields are kept
    aid = env.propose(
        "credit_note",
        "invoice",
        env.invoice,
        {"amount": 100, "currency": env.currency, "reason": "duplicate", "memo": "Duplicated line"},
    )
    row = env.push(aid)
    assert row["status"] == "succeeded" and env.push(aid)["status"] == "succeeded"
    credits = [
        c
        for c in env.http.get(
            f"/accounts/code-{env.customer}/invoices", params={"type": "credit", "limit": 200}
        ).json()["data"]
        if c["previous_invoice_id"] == env.invoice_rid
    ]
    assert len(credits) == 1 and Decimal(str(credits[0]["total"])) == -R.major(100, env.currency)
    assert f"{AUDIT_POINTER_KEY}={aid}#" in credits[0]["customer_notes"]
    total = int(major_to_minor(str(env.invoice_total), env.currency))
    too_much = Proposal(
        action_id="act_too_much",
        kind="credit_note",
        platform="recurly",
        target_type="invoice",
        target_id=env.invoice,
        params={"amount": total, "currency": env.currency, "reason": "duplicate", "memo": "x"},
        rationale="r",
        confidence=0.9,
        proposer="t",
        created_at=env.now,
        expires_at=env.now + timedelta(days=1),
    )
    assert "more than the invoice's uncredited" in env.executor.precheck(too_much)[0]


def test_kinds_recurly_cannot_carry_out_are_blocked_with_a_reason(env):
    p = Proposal(
        action_id="act_x",
        kind="payment_retry",
        platform="recurly",
        target_type="invoice",
        target_id=env.invoice,
        params={"amount_due": 100, "currency": env.currency},
        rationale="r",
        confidence=0.9,
        proposer="t",
        created_at=env.now,
        expires_at=env.now + timedelta(days=1),
    )
    assert env.executor.precheck(p) == ["payment_retry is not something recurly can carry out"]


def test_contact_is_read_at_push_time(env):
    contact = RecurlyExecutor(env.writer).contact(env.customer)
    assert contact.email and "@" in contact.email and contact.currency == env.currency
    assert RecurlyExecutor(env.writer).contact("cus_nobody") is None


def test_resource_is_disabled_without_a_base_address():
    assert not RecurlyResource().enabled and RecurlyResource(api_base="http://x/recurly").enabled
