"""The local Stripe facade, exercised through the official SDK and raw HTTP.

Everything runs against ``tiny_world`` (seed 11, 12 customers, 45 days), so
counts and amounts below are exact: 12 customers, 5 products, 45 prices (15 of
them tiered), 3 meters, 12 subscriptions, 21 invoices, 21 payment intents,
no credit notes. The SDK is used where it is the real client's path; raw
``httpx`` where the SDK hides what we check (headers, absent keys, error
bodies, replayed bytes).

The typed-field check walks every key of every object the facade returns and
looks it up on the SDK's typed resource classes (``stripe.Customer``, ...),
recursively into nested ``StripeObject`` classes, so a shape drift between the
facade and the pinned SDK is caught here rather than by a connector downstream.
"""

from __future__ import annotations

import importlib
import sys
import time
import types
import typing
from decimal import Decimal

import httpx
import polars as pl
import pytest
import stripe
from stripe._list_object import ListObject
from stripe._stripe_object import StripeObject, UntypedStripeObject

from billing_ai.sandbox import stripe_render
from billing_ai.sandbox.server import SandboxServer
from billing_ai.sandbox.stripe_api import DEFAULT_READONLY_KEY, DEFAULT_SECRET_KEY, SandboxSettings

DAY = 86400

# Exact object counts of the tiny world (seed 11, 12 customers, 45 days).
N_CUSTOMERS = 12
N_PRODUCTS = 5
N_PRICES = 45  # 3 plans x 3 currencies x 5 components
N_TIERED_PRICES = 15  # per currency: starter compute, growth api+compute, scale api+compute
N_METERS = 3
N_SUBSCRIPTIONS = 12
N_INVOICES = 21
N_PAYMENTS = 21


# ---------------------------------------------------------------------------
# helpers and fixtures
# ---------------------------------------------------------------------------


def sdk(url: str, key: str = DEFAULT_SECRET_KEY) -> stripe.StripeClient:
    return stripe.StripeClient(key, base_addresses={"api": url}, max_network_retries=0)


@pytest.fixture
def client(sandbox: SandboxServer) -> stripe.StripeClient:
    return sdk(sandbox.url)


@pytest.fixture
def http(sandbox: SandboxServer) -> typing.Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, headers={"Authorization": f"Bearer {DEFAULT_SECRET_KEY}"}, timeout=10) as c:
        yield c


def get_json(http: httpx.Client, path: str, **params) -> dict:
    r = http.get(path, params=params)
    assert r.status_code == 200, (path, r.status_code, r.text)
    return r.json()


def list_all(http: httpx.Client, path: str, **params) -> list[dict]:
    """Every object of a list endpoint, walking ``starting_after`` with limit=100."""
    out: list[dict] = []
    while True:
        body = get_json(http, path, limit=100, **params, **({"starting_after": out[-1]["id"]} if out else {}))
        out += body["data"]
        if not body["has_more"]:
            return out


def request_count(server: SandboxServer) -> int:
    return server.settings.counters.get("requests", 0)


# ---------------------------------------------------------------------------
# list pagination
# ---------------------------------------------------------------------------


def test_starting_after_walk_equals_one_full_listing(client, tiny_world):
    full = client.v1.customers.list({"limit": 100})
    full_ids = [c.id for c in full.data]
    assert len(full_ids) == N_CUSTOMERS and len(set(full_ids)) == N_CUSTOMERS
    assert full.has_more is False
    assert set(full_ids) == set(tiny_world.world.tables["customers"]["customer_id"])
    created = [c.created for c in full.data]
    assert created == sorted(created, reverse=True)  # newest first

    walked, sizes, more = [], [], []
    params: dict = {"limit": 5}
    while True:
        page = client.v1.customers.list(params)
        walked += [c.id for c in page.data]
        sizes.append(len(page.data))
        more.append(page.has_more)
        if not page.has_more:
            break
        params = {"limit": 5, "starting_after": page.data[-1].id}
    assert sizes == [5, 5, 2]
    assert more == [True, True, False]  # has_more is false on the last page only
    assert walked == full_ids  # same ids, same order, no duplicates


