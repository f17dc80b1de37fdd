"""Zuora connector: plain httpx through :class:`PlatformHTTP` (no maintained official Python SDK takes a
base address), an OAuth client-credentials auth that refreshes its bearer token, exact decimals.

* Auth: ``POST /oauth/token`` (``client_id``/``client_secret``) -> bearer token with ``expires_in``;
  fetched lazily, refreshed a minute before it expires and once on a 401.
* One retry policy: :class:`PlatformHTTP` (token bucket, 429 waits ``Retry-After``, 5xx retried for
  reads and for writes carrying ``Idempotency-Key``). A 200 with ``"success": false`` (Zuora's v1 habit)
  is an error like a 4xx.
* Paging: Object Query ``cursor`` (accounts) and v1 ``pageSize`` + the ``nextPage`` URL.
* Money: Zuora sends decimal major units as JSON numbers. The transport hands them on as their exact
  text (never a float); :func:`to_minor` turns amounts into integer minor units and unit prices into
  exact minor-unit decimals with :mod:`billing_ai.money`. An object whose money cannot be read exactly
  (not a number, an unknown currency, an amount finer than the currency's minor unit) is quarantined.
* PII: names, e-mails and phones become tokens; addresses and payment-method references are dropped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx

from billing_ai.money import MoneyTypeError, UnknownCurrencyError, major_to_minor, to_decimal
from billing_ai.pii import tokenize
from billing_ai.platforms.http import PlatformHTTP, PlatformHTTPError
from billing_ai.platforms.spec import QUARANTINE_KEY, quarantine_row
from billing_ai.retry import RateLimited, RetryPolicy, Transient, retry_after_seconds


class MalformedMoney(ValueError):
    pass


class ExactJSONTransport(httpx.BaseTransport):
    """Hands JSON numbers with a fraction or exponent on as their exact text (a string), so that
    ``response.json()`` never makes a float of money."""

    def __init__(self, inner: httpx.BaseTransport | None = None):
        self.inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        r = self.inner.handle_request(request)
        if "json" not in r.headers.get("content-type", ""):
            return r
        content = r.read()
        try:
            text = json.dumps(json.loads(content, parse_float=lambda s: s))
        except ValueError:
            return r
        headers = [(k, v) for k, v in r.headers.items() if k.lower() not in ("content-length", "content-encoding")]
        return httpx.Response(
            r.status_code, headers=headers, content=text.encode(), request=request, extensions=r.extensions
        )

    def close(self) -> None:
        self.inner.close()


class ZuoraAuth(httpx.Auth):
    """OAuth 2.0 client credentials: a cached bearer token, refreshed before expiry and on a 401."""

    requires_response_body = True

    def __init__(self, base_url: str, client_id: str, client_secret: str, clock: Callable[[], float] = time.monotonic):
        self.url = base_url.rstrip("/") + "/oauth/token"
        self.client_id, self.client_secret, self.clock = client_id, client_secret, clock
        self.token: str | None = None
        self.expires_at = 0.0
        self.fetched = 0  # tokens fetched (stats)

    def _token_request(self) -> httpx.Request:
        return httpx.Request(
            "POST",
            self.url,
            data={"client_id": self.client_id, "client_secret": self.client_secret, "grant_type": "client_credentials"},
        )

    def _take(self, r: httpx.Response) -> None:
        if r.status_code == 429:
            raise RateLimited(retry_after_seconds(r.headers.get("retry-after")), "zuora token endpoint: 429")
        if r.status_code >= 500:
            raise Transient(f"zuora token endpoint: {r.status_code}")
        body = r.json() if r.content else {}
        if r.status_code != 200 or "access_token" not in body:
            raise PlatformHTTPError("zuora", "POST", "/oauth/token", r.status_code, body.get("error", body))
        self.token = body["access_token"]
        self.expires_at = self.clock() + float(body.get("expires_in", 3600)) - 60
        self.fetched += 1

    def auth_flow(self, request: httpx.Request):
        if self.token is None or self.clock() >= self.expires_at:
            self._take((yield self._token_request()))
        request.headers["Authorization"] = f"Bearer {self.token}"
        response = yield request
        if response.status_code == 401:  # revoked or expired early: one fresh token, one resend
            self._take((yield self._token_request()))
            request.headers["Authorization"] = f"Bearer {self.token}"
            yield request


class ZuoraHTTP(PlatformHTTP):
    """:class:`PlatformHTTP` with the OAuth auth, the exact-decimal transport and Zuora's ``success: false``."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        requests_per_second: float = 10.0,
        policy: RetryPolicy = RetryPolicy(),
        timeout: float = 30.0,
    ):
        if not client_id or not client_secret:
            raise ValueError("ZUORA_CLIENT_ID / ZUORA_CLIENT_SECRET are not set")
        super().__init__("zuora", base_url, requests_per_second=requests_per_second, policy=policy, timeout=timeout)
        self.auth = ZuoraAuth(base_url, client_id, client_secret)
        self.http.close()
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"), auth=self.auth, timeout=timeout, transport=ExactJSONTransport()
        )

    def request(self, method: str, path: str, **kw) -> Any:
        body = super().request(method, path, **kw)
        if isinstance(body, dict) and body.get("success") is False:
            raise PlatformHTTPError("zuora", method, path, 200, body)
        return body


