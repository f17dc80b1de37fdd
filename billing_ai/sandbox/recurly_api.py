"""A local emulator of the Recurly API v3 (``v2021-02-25``) over the synthetic world.

Mounted by the sandbox server under ``/recurly`` (a client's base address is
``f"{server.url}/recurly"``). Implemented, as Recurly documents them:

* HTTP basic auth with the private API key as the user name (a read-only key
  is refused writes with 403 ``unauthorized``); the versioned ``Accept:
  application/vnd.recurly.v2021-02-25`` header (another version is refused with
  ``unknown_api_version``), echoed in ``Recurly-Version``;
* lists ``{"object": "list", "has_more", "next", "data"}`` with ``limit``
  (1-200, default 20), ``order`` (``desc`` default), ``sort`` (``created_at``,
  ``updated_at``) and an opaque ``cursor`` carried in ``next``;
* ids in paths may be ``code-<code>`` (accounts, add-ons) or ``number-<n>``
  (invoices);
* the error body ``{"error": {"type", "message", "params"}}``; 429
  ``rate_limited`` with ``Retry-After`` and ``X-RateLimit-Limit`` /
  ``-Remaining`` / ``-Reset`` on every answer;
* ``Idempotency-Key`` on POST/PUT: the same key with the same request replays
  the first answer (``Idempotency-Replayed: true``); with another request it is
  a 400 ``bad_request``;
* fault injection through :class:`billing_ai.sandbox.faults.FaultPlan`, its
  429/5xx answered in Recurly's error format.

Writes (custom fields, one-time line items, refunds to credit invoices, usage)
persist in ``<state_dir>/recurly.sqlite``, seeded once per world fingerprint.
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing_ai.money import MINOR_UNITS
from billing_ai.sandbox import recurly_render as R
from billing_ai.sandbox.stripe_api import RateLimiter, StripeError
from billing_ai.sandbox.world import load_config, stored_fingerprint, ts

if TYPE_CHECKING:
    from billing_ai.sandbox.faults import FaultPlan

DEFAULT_API_KEY = "recurly_sandbox_private_key"
READONLY_API_KEY = "recurly_sandbox_readonly_key"
ACCEPT = f"application/vnd.recurly.{R.API_VERSION}"
MAX_LIMIT = 200

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    type TEXT NOT NULL, id TEXT NOT NULL, created INTEGER NOT NULL, seq INTEGER NOT NULL,
    account TEXT, parent TEXT, body TEXT NOT NULL, PRIMARY KEY (type, id));
CREATE INDEX IF NOT EXISTS objects_order ON objects (type, created, seq);
CREATE TABLE IF NOT EXISTS idempotency (
    api_key TEXT NOT NULL, key TEXT NOT NULL, request TEXT NOT NULL, status INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (api_key, key));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class RecurlyError(Exception):
    def __init__(self, status: int, type_: str, message: str, params: list | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.type, self.message, self.params, self.headers = status, type_, message, params, headers or {}

    def response(self) -> Response:
        body = {"error": {"type": self.type, "message": self.message, "params": self.params or []}}
        return Response(
            json.dumps(body),
            status_code=self.status,
            media_type="application/json",
            headers={**self.headers, "Content-Type": f"{ACCEPT}; charset=utf-8"},
        )


class RecurlyStore:
    """The facade's state: rendered objects (JSON text, exact decimals), idempotency records."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
        self._seq = self.db.execute("SELECT coalesce(max(seq), 0) FROM objects").fetchone()[0]

    def seed_from_world(self, world_dir: Path) -> bool:
        cfg = load_config(world_dir)
        fingerprint = stored_fingerprint(world_dir)
        row = self.db.execute("SELECT value FROM meta WHERE key='fingerprint'").fetchone()
        if row and row[0] == fingerprint:
            return False
        tables = {p.stem: pl.read_parquet(p) for p in (Path(world_dir) / "platform").glob("*.parquet")}
        as_of = ts(cfg.as_of_dt())
        with self._lock:
            self.db.execute("BEGIN")
            for t in ("objects", "idempotency", "meta"):
                self.db.execute(f"DELETE FROM {t}")
            rows = [
                (typ, obj["id"], created, k, acct, parent, R.dumps(obj))
                for k, (typ, obj, acct, parent, created) in enumerate(R.render_world(tables, as_of))
            ]
            self.db.executemany("INSERT INTO objects VALUES (?,?,?,?,?,?,?)", rows)
            self._seq = len(rows)
            self.db.execute("INSERT INTO meta VALUES ('fingerprint', ?), ('as_of', ?)", (fingerprint, str(as_of)))
            self.db.execute("COMMIT")
        return True

    def as_of(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key='as_of'").fetchone()
        return int(row[0]) if row else 0

    def get(self, typ: str, oid: str) -> dict | None:
        row = self.db.execute("SELECT body FROM objects WHERE type=? AND id=?", (typ, oid)).fetchone()
        return R.loads(row[0]) if row else None

    def find(self, typ: str, where: str, args: tuple) -> dict | None:
        row = self.db.execute(f"SELECT body FROM objects WHERE type=? AND {where}", (typ, *args)).fetchone()
        return R.loads(row[0]) if row else None

    def put(
        self, typ: str, obj: dict, account: str | None = None, parent: str | None = None, created: int | None = None
    ) -> None:
        with self._lock:
            if self.db.execute("SELECT 1 FROM objects WHERE type=? AND id=?", (typ, obj["id"])).fetchone():
                self.db.execute("UPDATE objects SET body=? WHERE type=? AND id=?", (R.dumps(obj), typ, obj["id"]))
            else:
                self._seq += 1
                self.db.execute(
                    "INSERT INTO objects VALUES (?,?,?,?,?,?,?)",
                    (typ, obj["id"], created or 0, self._seq, account, parent, R.dumps(obj)),
                )

    def page(
        self,
        typ: str,
        *,
        limit: int,
        desc: bool,
        after: tuple[int, int] | None,
        where: dict[str, str] | None = None,
        predicate=None,
    ) -> tuple[list[dict], tuple[int, int] | None]:
        """Objects in (created, seq) order after the cursor; the next cursor if there are more."""
        sql, args = "SELECT created, seq, body FROM objects WHERE type=?", [typ]
        for col, val in (where or {}).items():
            sql += f" AND {col}=?"
            args.append(val)
        op = "<" if desc else ">"
        if after:
            sql += f" AND (created {op} ? OR (created = ? AND seq {op} ?))"
            args += [after[0], after[0], after[1]]
        sql += " ORDER BY created {0}, seq {0}".format("DESC" if desc else "ASC")
        out, last = [], None
        for created, seq, body in self.db.execute(sql, args):
            obj = R.loads(body)
            if predicate and not predicate(obj):
                continue
            if len(out) == limit:
                return out, last
            out.append(obj)
            last = (created, seq)
        return out, None

    def idem_get(self, api_key: str, key: str) -> tuple | None:
        return self.db.execute(
            "SELECT request, status, body FROM idempotency WHERE api_key=? AND key=?", (api_key, key)
        ).fetchone()

    def idem_put(self, api_key: str, key: str, request: str, status: int, body: str) -> None:
        with self._lock:
            self.db.execute(
                "INSERT OR IGNORE INTO idempotency VALUES (?,?,?,?,?)", (api_key, key, request, status, body)
            )

    def close(self) -> None:
        self.db.close()


@dataclass
class RecurlySettings:
    api_keys: tuple[str, ...] = (DEFAULT_API_KEY,)
    readonly_keys: tuple[str, ...] = (READONLY_API_KEY,)
    rate_limit_per_second: float = 400.0
    faults: FaultPlan | None = None
    counters: dict = field(default_factory=dict)


def _cursor(pos: tuple[int, int]) -> str:
    return base64.urlsafe_b64encode(f"{pos[0]}:{pos[1]}".encode()).decode().rstrip("=")


def _uncursor(text: str) -> tuple[int, int]:
    try:
        a, b = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode().split(":")
        return int(a), int(b)
    except (ValueError, UnicodeDecodeError):
        raise RecurlyError(400, "bad_request", f"Invalid cursor: {text!r}", [{"param": "cursor"}]) from None


def _new_id(*parts: object) -> str:
    return R.rid("new", time.time_ns(), threading.get_ident(), *parts)


def _decimal(value, param: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, str)):
        raise RecurlyError(
            422, "validation", f"{param} is not a number", [{"param": param, "message": "is not a number"}]
        )
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise RecurlyError(
            422, "validation", f"{param} is not a number", [{"param": param, "message": "is not a number"}]
        ) from None
    if not d.is_finite():
        raise RecurlyError(
            422, "validation", f"{param} is not a number", [{"param": param, "message": "is not a number"}]
        )
    return d