def test_ending_before_returns_the_previous_page_in_list_order(client):
    ids = [c.id for c in client.v1.customers.list({"limit": 100}).data]

    page = client.v1.customers.list({"limit": 5, "ending_before": ids[5]})
    assert [c.id for c in page.data] == ids[0:5]
    assert page.has_more is False  # nothing before ids[0]

    page = client.v1.customers.list({"limit": 5, "ending_before": ids[10]})
    assert [c.id for c in page.data] == ids[5:10]
    assert page.has_more is True  # ids[0:5] are further back

    page = client.v1.customers.list({"limit": 3, "ending_before": ids[5]})
    assert [c.id for c in page.data] == ids[2:5]
    assert page.has_more is True

    assert client.v1.customers.list({"limit": 5, "ending_before": ids[0]}).data == []


def test_auto_paging_iter_returns_every_object_once(client, sandbox):
    customer_ids = [c.id for c in client.v1.customers.list({"limit": 100}).data]
    before = request_count(sandbox)
    walked = [c.id for c in client.v1.customers.list({"limit": 5}).auto_paging_iter()]
    assert walked == customer_ids
    assert request_count(sandbox) - before == 3  # pages of 5, 5, 2

    invoice_ids = [i.id for i in client.v1.invoices.list({"limit": 100}).data]
    assert len(invoice_ids) == N_INVOICES
    before = request_count(sandbox)
    walked = [i.id for i in client.v1.invoices.list({"limit": 4}).auto_paging_iter()]
    assert walked == invoice_ids and len(set(walked)) == N_INVOICES
    assert request_count(sandbox) - before == 6  # 5 pages of 4, then 1


# ---------------------------------------------------------------------------
# expand[]=data.tiers
# ---------------------------------------------------------------------------


def test_tiers_only_under_expand(http, client):
    plain = get_json(http, "/v1/prices", limit=100)["data"]
    assert len(plain) == N_PRICES
    assert all("tiers" not in p and "_tiers" not in p for p in plain)

    expanded = get_json(http, "/v1/prices", **{"limit": 100, "expand[]": "data.tiers"})["data"]
    assert [p["id"] for p in expanded] == [p["id"] for p in plain]
    assert all("_tiers" not in p for p in expanded)
    tiered = {p["lookup_key"]: p for p in expanded if p["billing_scheme"] == "tiered"}
    assert len(tiered) == N_TIERED_PRICES
    assert all(p["tiers"] for p in tiered.values())

    # growth plan API calls, USD: graduated with an included allowance (catalog.py)
    assert tiered["growth_api_calls_usd"]["tiers_mode"] == "graduated"
    assert tiered["growth_api_calls_usd"]["tiers"] == [
        {"up_to": 100_000, "unit_amount": 0, "unit_amount_decimal": "0", "flat_amount": 0, "flat_amount_decimal": "0"},
        {
            "up_to": 1_000_000,
            "unit_amount": None,
            "unit_amount_decimal": "0.05",
            "flat_amount": 0,
            "flat_amount_decimal": "0",
        },
        {
            "up_to": None,
            "unit_amount": None,
            "unit_amount_decimal": "0.03",
            "flat_amount": 0,
            "flat_amount_decimal": "0",
        },
    ]
    # scale plan API calls, EUR: volume tiers, USD amounts x 0.92 (flat 2500 -> 2300, 0.04 -> 0.0368)
    scale_eur = tiered["scale_api_calls_eur"]
    assert scale_eur["tiers_mode"] == "volume"
    assert [(t["up_to"], t["unit_amount_decimal"], t["flat_amount"]) for t in scale_eur["tiers"]] == [
        (1_000_000, "0.0368", 2300),
        (10_000_000, "0.023", 0),
        (None, "0.0138", 0),
    ]

    # the same through the SDK: decimal strings decode to Decimal
    by_key = {p.lookup_key: p for p in client.v1.prices.list({"limit": 100, "expand": ["data.tiers"]}).data}
    sdk_tiers = by_key["growth_api_calls_usd"].tiers
    assert [t.up_to for t in sdk_tiers] == [100_000, 1_000_000, None]
    assert [t.unit_amount_decimal for t in sdk_tiers] == [Decimal("0"), Decimal("0.05"), Decimal("0.03")]

    # retrieve: expand[]=tiers (no data. prefix on a single object)
    pid = tiered["growth_api_calls_usd"]["id"]
    assert "tiers" not in get_json(http, f"/v1/prices/{pid}")
    assert len(get_json(http, f"/v1/prices/{pid}", **{"expand[]": "tiers"})["tiers"]) == 3
    assert "tiers" not in client.v1.prices.retrieve(pid)
    assert len(client.v1.prices.retrieve(pid, {"expand": ["tiers"]}).tiers) == 3


