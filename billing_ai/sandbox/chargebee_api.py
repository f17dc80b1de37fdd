"""A local emulator of the Chargebee API v2 (Product Catalog 2.0) over the synthetic world.

Mounted by the sandbox server under ``/chargebee``, so a client's site address
is ``<server>/chargebee`` and endpoints are ``<server>/chargebee/api/v2/...``.

Implemented, in Chargebee's wire format:

* HTTP basic auth with the API key as the user name and an empty password; a
  read-only key is refused writes (403 ``api_authorization_failed``);
* list endpoints with ``limit`` (1-100) and ``offset`` / ``next_offset`` (an
  opaque cursor), each entry wrapped as ``{"<resource>": {...}}``, and filters
  ``field[is|is_not|in|not_in|after|before|on_or_after|on_or_before|between|starts_with]``
  on top-level attributes, ``sort_by[asc|desc]`` on ``created_at`` / ``updated_at``;
* Chargebee's error body (``message``, ``type``, ``api_error_code``, ``param``,
  ``error_code``, ``error_msg``, ``error_param``, ``http_status_code``);
* 429 ``api_request_limit_exceeded`` with ``Retry-After`` above the configured rate;
* ``chargebee-idempotency-key`` on POSTs: the same key replays the first
  response (with ``chargebee-idempotency-replayed: true``); the same key on a
  different request is refused (409 ``invalid_request``);
* writes: customer and subscription ``meta_data``, ``update_for_items``,
  ``unbilled_charges/create``, ``credit_notes``, ``comments``, subscription
  ``usages`` (the usage ``id`` deduplicates; ``dedupe_option=skip`` returns the
  existing record);
* fault injection through :class:`billing_ai.sandbox.faults.FaultPlan`, answered
  in Chargebee's error format.

State (seeded once per world fingerprint, then every accepted write and
idempotency record) lives in ``<state_dir>/chargebee.sqlite``.
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from billing_ai.sandbox.store import Store
from billing_ai.sandbox.stripe_api import RateLimiter, StripeError
from billing_ai.sandbox.world import make_id

if TYPE_CHECKING:
    from billing_ai.sandbox.faults import FaultPlan

DEFAULT_API_KEY = "test_cb_sandbox_full_access"
DEFAULT_READONLY_KEY = "test_cb_sandbox_read_only"
IDEMPOTENCY_HEADER = "chargebee-idempotency-key"
REPLAYED_HEADER = "chargebee-idempotency-replayed"
MAX_LIMIT = 100

# URL segment -> (stored type, list/response key)
RESOURCES = {
    "customers": "customer",
    "items": "item",
    "item_prices": "item_price",
    "subscriptions": "subscription",
    "invoices": "invoice",
    "credit_notes": "credit_note",
    "transactions": "transaction",
    "usages": "usage",
    "comments": "comment",
    "unbilled_charges": "unbilled_charge",
}
TIME_FIELDS = {
    "customer": "created_at",
    "item": "updated_at",
    "item_price": "created_at",
    "subscription": "created_at",
    "invoice": "date",
    "credit_note": "date",
    "transaction": "date",
    "usage": "usage_date",
    "comment": "created_at",
    "unbilled_charge": "date_from",
}
COMMENT_ENTITIES = (
    "customer",
    "subscription",
    "invoice",
    "credit_note",
    "quote",
    "coupon",
    "plan",
    "addon",
    "item",
    "item_price",
    "item_family",
)


@dataclass
class ChargebeeSettings:
    api_keys: tuple[str, ...] = (DEFAULT_API_KEY,)
    readonly_keys: tuple[str, ...] = (DEFAULT_READONLY_KEY,)
    rate_limit_per_second: float = 400.0  # token bucket refill; burst = 2x
    clock: int | None = None  # "now" for writes; defaults to the world's as_of
    counters: dict = field(default_factory=dict)
    faults: FaultPlan | None = None


class ChargebeeError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        type_: str | None = None,
        param: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.code, self.message, self.type, self.param = status, code, message, type_, param
        self.headers = headers or {}

    def body(self) -> dict:
        out: dict[str, Any] = {"message": self.message}
        if self.type:
            out["type"] = self.type
        out["api_error_code"] = self.code
        if self.param:
            out["param"] = self.param
        # the legacy trio Chargebee still sends beside the current fields
        out.update(error_code=self.code, error_msg=self.message, http_status_code=self.status)
        if self.param:
            out["error_param"] = self.param
        return out

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def rate_limited(retry_after: str) -> ChargebeeError:
    return ChargebeeError(
        429,
        "api_request_limit_exceeded",
        "Sorry, access has been blocked temporarily due to request count exceeding acceptable "
        "limits. Please try after some time.",
        headers={"Retry-After": retry_after},
    )


def server_error(status: int) -> ChargebeeError:
    if status == 503:
        return ChargebeeError(
            503, "internal_temporary_error", "Sorry, we were unable to process your request. Please try again."
        )
    return ChargebeeError(
        status, "internal_error", "Sorry, something went wrong when trying to process the request. Please try again."
    )


def from_injected(e: StripeError) -> ChargebeeError:
    """A fault plan raises Stripe-shaped errors; answer them the way Chargebee does."""
    if e.status == 429:
        return rate_limited(e.headers.get("Retry-After", "1"))
    return server_error(e.status)


def decode_form(pairs: list[tuple[str, str]]) -> dict:
    """Chargebee's form encoding: ``a[b]=1`` -> ``{"a": {"b": "1"}}``; ``a[b][0]=1&a[c][0]=2`` ->
    ``{"a": [{"b": "1", "c": "2"}]}`` (multi-valued attributes by index)."""
    out: dict = {}
    for key, value in pairs:
        parts = [p for p in re.findall(r"[^\[\]]+", key)]
        if len(parts) == 1:
            out[parts[0]] = value
        elif len(parts) == 2:
            node = out.setdefault(parts[0], {})
            if isinstance(node, dict):
                node[parts[1]] = value
        elif len(parts) == 3 and parts[2].isdigit():
            node = out.setdefault(parts[0], [])
            if isinstance(node, list):
                idx = int(parts[2])
                while len(node) <= idx:
                    node.append({})
                node[idx][parts[1]] = value
    return out


class ChargebeeStore(Store):
    """The shared SQLite object store, seeded with Chargebee's rendering of the world."""

    def render(self, tables, as_of: int):
        from billing_ai.sandbox.chargebee_render import render_world

        return render_world(tables, as_of)

    def created_of(self, typ: str, obj: dict) -> int:
        return obj.get(TIME_FIELDS[typ]) or 0

    def seed_usage(self, tables, customers: set[str]) -> None:
        """Chargebee serves usages as objects (rendered above): no meter summaries to seed."""