def create_app(store: RecurlyStore, settings: RecurlySettings) -> Starlette:
    limiter = RateLimiter(settings.rate_limit_per_second)

    def now() -> int:
        return store.as_of()

    def auth(request: Request, write: bool) -> str:
        header = request.headers.get("authorization", "")
        key = ""
        if header.lower().startswith("basic "):
            try:
                key = base64.b64decode(header[6:].strip()).decode().split(":", 1)[0]
            except (ValueError, UnicodeDecodeError):
                key = ""
        if key in settings.api_keys:
            return key
        if key in settings.readonly_keys:
            if write:
                raise RecurlyError(403, "unauthorized", "The API key does not have permission to write.")
            return key
        raise RecurlyError(401, "unauthorized", "The provided API key is not valid.")

    def check_accept(request: Request) -> None:
        accept = request.headers.get("accept", "")
        m = re.search(r"application/vnd\.recurly\.(v[0-9-]+)", accept)
        if not m:
            raise RecurlyError(
                406, "invalid_api_version", f"Please send the versioned Accept header, e.g. 'Accept: {ACCEPT}'."
            )
        if m.group(1) != R.API_VERSION:
            raise RecurlyError(
                400, "unknown_api_version", f"Unknown API version {m.group(1)!r}; this site serves {R.API_VERSION}."
            )

    def rate_headers(remaining: float) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(int(settings.rate_limit_per_second * 300)),
            "X-RateLimit-Remaining": str(max(0, int(remaining))),
            "X-RateLimit-Reset": str(int(time.time()) + 300),
        }

    def finish(resp: Response, headers: dict[str, str]) -> Response:
        for k, v in headers.items():
            resp.headers[k] = v
        resp.headers["Recurly-Version"] = f"recurly.{R.API_VERSION}"
        return resp

    async def handler(request: Request) -> Response:
        settings.counters["requests"] = settings.counters.get("requests", 0) + 1
        root = request.scope.get("root_path", "")
        path = request.url.path
        if root and path.startswith(root):
            path = path[len(root) :]
        fault = plan.draw(request.method, path) if (plan := settings.faults) else None
        limiter.rate = settings.rate_limit_per_second
        extra = rate_headers(limiter.tokens)
        try:
            if fault:
                try:
                    await fault.before()
                except StripeError as e:  # the injected 429 / 5xx, in Recurly's words
                    raise RecurlyError(
                        e.status,
                        "rate_limited"
                        if e.status == 429
                        else ("service_not_available" if e.status == 503 else "internal_server_error"),
                        "You made too many API requests." if e.status == 429 else "An unexpected error has occurred.",
                        headers=e.headers,
                    ) from None
            wait = limiter.take()
            if wait:
                settings.counters["rate_limited"] = settings.counters.get("rate_limited", 0) + 1
                raise RecurlyError(
                    429,
                    "rate_limited",
                    "You made too many API requests.",
                    headers={"Retry-After": str(max(1, round(wait + 0.49)))},
                )
            write = request.method in ("POST", "PUT", "DELETE")
            api_key = auth(request, write)
            check_accept(request)
            params = dict(request.query_params)
            body = {}
            raw = await request.body() if write else b""
            if raw:
                try:
                    body = R.loads(raw)
                except ValueError:
                    raise RecurlyError(400, "bad_request", "The request body is not valid JSON.") from None
                if not isinstance(body, dict):
                    raise RecurlyError(400, "bad_request", "The request body must be a JSON object.")
            idem = request.headers.get("idempotency-key") if write else None
            canon = json.dumps([request.method, path, R.dumps(body)])
            if idem:
                prior = store.idem_get(api_key, idem)
                if prior:
                    req, status, text = prior
                    if req != canon:
                        raise RecurlyError(
                            400, "bad_request", f"Idempotency key {idem!r} was already used for a different request."
                        )
                    return finish(
                        Response(text, status_code=status, media_type=ACCEPT),
                        {**extra, "Idempotency-Key": idem, "Idempotency-Replayed": "true"},
                    )
            status, payload = route(request.method, path, params, body)
            text = R.dumps(payload)
            if idem and status < 500:
                store.idem_put(api_key, idem, canon, status, text)
            resp = finish(
                Response(text, status_code=status, media_type=ACCEPT),
                {**extra, **({"Idempotency-Key": idem} if idem else {})},
            )
            if fault:
                after = fault.after(resp)  # "applied, then failed"
                if after is not resp and after.status_code >= 500 and after.body:
                    return RecurlyError(500, "internal_server_error", "An unexpected error has occurred.").response()
                return after
            return resp
        except RecurlyError as e:
            return finish(e.response(), extra)

    # ---- routing ---------------------------------------------------------------------------------
    def route(method: str, path: str, params: dict, body: dict) -> tuple[int, dict]:
        parts = [p for p in path.split("/") if p]
        if method == "GET":
            if parts == ["accounts"]:
                return 200, listing("account", path, params)
            if parts == ["subscriptions"]:
                return 200, listing("subscription", path, params, pred=state_filter(params))
            if parts == ["invoices"]:
                return 200, listing("invoice", path, params, pred=invoice_filter(params))
            if parts == ["transactions"]:
                return 200, listing("transaction", path, params)
            if parts == ["line_items"]:
                return 200, listing("line_item", path, params, pred=line_filter(params))
            if parts in (["items"], ["plans"], ["measured_units"]):
                return 200, listing(
                    {"items": "item", "plans": "plan", "measured_units": "measured_unit"}[parts[0]], path, params
                )
            if len(parts) == 2 and parts[0] in ("items", "plans", "measured_units", "subscriptions", "transactions"):
                typ = {
                    "items": "item",
                    "plans": "plan",
                    "measured_units": "measured_unit",
                    "subscriptions": "subscription",
                    "transactions": "transaction",
                }[parts[0]]
                return 200, retrieve(typ, parts[1])
            if len(parts) >= 2 and parts[0] == "accounts":
                acct = account(parts[1])
                if len(parts) == 2:
                    return 200, acct
                sub = parts[2:]
                if sub == ["balance"]:
                    bal = store.get("account_balance", acct["id"])
                    bal.pop("id", None)
                    return 200, bal
                if sub == ["notes"]:
                    return 200, listing("account_note", path, params, where={"parent": acct["id"]})
                if len(sub) == 2 and sub[0] == "notes":
                    note = store.get("account_note", sub[1])
                    if note is None or note["account_id"] != acct["id"]:
                        raise not_found("account_note", sub[1])
                    return 200, note
                kinds = {
                    "subscriptions": ("subscription", state_filter(params)),
                    "invoices": ("invoice", invoice_filter(params)),
                    "transactions": ("transaction", None),
                    "line_items": ("line_item", line_filter(params)),
                }
                if len(sub) == 1 and sub[0] in kinds:
                    typ, pred = kinds[sub[0]]
                    return 200, listing(typ, path, params, where={"account": acct["code"]}, pred=pred)
            if len(parts) == 3 and parts[0] == "plans" and parts[2] == "add_ons":
                pl_obj = retrieve("plan", parts[1])
                return 200, listing("add_on", path, params, where={"parent": pl_obj["id"]})
            if len(parts) == 2 and parts[0] == "invoices":
                return 200, invoice(parts[1])
            if len(parts) == 3 and parts[0] == "invoices" and parts[2] == "line_items":
                inv = invoice(parts[1])
                return 200, listing("line_item", path, params, where={"parent": inv["id"]}, default_desc=False)
            if len(parts) == 5 and parts[0] == "subscriptions" and parts[2] == "add_ons" and parts[4] == "usage":
                sub_obj = retrieve("subscription", parts[1])
                sao = sub_add_on(sub_obj, parts[3])
                return 200, listing(
                    "usage",
                    path,
                    params,
                    where={"parent": sao},
                    pred=usage_filter(params),
                    sort_field="usage_timestamp",
                )
        if method == "PUT":
            if len(parts) == 2 and parts[0] == "accounts":
                return 200, update_custom_fields("account", account(parts[1]), body)
            if len(parts) == 2 and parts[0] == "subscriptions":
                return 200, update_custom_fields("subscription", retrieve("subscription", parts[1]), body)
        if method == "POST":
            if len(parts) == 3 and parts[0] == "accounts" and parts[2] == "line_items":
                return 201, create_line_item(account(parts[1]), body)
            if len(parts) == 3 and parts[0] == "invoices" and parts[2] == "refund":
                return 201, refund(invoice(parts[1]), body)
            if len(parts) == 5 and parts[0] == "subscriptions" and parts[2] == "add_ons" and parts[4] == "usage":
                sub_obj = retrieve("subscription", parts[1])
                return 201, create_usage(sub_obj, sub_add_on(sub_obj, parts[3]), body)
        raise RecurlyError(404, "not_found", f"Couldn't find a route for {method} {path}.")

    def not_found(typ: str, oid: str) -> RecurlyError:
        return RecurlyError(
            404, "not_found", f"Couldn't find {typ.replace('_', ' ').title()} with id = {oid}", [{"param": f"{typ}_id"}]
        )

    def retrieve(typ: str, oid: str) -> dict:
        obj = None
        if oid.startswith("code-") and typ in ("plan", "item", "account"):
            obj = store.find(typ, "json_extract(body, '$.code') = ?", (oid[5:],))
        else:
            obj = store.get(typ, oid)
        if obj is None:
            raise not_found(typ, oid)
        return obj

    def account(aid: str) -> dict:
        return retrieve("account", aid)

    def invoice(iid: str) -> dict:
        if iid.startswith("number-"):
            obj = store.find("invoice", "json_extract(body, '$.number') = ?", (iid[7:],))
            if obj is None:
                raise not_found("invoice", iid)
            return obj
        return retrieve("invoice", iid)

    def sub_add_on(sub_obj: dict, aoid: str) -> str:
        """The subscription add-on addressed by its id (current or past) or ``code-<add-on code>``."""
        if aoid.startswith("code-"):
            sao = next((a for a in sub_obj["add_ons"] if a["add_on"]["code"] == aoid[5:]), None)
            if sao is None:
                raise not_found("add_on", aoid)
            return sao["id"]
        if any(a["id"] == aoid for a in sub_obj["add_ons"]):
            return aoid
        known = store.db.execute(
            "SELECT 1 FROM objects WHERE type IN ('usage', 'line_item') AND "
            "(parent = ? OR json_extract(body, '$.add_on_id') = ?) LIMIT 1",
            (aoid, aoid),
        ).fetchone()
        if not known:
            raise not_found("add_on", aoid)
        return aoid

    def limit_order(params: dict, default_desc: bool) -> tuple[int, bool]:
        try:
            limit = int(params.get("limit", 20))
        except ValueError:
            raise RecurlyError(400, "bad_request", "limit must be an integer", [{"param": "limit"}]) from None
        if not 1 <= limit <= MAX_LIMIT:
            raise RecurlyError(400, "bad_request", f"limit must be between 1 and {MAX_LIMIT}", [{"param": "limit"}])
        order = params.get("order", "desc" if default_desc else "asc")
        if order not in ("asc", "desc"):
            raise RecurlyError(400, "bad_request", "order must be asc or desc", [{"param": "order"}])
        if params.get("sort", "created_at") not in (
            "created_at",
            "updated_at",
            "usage_timestamp",
            "recorded_timestamp",
        ):
            raise RecurlyError(400, "bad_request", "sort must be created_at or updated_at", [{"param": "sort"}])
        return limit, order == "desc"

    def listing(
        typ: str,
        path: str,
        params: dict,
        where: dict | None = None,
        pred=None,
        default_desc: bool = True,
        sort_field: str = "created_at",
    ) -> dict:
        limit, desc = limit_order(params, default_desc)
        after = _uncursor(params["cursor"]) if params.get("cursor") else None
        data, more = store.page(typ, limit=limit, desc=desc, after=after, where=where, predicate=pred)
        nxt = None
        if more:
            q = {k: v for k, v in params.items() if k != "cursor"}
            q.update(
                {
                    "cursor": _cursor(more),
                    "limit": str(limit),
                    "order": "desc" if desc else "asc",
                    "sort": params.get("sort", sort_field),
                }
            )
            nxt = path + "?" + "&".join(f"{k}={v}" for k, v in q.items())
        for o in data:
            o.pop("subscription_add_on_id", None)
        return {"object": "list", "has_more": more is not None, "next": nxt, "data": data}

    def state_filter(params: dict):
        st = params.get("state")
        if not st:
            return None
        live = {"live": ("active", "canceled", "future", "in_trial", "paused")}.get(st, (st,))
        return lambda o: o.get("state") in live

    def invoice_filter(params: dict):
        typ, st = params.get("type"), params.get("state")
        return lambda o: (
            (not typ or o.get("type") == typ or (typ == "non-legacy" and o.get("type") != "legacy"))
            and (not st or o.get("state") == st)
        )

    def line_filter(params: dict):
        st = params.get("state")
        return (lambda o: o.get("state") == st) if st else None

    def usage_filter(params: dict):
        from billing_ai.clock import parse_instant

        lo = parse_instant(params["begin_time"]) if params.get("begin_time") else None
        hi = parse_instant(params["end_time"]) if params.get("end_time") else None

        def ok(o):
            t = parse_instant(o["usage_timestamp"])
            return (lo is None or t >= lo) and (hi is None or t <= hi)

        return ok if (lo or hi) else None

    # ---- writes ----------------------------------------------------------------------------------
    def merge_fields(obj: dict, fields) -> None:
        if fields is None:
            return
        if not isinstance(fields, list) or not all(
            isinstance(f, dict) and isinstance(f.get("name"), str) for f in fields
        ):
            raise RecurlyError(
                422,
                "validation",
                "custom_fields must be a list of {name, value}",
                [{"param": "custom_fields", "message": "is invalid"}],
            )
        cur = {f["name"]: f["value"] for f in obj.get("custom_fields") or []}
        for f in fields:
            if f.get("value") in (None, ""):
                cur.pop(f["name"], None)  # a null or empty value removes the field
            elif not isinstance(f["value"], str) or len(f["value"]) > 255:
                raise RecurlyError(
                    422,
                    "validation",
                    f"custom field {f['name']}: value must be a string of at most 255 characters",
                    [{"param": "custom_fields", "message": "is too long"}],
                )
            else:
                cur[f["name"]] = f["value"]
        obj["custom_fields"] = [{"name": k, "value": v} for k, v in cur.items()]

    def update_custom_fields(typ: str, obj: dict, body: dict) -> dict:
        merge_fields(obj, body.get("custom_fields"))
        for k in ("email", "company", "first_name", "last_name", "customer_notes", "po_number"):
            if k in body:
                obj[k] = body[k]
        obj["updated_at"] = R.iso(now())
        store.put(typ, obj)
        return obj

    def currency_of(body: dict) -> str:
        cur = str(body.get("currency") or "").lower()
        if cur not in MINOR_UNITS:
            raise RecurlyError(
                422, "validation", "currency is invalid", [{"param": "currency", "message": "is invalid"}]
            )
        return cur

    def create_line_item(acct: dict, body: dict) -> dict:
        cur = currency_of(body)
        unit = _decimal(body.get("unit_amount"), "unit_amount")
        qty = int(body.get("quantity", 1))
        typ = body.get("type", "charge")
        if typ not in ("charge", "credit") or unit <= 0 or qty < 1:
            raise RecurlyError(
                422,
                "validation",
                "unit_amount must be positive and type charge or credit",
                [{"param": "unit_amount", "message": "must be greater than 0"}],
            )
        if unit != unit.quantize(Decimal(1).scaleb(-MINOR_UNITS[cur])):
            raise RecurlyError(
                422,
                "validation",
                "unit_amount has too many decimal places",
                [{"param": "unit_amount", "message": "is invalid"}],
            )
        sub_id = body.get("subscription_id")
        if sub_id and store.get("subscription", sub_id) is None:
            raise not_found("subscription", sub_id)
        lid = _new_id(acct["id"], body.get("description"))
        amount = unit * qty * (-1 if typ == "credit" else 1)
        obj = {
            "id": lid,
            "object": "line_item",
            "uuid": lid * 2,
            "type": typ,
            "state": "pending",
            "account": {k: acct[k] for k in ("id", "object", "code", "email", "company")},
            "subscription_id": sub_id,
            "plan_id": None,
            "plan_code": None,
            "add_on_id": None,
            "add_on_code": None,
            "invoice_id": None,
            "invoice_number": None,
            "origin": "one_time" if typ == "charge" else "credit",
            "credit_reason_code": body.get("credit_reason_code"),
            "currency": cur.upper(),
            "amount": amount,
            "description": body.get("description"),
            "quantity": qty,
            "quantity_decimal": str(qty),
            "unit_amount": unit,
            "unit_amount_decimal": None,
            "subtotal": amount,
            "discount": Decimal(0),
            "tax": Decimal(0),
            "proration_rate": None,
            "refund": False,
            "custom_fields": [],
            "start_date": R.iso(now()),
            "end_date": None,
            "created_at": R.iso(now()),
            "updated_at": R.iso(now()),
        }
        merge_fields(obj, body.get("custom_fields"))
        store.put("line_item", obj, account=acct["code"], parent=None, created=now())
        return obj

    def refund(inv: dict, body: dict) -> dict:
        if inv.get("type") != "charge":
            raise RecurlyError(422, "validation", "Only charge invoices can be refunded", [{"param": "invoice_id"}])
        if inv["state"] not in ("paid", "past_due", "pending", "processing"):
            raise RecurlyError(422, "validation", f"Invoice is {inv['state']}: it cannot be credited")
        if body.get("type") != "amount":
            raise RecurlyError(422, "validation", "The sandbox refunds by amount (type=amount)", [{"param": "type"}])
        cur = inv["currency"].lower()
        amount = _decimal(body.get("amount"), "amount")
        prior = [
            R.loads(b)
            for (b,) in store.db.execute(
                "SELECT body FROM objects WHERE type='invoice' AND json_extract(body, '$.type')='credit' "
                "AND json_extract(body, '$.previous_invoice_id')=?",
                (inv["id"],),
            )
        ]
        credited = sum((-Decimal(str(c["total"])) for c in prior), Decimal(0))
        room = Decimal(str(inv["total"])) - credited
        if amount <= 0 or amount > room or amount != amount.quantize(Decimal(1).scaleb(-MINOR_UNITS[cur])):
            raise RecurlyError(
                422,
                "validation",
                f"amount must be positive and at most {room}",
                [{"param": "amount", "message": "is invalid"}],
            )
        cid = _new_id(inv["id"], amount)
        acct = inv["account"]
        line = {
            "id": _new_id(cid, "line"),
            "object": "line_item",
            "type": "credit",
            "state": "invoiced",
            "account": acct,
            "subscription_id": None,
            "add_on_id": None,
            "add_on_code": None,
            "invoice_id": cid,
            "original_line_item_invoice_id": inv["id"],
            "origin": "credit",
            "credit_reason_code": body.get("credit_reason_code", "general"),
            "currency": inv["currency"],
            "amount": -amount,
            "subtotal": -amount,
            "discount": Decimal(0),
            "tax": Decimal(0),
            "description": f"Refund for invoice {inv['number']}",
            "quantity": 1,
            "quantity_decimal": "1",
            "proration_rate": None,
            "refund": True,
            "custom_fields": [],
            "start_date": R.iso(now()),
            "end_date": None,
            "created_at": R.iso(now()),
            "updated_at": R.iso(now()),
        }
        number = f"{inv['number']}-CR-{len(prior) + 1:02d}"
        obj = {
            "id": cid,
            "object": "invoice",
            "type": "credit",
            "origin": "refund",
            "state": "open",
            "account": acct,
            "subscription_ids": inv.get("subscription_ids", []),
            "previous_invoice_id": inv["id"],
            "number": number,
            "currency": inv["currency"],
            "discount": Decimal(0),
            "subtotal": -amount,
            "tax": Decimal(0),
            "total": -amount,
            "paid": Decimal(0),
            "balance": -amount,
            "customer_notes": body.get("credit_customer_notes"),
            "line_items": [line],
            "has_more_line_items": False,
            "transactions": [],
            "credit_payments": [],
            "custom_fields": [],
            "created_at": R.iso(now()),
            "updated_at": R.iso(now()),
            "due_at": R.iso(now()),
            "closed_at": None,
        }
        store.put("line_item", line, account=acct["code"], parent=cid, created=now())
        store.put("invoice", obj, account=acct["code"], created=now())
        return obj

    def create_usage(sub_obj: dict, sao_id: str, body: dict) -> dict:
        amount = _decimal(body.get("amount"), "amount")
        sao = next((a for a in sub_obj["add_ons"] if a["id"] == sao_id), None)
        if sao is None or sao["add_on"]["add_on_type"] != "usage":
            raise RecurlyError(
                422, "validation", "Usage can only be recorded on a current usage add-on", [{"param": "add_on_id"}]
            )
        at = body.get("usage_timestamp") or R.iso(now())
        obj = {
            "id": _new_id(sao_id, at),
            "object": "usage",
            "merchant_tag": body.get("merchant_tag"),
            "amount": amount,
            "usage_type": "price",
            "tier_type": sao["tier_type"],
            "tiers": sao["tiers"],
            "percentage_tiers": [],
            "measured_unit_id": sao["add_on"]["measured_unit_id"],
            "recording_timestamp": body.get("recording_timestamp") or at,
            "usage_timestamp": at,
            "usage_percentage": None,
            "unit_amount": None,
            "unit_amount_decimal": sao.get("unit_amount_decimal"),
            "billed_at": None,
            "created_at": R.iso(now()),
            "updated_at": R.iso(now()),
        }
        store.put("usage", obj, account=sub_obj["account"]["code"], parent=sao_id, created=now())
        return obj

    return Starlette(routes=[Route("/{path:path}", handler, methods=["GET", "POST", "PUT", "DELETE"])])