# ---- money ---------------------------------------------------------------------------------------
def _dec(value: Any, what: str) -> Decimal:
    try:
        return to_decimal(value if not isinstance(value, (int, Decimal)) else value)
    except (ValueError, MoneyTypeError) as e:
        raise MalformedMoney(f"{what}: {e}") from None


def to_minor(value: Any, currency: str, what: str, *, whole: bool = True) -> int | str | None:
    """Zuora's major-unit decimal -> integer minor units (``whole``) or an exact minor-unit decimal string."""
    if value is None:
        return None
    d = _dec(value, what)
    try:
        m = major_to_minor(d, currency)
    except UnknownCurrencyError as e:
        raise MalformedMoney(f"{what}: {e}") from None
    if not whole:
        return format(m.normalize(), "f") if m != 0 else "0"
    if m != m.to_integral_value():
        raise MalformedMoney(f"{what}: {value} {currency.upper()} is finer than the currency's minor unit")
    return int(m)


def _cur(obj: dict, what: str) -> str:
    cur = obj.get("currency")
    if not isinstance(cur, str) or not cur:
        raise MalformedMoney(f"{what}: no currency")
    return cur.lower()


def convert_money(obj_type: str, obj: dict, currency: str | None = None) -> None:
    """Add ``<field>_minor`` beside each money field of a Zuora object, in place (raises MalformedMoney)."""
    if obj_type == "accounts":
        cur = _cur(obj, "account")
        for f in ("balance", "creditBalance"):
            obj[f"{f}_minor"] = to_minor(obj.get(f), cur, f"account.{f}")
    elif obj_type == "product_rate_plan_charges":
        for p in obj.get("pricing") or []:
            cur = _cur(p, "pricing")
            p["price_minor"] = to_minor(p.get("price"), cur, "pricing.price", whole=False)
            for t in p.get("tiers") or []:
                t["price_minor"] = to_minor(t.get("price"), cur, "tiers.price", whole=t.get("priceFormat") == "FlatFee")
    elif obj_type == "invoices":
        cur = _cur(obj, "invoice")
        for f in ("amount", "balance", "paymentAmount", "creditBalanceAdjustmentAmount", "starting_balance__c"):
            obj[f"{f}_minor"] = to_minor(obj.get(f), cur, f"invoice.{f}")
    elif obj_type == "invoice_items":
        obj["chargeAmount_minor"] = to_minor(obj.get("chargeAmount"), currency or "", "invoiceItem.chargeAmount")
    elif obj_type == "payments":
        cur = _cur(obj, "payment")
        for f in ("amount", "appliedAmount"):
            obj[f"{f}_minor"] = to_minor(obj.get(f), cur, f"payment.{f}")
    elif obj_type == "credit_memos":
        obj["amount_minor"] = to_minor(obj.get("amount"), _cur(obj, "creditMemo"), "creditMemo.amount")


