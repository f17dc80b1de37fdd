"""Recurly connector: API v3 (``v2021-02-25``) over plain httpx, PII tokenized, money made exact.

Why not the official SDK (``recurly`` 4.x): its ``BaseClient`` opens
``http.client.HTTPSConnection(API_HOSTS[region], 443)`` with the host fixed to
``v3.recurly.com`` / ``v3.eu.recurly.com`` (no base-address option; the
connection is a name-mangled private attribute), so it cannot talk to the
sandbox on ``http://127.0.0.1:<port>/recurly`` without patching its internals;
it also parses JSON numbers (Recurly's money, in major units) as floats and has
no 429 handling. So every request goes through
:class:`billing_ai.platforms.http.PlatformHTTP` (the project's one retry and
rate-limit policy: 429 waits ``Retry-After``; 5xx and broken reads retried
only for GETs and writes carrying an ``Idempotency-Key``).

* Basic auth with the API key as the user name; ``Accept:
  application/vnd.recurly.v2021-02-25``.
* Lists are walked by following ``next`` (cursor pagination), ``limit`` =
  ``page_size``, ``order=asc`` by ``created_at``.
* JSON numbers with a fraction are parsed as ``Decimal``; every money field
  of an object with a ``currency`` gets an exact minor-unit sibling
  ``<field>_minor`` (integers for amounts, decimal text for unit prices) via
  :mod:`billing_ai.money`; an amount that is not a whole number of minor units,
  an unknown currency, a unit price beyond 12 decimal places (minor units) or a
  record without its id is quarantined with the reason, never landed.
* Names, e-mails and user names become keyed-hash tokens; addresses, billing
  info, payment-method and gateway details are dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

from billing_ai.money import MAX_UNIT_PRICE_PLACES, UnknownCurrencyError, major_to_minor
from billing_ai.pii import tokenize
from billing_ai.platforms.http import PlatformHTTP
from billing_ai.platforms.spec import QUARANTINE_KEY, quarantine_row
from billing_ai.retry import RetryPolicy

API_VERSION = "v2021-02-25"
ACCEPT = f"application/vnd.recurly.{API_VERSION}"
MONEY_AMOUNTS = (
    "amount",
    "subtotal",
    "discount",
    "total",
    "tax",
    "paid",
    "balance",
    "refundable_amount",
    "subtotal_after_discount",
    "available_credit_amount",
    "processing_prepayment_amount",
    "setup_fee",
)
UNIT_PRICES = ("unit_amount", "unit_amount_decimal")

_PII_TOKENS = {"email": "email", "company": "name", "first_name": "name", "last_name": "name", "username": "name"}
_PII_DROP = {
    "account": (
        "address",
        "billing_info",
        "shipping_addresses",
        "hosted_login_token",
        "cc_emails",
        "vat_number",
        "external_accounts",
    ),
    "invoice": ("address", "shipping_address", "vat_number", "billing_info_id"),
    "transaction": (
        "billing_address",
        "payment_method",
        "ip_address_v4",
        "ip_address_country",
        "gateway_response_values",
        "gateway_reference",
        "gateway_approval_code",
        "fraud_info",
        "payment_gateway",
        "customer_message",
    ),
    "line_item": ("shipping_address",),
    "subscription": ("shipping", "billing_info_id"),
}


class BadRecord(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _plain(d: Decimal) -> str:
    s = format(d, "f")
    return s.rstrip("0").rstrip(".") if "." in s else s


def normalize(obj: Any, key: str) -> Any:
    """Tokenize PII, drop addresses and payment details, add exact ``*_minor`` money, Decimals -> text."""
    if isinstance(obj, list):
        return [normalize(v, key) for v in obj]
    if not isinstance(obj, dict):
        return _plain(obj) if isinstance(obj, Decimal) else obj
    typ = obj.get("object")
    out = {k: v for k, v in obj.items() if k not in _PII_DROP.get(typ, ())}
    if typ in ("account", "user"):
        for f, kind in _PII_TOKENS.items():
            if f in out:
                out[f] = tokenize(out[f], key, kind) if out[f] else None
    cur = out.get("currency")
    if isinstance(cur, str) and cur:
        for f in MONEY_AMOUNTS:
            v = out.get(f)
            if v is None or f == "amount" and typ == "usage":
                continue
            minor = _money(v, cur, f)
            if minor != minor.to_integral_value():
                raise BadRecord(
                    "bad_money", f"{f}={_plain(Decimal(str(v)))} {cur} is not a whole number of minor units"
                )
            out[f"{f}_minor"] = int(minor)
        for f in UNIT_PRICES:
            v = out.get(f)
            if v is None:
                continue
            minor = _money(v, cur, f).normalize()
            if -minor.as_tuple().exponent > MAX_UNIT_PRICE_PLACES:
                raise BadRecord(
                    "bad_unit_price", f"{f}={v} {cur}: more than {MAX_UNIT_PRICE_PLACES} decimal places in minor units"
                )
            out[f"{f}_minor"] = _plain(minor)
    return {k: normalize(v, key) for k, v in out.items()}


def _money(value: Any, cur: str, field: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, str)):
        raise BadRecord("bad_money", f"{field}={value!r} is not a decimal number")
    try:
        return major_to_minor(value, cur.lower())
    except UnknownCurrencyError as e:
        raise BadRecord("unknown_currency", str(e)) from None
    except ValueError:
        raise BadRecord("bad_money", f"{field}={value!r} is not a decimal number") from None


def _decimal_json(response: httpx.Response) -> None:
    """Response hook: ``response.json()`` parses fractions as Decimal (money never becomes a float)."""
    response.json = lambda **_kw: json.loads(response.read(), parse_float=Decimal)  # type: ignore[method-assign]


class RecurlyConnector:
    """Read-only Recurly access returning plain, scrubbed dicts with exact minor-unit money."""

    def __init__(
        self,
        api_key: str,
        api_base: str,
        pii_key: str,
        requests_per_second: float = 20.0,
        page_size: int = 200,
        policy: RetryPolicy = RetryPolicy(),
        timeout: float = 30.0,
    ):
        if not api_key:
            raise ValueError("RECURLY_API_KEY is not set")
        self.http = PlatformHTTP(
            "recurly",
            api_base,
            auth=(api_key, ""),
            headers={"Accept": ACCEPT},
            requests_per_second=requests_per_second,
            policy=policy,
            timeout=timeout,
        )
        self.http.http.event_hooks["response"].append(_decimal_json)
        self.page_size = page_size
        self.pii_key = pii_key
        self.quarantine: list[dict] = []

    @property
    def stats(self) -> dict:
        return self.http.stats

    def get(self, path: str, params: dict | None = None) -> Any:
        return self.http.request("GET", path, params=params)

    def pages(self, path: str, params: dict | None = None) -> Iterator[dict]:
        """Every item of a list, following ``next`` (its cursor carries the other parameters)."""
        body = self.get(path, {"limit": self.page_size, "order": "asc", "sort": "created_at", **(params or {})})
        while True:
            yield from body["data"]
            if not body.get("has_more") or not body.get("next"):
                return
            body = self.get(body["next"])

    def accept(self, obj_name: str, raw: Any, id_field: str = "id") -> dict | None:
        """The normalized record, or None after quarantining it with the reason."""
        rid = raw.get(id_field) if isinstance(raw, dict) else None
        try:
            if not isinstance(raw, dict):
                raise BadRecord("not_an_object", f"{type(raw).__name__} is not an object")
            if not rid or not isinstance(rid, str):
                raise BadRecord("missing_id", f"no {id_field}")
            if obj_name == "accounts" and not raw.get("code"):
                raise BadRecord("missing_code", "an account without its merchant code")
            return normalize(raw, self.pii_key)
        except BadRecord as e:
            self.quarantine.append(
                quarantine_row(
                    obj_name, rid if isinstance(rid, str) else None, e.reason, _safe(raw, self.pii_key), e.detail
                )
            )
            return None

    def collect(self, obj_name: str, raws, id_field: str = "id") -> list[dict]:
        return [r for r in (self.accept(obj_name, x, id_field) for x in raws) if r is not None]

    # ---- the snapshot ingestion lands ------------------------------------------------------------
    def fetch_snapshot(self, now: datetime, log: Callable[[str], None] | None = None) -> dict[str, list[dict]]:
        say = log or (lambda _m: None)
        self.quarantine = []
        out: dict[str, list[dict]] = {}
        out["accounts"] = self.collect("accounts", self.pages("/accounts"))
        out["account_balances"] = self.collect(
            "account_balances", ({"id": a["id"], **self.get(f"/accounts/{a['id']}/balance")} for a in out["accounts"])
        )
        for name, path in (
            ("items", "/items"),
            ("measured_units", "/measured_units"),
            ("plans", "/plans"),
            ("subscriptions", "/subscriptions"),
            ("transactions", "/transactions"),
        ):
            out[name] = self.collect(name, self.pages(path))
        out["add_ons"] = self.collect(
            "add_ons", (a for p in out["plans"] for a in self.pages(f"/plans/{p['id']}/add_ons"))
        )
        invoices, lines = [], []
        for raw in self.pages("/invoices"):
            embedded = raw.pop("line_items", None) if isinstance(raw, dict) else None
            inv = self.accept("invoices", raw)
            if inv is None:
                continue
            invoices.append(inv)
            if raw.get("has_more_line_items") or embedded is None:
                embedded = self.pages(f"/invoices/{inv['id']}/line_items")
            lines += self.collect("line_items", embedded)
        out["invoices"], out["line_items"] = invoices, lines
        for name in out:
            say(f"recurly {name}: {len(out[name])}")
        out["usage"] = self.usage(out, now)
        say(f"recurly usage: {len(out['usage'])}")
        out[QUARANTINE_KEY] = self.quarantine
        return out

    def usage(self, snap: dict[str, list[dict]], now: datetime) -> list[dict]:
        """Usage records of every usage add-on a subscription has or had (from its invoice lines), whole
        UTC days before the clock's day."""
        usage_codes = {a["code"] for a in snap["add_ons"] if a.get("add_on_type") == "usage"}
        add_ons: dict[str, set[str]] = {}
        for s in snap["subscriptions"]:
            add_ons[s["id"]] = {a["id"] for a in s.get("add_ons") or [] if a["add_on"]["code"] in usage_codes}
        for ln in snap["line_items"]:
            if (
                ln.get("origin") == "add_on"
                and ln.get("add_on_code") in usage_codes
                and ln.get("subscription_id") in add_ons
                and ln.get("add_on_id")
            ):
                add_ons[ln["subscription_id"]].add(ln["add_on_id"])
        day = datetime(now.year, now.month, now.day, tzinfo=UTC)
        end = (day - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        out = []
        for sub_id, ids in add_ons.items():
            for ao in sorted(ids):
                raws = self.pages(
                    f"/subscriptions/{sub_id}/add_ons/{ao}/usage",
                    {"sort": "usage_timestamp", "end_time": end, "billing_status": "all"},
                )
                for u in self.collect("usage", raws):
                    u["subscription_id"], u["subscription_add_on_id"] = sub_id, ao
                    out.append(u)
        return out

    def close(self) -> None:
        self.http.close()


def _safe(raw: Any, key: str) -> Any:
    """A refused record as it can be kept: PII tokenized and dropped, money left as received (text)."""

    def walk(o):
        if isinstance(o, list):
            return [walk(v) for v in o]
        if isinstance(o, Decimal):
            return _plain(o)
        if not isinstance(o, dict):
            return o
        typ = o.get("object")
        d = {k: walk(v) for k, v in o.items() if k not in _PII_DROP.get(typ, ())}
        if typ in ("account", "user"):
            for f, kind in _PII_TOKENS.items():
                if isinstance(d.get(f), str) and d[f]:
                    d[f] = tokenize(d[f], key, kind)
        return d

    return walk(raw)
