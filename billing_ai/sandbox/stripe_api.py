"""A local emulator of the Stripe API over the synthetic world.

The official ``stripe`` SDK, with its ``api`` base address pointed here, works
unchanged. Implemented: list pagination (``limit``, ``starting_after``,
``ending_before``, ``has_more``), bearer keys (a restricted read-only key is
refused writes), ``Idempotency-Key`` (same key and params replay the first
response; other params are an error), Stripe's error body, and 429 with
``Retry-After`` above a configurable request rate.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from billing_ai.sandbox.store import Store
from billing_ai.sandbox.world import make_id

if TYPE_CHECKING:
    from billing_ai.sandbox.faults import FaultPlan

DEFAULT_SECRET_KEY = "sk_test_sandbox"
DEFAULT_READONLY_KEY = "rk_test_sandbox_readonly"
MAX_LIMIT = 100


@dataclass
class SandboxSettings:
    secret_keys: tuple[str, ...] = (DEFAULT_SECRET_KEY,)
    readonly_keys: tuple[str, ...] = (DEFAULT_READONLY_KEY,)
    rate_limit_per_second: float = 400.0  # token bucket refill; burst = 2x
    clock: int | None = None  # "now" for created timestamps; defaults to the world's as_of
    counters: dict = field(default_factory=dict)
    faults: FaultPlan | None = None  # injected failures (tests); see billing_ai.sandbox.faults


class StripeError(Exception):
    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.type, self.message, self.code, self.param = status, type_, message, code, param
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        self.headers.setdefault("Request-Id", request_id())
        err = {"type": self.type, "message": self.message}
        if self.code:
            err["code"] = self.code
        if self.param:
            err["param"] = self.param
        err["request_log_url"] = None
        return JSONResponse({"error": err}, status_code=self.status, headers=self.headers)


def decode_form(pairs: list[tuple[str, str]]) -> dict:
    """Stripe's bracketed form encoding: ``a[b]=1&c[]=x`` -> ``{"a": {"b": "1"}, "c": ["x"]}``."""
    out: dict = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+|\[\]", key)
        parts = [p for p in parts if p]
        cur = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nxt = parts[i + 1] if not last else None
            if part == "[]":
                continue
            if last:
                cur[part] = value
            elif nxt == "[]":
                cur.setdefault(part, [])
                if isinstance(cur[part], list):
                    cur[part].append(value)
                break
            else:
                cur = cur.setdefault(part, {})
    # the SDK sends lists as expand[0]=..&expand[1]=..; only list-typed params become lists
    # (metadata keys may well be digits)
    for key in LIST_PARAMS:
        node = out.get(key)
        if isinstance(node, dict) and all(k.isdigit() for k in node):
            out[key] = [node[k] for k in sorted(node, key=int)]
    return out


LIST_PARAMS = ("expand",)


def request_id() -> str:
    return "req_" + hashlib.sha1(f"{time.time_ns()}-{threading.get_ident()}".encode()).hexdigest()[:14]