# ---- PII -------------------------------------------------------------------------------------------
_CONTACT_TOKENS = {
    "firstName": "name",
    "lastName": "name",
    "nickname": "name",
    "workEmail": "email",
    "personalEmail": "email",
    "workPhone": "phone",
    "mobilePhone": "phone",
    "homePhone": "phone",
}
_CONTACT_DROP = ("address1", "address2", "city", "state", "postalCode", "country", "county", "zipCode", "fax")


def scrub(obj_type: str, obj: dict, key: str) -> dict:
    """Tokenize names, e-mails and phones; drop addresses and payment-method references. In place."""
    if obj_type in ("accounts", "subscriptions", "invoices") and obj.get(
        "name" if obj_type == "accounts" else "accountName"
    ):
        f = "name" if obj_type == "accounts" else "accountName"
        obj[f] = tokenize(obj[f], key, "name")
    for contact in ("billTo", "soldTo", "billToContact", "soldToContact"):
        c = obj.get(contact)
        if isinstance(c, dict):
            for f, kind in _CONTACT_TOKENS.items():
                if f in c:
                    c[f] = tokenize(c[f], key, kind) if c[f] else None
            for f in _CONTACT_DROP:
                c.pop(f, None)
    if obj_type == "payments":
        for f in ("paymentMethodId", "paymentMethodSnapshot", "bankIdentificationNumber", "secondPaymentReferenceId"):
            obj.pop(f, None)
    return obj


def _day_start(now: datetime) -> str:
    return datetime(now.year, now.month, now.day, tzinfo=UTC).isoformat()


