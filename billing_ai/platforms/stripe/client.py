"""Stripe connector: the official SDK, one retry policy, PII tokenized on the way in.

* Transient errors (5xx, 409, connection) are retried by the SDK's own
  ``max_network_retries`` (it sends the same idempotency key on retried POSTs).
* 429s are retried by :func:`billing_ai.retry.call_with_retries`
  honouring ``Retry-After``; the SDK does not retry them itself.
* A read whose connection broke in a way the SDK declines to retry (a response
  cut off mid-body) is retried by the same wrapper: reads are safe to repeat.
  No error class is retried by both the SDK and the wrapper.
* A client-side token bucket keeps us under the account's rate limit.
* Pages are requested one by one (``starting_after``) so each page request goes
  through the limiter and the 429 wrapper: no nested retry loops.
* Names, e-mails and phone numbers become keyed-hash tokens before a payload
  leaves this module; addresses and payment-method details are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any

import stripe

from billing_ai.pii import tokenize
from billing_ai.retry import (
    RateLimited,
    RateLimiter,
    RetryPolicy,
    Transient,
    call_with_retries,
    retry_after_seconds,
)

log = logging.getLogger(__name__)

# object type -> (field -> token kind), fields to drop
_PII_TOKENS: dict[str, dict[str, str]] = {
    "customer": {"name": "name", "email": "email", "phone": "phone", "description": "name"},
    "invoice": {"customer_name": "name", "customer_email": "email", "customer_phone": "phone"},
}
_PII_DROP: dict[str, tuple[str, ...]] = {
    "customer": ("address", "shipping", "sources", "default_source", "tax_ids", "invoice_settings"),
    "invoice": (
        "customer_address",
        "customer_shipping",
        "customer_tax_ids",
        "shipping_details",
        "default_payment_method",
        "default_source",
        "account_name",
    ),
    "payment_intent": (
        "payment_method",
        "payment_method_options",
        "shipping",
        "client_secret",
        "source",
        "receipt_email",
        "latest_charge",
        "payment_details",
    ),
}


def scrub(obj: dict, key: str) -> dict:
    """Tokenize PII fields and drop payment-method and address details, in place."""
    typ = obj.get("object", "")
    for field, kind in _PII_TOKENS.get(typ, {}).items():
        if field in obj:
            obj[field] = tokenize(obj[field], key, kind) if obj[field] else None
    for field in _PII_DROP.get(typ, ()):
        obj.pop(field, None)
    if typ == "payment_intent" and isinstance(obj.get("last_payment_error"), dict):
        err = obj["last_payment_error"]
        for f in ("payment_method", "source", "charge", "payment_intent", "setup_intent"):
            err.pop(f, None)
    return obj


def _exact(value) -> str:
    """The SDK parses JSON numbers as floats; recover the decimal text they were sent as."""
    return str(Decimal(repr(value))) if isinstance(value, float) else str(value)


class StripeConnector:
    """Read-only Stripe access returning plain, scrubbed dicts."""

    def __init__(
        self,
        api_key: str,
        api_base: str,
        pii_key: str,
        max_network_retries: int = 3,
        requests_per_second: float = 20.0,
        page_size: int = 100,
        policy: RetryPolicy = RetryPolicy(),
    ):
        if not api_key:
            raise ValueError("STRIPE_API_KEY is not set")
        self.client = stripe.StripeClient(
            api_key, base_addresses={"api": api_base}, max_network_retries=max_network_retries
        )
        self.limiter = RateLimiter(requests_per_second, burst=max(1, int(requests_per_second)))
        self.page_size = page_size
        self.policy = policy
        self.pii_key = pii_key
        # SDK calls made (the SDK's own 5xx retries happen inside one call), 429s waited out,
        # reads retried after a broken response
        self.stats = {"requests": 0, "rate_limited": 0, "broken_reads": 0}

    # ---- the one place a request is made -----------------------------------------
    def call(self, fn: Callable[[], Any]) -> Any:
        """One read request (the connector only reads), through the limiter and the retry wrapper."""

        def attempt():
            self.limiter.acquire()
            self.stats["requests"] += 1
            try:
                return fn()
            except stripe.RateLimitError as e:
                self.stats["rate_limited"] += 1
                raise RateLimited(retry_after_seconds((e.headers or {}).get("retry-after")), str(e)) from e
            except stripe.APIConnectionError as e:
                if getattr(e, "should_retry", False):
                    raise  # the SDK already retried this class of error: not a second time
                self.stats["broken_reads"] += 1
                raise Transient(str(e)) from e

        try:
            return call_with_retries(attempt, self.policy, retry_transient=True)
        except (RateLimited, Transient) as e:
            raise e.__cause__ or e  # noqa: B904 -- the SDK's own error, unchanged: callers know that type

    def _pages(self, list_fn: Callable[[dict], Any], params: dict) -> Iterator[dict]:
        params = {**params, "limit": self.page_size}
        while True:
            page = self.call(partial(list_fn, params))
            data = page.data
            for obj in data:
                yield scrub(obj.to_dict(for_json=True), self.pii_key)
            if not page.has_more or not data:
                return
            params = {**params, "starting_after": data[-1].id}

    # ---- objects ---------------------------------------------------------------------
    def customers(self) -> Iterator[dict]:
        return self._pages(self.client.v1.customers.list, {})

    def products(self) -> Iterator[dict]:
        return self._pages(self.client.v1.products.list, {})

    def prices(self) -> Iterator[dict]:
        return self._pages(self.client.v1.prices.list, {"expand": ["data.tiers"]})

    def meters(self) -> Iterator[dict]:
        return self._pages(self.client.v1.billing.meters.list, {})

    def subscriptions(self) -> Iterator[dict]:
        return self._pages(self.client.v1.subscriptions.list, {"status": "all"})

    def invoices(self) -> Iterator[dict]:
        return self._pages(self.client.v1.invoices.list, {})

    def invoice_lines(self, invoice: dict) -> Iterator[dict]:
        """All lines of an invoice: the embedded first page, then the rest."""
        embedded = invoice.get("lines") or {"data": [], "has_more": False}
        yield from embedded["data"]
        if embedded.get("has_more") and embedded["data"]:
            params = {"starting_after": embedded["data"][-1]["id"]}
            yield from self._pages(lambda p: self.client.v1.invoices.line_items.list(invoice["id"], p), params)

    def payment_intents(self) -> Iterator[dict]:
        return self._pages(self.client.v1.payment_intents.list, {})

    def credit_notes(self) -> Iterator[dict]:
        return self._pages(self.client.v1.credit_notes.list, {})

    # ---- the snapshot ingestion lands ----------------------------------------------------
    def fetch_snapshot(self, now: datetime, log: Callable[[str], None] | None = None) -> dict[str, list[dict]]:
        """Every object ingestion needs, as scrubbed dicts (``SPEC.raw_objects``). HTTP only."""
        say = log or (lambda _m: None)
        out: dict[str, list[dict]] = {}
        for name in (
            "customers",
            "products",
            "prices",
            "meters",
            "subscriptions",
            "invoices",
            "payment_intents",
            "credit_notes",
        ):
            out[name] = list(getattr(self, name)())
            say(f"stripe {name}: {len(out[name])}")
        out["invoice_lines"] = [ln for inv in out["invoices"] for ln in self.invoice_lines(inv)]
        for inv in out["invoices"]:
            inv.pop("lines", None)  # landed separately, complete
        # meter event summaries: whole days up to the clock, per customer x meter, from the first subscription
        first_start: dict[str, int] = {}
        for s in out["subscriptions"]:
            first_start[s["customer"]] = min(first_start.get(s["customer"], 2**62), int(s["start_date"]))
        end = int(datetime(now.year, now.month, now.day, tzinfo=UTC).timestamp())
        summaries = []
        for m in out["meters"]:
            for cust, start in sorted(first_start.items()):
                start_day = start // 86400 * 86400
                if start_day >= end:
                    continue
                for s in self.meter_event_summaries(m["id"], cust, start_day, end):
                    s["customer"] = cust
                    s["aggregated_value"] = _exact(s["aggregated_value"])
                    summaries.append(s)
        out["meter_event_summaries"] = summaries
        say(f"stripe meter_event_summaries: {len(summaries)}")
        return out

    def fetch_objects(self, kind: str, ids: list[str]) -> dict[str, list[dict]]:
        """Just these objects (a webhook named them), as raw objects: ``kind`` "invoice" (with its lines)
        or "subscription". A deleted or unknown id is left out (the nightly snapshot settles it)."""
        out: dict[str, list[dict]] = {}
        for oid in ids:
            try:
                if kind == "invoice":
                    inv = scrub(
                        self.call(partial(self.client.v1.invoices.retrieve, oid)).to_dict(for_json=True), self.pii_key
                    )
                    out.setdefault("invoice_lines", []).extend(self.invoice_lines(inv))
                    inv.pop("lines", None)
                    out.setdefault("invoices", []).append(inv)
                elif kind == "subscription":
                    sub = self.call(partial(self.client.v1.subscriptions.retrieve, oid)).to_dict(for_json=True)
                    out.setdefault("subscriptions", []).append(scrub(sub, self.pii_key))
                else:
                    raise ValueError(f"cannot fetch {kind!r} objects from Stripe one by one")
            except stripe.InvalidRequestError as e:
                if e.http_status != 404:
                    raise
                log.info("stripe %s %s no longer exists", kind, oid)
        return out

    def meter_event_summaries(self, meter_id: str, customer: str, start: int, end: int) -> Iterator[dict]:
        """Daily summaries for one customer and meter in [start, end) (day-aligned)."""
        params = {"customer": customer, "start_time": start, "end_time": end, "value_grouping_window": "day"}
        return self._pages(lambda p: self.client.v1.billing.meters.event_summaries.list(meter_id, p), params)