# ---- filters ------------------------------------------------------------------------------------
def _as_list(value: str) -> list:
    try:
        v = json.loads(value)
    except ValueError:
        v = None
    if not isinstance(v, list):
        raise ChargebeeError(400, "param_wrong_value", f"{value} is not a valid list", "invalid_request")
    return [str(x) for x in v]


def _cmp(a: Any, b: str) -> tuple:
    """Compare a stored value with a filter's text: numbers as numbers, the rest as text."""
    if isinstance(a, bool):
        return str(a).lower(), b.lower()
    if isinstance(a, (int, float)):
        try:
            return Decimal(str(a)), Decimal(b)
        except InvalidOperation:
            raise ChargebeeError(400, "param_wrong_value", f"{b} is not a number", "invalid_request") from None
    return ("" if a is None else str(a)), b


def make_filter(params: dict) -> tuple[list, list[str]]:
    """``field[op]=value`` query parameters -> predicates on the top-level attribute ``field``."""
    preds, used = [], []
    for key, value in params.items():
        if not isinstance(value, dict) or key in ("sort_by",):
            continue
        for op, arg in value.items():
            used.append(f"{key}[{op}]")

            def pred(obj, key=key, op=op, arg=arg):
                v = obj.get(key)
                if op == "is":
                    return _cmp(v, arg)[0] == _cmp(v, arg)[1]
                if op == "is_not":
                    return _cmp(v, arg)[0] != _cmp(v, arg)[1]
                if op == "in":
                    return any(_cmp(v, a)[0] == _cmp(v, a)[1] for a in _as_list(arg))
                if op == "not_in":
                    return all(_cmp(v, a)[0] != _cmp(v, a)[1] for a in _as_list(arg))
                if op == "starts_with":
                    return str(v or "").startswith(arg)
                if op == "is_present":
                    return (v is not None) == (arg == "true")
                if v is None:
                    return False
                if op == "after":
                    return _cmp(v, arg)[0] > _cmp(v, arg)[1]
                if op == "before":
                    return _cmp(v, arg)[0] < _cmp(v, arg)[1]
                if op == "on_or_after":
                    return _cmp(v, arg)[0] >= _cmp(v, arg)[1]
                if op == "on_or_before":
                    return _cmp(v, arg)[0] <= _cmp(v, arg)[1]
                if op == "between":
                    lo, hi = _as_list(arg)
                    return _cmp(v, lo)[1] <= _cmp(v, lo)[0] and _cmp(v, hi)[0] <= _cmp(v, hi)[1]
                raise ChargebeeError(
                    400,
                    "param_wrong_value",
                    f"{key}[{op}] : unsupported operator",
                    "invalid_request",
                    param=f"{key}[{op}]",
                )

            preds.append(pred)
    return preds, used


