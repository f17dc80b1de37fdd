"""A local emulator of the Zuora REST v1 API over the synthetic world (mounted at ``/zuora``).

Served (paths after the mount prefix):

* ``POST /oauth/token`` (form ``client_id``, ``client_secret``,
  ``grant_type=client_credentials``) -> ``{"access_token", "token_type": "bearer",
  "expires_in", "scope", "jti"}``. Every other call needs ``Authorization: Bearer
  <token>``; an unknown or expired token is a 401. The read-only client may not write.
* Object Query, cursor paging (``pageSize`` <= 99, ``cursor`` -> ``nextPage``):
  ``GET /object-query/accounts`` (bill-to contact expanded).
* v1 lists, page paging (``pageSize`` <= 40, ``page``; ``nextPage`` is the full URL
  of the next page): ``GET /v1/catalog/products``, ``/v1/subscriptions/accounts/{key}``,
  ``/v1/transactions/invoices/accounts/{key}``, ``/v1/invoices/{id}/items``,
  ``/v1/transactions/payments/accounts/{key}``, ``/v1/creditmemos``,
  ``/v1/debitmemos``, ``/v1/usage/accounts/{key}``, ``/v1/orders/subscription/{number}``;
  ``GET /settings/units-of-measure``.
* Retrieve: ``GET /v1/accounts/{key}`` (``basicInfo`` + ``billToContact``),
  ``/v1/subscriptions/{key}``, ``/v1/invoices/{key}``.
* Writes: ``PUT /v1/accounts/{key}`` and ``PUT /v1/subscriptions/{key}`` (custom
  fields ``*__c``; an empty value clears one), ``POST /v1/orders`` (RemoveProduct +
  AddProduct order actions), ``POST /v1/creditmemos/invoice/{invoiceKey}``,
  ``POST /v1/debitmemos``.

Errors use Zuora's body ``{"success": false, "processId", "reasons": [{"code",
"message"}]}`` with 8-digit codes whose last two digits are Zuora's category
(11 authentication, 10 permission, 20 invalid value, 22 missing field, 40 not
found, 50 locking contention, 60 internal, 70 limit exceeded). Above the
configured rate: 429 with ``Retry-After``.

``Idempotency-Key`` on POST (Zuora: POST and PATCH accept it; PUT is idempotent by
nature): the first response (status and body, success or not) is kept; a repeat
with the same key and the same request replays it; a repeat while the first is
still being processed is ``409``; the same key with another method, path or body
is ``422``. Fault injection reuses :class:`billing_ai.sandbox.faults.FaultPlan`
(not applied to ``/oauth/token``), answered in Zuora's error format.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import polars as pl
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing_ai.sandbox.stripe_api import RateLimiter, StripeError
from billing_ai.sandbox.world import load_config, stored_fingerprint, ts
from billing_ai.sandbox.zuora_render import day, dumps, iso, loads, render_world, zid

if TYPE_CHECKING:
    from billing_ai.sandbox.faults import FaultPlan

# the sandbox's fixed OAuth clients (test values, not secrets)
ZUORA_CLIENT_ID = "zuora-sandbox-client"
ZUORA_CLIENT_SECRET = "zuora-sandbox-secret"
ZUORA_READONLY_CLIENT_ID = "zuora-sandbox-readonly"
ZUORA_READONLY_CLIENT_SECRET = "zuora-sandbox-readonly-secret"

V1_MAX_PAGE = 40
OBJECT_QUERY_MAX_PAGE = 99
CATEGORY = {401: 11, 403: 10, 400: 20, 404: 40, 409: 50, 422: 20, 429: 70, 500: 60, 502: 60, 503: 60}


@dataclass
class ZuoraSettings:
    # client_id -> (client_secret, may write)
    clients: dict[str, tuple[str, bool]] = field(
        default_factory=lambda: {
            ZUORA_CLIENT_ID: (ZUORA_CLIENT_SECRET, True),
            ZUORA_READONLY_CLIENT_ID: (ZUORA_READONLY_CLIENT_SECRET, False),
        }
    )
    rate_limit_per_second: float = 400.0
    token_ttl: float = 3600.0  # seconds a bearer token lives
    write_delay: float = 0.0  # seconds a write stays "in flight" (to show 409 on a concurrent repeat)
    clock: int | None = None  # "now" for created dates; defaults to the world's as_of
    counters: dict = field(default_factory=dict)
    faults: FaultPlan | None = None


class ZuoraError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        category: int | None = None,
        headers: dict | None = None,
        object_code: int = 500000,
    ):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}
        self.code = f"{object_code}{(category or CATEGORY.get(status, 60)):02d}"

    def body(self) -> dict:
        return {
            "success": False,
            "processId": secrets.token_hex(8).upper(),
            "reasons": [{"code": self.code, "message": self.message}],
        }

    def response(self) -> Response:
        return Response(
            dumps(self.body()),
            status_code=self.status,
            media_type="application/json",
            headers={"Zuora-Request-Id": secrets.token_hex(16), **self.headers},
        )


SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    type TEXT NOT NULL, id TEXT NOT NULL, seq INTEGER NOT NULL, account TEXT, parent TEXT, body TEXT NOT NULL,
    PRIMARY KEY (type, id));
CREATE INDEX IF NOT EXISTS objects_account ON objects (type, account, seq);
CREATE INDEX IF NOT EXISTS objects_parent ON objects (type, parent, seq);
CREATE TABLE IF NOT EXISTS idempotency (
    client TEXT NOT NULL, key TEXT NOT NULL, method TEXT NOT NULL, path TEXT NOT NULL, digest TEXT NOT NULL,
    state TEXT NOT NULL, status INTEGER, body TEXT, PRIMARY KEY (client, key));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class ZuoraStore:
    """The facade's durable state: ``<state_dir>/zuora.sqlite``, seeded once per world fingerprint."""

    def __init__(self, path: Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
        self.seq = self.db.execute("SELECT coalesce(max(seq), 0) FROM objects").fetchone()[0]

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def seed_from_world(self, world_dir: Path) -> bool:
        fingerprint = stored_fingerprint(world_dir)
        if self.meta("fingerprint") == fingerprint:
            return False
        cfg = load_config(world_dir)
        tables = {p.stem: pl.read_parquet(p) for p in (Path(world_dir) / "platform").glob("*.parquet")}
        as_of = ts(cfg.as_of_dt())
        with self.lock:
            self.db.execute("BEGIN")
            for t in ("objects", "idempotency", "meta"):
                self.db.execute(f"DELETE FROM {t}")
            rows = [
                (typ, obj["id"], k, acct, parent, dumps(obj))
                for k, (typ, obj, acct, parent) in enumerate(render_world(tables, as_of), start=1)
            ]
            self.db.executemany("INSERT INTO objects VALUES (?,?,?,?,?,?)", rows)
            self.seq = len(rows)
            self.db.execute("INSERT INTO meta VALUES ('fingerprint', ?), ('as_of', ?)", (fingerprint, str(as_of)))
            self.db.execute("COMMIT")
        return True

    def get(self, typ: str, oid: str) -> dict | None:
        row = self.db.execute("SELECT body FROM objects WHERE type=? AND id=?", (typ, oid)).fetchone()
        return loads(row[0]) if row else None

    def find(self, typ: str, field_name: str, value: str) -> dict | None:
        """The object of ``typ`` whose top-level ``field_name`` is ``value`` (e.g. accountNumber)."""
        row = self.db.execute(
            f"SELECT body FROM objects WHERE type=? AND json_extract(body, '$.{field_name}')=?", (typ, value)
        ).fetchone()
        return loads(row[0]) if row else None

    def put(self, typ: str, obj: dict, account: str | None = None, parent: str | None = None) -> None:
        with self.lock:
            if self.db.execute("SELECT 1 FROM objects WHERE type=? AND id=?", (typ, obj["id"])).fetchone():
                self.db.execute("UPDATE objects SET body=? WHERE type=? AND id=?", (dumps(obj), typ, obj["id"]))
            else:
                self.seq += 1
                self.db.execute(
                    "INSERT INTO objects VALUES (?,?,?,?,?,?)", (typ, obj["id"], self.seq, account, parent, dumps(obj))
                )

    def page(
        self,
        typ: str,
        offset: int,
        limit: int,
        account: str | None = None,
        parent: str | None = None,
        where: dict[str, str] | None = None,
    ) -> tuple[list[dict], bool]:
        sql, args = "SELECT body FROM objects WHERE type=?", [typ]
        if account is not None:
            sql += " AND account=?"
            args.append(account)
        if parent is not None:
            sql += " AND parent=?"
            args.append(parent)
        for k, v in (where or {}).items():
            sql += f" AND json_extract(body, '$.{k}')=?"
            args.append(v)
        sql += " ORDER BY seq LIMIT ? OFFSET ?"
        rows = self.db.execute(sql, [*args, limit + 1, offset]).fetchall()
        return [loads(b) for (b,) in rows[:limit]], len(rows) > limit

    def count(self, typ: str) -> int:
        return self.db.execute("SELECT count(*) FROM objects WHERE type=?", (typ,)).fetchone()[0]

    # ---- idempotency: reserve, then finish -------------------------------------------------------
    def idem_reserve(self, client: str, key: str, method: str, path: str, digest: str) -> tuple | None:
        """None if reserved for this request; else the earlier record (method, path, digest, state, status, body)."""
        with self.lock:
            row = self.db.execute(
                "SELECT method, path, digest, state, status, body FROM idempotency WHERE client=? AND key=?",
                (client, key),
            ).fetchone()
            if row:
                return row
            self.db.execute(
                "INSERT INTO idempotency VALUES (?,?,?,?,?, 'in_flight', NULL, NULL)",
                (client, key, method, path, digest),
            )
            return None

    def idem_finish(self, client: str, key: str, status: int, body: str) -> None:
        with self.lock:
            self.db.execute(
                "UPDATE idempotency SET state='done', status=?, body=? WHERE client=? AND key=?",
                (status, body, client, key),
            )

    def idem_release(self, client: str, key: str) -> None:
        with self.lock:
            self.db.execute("DELETE FROM idempotency WHERE client=? AND key=? AND state='in_flight'", (client, key))

    def close(self) -> None:
        self.db.close()


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def _offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        return int(json.loads(base64.urlsafe_b64decode(cursor.encode()))["offset"])
    except (ValueError, KeyError, TypeError):
        raise ZuoraError(400, f"Invalid cursor: {cursor!r}") from None


def _page_size(params: dict, default: int, maximum: int) -> int:
    try:
        n = int(params.get("pageSize", default))
    except ValueError:
        raise ZuoraError(400, "pageSize must be an integer") from None
    if not 1 <= n <= maximum:
        raise ZuoraError(400, f"pageSize must be between 1 and {maximum}")
    return n


def _money(value: Any, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, str)):
        raise ZuoraError(400, f"{what} must be a decimal number", category=20)
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise ZuoraError(400, f"{what} must be a decimal number", category=20) from None
    if not d.is_finite() or d <= 0:
        raise ZuoraError(400, f"{what} must be greater than 0", category=20)
    return d