class ZuoraConnector:
    """Read-only Zuora access returning plain, scrubbed dicts (``SPEC.raw_objects``)."""

    def __init__(
        self,
        api_base: str,
        client_id: str,
        client_secret: str,
        pii_key: str,
        requests_per_second: float = 10.0,
        page_size: int = 40,
        policy: RetryPolicy = RetryPolicy(),
    ):
        self.http = ZuoraHTTP(
            api_base, client_id, client_secret, requests_per_second=requests_per_second, policy=policy
        )
        self.page_size = page_size
        self.pii_key = pii_key

    @property
    def stats(self) -> dict:
        return {**self.http.stats, "tokens_fetched": self.http.auth.fetched}

    def close(self) -> None:
        self.http.close()

    # ---- paging ------------------------------------------------------------------------------------
    def v1_pages(self, path: str, key: str, params: dict | None = None) -> Iterator[dict]:
        """A v1 list: ``pageSize``, then follow the ``nextPage`` URL until there is none."""
        body = self.http.request("GET", path, params={**(params or {}), "pageSize": min(self.page_size, 40)})
        while True:
            yield from body.get(key) or []
            nxt = body.get("nextPage")
            if not nxt:
                return
            body = self.http.request("GET", nxt)

    def object_query(self, path: str) -> Iterator[dict]:
        """An Object Query list: ``pageSize`` and the ``cursor`` from the previous page's ``nextPage``."""
        params: dict = {"pageSize": min(self.page_size, 99)}
        while True:
            body = self.http.request("GET", path, params=params)
            yield from body.get("data") or []
            if not body.get("nextPage"):
                return
            params = {**params, "cursor": body["nextPage"]}

    def _accept(
        self,
        out: dict[str, list[dict]],
        bad: list[dict],
        obj_type: str,
        obj: Any,
        key_field: str = "id",
        currency: str | None = None,
    ) -> bool:
        """Land ``obj`` in ``out`` (money converted, PII scrubbed) or quarantine it in ``bad`` with the reason."""
        record_key = obj.get(key_field) if isinstance(obj, dict) else None
        if not isinstance(obj, dict) or not obj.get("id") or not isinstance(obj.get("id"), str):
            bad.append(quarantine_row(obj_type, None, "missing_id", obj, "no Zuora id"))
            return False
        if not record_key:
            bad.append(quarantine_row(obj_type, obj["id"], "missing_key", obj, f"no {key_field}"))
            return False
        try:
            convert_money(obj_type, obj, currency)
        except MalformedMoney as e:
            bad.append(quarantine_row(obj_type, str(record_key), "malformed_money", obj, str(e)))
            return False
        out[obj_type].append(scrub(obj_type, obj, self.pii_key))
        return True

    def fetch_objects(self, kind: str, ids: list[str]) -> dict[str, list[dict]]:
        """Just these objects (a callout named them by Zuora id), as raw objects: ``kind`` "invoice" (with its
        items) or "subscription". A deleted or unknown id is left out, and so is an object the snapshot would
        quarantine (the nightly snapshot records it); the nightly snapshot settles both."""
        if kind not in ("invoice", "subscription"):
            raise ValueError(f"cannot fetch {kind!r} objects from Zuora one by one")
        out: dict[str, list[dict]] = (
            {"invoices": [], "invoice_items": []} if kind == "invoice" else {"subscriptions": []}
        )
        bad: list[dict] = []
        for oid in ids:
            try:
                obj = self.http.request("GET", f"/v1/{kind}s/{oid}")
            except PlatformHTTPError as e:
                if e.status == 404:
                    continue
                raise
            obj.pop("success", None)
            if kind == "subscription":
                self._accept(out, bad, "subscriptions", obj, "subscriptionNumber")
            elif self._accept(out, bad, "invoices", obj, "invoiceNumber"):
                for it in self.v1_pages(f"/v1/invoices/{obj['id']}/items", "invoiceItems"):
                    if isinstance(it, dict):
                        it["invoiceId"] = obj["id"]
                    self._accept(out, bad, "invoice_items", it, currency=obj["currency"].lower())
        return out

    # ---- the snapshot ingestion lands --------------------------------------------------------------
    def fetch_snapshot(self, now: datetime, log: Callable[[str], None] | None = None) -> dict[str, list[dict]]:
        say = log or (lambda _m: None)
        out: dict[str, list[dict]] = {
            k: []
            for k in (
                "accounts",
                "products",
                "product_rate_plan_charges",
                "units_of_measure",
                "subscriptions",
                "invoices",
                "invoice_items",
                "payments",
                "credit_memos",
                "usage",
            )
        }
        bad: list[dict] = []

        def accept(obj_type: str, obj: Any, key_field: str = "id", currency: str | None = None) -> bool:
            return self._accept(out, bad, obj_type, obj, key_field, currency)

        for a in self.object_query("/object-query/accounts"):
            accept("accounts", a, "accountNumber")
        for p in self.v1_pages("/v1/catalog/products", "products"):
            plans = p.pop("productRatePlans", None) or []
            if not accept("products", p, "sku"):
                continue
            for prp in plans:
                for ch in prp.get("productRatePlanCharges") or []:
                    if isinstance(ch, dict):
                        ch.update(
                            productId=p["id"],
                            productRatePlanId=prp.get("id"),
                            productRatePlanName=prp.get("name"),
                            productRatePlanStatus=prp.get("status"),
                        )
                    accept("product_rate_plan_charges", ch)
        for u in self.http.request("GET", "/settings/units-of-measure").get("unitsOfMeasure") or []:
            accept("units_of_measure", u, "uomName")
        today = _day_start(now)
        for a in out["accounts"]:
            num = a["accountNumber"]
            for s in self.v1_pages(f"/v1/subscriptions/accounts/{num}", "subscriptions"):
                accept("subscriptions", s, "subscriptionNumber")
            for inv in self.v1_pages(f"/v1/transactions/invoices/accounts/{num}", "invoices"):
                if not accept("invoices", inv, "invoiceNumber"):
                    continue
                for it in self.v1_pages(f"/v1/invoices/{inv['id']}/items", "invoiceItems"):
                    if isinstance(it, dict):
                        it["invoiceId"] = inv["id"]
                    accept("invoice_items", it, currency=inv["currency"].lower())
            for pay in self.v1_pages(f"/v1/transactions/payments/accounts/{num}", "payments"):
                accept("payments", pay)
            for u in self.v1_pages(f"/v1/usage/accounts/{num}", "usage"):
                # whole days before the clock's day, like the other platforms' daily summaries
                if isinstance(u, dict) and str(u.get("startDateTime") or "") >= today:
                    continue
                accept("usage", u)
        for cm in self.v1_pages("/v1/creditmemos", "creditmemos"):
            accept("credit_memos", cm)
        for name, rows in out.items():
            say(f"zuora {name}: {len(rows)}")
        out[QUARANTINE_KEY] = bad
        if bad:
            say(f"zuora quarantined: {len(bad)}")
        return out