# ---------------------------------------------------------------------------
# auth
# ---------------------------------------------------------------------------


def _assert_stripe_error_body(r: httpx.Response, status: int, type_: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["type"] == type_
    assert isinstance(err["message"], str) and err["message"]
    return err


def test_missing_and_unknown_keys_are_401(sandbox):
    r = httpx.get(f"{sandbox.url}/v1/customers")
    err = _assert_stripe_error_body(r, 401, "invalid_request_error")
    assert "You did not provide an API key" in err["message"]

    r = httpx.get(f"{sandbox.url}/v1/customers", headers={"Authorization": "Bearer sk_test_unknown"})
    err = _assert_stripe_error_body(r, 401, "invalid_request_error")
    assert err["message"].startswith("Invalid API Key provided")
    assert "sk_test_unknown" not in err["message"]  # the key is masked

    with pytest.raises(stripe.AuthenticationError) as exc:
        sdk(sandbox.url, "sk_test_unknown").v1.customers.list()
    assert exc.value.http_status == 401


def test_readonly_key_reads_but_cannot_write(sandbox, client):
    ro = sdk(sandbox.url, DEFAULT_READONLY_KEY)
    customers = ro.v1.customers.list({"limit": 100}).data
    assert len(customers) == N_CUSTOMERS
    cid = customers[0].id
    original = client.v1.customers.retrieve(cid).metadata.to_dict()

    with pytest.raises(stripe.PermissionError) as exc:
        ro.v1.customers.update(cid, {"metadata": {"note": "nope"}})
    assert exc.value.http_status == 403
    assert exc.value.error.type == "invalid_request_error"
    assert client.v1.customers.retrieve(cid).metadata.to_dict() == original  # nothing written

    r = httpx.post(
        f"{sandbox.url}/v1/invoiceitems",
        data={"customer": cid, "amount": "1"},
        headers={"Authorization": f"Bearer {DEFAULT_READONLY_KEY}"},
    )
    _assert_stripe_error_body(r, 403, "invalid_request_error")
    assert client.v1.invoice_items.list({"customer": cid}).data == []


# ---------------------------------------------------------------------------
# Idempotency-Key
# ---------------------------------------------------------------------------


def test_idempotency_key_replays_and_rejects_other_params(http, client):
    cid = client.v1.customers.list({"limit": 1}).data[0].id
    params = {"customer": cid, "amount": "1234", "currency": "usd", "description": "true-up"}

    first = http.post("/v1/invoiceitems", data=params, headers={"Idempotency-Key": "idem-1"})
    assert first.status_code == 200
    assert "idempotent-replayed" not in first.headers
    assert first.json()["amount"] == 1234

    again = http.post("/v1/invoiceitems", data=params, headers={"Idempotency-Key": "idem-1"})
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content  # byte-identical replay

    items = client.v1.invoice_items.list({"customer": cid}).data
    assert [(i.id, i.amount) for i in items] == [(first.json()["id"], 1234)]  # executed once

    other = http.post("/v1/invoiceitems", data={**params, "amount": "999"}, headers={"Idempotency-Key": "idem-1"})
    _assert_stripe_error_body(other, 400, "idempotency_error")
    assert len(client.v1.invoice_items.list({"customer": cid}).data) == 1

    # the SDK path: same key replays (same id); other params raise IdempotencyError
    sdk_params = {"customer": cid, "amount": 700, "currency": "usd"}
    a = client.v1.invoice_items.create(sdk_params, {"idempotency_key": "idem-2"})
    b = client.v1.invoice_items.create(sdk_params, {"idempotency_key": "idem-2"})
    assert a.id == b.id
    with pytest.raises(stripe.IdempotencyError):
        client.v1.invoice_items.create({**sdk_params, "amount": 701}, {"idempotency_key": "idem-2"})
    assert sorted(i.amount for i in client.v1.invoice_items.list({"customer": cid}).data) == [700, 1234]


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------


def test_unknown_customer_is_404_resource_missing(http, client):
    r = http.get("/v1/customers/cus_doesnotexist")
    err = _assert_stripe_error_body(r, 404, "invalid_request_error")
    assert err["code"] == "resource_missing"
    assert err["message"] == "No such customer: 'cus_doesnotexist'"

    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.customers.retrieve("cus_doesnotexist")
    assert exc.value.http_status == 404
    assert exc.value.code == "resource_missing"


def test_rate_limit_answers_429_with_retry_after(tiny_world, tmp_path):
    # 1 request/s with a burst of 2x: two back-to-back requests pass, the third is refused
    # (a token refills only after a full second, far more than three loopback requests take)
    settings = SandboxSettings(rate_limit_per_second=1)
    with (
        SandboxServer(tiny_world.paths.world_dir, tmp_path / "state", settings=settings) as server,
        httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {DEFAULT_SECRET_KEY}"}) as h,
    ):
        t0 = time.monotonic()
        responses = [h.get("/v1/customers", params={"limit": 1}) for _ in range(3)]
        elapsed = time.monotonic() - t0
        assert elapsed < 1.0, "too slow to exhaust the bucket: a token may have refilled"
        assert [r.status_code for r in responses] == [200, 200, 429]
        limited = responses[2]
        err = _assert_stripe_error_body(limited, 429, "invalid_request_error")
        assert err["code"] == "rate_limit"
        assert limited.headers["retry-after"] == "1"  # wait < 1 s, rounded up to a whole second
        assert settings.counters["rate_limited"] == 1

        with pytest.raises(stripe.RateLimitError) as exc:
            sdk(server.url).v1.customers.list()
        assert exc.value.http_status == 429
        assert settings.counters["rate_limited"] == 2


# ---------------------------------------------------------------------------
# meter events
# ---------------------------------------------------------------------------


def test_meter_event_adds_to_daily_summary_once_per_identifier(client, tiny_world):
    meter = next(m for m in client.v1.billing.meters.list().data if m.event_name == "api_calls")
    usage = (
        tiny_world.world.tables["meter_usage"]
        .filter(pl.col("meter_id") == meter.id)
        .sort("customer_id", "day_start")
        .row(0, named=True)
    )
    cid, day, milli = usage["customer_id"], usage["day_start"], usage["value_milli"]
    world_value = milli / 1000
    assert milli % 1000 == 0  # api calls are whole units: the expected sums below are exact

    def summaries() -> dict[int, float]:
        page = client.v1.billing.meters.event_summaries.list(
            meter.id,
            {
                "customer": cid,
                "start_time": day - DAY,
                "end_time": day + 2 * DAY,
                "limit": 10,
                "value_grouping_window": "day",
            },
        )
        return {s.start_time: s.aggregated_value for s in page.data}

    before = summaries()
    assert before[day] == world_value  # the facade serves the world's meter usage

    event = {
        "event_name": "api_calls",
        "payload": {"stripe_customer_id": cid, "value": "5"},
        "identifier": "x1",
        "timestamp": day + 3600,
    }
    created = client.v1.billing.meter_events.create(event)
    assert created.identifier == "x1"
    assert summaries() == {**before, day: world_value + 5}

    client.v1.billing.meter_events.create(event)  # same identifier: deduplicated
    assert summaries() == {**before, day: world_value + 5}

    client.v1.billing.meter_events.create(
        {**event, "identifier": "x2", "payload": {"stripe_customer_id": cid, "value": "2"}}
    )
    assert summaries() == {**before, day: world_value + 7}


# ---------------------------------------------------------------------------
# durable state
# ---------------------------------------------------------------------------


def test_metadata_update_survives_restart(tiny_world, tmp_path):
    state = tmp_path / "state"
    with SandboxServer(tiny_world.paths.world_dir, state) as first:
        c = sdk(first.url)
        cid = c.v1.customers.list({"limit": 1}).data[0].id
        original = c.v1.customers.retrieve(cid).metadata.to_dict()
        assert set(original) == {"segment", "region", "success_manager", "email_opt_out"}
        updated = c.v1.customers.update(cid, {"metadata": {"health": "at_risk", "region": ""}})
        expected = {**{k: v for k, v in original.items() if k != "region"}, "health": "at_risk"}
        assert updated.metadata.to_dict() == expected  # "" unsets a key, as on Stripe

    with SandboxServer(tiny_world.paths.world_dir, state) as second:
        assert second.store.fingerprint() == tiny_world.config.fingerprint()  # not re-seeded
        assert sdk(second.url).v1.customers.retrieve(cid).metadata.to_dict() == expected


# ---------------------------------------------------------------------------
# typed-field check: every key the facade returns exists on the SDK's classes
# ---------------------------------------------------------------------------


class _AnnotationNames(dict):
    """Names for evaluating a string / ForwardRef annotation of ``owner``.

    The SDK imports the referenced classes under ``TYPE_CHECKING`` only, so
    ``typing.get_type_hints`` fails on them; look names up in the owner's
    enclosing classes, then its package (``stripe.billing``), then ``stripe``.
    """

    def __init__(self, owner: type):
        super().__init__()
        self.owner = owner

    def __missing__(self, name: str):
        scope: object = sys.modules[self.owner.__module__]
        enclosing = []
        for part in self.owner.__qualname__.split("."):
            scope = getattr(scope, part)
            enclosing.append(scope)
        for cls in reversed(enclosing):
            for base in cls.__mro__:
                if name in vars(base):
                    return vars(base)[name]
        for modname in (self.owner.__module__.rsplit(".", 1)[0], "stripe"):
            try:
                return getattr(importlib.import_module(modname), name)
            except AttributeError:
                pass
        raise KeyError(name)


def _resolve(tp, owner: type):
    if isinstance(tp, str):
        tp = typing.ForwardRef(tp)
    if isinstance(tp, typing.ForwardRef):
        return eval(tp.__forward_arg__, vars(sys.modules[owner.__module__]), _AnnotationNames(owner))  # noqa: S307 -- evaluates a type annotation of our own code, as typing.get_type_hints does
    return tp


def _fields(cls: type) -> dict[str, tuple[object, type]]:
    """Public annotated attributes of a StripeObject class -> (annotation, defining class)."""
    out = {}
    for base in reversed(cls.__mro__):
        for name, tp in vars(base).get("__annotations__", {}).items():
            if not name.startswith("_") and name != "OBJECT_NAME":
                out[name] = (tp, base)
    return out


def _candidates(tp, owner: type) -> list:
    """The alternatives of an annotation: ``Optional``/``Union``/``ExpandableField`` unpacked."""
    try:
        tp = _resolve(tp, owner)
    except (NameError, KeyError, AttributeError):
        return []
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        out = []
        for arg in typing.get_args(tp):
            out += _candidates(arg, owner)
        return out
    return [tp]


def unknown_keys(value, tp, owner: type, path: str) -> list[str]:
    """Paths of keys in ``value`` (decoded JSON) with no annotation on the SDK class ``tp``.

    Objects (dicts) are matched to a ``StripeObject`` class, ``ListObject[T]``
    (``object``/``data``/``has_more``/``url``, items checked as ``T``) or
    ``UntypedStripeObject`` (free-form, e.g. metadata: keys not checked);
    arrays to ``List[T]``. An object or array where the annotation allows
    neither is reported too. Scalar values are not type-checked.
    """
    if value is None or not isinstance(value, (dict, list)):
        return []
    cands = _candidates(tp, owner)
    if isinstance(value, list):
        for c in cands:
            if typing.get_origin(c) in (list, list):
                (item,) = typing.get_args(c)
                return [p for i, v in enumerate(value) for p in unknown_keys(v, item, owner, f"{path}[{i}]")]
        return [f"{path}: array where the SDK annotates {tp}"]
    for c in cands:
        cls = typing.get_origin(c) or c
        if not isinstance(cls, type):
            continue
        if issubclass(cls, UntypedStripeObject) or cls is dict:
            return []
        if issubclass(cls, ListObject):
            (item,) = typing.get_args(c) or (typing.Any,)
            out = [
                f"{path}.{k} (not on ListObject)"
                for k in value
                if k not in _fields(ListObject) and not (k == "object" and ListObject.OBJECT_NAME == "list")
            ]
            return out + [
                p
                for i, v in enumerate(value.get("data") or [])
                for p in unknown_keys(v, item, owner, f"{path}.data[{i}]")
            ]
        if issubclass(cls, StripeObject):
            fields = _fields(cls)
            out = []
            for k, v in value.items():
                if k not in fields:
                    out.append(f"{path}.{k} (not on {cls.__module__}.{cls.__qualname__})")
                else:
                    ann, defined_on = fields[k]
                    out += unknown_keys(v, ann, defined_on, f"{path}.{k}")
            return out
    return [f"{path}: object where the SDK annotates {tp}"]


def check_all(objs: list[dict], cls: type, label: str) -> list[str]:
    return [p for o in objs for p in unknown_keys(o, cls, cls, f"{label}[{o.get('id')}]")]


def test_typed_field_checker_reports_unknown_keys():
    """The checker itself: unknown keys at every nesting level are reported, metadata is free-form."""
    sub = {
        "id": "sub_1",
        "object": "subscription",
        "bogus": 1,
        "metadata": {"anything": "goes"},
        "customer": "cus_1",
        "items": {
            "object": "list",
            "url": "/v1/subscription_items",
            "has_more": False,
            "extra": 1,
            "data": [
                {
                    "id": "si_1",
                    "weird": 0,
                    "price": {
                        "id": "price_1",
                        "recurring": {"meter": "mtr_1", "nope": 1},
                        "tiers": [{"up_to": 1, "zzz": 2}],
                    },
                }
            ],
        },
        "latest_invoice": {"id": "in_1", "lines": {"data": [{"parent": {"subscription_item_details": {"qq": 1}}}]}},
        "automatic_tax": {"liability": {"type": "self", "bad": 1}},
        "discounts": {"not": "a list"},
    }
    assert sorted(unknown_keys(sub, stripe.Subscription, stripe.Subscription, "sub")) == sorted(
        [
            "sub.bogus (not on stripe._subscription.Subscription)",
            "sub.items.extra (not on ListObject)",
            "sub.items.data[0].weird (not on stripe._subscription_item.SubscriptionItem)",
            "sub.items.data[0].price.recurring.nope (not on stripe._price.Price.Recurring)",
            "sub.items.data[0].price.tiers[0].zzz (not on stripe._price.Price.Tier)",
            "sub.latest_invoice.lines.data[0].parent.subscription_item_details.qq "
            "(not on stripe._invoice_line_item.InvoiceLineItem.Parent.SubscriptionItemDetails)",
            "sub.automatic_tax.liability.bad (not on stripe._subscription.Subscription.AutomaticTax.Liability)",
            "sub.discounts: object where the SDK annotates typing.List[typing.Union[str, ForwardRef('Discount')]]",
        ]
    )


def test_every_key_the_facade_returns_is_on_the_sdk_types(sandbox, http, tiny_world):
    # the world has no credit notes: serve one in the world's rendered shape, and create one via the API
    inv = next(i for i in list_all(http, "/v1/invoices", status="paid") if i["total"] > 0)
    world_cn = stripe_render.credit_note(
        {
            "credit_note_id": "cn_worldshape0001",
            "invoice_id": inv["id"],
            "customer_id": inv["customer"],
            "currency": inv["currency"],
            "amount": 100,
            "reason": "product_unsatisfactory",
            "created": inv["created"] + 2 * DAY,
            "number": f"{inv['number']}-CN-01",
        }
    )
    sandbox.store.put("credit_note", world_cn, customer=inv["customer"], parent=inv["id"])
    posted_cn = http.post("/v1/credit_notes", data={"invoice": inv["id"], "amount": "50"})
    assert posted_cn.status_code == 200, posted_cn.text

    customers = list_all(http, "/v1/customers")
    products = list_all(http, "/v1/products")
    prices = list_all(http, "/v1/prices", **{"expand[]": "data.tiers"})
    meters = list_all(http, "/v1/billing/meters")
    subscriptions = list_all(http, "/v1/subscriptions", status="all")
    invoices = list_all(http, "/v1/invoices")
    lines = [ln for i in invoices for ln in list_all(http, f"/v1/invoices/{i['id']}/lines")]
    payment_intents = list_all(http, "/v1/payment_intents")
    invoice_payments = list_all(http, "/v1/invoice_payments")
    credit_notes = list_all(http, "/v1/credit_notes")
    as_of_day = tiny_world.config.as_of_dt().timestamp() // DAY * DAY
    window = {"start_time": int(as_of_day - 10 * DAY), "end_time": int(as_of_day)}
    summaries = [
        s
        for m in meters
        for c in customers
        for s in list_all(http, f"/v1/billing/meters/{m['id']}/event_summaries", customer=c["id"], **window)
    ]
    retrieved = {
        cls: [get_json(http, f"/v1/{path}/{objs[0]['id']}")]
        for path, cls, objs in [
            ("customers", stripe.Customer, customers),
            ("subscriptions", stripe.Subscription, subscriptions),
            ("invoices", stripe.Invoice, invoices),
            ("prices", stripe.Price, prices),
        ]
    }

    # the walk covers what it should (exact counts of the tiny world)
    assert [
        len(customers),
        len(products),
        len(prices),
        len(meters),
        len(subscriptions),
        len(invoices),
        len(payment_intents),
        len(invoice_payments),
        len(credit_notes),
    ] == [
        N_CUSTOMERS,
        N_PRODUCTS,
        N_PRICES,
        N_METERS,
        N_SUBSCRIPTIONS,
        N_INVOICES,
        N_PAYMENTS,
        N_PAYMENTS,
        tiny_world.world.tables["credit_notes"].height + 2,
    ]  # the world's, one stored by hand, one POSTed
    assert len(lines) == tiny_world.world.tables["invoice_lines"].height
    assert sum(len(p["tiers"] or []) for p in prices) == 42  # per currency: 2 (starter compute) + 4 x 3
    assert sum(len(s["items"]["data"]) for s in subscriptions) > 0
    assert {s["status"] for s in subscriptions} >= {"active"}
    assert len(summaries) > 0

    problems = (
        check_all(customers, stripe.Customer, "customer")
        + check_all(products, stripe.Product, "product")
        + check_all(prices, stripe.Price, "price")
        + check_all(meters, stripe.billing.Meter, "meter")
        + check_all(subscriptions, stripe.Subscription, "subscription")
        + check_all(invoices, stripe.Invoice, "invoice")
        + check_all(lines, stripe.InvoiceLineItem, "line_item")
        + check_all(payment_intents, stripe.PaymentIntent, "payment_intent")
        + check_all(invoice_payments, stripe.InvoicePayment, "invoice_payment")
        + check_all(credit_notes, stripe.CreditNote, "credit_note")
        + check_all([posted_cn.json()], stripe.CreditNote, "credit_note(POST)")
        + check_all(summaries, stripe.billing.MeterEventSummary, "meter_event_summary")
        + [p for cls, objs in retrieved.items() for p in check_all(objs, cls, f"GET {cls.__name__}")]
    )
    assert problems == []


def test_every_key_of_written_objects_is_on_the_sdk_types(sandbox, http, client):
    cid = client.v1.customers.list({"limit": 1}).data[0].id
    posted_item = http.post("/v1/invoiceitems", data={"customer": cid, "amount": "250", "currency": "usd"})
    assert posted_item.status_code == 200, posted_item.text
    listed_items = list_all(http, "/v1/invoiceitems", customer=cid)
    assert [i["id"] for i in listed_items] == [posted_item.json()["id"]]
    meter_event = http.post(
        "/v1/billing/meter_events",
        data={"event_name": "api_calls", "payload[stripe_customer_id]": cid, "payload[value]": "1"},
    )
    assert meter_event.status_code == 200, meter_event.text

    problems = (
        check_all([posted_item.json()], stripe.InvoiceItem, "invoiceitem(POST)")
        + check_all(listed_items, stripe.InvoiceItem, "invoiceitem(GET list)")
        + check_all([meter_event.json()], stripe.billing.MeterEvent, "meter_event(POST)")
    )
    assert problems == []


def test_digit_metadata_keys_stay_a_mapping(sandbox, client):
    cid = client.v1.customers.list({"limit": 1}).data[0].id
    updated = client.v1.customers.update(cid, {"metadata": {"2024": "fy", "0": "zero"}})
    assert updated.metadata["2024"] == "fy" and updated.metadata["0"] == "zero"


def test_summaries_without_grouping_window_are_one_total(sandbox, client, tiny_world):
    cid = client.v1.customers.list({"limit": 1}).data[0].id
    meter = client.v1.billing.meters.list().data[0]
    start = tiny_world.config.start_dt()
    end = int(tiny_world.config.as_of_dt().timestamp()) // 86400 * 86400
    params = {"customer": cid, "start_time": int(start.timestamp()), "end_time": end}
    total = client.v1.billing.meters.event_summaries.list(meter.id, params)
    daily = list(
        client.v1.billing.meters.event_summaries.list(
            meter.id, {**params, "value_grouping_window": "day", "limit": 100}
        ).auto_paging_iter()
    )
    assert len(total.data) == 1 and total.data[0].start_time == params["start_time"]
    assert round(total.data[0].aggregated_value, 3) == round(sum(d.aggregated_value for d in daily), 3)