class ZuoraFacade:
    """The Zuora facade: ``app`` (ASGI), ``settings``, ``store``, ``close()``."""

    def __init__(self, world_dir: Path, state_dir: Path, settings: ZuoraSettings | None = None):
        self.store = ZuoraStore(Path(state_dir) / "zuora.sqlite")
        self.store.seed_from_world(world_dir)
        self.settings = settings or ZuoraSettings()
        self.tokens: dict[str, tuple[str, bool, float]] = {}  # token -> (client_id, may write, expires at)
        self.limiter = RateLimiter(self.settings.rate_limit_per_second)
        self.app = Starlette(
            routes=[Route("/{path:path}", self.handle, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])]
        )

    def close(self) -> None:
        self.store.close()

    def expire_tokens(self) -> None:
        """Every issued token stops working now (a client must fetch a new one)."""
        self.tokens.clear()

    def now(self) -> int:
        return self.settings.clock or int(self.store.meta("as_of") or 0)

    # ---- the request loop ----------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        s = self.settings
        s.counters["requests"] = s.counters.get("requests", 0) + 1
        path = request.scope["path"]
        root = request.scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        method = request.method
        fault = None
        try:
            if path != "/oauth/token" and (plan := s.faults):
                fault = plan.draw(method, path)
                if fault:
                    try:
                        await fault.before()
                    except StripeError as e:  # the plan speaks Stripe: answer in Zuora's format
                        msg = "Too many requests" if e.status == 429 else "An internal error occurred"
                        raise ZuoraError(e.status, msg, headers=e.headers) from None
            self.limiter.rate = s.rate_limit_per_second
            wait = self.limiter.take()
            if wait:
                s.counters["rate_limited"] = s.counters.get("rate_limited", 0) + 1
                raise ZuoraError(
                    429,
                    "Too many requests: the request rate limit was exceeded",
                    headers={"Retry-After": str(max(1, round(wait + 0.49)))},
                )
            if path == "/oauth/token" and method == "POST":
                return self.token(dict(parse_qsl((await request.body()).decode())))
            client, may_write = self.auth(request)
            write = method in ("POST", "PUT", "PATCH", "DELETE")
            if write and not may_write:
                raise ZuoraError(403, "You do not have permission to perform this operation", category=10)
            params = dict(request.query_params)
            raw = await request.body() if write else b""
            try:
                body = loads(raw) if raw else {}
            except ValueError:
                raise ZuoraError(400, "Malformed JSON request body", category=90) from None
            idem = request.headers.get("idempotency-key") if method in ("POST", "PATCH") else None
            if idem:
                digest = hashlib.sha256(raw).hexdigest()
                prior = self.store.idem_reserve(client, idem, method, path, digest)
                if prior:
                    pmethod, ppath, pdigest, state, status, pbody = prior
                    if (pmethod, ppath, pdigest) != (method, path, digest):
                        raise ZuoraError(422, "The idempotency key was used with a different request", category=20)
                    if state == "in_flight":
                        raise ZuoraError(
                            409, "A request with this idempotency key is still being processed", category=50
                        )
                    return Response(
                        pbody,
                        status_code=status,
                        media_type="application/json",
                        headers={"Idempotency-Key": idem, "Zuora-Request-Id": secrets.token_hex(16)},
                    )
                try:
                    if s.write_delay:
                        await asyncio.sleep(s.write_delay)
                    try:
                        status, payload = self.route(method, path, params, body, request)
                        text = dumps(payload)
                    except ZuoraError as e:  # Zuora keeps the outcome of a keyed request, failed or not
                        status, text = e.status, dumps(e.body())
                    self.store.idem_finish(client, idem, status, text)
                except BaseException:
                    self.store.idem_release(client, idem)
                    raise
            else:
                status, payload = self.route(method, path, params, body, request)
                text = dumps(payload)
            response = Response(
                text,
                status_code=status,
                media_type="application/json",
                headers={"Zuora-Request-Id": secrets.token_hex(16), **({"Idempotency-Key": idem} if idem else {})},
            )
            if fault:
                after = fault.after(response)
                if (
                    after is not response and after.status_code >= 500 and hasattr(after, "body") and after.body
                ):  # the plan's 500 body is Stripe's: answer in Zuora's format
                    return ZuoraError(500, "An internal error occurred").response()
                return after
            return response
        except ZuoraError as e:
            return e.response()

    def token(self, form: dict) -> Response:
        if form.get("grant_type") != "client_credentials":
            return Response(
                json.dumps({"error": "unsupported_grant_type"}), status_code=400, media_type="application/json"
            )
        client = self.settings.clients.get(form.get("client_id", ""))
        if client is None or not secrets.compare_digest(client[0], form.get("client_secret", "")):
            return Response(
                json.dumps({"error": "invalid_client", "error_description": "Bad client credentials"}),
                status_code=401,
                media_type="application/json",
            )
        tok = secrets.token_hex(16)
        self.tokens[tok] = (form["client_id"], client[1], time.monotonic() + self.settings.token_ttl)
        return Response(
            json.dumps(
                {
                    "access_token": tok,
                    "token_type": "bearer",
                    "expires_in": int(self.settings.token_ttl),
                    "scope": "entity.sandbox platform.write" if client[1] else "entity.sandbox",
                    "jti": secrets.token_hex(8),
                }
            ),
            media_type="application/json",
        )

    def auth(self, request: Request) -> tuple[str, bool]:
        header = request.headers.get("authorization", "")
        tok = header[7:].strip() if header.lower().startswith("bearer ") else ""
        entry = self.tokens.get(tok)
        if entry is None or entry[2] < time.monotonic():
            self.tokens.pop(tok, None)
            raise ZuoraError(401, "Authentication error", category=11)
        return entry[0], entry[1]

    # ---- routing -----------------------------------------------------------------------------------
    def route(self, method: str, path: str, params: dict, body: dict, request: Request) -> tuple[int, dict]:
        if method == "GET":
            if path == "/object-query/accounts":
                return 200, self.object_query("account", params)
            if path == "/settings/units-of-measure":
                return 200, {"unitsOfMeasure": self.store.page("uom", 0, 10_000)[0]}
            if path == "/v1/catalog/products":
                return 200, self.v1_page("product", "products", params, request)
            if path == "/v1/creditmemos":
                where = {k: params[k] for k in ("referredInvoiceId", "accountNumber", "status") if k in params}
                return 200, self.v1_page("credit_memo", "creditmemos", params, request, where=where)
            if path == "/v1/debitmemos":
                where = {k: params[k] for k in ("accountNumber", "status") if k in params}
                return 200, self.v1_page("debit_memo", "debitmemos", params, request, where=where)
            per_account = {
                "subscriptions/accounts": ("subscription", "subscriptions"),
                "transactions/invoices/accounts": ("invoice", "invoices"),
                "transactions/payments/accounts": ("payment", "payments"),
                "usage/accounts": ("usage", "usage"),
            }
            m = re.fullmatch(r"/v1/(.+)/([^/]+)", path)
            if m and m.group(1) in per_account:
                acct = self.account(m.group(2))
                typ, key = per_account[m.group(1)]
                return 200, self.v1_page(typ, key, params, request, account=acct["accountNumber"])
            m = re.fullmatch(r"/v1/invoices/([^/]+)/items", path)
            if m:
                inv = self.invoice(m.group(1))
                return 200, self.v1_page("invoice_item", "invoiceItems", params, request, parent=inv["id"])
            m = re.fullmatch(r"/v1/orders/subscription/([^/]+)", path)
            if m:
                return 200, self.v1_page("order", "orders", params, request, parent=self.subscription(m.group(1))["id"])
            m = re.fullmatch(r"/v1/accounts/([^/]+)", path)
            if m:
                return 200, self.account_detail(self.account(m.group(1)))
            m = re.fullmatch(r"/v1/subscriptions/([^/]+)", path)
            if m:
                return 200, {**self.subscription(m.group(1)), "success": True}
            m = re.fullmatch(r"/v1/invoices/([^/]+)", path)
            if m:
                return 200, {**self.invoice(m.group(1)), "success": True}
        if method == "PUT":
            m = re.fullmatch(r"/v1/accounts/([^/]+)", path)
            if m:
                acct = self.account(m.group(1))
                self.set_custom_fields(acct, body)
                self.store.put("account", acct)
                return 200, {"success": True}
            m = re.fullmatch(r"/v1/subscriptions/([^/]+)", path)
            if m:
                sub = self.subscription(m.group(1))
                self.set_custom_fields(sub, body)
                self.store.put("subscription", sub)
                return 200, {"success": True, "subscriptionId": sub["id"]}
        if method == "POST":
            if path == "/v1/orders":
                return 200, self.create_order(body)
            m = re.fullmatch(r"/v1/creditmemos/invoice/([^/]+)", path)
            if m:
                return 200, self.credit_memo_from_invoice(self.invoice(m.group(1)), body)
            if path == "/v1/debitmemos":
                return 200, self.create_debit_memo(body)
        raise ZuoraError(404, f"No such endpoint: {method} {path}", category=40)

    # ---- reads -------------------------------------------------------------------------------------
    def object_query(self, typ: str, params: dict) -> dict:
        size = _page_size(params, 10, OBJECT_QUERY_MAX_PAGE)
        offset = _offset(params.get("cursor"))
        data, more = self.store.page(typ, offset, size)
        out: dict = {"data": data}
        if more:
            out["nextPage"] = _cursor(offset + size)
        return out

    def v1_page(self, typ: str, key: str, params: dict, request: Request, **filters) -> dict:
        size = _page_size(params, 20, V1_MAX_PAGE)
        try:
            page = int(params.get("page", 1))
        except ValueError:
            raise ZuoraError(400, "page must be an integer") from None
        if page < 1:
            raise ZuoraError(400, "page must be at least 1")
        data, more = self.store.page(typ, (page - 1) * size, size, **filters)
        out: dict = {key: data}
        if more:
            out["nextPage"] = str(request.url.include_query_params(page=page + 1, pageSize=size))
        out["success"] = True
        return out

    def account(self, key: str) -> dict:
        acct = self.store.find("account", "accountNumber", key) or self.store.get("account", key)
        if acct is None:
            raise ZuoraError(404, f"Cannot find entity by key: '{key}'.", category=40)
        return acct

    def account_detail(self, acct: dict) -> dict:
        basic = {k: v for k, v in acct.items() if k != "billTo"}
        return {"basicInfo": basic, "billToContact": acct.get("billTo"), "success": True}

    def subscription(self, key: str) -> dict:
        sub = self.store.find("subscription", "subscriptionNumber", key) or self.store.get("subscription", key)
        if sub is None:
            raise ZuoraError(404, f"Cannot find entity by key: '{key}'.", category=40)
        return sub

    def invoice(self, key: str) -> dict:
        inv = (
            self.store.get("invoice", key)
            or self.store.find("invoice", "invoiceNumber", key)
            or self.store.find("invoice", "invoice_id__c", key)
        )
        if inv is None:
            raise ZuoraError(404, f"Cannot find entity by key: '{key}'.", category=40)
        return inv

    # ---- writes ------------------------------------------------------------------------------------
    @staticmethod
    def set_custom_fields(obj: dict, body: dict) -> None:
        for k, v in body.items():
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*__c", k):
                raise ZuoraError(400, f"Unknown field or read-only field: {k}", category=21)
            if v is not None and not isinstance(v, str):
                raise ZuoraError(400, f"Invalid value for custom field {k}: text expected", category=20)
            obj[k] = v if v != "" else None

    def _next_number(self, typ: str, prefix: str) -> str:
        return f"{prefix}-{self.store.count(typ) + 1:08d}"

    def credit_memo_from_invoice(self, inv: dict, body: dict) -> dict:
        items = body.get("items")
        if not isinstance(items, list) or not items:
            raise ZuoraError(400, "items is required", category=22)
        lines = {it["id"]: it for it in self.store.page("invoice_item", 0, 10_000, parent=inv["id"])[0]}
        total = Decimal(0)
        for it in items:
            if it.get("invoiceItemId") not in lines:
                raise ZuoraError(400, f"Invalid invoice item id: {it.get('invoiceItemId')}", category=20)
            total += _money(it.get("amount"), "items.amount")
        credited = sum(
            (
                cm["amount"]
                for cm in self.store.page("credit_memo", 0, 10_000, where={"referredInvoiceId": inv["id"]})[0]
                if cm["status"] != "Canceled"
            ),
            Decimal(0),
        )
        if credited + total > inv["amount"]:
            raise ZuoraError(400, "The total amount of credit memos cannot exceed the invoice amount", category=30)
        cid = zid("cm", inv["id"], self.store.count("credit_memo"), time.time_ns())
        memo = {
            "id": cid,
            "number": self._next_number("credit_memo", "CM"),
            "accountId": inv["accountId"],
            "accountNumber": inv["accountNumber"],
            "currency": inv["currency"],
            "amount": total,
            "unappliedAmount": total,
            "appliedAmount": Decimal(0),
            "referredInvoiceId": inv["id"],
            "reasonCode": body.get("reasonCode") or "Correcting invoice error",
            "status": "Posted",
            "memoDate": day(self.now()),
            "createdDate": iso(self.now()),
            "postedOn": iso(self.now()),
            "comment": body.get("comment"),
        }
        self.set_custom_fields(memo, {k: v for k, v in body.items() if k.endswith("__c")})
        self.store.put("credit_memo", memo, account=inv["accountNumber"], parent=inv["id"])
        return {**memo, "success": True}

    def create_debit_memo(self, body: dict) -> dict:
        acct = self.account(str(body.get("accountNumber") or body.get("accountId") or ""))
        charges = body.get("charges")
        if not isinstance(charges, list) or not charges:
            raise ZuoraError(400, "charges is required", category=22)
        total = sum((_money(c.get("amount"), "charges.amount") for c in charges), Decimal(0))
        mid = zid("dm", acct["id"], self.store.count("debit_memo"), time.time_ns())
        memo = {
            "id": mid,
            "number": self._next_number("debit_memo", "DM"),
            "accountId": acct["id"],
            "accountNumber": acct["accountNumber"],
            "currency": acct["currency"],
            "amount": total,
            "balance": total,
            "status": "Posted",
            "reasonCode": body.get("reasonCode") or "Charge Dispute",
            "memoDate": day(self.now()),
            "createdDate": iso(self.now()),
            "comment": body.get("comment"),
            "items": [
                {
                    "id": zid("dmi", mid, k),
                    "amount": _money(c.get("amount"), "charges.amount"),
                    "comment": c.get("comment"),
                }
                for k, c in enumerate(charges)
            ],
        }
        self.set_custom_fields(memo, {k: v for k, v in body.items() if k.endswith("__c")})
        self.store.put("debit_memo", memo, account=acct["accountNumber"])
        return {**memo, "success": True}

    def create_order(self, body: dict) -> dict:
        acct = self.account(str(body.get("existingAccountNumber") or ""))
        subs = body.get("subscriptions")
        if not isinstance(subs, list) or not subs:
            raise ZuoraError(400, "subscriptions is required", category=22)
        changed = []
        for entry in subs:
            sub = self.subscription(str(entry.get("subscriptionNumber") or ""))
            if sub["accountNumber"] != acct["accountNumber"]:
                raise ZuoraError(400, "The subscription does not belong to the account", category=30)
            if sub["status"] != "Active":
                raise ZuoraError(400, f"Subscription {sub['subscriptionNumber']} is {sub['status']}", category=30)
            removed_qty = None
            for action in entry.get("orderActions") or []:
                if action.get("type") == "RemoveProduct":
                    rp_id = (action.get("removeProduct") or {}).get("ratePlanId")
                    rp = next(
                        (r for r in sub["ratePlans"] if r["id"] == rp_id and r["lastChangeType"] != "Remove"), None
                    )
                    if rp is None:
                        raise ZuoraError(400, f"Invalid rate plan id: {rp_id}", category=20)
                    rp["lastChangeType"] = "Remove"
                    for ch in rp["ratePlanCharges"]:
                        ch["effectiveEndDate"], ch["effective_end_at__c"] = day(self.now()), iso(self.now())
                        removed_qty = ch.get("quantity")
                elif action.get("type") == "AddProduct":
                    prp_id = (action.get("addProduct") or {}).get("productRatePlanId")
                    rp = self.add_rate_plan(sub, str(prp_id), removed_qty)
                else:
                    raise ZuoraError(400, f"Unsupported order action type: {action.get('type')}", category=45)
            self.store.put("subscription", sub)
            changed.append(sub)
        number = self._next_number("order", "O")
        order = {
            "id": zid("order", number, time.time_ns()),
            "orderNumber": number,
            "existingAccountNumber": acct["accountNumber"],
            "orderDate": body.get("orderDate") or day(self.now()),
            "status": "Completed",
            "createdDate": iso(self.now()),
            "subscriptions": [
                {"subscriptionNumber": s["subscriptionNumber"], "orderActions": e.get("orderActions")}
                for s, e in zip(changed, subs, strict=True)
            ],
        }
        self.set_custom_fields(order, {k: v for k, v in body.items() if k.endswith("__c")})
        for s in changed:
            self.store.put(
                "order",
                {**order, "id": order["id"] if s is changed[0] else zid("order", order["id"], s["id"])},
                account=acct["accountNumber"],
                parent=s["id"],
            )
        return {
            "success": True,
            "orderNumber": number,
            "accountNumber": acct["accountNumber"],
            "status": "Completed",
            "subscriptionNumbers": [s["subscriptionNumber"] for s in changed],
        }

    def add_rate_plan(self, sub: dict, prp_id: str, quantity) -> dict:
        for prod in self.store.page("product", 0, 10_000)[0]:
            for prp in prod["productRatePlans"]:
                if prp["id"] != prp_id:
                    continue
                ch = prp["productRatePlanCharges"][0]
                if ch["pricing"][0]["currency"] != sub["currency"]:
                    raise ZuoraError(400, "The rate plan's currency is not the subscription's", category=30)
                n = sum(len(r["ratePlanCharges"]) for r in sub["ratePlans"]) + 1
                number = f"C-{zid('charge', sub['id'], n)[:8].upper()}"
                rp = {
                    "id": zid("rp", sub["id"], n, prp_id),
                    "productId": prod["id"],
                    "productName": prod["name"],
                    "productSku": prod["sku"],
                    "productRatePlanId": prp_id,
                    "ratePlanName": prp["name"],
                    "lastChangeType": "Add",
                    "ratePlanCharges": [
                        {
                            "id": zid("rpc", sub["id"], n, prp_id),
                            "number": number,
                            "originalChargeId": None,
                            "productRatePlanChargeId": ch["id"],
                            "name": ch["name"],
                            "type": ch["type"],
                            "model": ch["model"],
                            "uom": ch["uom"],
                            "currency": sub["currency"],
                            "quantity": quantity if ch["type"] == "Recurring" else None,
                            "price": ch["pricing"][0]["price"],
                            "tiers": ch["pricing"][0]["tiers"],
                            "billingPeriod": "Month",
                            "effectiveStartDate": day(self.now()),
                            "effectiveEndDate": None,
                            "effective_start_at__c": iso(self.now()),
                            "effective_end_at__c": None,
                            "created_at__c": iso(self.now()),
                        }
                    ],
                }
                sub["ratePlans"].append(rp)
                return rp
        raise ZuoraError(400, f"Invalid product rate plan id: {prp_id}", category=20)


def create_zuora_facade(world_dir: Path, state_dir: Path) -> ZuoraFacade:
    return ZuoraFacade(world_dir, state_dir)
