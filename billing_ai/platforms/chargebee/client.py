"""Chargebee connector: API v2 over plain httpx (``PlatformHTTP``), PII tokenized on the way in.

Why not the official SDK (``chargebee`` 3.x): it builds every address as
``{protocol}://{site}.{chargebee_domain}/api/v2``, so a base address with a
path (``http://127.0.0.1:PORT/chargebee``) only fits by smuggling the port and
path into ``chargebee_domain``; worse, with ``protocol="http"`` it still speaks
TLS unless the *class-wide* ``Chargebee.verify_ca_certs`` is switched off (the
instance flag its ``update_protocol`` sets is not the one ``http_request``
reads), which would turn off certificate checks for every Chargebee client in
the process. It also has a retry loop of its own (429 and 5xx) that would sit
under ours. So: ``PlatformHTTP``, the project's one retry / rate-limit policy.

* Lists are paged one request at a time (``limit`` + ``offset`` from the
  previous page's ``next_offset``), each through the token bucket; a 429 waits
  ``Retry-After``; a 5xx or broken connection is retried (reads are safe).
* Objects the connector cannot accept (no id, money that is not an integer of
  minor units, a quantity that is not a decimal) go to quarantine with the
  reason, never silently dropped: records in = landed + quarantined.
* Names, e-mails and phone numbers become keyed-hash tokens; addresses,
  contacts and payment-method details are dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from billing_ai.pii import tokenize
from billing_ai.platforms.http import PlatformHTTP
from billing_ai.platforms.spec import QUARANTINE_KEY, quarantine_row
from billing_ai.retry import RetryPolicy

IDEMPOTENCY_HEADER = "chargebee-idempotency-key"

_PII_TOKENS: dict[str, dict[str, str]] = {
    "customer": {"first_name": "name", "last_name": "name", "company": "name", "email": "email", "phone": "phone"},
}
_PII_DROP: dict[str, tuple[str, ...]] = {
    "customer": (
        "billing_address",
        "contacts",
        "payment_method",
        "referral_urls",
        "primary_payment_source_id",
        "backup_payment_source_id",
        "vat_number",
        "entity_identifiers",
    ),
    "subscription": ("shipping_address", "payment_source_id", "referral_info"),
    "invoice": ("billing_address", "shipping_address", "vat_number"),
    "credit_note": ("billing_address", "shipping_address", "vat_number"),
    "transaction": (
        "masked_card_number",
        "iin",
        "last4",
        "payment_method_details",
        "payment_source_id",
        "reference_number",
        "three_d_secure",
        "id_at_gateway",
    ),
}


def scrub(typ: str, obj: dict, key: str) -> dict:
    """Tokenize PII fields and drop addresses and payment-method details, in place."""
    for f, kind in _PII_TOKENS.get(typ, {}).items():
        if f in obj:
            obj[f] = tokenize(obj[f], key, kind) if obj[f] else None
    for f in _PII_DROP.get(typ, ()):
        obj.pop(f, None)
    return obj


def _is_money(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_decimal(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    try:
        return Decimal(v).is_finite()
    except InvalidOperation:
        return False


# raw object -> money fields that must be integers of minor units when present
_MONEY = {
    "customers": ("promotional_credits",),
    "item_prices": ("price",),
    "invoices": ("total", "sub_total", "amount_paid", "amount_due", "credits_applied"),
    "invoice_line_items": ("amount", "discount_amount"),
    "transactions": ("amount",),
    "credit_notes": ("total",),
}
_REQUIRED = {
    "invoices": ("total", "sub_total", "date"),
    "invoice_line_items": ("amount",),
    "transactions": ("amount",),
    "credit_notes": ("total",),
    "usages": ("quantity", "usage_date"),
}


def problem(obj_name: str, o: dict) -> tuple[str, str] | None:
    """Why an object cannot be landed (reason, detail), or None."""
    if not isinstance(o.get("id"), str) or not o["id"]:
        return "missing_id", "the object has no string id"
    for f in _REQUIRED.get(obj_name, ()):
        if o.get(f) is None:
            return "missing_field", f"{f} is missing"
    for f in _MONEY.get(obj_name, ()):
        if f in o and o[f] is not None and not _is_money(o[f]):
            return "malformed_money", f"{f}={o[f]!r} is not an integer amount in minor units"
    for f in ("price_in_decimal", "quantity_in_decimal", "amount_in_decimal"):
        if f in o and o[f] is not None and not _is_decimal(o[f]):
            return "malformed_decimal", f"{f}={o[f]!r} is not a decimal"
    if obj_name == "usages" and not _is_decimal(o.get("quantity")):
        return "malformed_decimal", f"quantity={o.get('quantity')!r} is not a decimal"
    for t in o.get("tiers") or []:
        if not _is_money(t.get("price")) or ("price_in_decimal" in t and not _is_decimal(t["price_in_decimal"])):
            return "malformed_money", f"tier price {t.get('price')!r} / {t.get('price_in_decimal')!r}"
    return None


class ChargebeeConnector:
    """Read-only Chargebee access returning plain, scrubbed dicts."""

    def __init__(
        self,
        api_key: str,
        api_base: str,
        pii_key: str,
        requests_per_second: float = 10.0,
        page_size: int = 100,
        policy: RetryPolicy = RetryPolicy(),
    ):
        if not api_key:
            raise ValueError("CHARGEBEE_API_KEY is not set")
        # basic auth: the API key is the user name, the password is empty
        self.http = PlatformHTTP(
            "chargebee",
            f"{api_base.rstrip('/')}/api/v2",
            auth=(api_key, ""),
            requests_per_second=requests_per_second,
            policy=policy,
            idempotency_header=IDEMPOTENCY_HEADER,
        )
        self.page_size = min(100, page_size)
        self.pii_key = pii_key

    @property
    def stats(self) -> dict:
        return self.http.stats

    def pages(self, resource: str, params: dict | None = None) -> Iterator[dict]:
        """Every entry of a list endpoint, unwrapped (``{"customer": {...}}`` -> ``{...}``)."""
        params = {**(params or {}), "limit": self.page_size}
        while True:
            page = self.http.request("GET", f"/{resource}", params=params)
            for entry in page.get("list", []):
                yield next(iter(entry.values())) if len(entry) == 1 else entry
            nxt = page.get("next_offset")
            if not nxt:
                return
            params = {**params, "offset": nxt}

    def fetch_snapshot(self, now: datetime, log: Callable[[str], None] | None = None) -> dict[str, list[dict]]:
        """Every object ingestion needs (``SPEC.raw_objects``), scrubbed; refused ones under ``quarantine``."""
        say = log or (lambda _m: None)
        out: dict[str, list[dict]] = {QUARANTINE_KEY: []}

        def accept(name: str, typ: str, objs: Iterator[dict]) -> list[dict]:
            kept = []
            for o in objs:
                bad = problem(name, o)
                if bad:
                    scrub(typ, o, self.pii_key)
                    oid = o.get("id")
                    out[QUARANTINE_KEY].append(
                        quarantine_row(name, oid if isinstance(oid, str) else None, bad[0], o, bad[1])
                    )
                    continue
                kept.append(scrub(typ, o, self.pii_key))
            return kept

        for name, typ, params in (
            ("customers", "customer", {}),
            ("items", "item", {}),
            ("item_prices", "item_price", {}),
            ("subscriptions", "subscription", {}),
            ("credit_notes", "credit_note", {}),
            ("transactions", "transaction", {"type[is]": "payment"}),
        ):
            out[name] = accept(name, typ, self.pages(name, params))
            say(f"chargebee {name}: {len(out[name])}")
        invoices = accept("invoices", "invoice", self.pages("invoices"))
        lines = []
        for inv in invoices:
            for li in inv.pop("line_items", None) or []:
                # where the line sits: Chargebee embeds lines in their invoice
                lines.append({**li, "invoice_id": inv["id"]})
        out["invoices"] = invoices
        out["invoice_line_items"] = accept("invoice_line_items", "line_item", iter(lines))
        # usage records of whole days up to the clock
        end = int(datetime(now.year, now.month, now.day, tzinfo=UTC).timestamp())
        out["usages"] = accept(
            "usages", "usage", self.pages("usages", {"usage_date[before]": end, "sort_by[asc]": "usage_date"})
        )
        for name in ("invoices", "invoice_line_items", "usages"):
            say(f"chargebee {name}: {len(out[name])}")
        if out[QUARANTINE_KEY]:
            say(f"chargebee quarantined: {len(out[QUARANTINE_KEY])}")
        return out

    def fetch_objects(self, kind: str, ids: list[str]) -> dict[str, list[dict]]:
        """Just these objects (a webhook named them): ``kind`` "invoice" (with its line items) or
        "subscription". A deleted or unknown id, or one the connector cannot accept, is left out: the
        nightly snapshot settles it (and quarantines the latter with its reason)."""
        from billing_ai.platforms.http import PlatformHTTPError

        if kind not in ("invoice", "subscription"):
            raise ValueError(f"cannot fetch {kind!r} objects from Chargebee one by one")
        out: dict[str, list[dict]] = {}
        for oid in ids:
            try:
                obj = self.http.request("GET", f"/{kind}s/{oid}")[kind]
            except PlatformHTTPError as e:
                if e.status != 404:
                    raise
                continue
            name = f"{kind}s"
            if problem(name, obj):
                continue
            lines = obj.pop("line_items", None) or []
            out.setdefault(name, []).append(scrub(kind, obj, self.pii_key))
            if kind == "invoice":
                out.setdefault("invoice_line_items", []).extend({**li, "invoice_id": oid} for li in lines)
        return out

    def close(self) -> None:
        self.http.close()


def meta(obj: dict | None) -> dict:
    """An object's merchant metadata (``meta_data`` on customers/subscriptions, ``metadata`` on catalog)."""
    if not obj:
        return {}
    m = obj.get("meta_data", obj.get("metadata")) or {}
    return json.loads(m) if isinstance(m, str) else dict(m)