class RecurlyFacade:
    """What the sandbox server mounts under ``/recurly``: ``app``, ``settings``, ``store``, ``close()``."""

    def __init__(self, world_dir: Path, state_dir: Path, settings: RecurlySettings | None = None):
        self.store = RecurlyStore(Path(state_dir) / "recurly.sqlite")
        self.store.seed_from_world(world_dir)
        self.settings = settings or RecurlySettings()
        self.app = create_app(self.store, self.settings)

    def close(self) -> None:
        self.store.close()


def create_recurly_facade(world_dir: Path, state_dir: Path) -> RecurlyFacade:
    return RecurlyFacade(world_dir, state_dir)


def add_note(store: RecurlyStore, account_code: str, message: str, user: str = "sandbox") -> dict:
    """Account notes are written in Recurly's UI (the v3 API only reads them): tests add them here."""
    acct = store.find("account", "json_extract(body, '$.code') = ?", (account_code,))
    t = store.as_of()
    note = {
        "id": _new_id(account_code, message),
        "object": "account_note",
        "account_id": acct["id"],
        "user": {
            "id": R.rid("user", user),
            "object": "user",
            "email": f"{user}@sandbox.invalid",
            "first_name": user,
            "last_name": None,
            "time_zone": "UTC",
            "created_at": R.iso(t),
            "deleted_at": None,
        },
        "message": message,
        "created_at": R.iso(t),
    }
    store.put("account_note", note, account=account_code, parent=acct["id"], created=t)
    return note