class RateLimiter:
    def __init__(self, per_second: float):
        self.rate = per_second
        self.tokens = per_second * 2
        self.updated = time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> float:
        """0 if allowed, else seconds until a token is available."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.rate * 2, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1:
                self.tokens -= 1
                return 0.0
            return (1 - self.tokens) / self.rate


LISTABLE = {
    "customers": "customer",
    "products": "product",
    "prices": "price",
    "subscriptions": "subscription",
    "subscription_items": "subscription_item",
    "invoices": "invoice",
    "payment_intents": "payment_intent",
    "invoice_payments": "invoice_payment",
    "credit_notes": "credit_note",
    "invoiceitems": "invoiceitem",
    "billing/meters": "billing.meter",
    "quotes": "quote",
}
RETRIEVABLE = {k: v for k, v in LISTABLE.items()}
NOUN = {
    "customer": "customer",
    "product": "product",
    "price": "price",
    "subscription": "subscription",
    "subscription_item": "subscription_item",
    "invoice": "invoice",
    "payment_intent": "payment_intent",
    "invoice_payment": "invoice_payment",
    "credit_note": "credit_note",
    "invoiceitem": "invoiceitem",
    "billing.meter": "billing.meter",
    "quote": "quote",
}
# payment failures a retry cannot fix: the sandbox declines a retried payment for these
HARD_DECLINES = ("expired_card", "lost_card", "stolen_card", "incorrect_number")


def create_app(store: Store, settings: SandboxSettings | None = None) -> Starlette:
    settings = settings or SandboxSettings()
    limiter = RateLimiter(settings.rate_limit_per_second)

    def now() -> int:
        return settings.clock or store.as_of()

    def auth(request: Request, write: bool) -> str:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            raise StripeError(
                401,
                "invalid_request_error",
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            )
        key = header[7:].strip()
        if key in settings.secret_keys:
            return key
        if key in settings.readonly_keys:
            if write:
                raise StripeError(
                    403,
                    "invalid_request_error",
                    "The provided key 'rk_test_****' does not have the required permissions for this "
                    "endpoint. Having the 'rak_write' permission would allow this request to continue.",
                    code="secret_key_required",
                )
            return key
        raise StripeError(401, "invalid_request_error", f"Invalid API Key provided: {key[:8]}****")

    async def handler(request: Request) -> Response:
        settings.counters["requests"] = settings.counters.get("requests", 0) + 1
        fault = plan.draw(request.method, request.url.path) if (plan := settings.faults) else None
        try:
            if fault:
                await fault.before()  # injected delay, 429 or 5xx
            limiter.rate = settings.rate_limit_per_second  # settings may change while serving
            wait = limiter.take()
            if wait:
                settings.counters["rate_limited"] = settings.counters.get("rate_limited", 0) + 1
                raise StripeError(
                    429,
                    "invalid_request_error",
                    "Request rate limit exceeded. Learn more about rate limits here "
                    "https://stripe.com/docs/rate-limits.",
                    code="rate_limit",
                    headers={"Retry-After": str(max(1, round(wait + 0.49)))},
                )
            write = request.method in ("POST", "DELETE")
            api_key = auth(request, write)
            params = decode_form(parse_qsl(request.url.query, keep_blank_values=True))
            if write:
                body = (await request.body()).decode()
                params.update(decode_form(parse_qsl(body, keep_blank_values=True)))
            path = request.url.path
            idem = request.headers.get("idempotency-key") if write else None
            if idem:
                canon = json.dumps(params, sort_keys=True)
                prior = store.idem_get(api_key, idem)
                if prior:
                    method, ppath, pparams, status, pbody = prior
                    if (method, ppath, pparams) != (request.method, path, canon):
                        raise StripeError(
                            400,
                            "idempotency_error",
                            "Keys for idempotent requests can only be used with the same parameters "
                            "they were first used with. Try using a key other than "
                            f"'{idem}' if you meant to execute a different request.",
                        )
                    return Response(
                        pbody,
                        status_code=status,
                        media_type="application/json",
                        headers={"Idempotent-Replayed": "true", "Idempotency-Key": idem, "Request-Id": request_id()},
                    )
            status, payload = route(request.method, path, params)
            text = json.dumps(payload)
            if idem and status < 500:
                store.idem_put(api_key, idem, request.method, path, json.dumps(params, sort_keys=True), status, text)
            headers = {"Idempotency-Key": idem} if idem else {}
            headers["Request-Id"] = request_id()
            response = Response(text, status_code=status, media_type="application/json", headers=headers)
            return fault.after(response) if fault else response  # "applied, then failed"
        except StripeError as e:
            return e.response()

    def route(method: str, path: str, params: dict) -> tuple[int, dict]:
        m = re.fullmatch(r"/v1/(.+)", path)
        if not m:
            raise StripeError(404, "invalid_request_error", f"Unrecognized request URL ({method}: {path}).")
        rest = m.group(1)
        if method == "GET":
            if rest in LISTABLE:
                return 200, list_objects(rest, LISTABLE[rest], params)
            mm = re.fullmatch(r"invoices/([^/]+)/lines", rest)
            if mm:
                return 200, list_children(
                    "line_item", mm.group(1), "invoice", f"/v1/invoices/{mm.group(1)}/lines", params
                )
            mm = re.fullmatch(r"billing/meters/([^/]+)/event_summaries", rest)
            if mm:
                return 200, meter_event_summaries(mm.group(1), params)
            mm = re.fullmatch(r"(.+)/([^/]+)", rest)
            if mm and mm.group(1) in RETRIEVABLE:
                typ = RETRIEVABLE[mm.group(1)]
                return 200, expand(retrieve(typ, mm.group(2)), params, top=True)
        if method == "POST":
            if rest == "billing/meter_events":
                return 200, create_meter_event(params)
            if rest == "invoiceitems":
                return 200, create_invoice_item(params)
            if rest == "credit_notes":
                return 200, create_credit_note(params)
            if rest == "quotes":
                return 200, create_quote(params)
            mm = re.fullmatch(r"invoices/([^/]+)/lines/([^/]+)", rest)
            if mm:
                return 200, update_invoice_line(mm.group(1), mm.group(2), params)
            mm = re.fullmatch(r"invoices/([^/]+)/pay", rest)
            if mm:
                return pay_invoice(mm.group(1))
            mm = re.fullmatch(r"subscriptions/([^/]+)", rest)
            if mm and "items" in params:
                return 200, update_subscription_items(mm.group(1), params)
            mm = re.fullmatch(r"(customers|subscriptions|invoices|quotes)/([^/]+)", rest)
            if mm:
                return 200, update_metadata(RETRIEVABLE[mm.group(1)], mm.group(2), params)
        raise StripeError(404, "invalid_request_error", f"Unrecognized request URL ({method}: {path}).")

    def retrieve(typ: str, oid: str) -> dict:
        obj = store.get(typ, oid)
        if obj is None:
            raise StripeError(
                404,
                "invalid_request_error",
                f"No such {NOUN.get(typ, typ).replace('.', ' ')}: '{oid}'",
                code="resource_missing",
                param="id",
            )
        return obj

    def limit_of(params: dict) -> int:
        try:
            limit = int(params.get("limit", 10))
        except ValueError:
            raise StripeError(
                400, "invalid_request_error", "Invalid integer: " + str(params.get("limit")), param="limit"
            ) from None
        if not 1 <= limit <= MAX_LIMIT:
            raise StripeError(
                400,
                "invalid_request_error",
                f"This value must be greater than or equal to 1 and less than or equal to {MAX_LIMIT}.",
                param="limit",
            )
        return limit

    def expand(obj: dict, params: dict, top: bool) -> dict:
        want = params.get("expand", [])
        want = want if isinstance(want, list) else [want]
        prefix = "" if top else "data."
        tiers = obj.pop("_tiers", None)
        if obj.get("object") == "price" and f"{prefix}tiers" in want:
            obj["tiers"] = tiers
        return obj

    def page(objs: list[dict], more: bool, url: str, params: dict) -> dict:
        return {"object": "list", "data": [expand(o, params, top=False) for o in objs], "has_more": more, "url": url}

    def list_objects(rest: str, typ: str, params: dict) -> dict:
        where, predicate = {}, None
        if "customer" in params and typ != "product":
            where["customer"] = params["customer"]
        if typ == "subscription_item":
            if "subscription" not in params:
                raise StripeError(
                    400, "invalid_request_error", "Missing required param: subscription.", param="subscription"
                )
            where["parent"] = params["subscription"]
        if typ in ("invoice_payment", "payment_intent", "credit_note") and "invoice" in params:
            where["parent"] = params["invoice"]
        status = params.get("status")
        if typ == "subscription":
            if status in (None, ""):
                predicate = lambda o: o["status"] != "canceled"  # noqa: E731 - Stripe's default hides canceled
            elif status != "all":
                predicate = lambda o: o["status"] == status  # noqa: E731 -- a one-line local helper reads best inline
        elif typ == "invoice" and status:
            predicate = lambda o: o["status"] == status  # noqa: E731 -- a one-line local helper reads best inline
        try:
            objs, more = store.list(
                typ,
                limit=limit_of(params),
                starting_after=params.get("starting_after"),
                ending_before=params.get("ending_before"),
                where=where,
                predicate=predicate,
            )
        except KeyError as e:
            raise StripeError(
                400,
                "invalid_request_error",
                f"No such object: '{e.args[0]}'",
                code="resource_missing",
                param="starting_after" if params.get("starting_after") else "ending_before",
            ) from None
        return page(objs, more, f"/v1/{rest}", params)

    def list_children(typ: str, parent: str, parent_typ: str, url: str, params: dict) -> dict:
        retrieve(parent_typ, parent)
        objs, more = store.list(
            typ,
            limit=limit_of(params),
            starting_after=params.get("starting_after"),
            ending_before=params.get("ending_before"),
            where={"parent": parent},
            newest_first=False,
        )  # lines come in invoice order
        return page(objs, more, url, params)

    def meter_event_summaries(meter_id: str, params: dict) -> dict:
        retrieve("billing.meter", meter_id)
        for req in ("customer", "start_time", "end_time"):
            if req not in params:
                raise StripeError(400, "invalid_request_error", f"Missing required param: {req}.", param=req)
        window = params.get("value_grouping_window")
        if window not in (None, "day"):
            raise StripeError(
                400,
                "invalid_request_error",
                "The sandbox serves value_grouping_window=day (or none) only.",
                param="value_grouping_window",
            )
        start, end = int(params["start_time"]), int(params["end_time"])
        if start % 86400 or end % 86400:
            raise StripeError(
                400,
                "invalid_request_error",
                "start_time and end_time must align with day boundaries.",
                param="start_time",
            )
        rows = store.meter_summaries(meter_id, params["customer"], start, end)
        url = f"/v1/billing/meters/{meter_id}/event_summaries"
        cust = params["customer"]
        if window is None:
            # without a grouping window Stripe returns one summary over the whole range
            total = sum(v for _, v in rows)
            obj = {
                "id": f"mtrusg_{meter_id[4:]}_{cust[4:]}_{start}_{end}",
                "object": "billing.meter_event_summary",
                "aggregated_value": float(Decimal(total) / 1000),
                "end_time": end,
                "livemode": False,
                "meter": meter_id,
                "start_time": start,
            }
            return page([obj], False, url, params)
        objs = [
            {
                "id": f"mtrusg_{meter_id[4:]}_{cust[4:]}_{d}",
                "object": "billing.meter_event_summary",
                "aggregated_value": float(Decimal(v) / 1000),
                "end_time": d + 86400,
                "livemode": False,
                "meter": meter_id,
                "start_time": d,
            }
            for d, v in rows
        ]
        objs.sort(key=lambda o: -o["start_time"])  # newest first
        after, before = params.get("starting_after"), params.get("ending_before")
        ids = [o["id"] for o in objs]
        lim = limit_of(params)
        cursor = after or before
        if cursor and cursor not in ids:
            raise StripeError(
                400,
                "invalid_request_error",
                f"No such object: '{cursor}'",
                code="resource_missing",
                param="starting_after" if after else "ending_before",
            )
        if after:
            objs = objs[ids.index(after) + 1 :]
        elif before:
            objs = objs[: ids.index(before)]
            return page(objs[-lim:], len(objs) > lim, url, params)
        return page(objs[:lim], len(objs) > lim, url, params)

    def create_meter_event(params: dict) -> dict:
        name = params.get("event_name")
        payload = params.get("payload") or {}
        meter = next((m for m in store.list("billing.meter", limit=100)[0] if m["event_name"] == name), None)
        if meter is None:
            raise StripeError(
                400, "invalid_request_error", f"No active meter found for event_name '{name}'.", param="event_name"
            )
        cust = payload.get("stripe_customer_id")
        if not cust or store.get("customer", cust) is None:
            raise StripeError(
                400,
                "invalid_request_error",
                "No such customer for payload[stripe_customer_id].",
                param="payload[stripe_customer_id]",
            )
        try:
            value = Decimal(payload.get("value", ""))
        except InvalidOperation:
            raise StripeError(
                400, "invalid_request_error", "payload[value] must be a number.", param="payload[value]"
            ) from None
        at = int(params.get("timestamp") or now())
        ident = params.get("identifier") or make_id("mevt", 0, time.time_ns())
        store.record_meter_event(ident, meter["id"], cust, at, int(value * 1000), now())
        return {
            "object": "billing.meter_event",
            "created": now(),
            "event_name": name,
            "identifier": ident,
            "livemode": False,
            "payload": payload,
            "timestamp": at,
        }

    def update_metadata(typ: str, oid: str, params: dict) -> dict:
        obj = retrieve(typ, oid)
        meta = dict(obj.get("metadata") or {})
        for k, v in (params.get("metadata") or {}).items():
            if v == "":
                meta.pop(k, None)
            else:
                meta[k] = v
        if len(meta) > 50:
            raise StripeError(
                400, "invalid_request_error", "Invalid metadata: metadata can have at most 50 keys.", param="metadata"
            )
        obj["metadata"] = meta
        store.put(typ, obj)
        return obj

    def create_invoice_item(params: dict) -> dict:
        cust = params.get("customer")
        if not cust or store.get("customer", cust) is None:
            raise StripeError(
                400, "invalid_request_error", f"No such customer: '{cust}'", code="resource_missing", param="customer"
            )
        try:
            amount = int(params["amount"])
        except (KeyError, ValueError):
            raise StripeError(400, "invalid_request_error", "Missing required param: amount.", param="amount") from None
        oid = make_id("ii", 0, cust, time.time_ns())
        obj = {
            "id": oid,
            "object": "invoiceitem",
            "amount": amount,
            "currency": params.get("currency", "usd"),
            "customer": cust,
            "date": now(),
            "description": params.get("description"),
            "discountable": True,
            "discounts": [],
            "invoice": None,
            "livemode": False,
            "metadata": params.get("metadata") or {},
            "net_amount": amount,
            "parent": None,
            "period": {"start": now(), "end": now()},
            "pricing": None,
            "proration": False,
            "quantity": 1,
            "tax_rates": [],
            "test_clock": None,
        }
        store.put("invoiceitem", obj, customer=cust, created=now())
        return obj

    def create_credit_note(params: dict) -> dict:
        inv = retrieve("invoice", params.get("invoice", ""))
        if inv["status"] not in ("open", "paid"):
            raise StripeError(
                400,
                "invalid_request_error",
                "You can only create a credit note for an open or paid invoice.",
                param="invoice",
            )
        amount = int(params.get("amount", 0))
        if amount <= 0 or amount > inv["total"]:
            raise StripeError(
                400,
                "invalid_request_error",
                "The credit note amount must be positive and at most the invoice total.",
                param="amount",
            )
        oid = make_id("cn", 0, inv["id"], time.time_ns())
        obj = {
            "id": oid,
            "object": "credit_note",
            "amount": amount,
            "created": now(),
            "currency": inv["currency"],
            "customer": inv["customer"],
            "invoice": inv["id"],
            "livemode": False,
            "memo": params.get("memo"),
            "metadata": params.get("metadata") or {},
            "number": f"{inv['number']}-CN-X",
            "reason": params.get("reason"),
            "status": "issued",
            "total": amount,
            "type": "post_payment" if inv["status"] == "paid" else "pre_payment",
            "lines": {"object": "list", "data": [], "has_more": False, "url": f"/v1/credit_notes/{oid}/lines"},
        }
        store.put("credit_note", obj, customer=inv["customer"], parent=inv["id"])
        return obj

    def update_invoice_line(invoice_id: str, line_id: str, params: dict) -> dict:
        inv = retrieve("invoice", invoice_id)
        if inv["status"] != "draft":
            raise StripeError(
                400,
                "invalid_request_error",
                f"Invoice {invoice_id} is no longer a draft: only draft invoices' lines can be updated.",
                code="invoice_not_editable",
                param="invoice",
            )
        line = store.get("line_item", line_id)
        if line is None or line.get("invoice") != invoice_id:
            raise StripeError(
                404,
                "invalid_request_error",
                f"No such invoice line item: '{line_id}'",
                code="resource_missing",
                param="line_item_id",
            )
        if "description" in params:
            line["description"] = params["description"]
        for k, v in (params.get("metadata") or {}).items():
            line.setdefault("metadata", {})[k] = v
        store.put("line_item", line)
        embedded = inv.get("lines", {}).get("data", [])
        inv["lines"]["data"] = [line if x["id"] == line_id else x for x in embedded]
        store.put("invoice", inv)
        return line

    def pay_invoice(invoice_id: str) -> tuple[int, dict]:
        inv = retrieve("invoice", invoice_id)
        if inv["status"] != "open":
            raise StripeError(
                400,
                "invalid_request_error",
                f"Invoice is already {inv['status']}.",
                code="invoice_not_open",
                param="invoice",
            )
        intents = store.list("payment_intent", limit=100, where={"parent": invoice_id})[0]
        last_error = next((pi["last_payment_error"] for pi in intents if pi.get("last_payment_error")), None)
        inv["attempt_count"] = inv.get("attempt_count", 0) + 1
        inv["attempted"] = True
        if last_error and last_error.get("code") in HARD_DECLINES:
            store.put("invoice", inv)
            raise StripeError(
                402,
                "card_error",
                f"Your card was declined: {last_error['code'].replace('_', ' ')}.",
                code=last_error["code"],
            )
        inv.update(status="paid", amount_paid=inv["amount_due"], amount_remaining=0, paid=True)
        inv.setdefault("status_transitions", {})["paid_at"] = now()
        store.put("invoice", inv)
        return 200, inv

    def update_subscription_items(sub_id: str, params: dict) -> dict:
        sub = retrieve("subscription", sub_id)
        if sub["status"] == "canceled":
            raise StripeError(
                400,
                "invalid_request_error",
                "A canceled subscription can only update its cancellation_details and metadata.",
                param="items",
            )
        changes = params["items"] if isinstance(params["items"], list) else list(params["items"].values())
        by_id = {it["id"]: it for it in sub["items"]["data"]}
        for change in changes:
            item = by_id.get(change.get("id"))
            if item is None:
                raise StripeError(
                    400,
                    "invalid_request_error",
                    f"No such subscription item: '{change.get('id')}'",
                    code="resource_missing",
                    param="items[0][id]",
                )
            price = retrieve("price", change.get("price", ""))
            if not price.get("active", True):
                raise StripeError(
                    400, "invalid_request_error", "The price specified is inactive.", param="items[0][price]"
                )
            item["price"] = {k: v for k, v in price.items() if k != "_tiers"}
            stored = store.get("subscription_item", item["id"])
            if stored is not None:
                stored["price"] = item["price"]
                store.put("subscription_item", stored)
        for k, v in (params.get("metadata") or {}).items():
            sub.setdefault("metadata", {})[k] = v
        store.put("subscription", sub)
        return sub

    def create_quote(params: dict) -> dict:
        cust = params.get("customer")
        if not cust or store.get("customer", cust) is None:
            raise StripeError(
                400, "invalid_request_error", f"No such customer: '{cust}'", code="resource_missing", param="customer"
            )
        items = params.get("line_items") or []
        items = items if isinstance(items, list) else list(items.values())
        if not items:
            raise StripeError(400, "invalid_request_error", "Missing required param: line_items.", param="line_items")
        prices = [retrieve("price", it.get("price", "")) for it in items]
        oid = make_id("qt", 0, cust, time.time_ns())
        obj = {
            "id": oid,
            "object": "quote",
            "customer": cust,
            "status": "draft",
            "created": now(),
            "currency": prices[0]["currency"],
            "description": params.get("description"),
            "header": params.get("header"),
            "livemode": False,
            "metadata": params.get("metadata") or {},
            "line_items": {
                "object": "list",
                "data": [
                    {
                        "id": make_id("li", 0, oid, k),
                        "object": "item",
                        "price": {"id": p["id"]},
                        "quantity": int(it.get("quantity", 1)),
                    }
                    for k, (p, it) in enumerate(zip(prices, items, strict=True))
                ],
                "has_more": False,
                "url": f"/v1/quotes/{oid}/line_items",
            },
            "subscription_data": params.get("subscription_data") or {},
        }
        store.put("quote", obj, customer=cust)
        return obj

    from billing_ai.sandbox.sinks import sink_routes

    return Starlette(routes=[*sink_routes(store), Route("/{path:path}", handler, methods=["GET", "POST", "DELETE"])])


def open_store(state_dir: Path, world_dir: Path) -> Store:
    store = Store(Path(state_dir) / "stripe.sqlite")
    store.seed_from_world(world_dir)
    return store