# ---- the app ---------------------------------------------------------------------------------
def create_app(store: ChargebeeStore, settings: ChargebeeSettings) -> Starlette:
    limiter = RateLimiter(settings.rate_limit_per_second)

    def now() -> int:
        return settings.clock or store.as_of()

    def auth(request: Request, write: bool) -> str:
        header = request.headers.get("authorization", "")
        key = None
        if header.lower().startswith("basic "):
            try:
                key = base64.b64decode(header[6:].strip()).decode().split(":", 1)[0]
            except (ValueError, UnicodeDecodeError):
                key = None
        if key in settings.api_keys:
            return key
        if key in settings.readonly_keys:
            if write:
                raise ChargebeeError(
                    403,
                    "api_authorization_failed",
                    "Sorry, the API key used does not have the permission to perform this operation.",
                )
            return key
        raise ChargebeeError(401, "api_authentication_failed", "Sorry, authentication failed. Invalid api key")

    async def handler(request: Request) -> Response:
        settings.counters["requests"] = settings.counters.get("requests", 0) + 1
        fault = plan.draw(request.method, request.url.path) if (plan := settings.faults) else None
        try:
            if fault:
                try:
                    await fault.before()
                except StripeError as e:
                    raise from_injected(e) from None
            limiter.rate = settings.rate_limit_per_second
            wait = limiter.take()
            if wait:
                settings.counters["rate_limited"] = settings.counters.get("rate_limited", 0) + 1
                raise rate_limited(str(max(1, round(wait + 0.49))))
            write = request.method == "POST"
            api_key = auth(request, write)
            path = request.url.path  # the app is mounted under /chargebee: route on what follows it
            root = request.scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            params = dict(parse_qsl(request.url.query, keep_blank_values=True))
            if write:
                params.update(parse_qsl((await request.body()).decode(), keep_blank_values=True))
            idem = request.headers.get(IDEMPOTENCY_HEADER) if write else None
            canon = json.dumps(sorted(params.items()))
            if idem:
                prior = store.idem_get(api_key, idem)
                if prior:
                    method, ppath, pparams, status, pbody = prior
                    if (method, ppath, pparams) != (request.method, path, canon):
                        raise ChargebeeError(
                            409,
                            "invalid_request",
                            f"The idempotency key {idem} was used with a different request.",
                            "invalid_request",
                            param=IDEMPOTENCY_HEADER,
                        )
                    return Response(
                        pbody, status_code=status, media_type="application/json", headers={REPLAYED_HEADER: "true"}
                    )
            try:
                status, payload = route(request.method, path, decode_form(list(params.items())))
            except ChargebeeError as e:
                status, payload = e.status, e.body()
            text = json.dumps(payload)
            if idem and status < 500:
                store.idem_put(api_key, idem, request.method, path, canon, status, text)
            response = Response(text, status_code=status, media_type="application/json")
            if fault:
                response = fault.after(response)
                if isinstance(response, JSONResponse) and response.status_code >= 500:
                    return server_error(response.status_code).response()
            return response
        except ChargebeeError as e:
            return e.response()

    # ---- routing -------------------------------------------------------------------------------
    def route(method: str, path: str, params: dict) -> tuple[int, dict]:
        m = re.fullmatch(r"/api/v2/(.+)", path)
        if not m:
            raise ChargebeeError(404, "resource_not_found", f"Sorry, we couldn't find the resource {path}")
        parts = m.group(1).split("/")
        if method == "GET":
            if len(parts) == 1 and parts[0] in RESOURCES:
                return 200, list_resource(parts[0], params)
            if len(parts) == 2 and parts[0] in RESOURCES:
                typ = RESOURCES[parts[0]]
                return 200, {typ: retrieve(typ, parts[1])}
        if method == "POST":
            if parts == ["comments"]:
                return 200, create_comment(params)
            if parts == ["credit_notes"]:
                return 200, create_credit_note(params)
            if parts == ["unbilled_charges", "create"]:
                return 200, create_unbilled_charges(params)
            if len(parts) == 2 and parts[0] == "customers":
                return 200, update_customer(parts[1], params)
            if len(parts) == 2 and parts[0] == "subscriptions":
                return 200, update_subscription(parts[1], params)
            if len(parts) == 3 and parts[0] == "subscriptions" and parts[2] == "update_for_items":
                return 200, update_for_items(parts[1], params)
            if len(parts) == 3 and parts[0] == "subscriptions" and parts[2] == "usages":
                return 200, create_usage(parts[1], params)
        raise ChargebeeError(404, "resource_not_found", f"Sorry, we couldn't find the resource {path}")

    def retrieve(typ: str, oid: str) -> dict:
        obj = store.get(typ, oid)
        if obj is None:
            raise ChargebeeError(
                404,
                "resource_not_found",
                f"{typ.replace('_', ' ').title()} not found for {oid}",
                param="id" if typ != "customer" else "customer_id",
            )
        return obj

    def limit_of(params: dict) -> int:
        try:
            limit = int(params.get("limit", 10))
        except ValueError:
            raise ChargebeeError(
                400, "param_wrong_value", "limit : invalid integer", "invalid_request", param="limit"
            ) from None
        if not 1 <= limit <= MAX_LIMIT:
            raise ChargebeeError(
                400, "param_wrong_value", f"limit : must be between 1 and {MAX_LIMIT}", "invalid_request", param="limit"
            )
        return limit

    def list_resource(segment: str, params: dict) -> dict:
        typ = RESOURCES[segment]
        preds, _ = make_filter(params)
        where = {}
        if typ == "comment":
            # comments are listed per entity: entity_type and entity_id (plain parameters)
            if isinstance(params.get("entity_id"), str):
                preds.append(lambda o, e=params["entity_id"]: o["entity_id"] == e)
            if isinstance(params.get("entity_type"), str):
                preds.append(lambda o, e=params["entity_type"]: o["entity_type"] == e)
        if params.get("include_deleted") != "true":
            preds.append(lambda o: not o.get("deleted", False))
        sort = params.get("sort_by") or {}
        newest_first = "asc" not in sort if isinstance(sort, dict) else True
        after = None
        if params.get("offset"):
            try:
                after = json.loads(params["offset"])[1]
            except (ValueError, IndexError, TypeError, KeyError):
                raise ChargebeeError(
                    400, "param_wrong_value", "offset : invalid value", "invalid_request", param="offset"
                ) from None
        try:
            objs, more = store.list(
                typ,
                limit=limit_of(params),
                starting_after=after,
                where=where,
                predicate=lambda o: all(p(o) for p in preds),
                newest_first=newest_first,
            )
        except KeyError:
            raise ChargebeeError(
                400, "param_wrong_value", "offset : invalid value", "invalid_request", param="offset"
            ) from None
        out: dict = {"list": [{typ: o} for o in objs]}
        if more and objs:
            last = objs[-1]
            out["next_offset"] = json.dumps([str(last.get(TIME_FIELDS[typ]) or 0), last["id"]])
        return out

    def touch(obj: dict) -> dict:
        obj["updated_at"] = now()
        obj["resource_version"] = int(time.time_ns() // 1000)
        return obj

    def parse_meta(params: dict) -> dict | None:
        if "meta_data" not in params:
            return None
        try:
            meta = json.loads(params["meta_data"])
        except ValueError:
            meta = None
        if not isinstance(meta, dict):
            raise ChargebeeError(
                400, "param_wrong_value", "meta_data : invalid JSON object", "invalid_request", param="meta_data"
            )
        return meta

    def update_customer(cid: str, params: dict) -> dict:
        cust = retrieve("customer", cid)
        meta = parse_meta(params)
        if meta is not None:
            cust["meta_data"] = meta  # Chargebee replaces meta_data as a whole
        for f in ("first_name", "last_name", "company", "email", "phone", "net_term_days"):
            if f in params and isinstance(params[f], str):
                cust[f] = int(params[f]) if f == "net_term_days" else params[f]
        store.put("customer", touch(cust))
        return {"customer": cust}

    def update_subscription(sid: str, params: dict) -> dict:
        sub = retrieve("subscription", sid)
        meta = parse_meta(params)
        if meta is not None:
            sub["meta_data"] = meta
        store.put("subscription", touch(sub))
        return {"subscription": sub, "customer": retrieve("customer", sub["customer_id"])}

    def update_for_items(sid: str, params: dict) -> dict:
        sub = retrieve("subscription", sid)
        if sub["status"] == "cancelled":
            raise ChargebeeError(
                400,
                "invalid_state_for_request",
                "Subscription is in cancelled state. Reactivate it to change items.",
                "invalid_request",
            )
        changes = params.get("subscription_items")
        if not isinstance(changes, list) or not changes:
            raise ChargebeeError(
                400,
                "param_wrong_value",
                "subscription_items[item_price_id][0] : cannot be blank",
                "invalid_request",
                param="subscription_items[item_price_id][0]",
            )
        items = sub["subscription_items"]
        for k, ch in enumerate(changes):
            price = store.get("item_price", ch.get("item_price_id", ""))
            if price is None or price.get("status") != "active":
                raise ChargebeeError(
                    400,
                    "param_wrong_value",
                    f"subscription_items[item_price_id][{k}] : {ch.get('item_price_id')} is not an active item price",
                    "invalid_request",
                    param=f"subscription_items[item_price_id][{k}]",
                )
            if price["currency_code"] != sub["currency_code"]:
                raise ChargebeeError(
                    400,
                    "param_wrong_value",
                    "The item price's currency differs from the subscription's",
                    "invalid_request",
                    param=f"subscription_items[item_price_id][{k}]",
                )
            entry = {
                "item_price_id": price["id"],
                "item_type": price["item_type"],
                "current_term_start": sub.get("current_term_start"),
                "current_term_end": sub.get("current_term_end"),
                "free_quantity": 0,
                "object": "subscription_item",
            }
            same_item = [
                i
                for i, e in enumerate(items)
                if (store.get("item_price", e["item_price_id"]) or {}).get("item_id") == price["item_id"]
            ]
            old = items[same_item[0]] if same_item else None
            qty = ch.get("quantity") or (old or {}).get("quantity")
            if qty is not None and not price_metered(price):
                entry["quantity"] = int(qty)
                if "price" in price:
                    entry["unit_price"] = price["price"]
                    entry["amount"] = price["price"] * int(qty)
            if same_item:  # one price per item on a subscription: the new price replaces the old one
                items[same_item[0]] = entry
            else:
                items.append(entry)
        meta = parse_meta(params)
        if meta is not None:
            sub["meta_data"] = meta
        store.put("subscription", touch(sub))
        return {"subscription": sub, "customer": retrieve("customer", sub["customer_id"])}

    def price_metered(price: dict) -> bool:
        return bool((store.get("item", price["item_id"]) or {}).get("metered"))

    def amount_param(value: Any, param: str) -> int:
        try:
            amount = int(value)
        except (TypeError, ValueError):
            raise ChargebeeError(
                400, "param_wrong_value", f"{param} : invalid integer", "invalid_request", param=param
            ) from None
        if amount <= 0:
            raise ChargebeeError(
                400, "param_wrong_value", f"{param} : should be greater than 0", "invalid_request", param=param
            )
        return amount

    def create_unbilled_charges(params: dict) -> dict:
        sub = retrieve("subscription", params.get("subscription_id", ""))
        if sub["status"] == "cancelled":
            raise ChargebeeError(400, "invalid_state_for_request", "Subscription is cancelled", "invalid_request")
        charges = params.get("charges")
        if not isinstance(charges, list) or not charges:
            raise ChargebeeError(
                400,
                "param_wrong_value",
                "charges[amount][0] : cannot be blank",
                "invalid_request",
                param="charges[amount][0]",
            )
        currency = params.get("currency_code", sub["currency_code"])
        if currency != sub["currency_code"]:
            raise ChargebeeError(
                400,
                "param_wrong_value",
                "currency_code : differs from the subscription's",
                "invalid_request",
                param="currency_code",
            )
        out = []
        for k, ch in enumerate(charges):
            amount = amount_param(ch.get("amount"), f"charges[amount][{k}]")
            ubc = {
                "id": make_id("ubc", 0, sub["id"], time.time_ns(), k),
                "customer_id": sub["customer_id"],
                "subscription_id": sub["id"],
                "date_from": int(ch.get("date_from") or now()),
                "date_to": int(ch.get("date_to") or now()),
                "unit_amount": amount,
                "pricing_model": "flat_fee",
                "quantity": 1,
                "amount": amount,
                "currency_code": currency,
                "discount_amount": 0,
                "description": ch.get("description", ""),
                "entity_type": "adhoc",
                "is_voided": False,
                "updated_at": now(),
                "deleted": False,
                "object": "unbilled_charge",
            }
            store.put("unbilled_charge", ubc, customer=sub["customer_id"], parent=sub["id"], created=now())
            out.append(ubc)
        return {"unbilled_charges": out}

    def add_comment(entity_type: str, entity_id: str, notes: str) -> dict:
        c = {
            "id": make_id("cmt", 0, entity_type, entity_id, time.time_ns()),
            "entity_type": entity_type,
            "added_by": "api",
            "notes": notes,
            "created_at": now(),
            "type": "user",
            "entity_id": entity_id,
            "object": "comment",
        }
        store.put("comment", c, parent=entity_id, created=now())
        return c

    def create_comment(params: dict) -> dict:
        etype, eid, notes = params.get("entity_type"), params.get("entity_id"), params.get("notes")
        if etype not in COMMENT_ENTITIES:
            raise ChargebeeError(
                400, "param_wrong_value", f"entity_type : invalid value {etype}", "invalid_request", param="entity_type"
            )
        if not notes:
            raise ChargebeeError(400, "param_wrong_value", "notes : cannot be blank", "invalid_request", param="notes")
        retrieve(etype, eid or "")
        return {"comment": add_comment(etype, eid, notes)}

    def create_credit_note(params: dict) -> dict:
        inv = retrieve("invoice", params.get("reference_invoice_id", ""))
        if inv["status"] not in ("paid", "payment_due", "not_paid", "posted"):
            raise ChargebeeError(
                400,
                "invalid_state_for_request",
                f"Credit note cannot be created for an invoice in {inv['status']} state",
                "invalid_request",
            )
        typ = params.get("type")
        if typ not in ("adjustment", "refundable"):
            raise ChargebeeError(400, "param_wrong_value", "type : invalid value", "invalid_request", param="type")
        total = amount_param(params.get("total"), "total")
        credited = sum(
            c["total"]
            for c in store.list("credit_note", limit=100, where={"parent": inv["id"]})[0]
            if c["status"] != "voided"
        )
        if total > inv["total"] - credited:
            raise ChargebeeError(
                400,
                "param_wrong_value",
                "total : The credit note amount cannot exceed the invoice's uncredited amount",
                "invalid_request",
                param="total",
            )
        n = len(store.list("credit_note", limit=100)[0]) + 1
        cid = f"CN-{n:05d}"
        while store.get("credit_note", cid):
            n += 1
            cid = f"CN-{n:05d}"
        cn = {
            "id": cid,
            "customer_id": inv["customer_id"],
            "subscription_id": inv.get("subscription_id"),
            "reference_invoice_id": inv["id"],
            "type": typ,
            "reason_code": params.get("reason_code", "other"),
            "status": "refund_due" if typ == "refundable" else "adjusted",
            "date": now(),
            "price_type": "tax_exclusive",
            "currency_code": inv["currency_code"],
            "total": total,
            "amount_allocated": total if typ == "adjustment" else 0,
            "amount_refunded": 0,
            "amount_available": 0 if typ == "adjustment" else total,
            "generated_at": now(),
            "resource_version": int(time.time_ns() // 1000),
            "updated_at": now(),
            "channel": "web",
            "sub_total": total,
            "round_off_amount": 0,
            "fractional_correction": 0,
            "deleted": False,
            "object": "credit_note",
            "line_items": [],
            "taxes": [],
            "allocations": [],
            "linked_refunds": [],
            "discounts": [],
        }
        if params.get("create_reason_code"):
            cn["create_reason_code"] = params["create_reason_code"]
        if params.get("customer_notes"):
            cn["customer_notes"] = params["customer_notes"]
        store.put("credit_note", cn, customer=inv["customer_id"], parent=inv["id"], created=now())
        if params.get("comment"):  # Chargebee keeps the operation's comment as a comment on the credit note
            add_comment("credit_note", cid, params["comment"])
        inv.setdefault("issued_credit_notes", []).append(
            {
                "cn_id": cid,
                "cn_reason_code": cn["reason_code"],
                "cn_date": now(),
                "cn_total": total,
                "cn_status": cn["status"],
            }
        )
        store.put("invoice", touch(inv))
        return {"credit_note": cn, "invoice": inv}

    def create_usage(sid: str, params: dict) -> dict:
        sub = retrieve("subscription", sid)
        ipid = params.get("item_price_id", "")
        if not any(e["item_price_id"] == ipid for e in sub["subscription_items"]):
            raise ChargebeeError(
                400,
                "param_wrong_value",
                f"item_price_id : {ipid} is not a metered item price of this subscription",
                "invalid_request",
                param="item_price_id",
            )
        try:
            qty = Decimal(params.get("quantity", ""))
        except InvalidOperation:
            raise ChargebeeError(
                400, "param_wrong_value", "quantity : invalid decimal", "invalid_request", param="quantity"
            ) from None
        try:
            at = int(params["usage_date"])
        except (KeyError, ValueError):
            raise ChargebeeError(
                400, "param_wrong_value", "usage_date : cannot be blank", "invalid_request", param="usage_date"
            ) from None
        uid = params.get("id") or make_id("usage", 0, sid, time.time_ns())
        existing = store.get("usage", uid)
        if existing is not None:
            if params.get("dedupe_option") == "skip":
                return {"usage": existing}
            if params.get("dedupe_option") != "update_existing":
                raise ChargebeeError(
                    400, "duplicate_entry", f"id : The value {uid} is already present.", "invalid_request", param="id"
                )
        usage = {
            "id": uid,
            "usage_date": at,
            "subscription_id": sid,
            "item_price_id": ipid,
            "quantity": format(qty.normalize(), "f"),
            "source": "api",
            "note": params.get("note"),
            "resource_version": int(time.time_ns() // 1000),
            "updated_at": now(),
            "created_at": now(),
            "object": "usage",
        }
        store.put("usage", usage, customer=sub["customer_id"], parent=sid, created=at)
        return {"usage": usage}

    return Starlette(routes=[Route("/{path:path}", handler, methods=["GET", "POST"])])


class ChargebeeFacade:
    """What the sandbox server mounts under ``/chargebee``: ``app``, ``settings``, ``store``, ``close()``."""

    def __init__(self, world_dir: Path, state_dir: Path, settings: ChargebeeSettings | None = None):
        self.store = ChargebeeStore(Path(state_dir) / "chargebee.sqlite")
        self.store.seed_from_world(world_dir)
        self.settings = settings or ChargebeeSettings()
        self.app = create_app(self.store, self.settings)

    def close(self) -> None:
        self.store.close()


def create_chargebee_facade(world_dir: Path, state_dir: Path) -> ChargebeeFacade:
    return ChargebeeFacade(world_dir, state_dir)
