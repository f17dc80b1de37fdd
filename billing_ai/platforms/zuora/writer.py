"""Zuora write-back: custom fields, Orders, credit and debit memos, each write carrying the audit pointer.

* ``metadata_update``: ``PUT /v1/accounts/{accountNumber}`` or ``PUT /v1/subscriptions/{subscriptionNumber}``
  with custom fields ``<key>__c`` (an empty value clears one) and ``billing_ai_audit_id__c``. PUT is
  idempotent by nature (Zuora takes ``Idempotency-Key`` on POST and PATCH only).
* ``pending_invoice_item``: Zuora has no pending invoice items; the corrective charge is a debit memo
  (``POST /v1/debitmemos``), a billing document collected like an invoice.
* ``credit_note``: a credit memo from the invoice (``POST /v1/creditmemos/invoice/{id}``), the amount
  spread over the invoice's charge items.
* ``subscription_change``: an Order (``POST /v1/orders``) removing the item's rate plan and adding the
  target price's rate plan (Zuora prorates; the new charge gets its own charge number).
* Every POST carries ``Idempotency-Key`` (the attempt's key): a resend with the same key gets the first
  answer. ``billing_ai_audit_id__c = "<action_id>#<seq>"`` is set in the same request, and
  :meth:`ZuoraExecutor.read_back` finds an earlier attempt's change by it.
* Not carried out (the router blocks them): ``invoice_line_description`` (posted invoices are immutable),
  ``tier_upgrade_quote`` (Zuora quotes live in Zuora CPQ/Salesforce, not the billing API),
  ``payment_retry`` (payment runs and gateways are not emulated).

Targets are canonical ids: accountNumber and subscriptionNumber are Zuora keys; an invoice is looked
up by its ``invoice_id__c`` (the sandbox resolves it on ``GET /v1/invoices/{key}``; a real tenant would
use an Object Query filter); a price by the catalog charge's ``price_id__c``.
"""

from __future__ import annotations

import re
from decimal import Decimal

from billing_ai.money import format_minor, minor_unit_exponent
from billing_ai.platforms.http import http_outcome
from billing_ai.platforms.zuora.client import ZuoraHTTP, to_minor
from billing_ai.retry import RetryPolicy
from billing_ai.writeback import prechecks as rules
from billing_ai.writeback.kinds import AUDIT_POINTER_KEY, Proposal
from billing_ai.writeback.outcomes import Applied, Contact, Permanent, none_if_missing, pointer

POINTER_FIELD = AUDIT_POINTER_KEY + "__c"
FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def to_major(amount_minor: int, currency: str) -> str:
    """Integer minor units -> Zuora's major-unit decimal, as exact text."""
    return str(Decimal(amount_minor).scaleb(-minor_unit_exponent(currency)))


def _has_pointer(obj: dict, action_id: str) -> bool:
    return str(obj.get(POINTER_FIELD) or "").startswith(f"{action_id}#")


class ZuoraExecutor:
    """Re-check, read back and apply the platform kinds against Zuora (the sinks live in the router)."""

    platform = "zuora"
    kinds = frozenset({"metadata_update", "pending_invoice_item", "credit_note", "subscription_change"})

    def __init__(
        self,
        api_base: str,
        client_id: str,
        client_secret: str,
        requests_per_second: float = 10.0,
        policy: RetryPolicy = RetryPolicy(max_attempts=4, base_delay=0.2, max_delay=10),
    ):
        self.http = ZuoraHTTP(
            api_base, client_id, client_secret, requests_per_second=requests_per_second, policy=policy
        )

    # ---- requests ------------------------------------------------------------------------------------
    def call(
        self, method: str, path: str, *, json: dict | None = None, params: dict | None = None, key: str | None = None
    ) -> dict:
        """One request: 429s and (keyed or read) 5xx retried by PlatformHTTP; 4xx -> Permanent;
        still failing, a dropped connection, or 409 (the same key still in flight) -> Unknown."""
        return http_outcome(
            lambda: self.http.request(method, path, json=json, params=params, idempotency_key=key) or {},
            lambda body: f"zuora: {_reason(body)}",
            unknown_statuses=frozenset({409}),
        )

    def read(self, path: str, params: dict | None = None) -> dict | None:
        return none_if_missing(lambda: self.call("GET", path, params=params))

    def listing(self, path: str, key: str, params: dict | None = None) -> list[dict]:
        out, body = [], self.call("GET", path, params={**(params or {}), "pageSize": 40})
        while True:
            out += body.get(key) or []
            if not body.get("nextPage"):
                return out
            body = self.call("GET", body["nextPage"])

    def account(self, cid: str) -> dict | None:
        body = self.read(f"/v1/accounts/{cid}")
        return {**body["basicInfo"], "billTo": body.get("billToContact") or {}} if body else None

    def subscription(self, sid: str) -> dict | None:
        return self.read(f"/v1/subscriptions/{sid}")

    def invoice(self, iid: str) -> dict | None:
        return self.read(f"/v1/invoices/{iid}")

    def catalog_charge(self, price_id: str) -> tuple[dict, dict] | None:
        """(product rate plan, its charge) whose charge carries ``price_id__c = price_id``."""
        for prod in self.listing("/v1/catalog/products", "products"):
            for prp in prod.get("productRatePlans") or []:
                for ch in prp.get("productRatePlanCharges") or []:
                    if ch.get("price_id__c") == price_id:
                        return prp, ch
        return None

    @staticmethod
    def current_charge(sub: dict, number: str) -> tuple[dict, dict] | None:
        for rp in sub.get("ratePlans") or []:
            if rp.get("lastChangeType") == "Remove":
                continue
            for ch in rp.get("ratePlanCharges") or []:
                if ch.get("number") == number:
                    return rp, ch
        return None

    # ---- what the sinks need: contact details read now (never stored), the audit pointer ---------------
    def contact(self, customer_id: str) -> Contact | None:
        acct = self.account(customer_id)
        if acct is None:
            return None
        return Contact(
            email=acct["billTo"].get("workEmail") or acct["billTo"].get("personalEmail"),
            email_opt_out=acct.get("email_opt_out__c") == "true",
            currency=str(acct.get("currency") or "").lower() or None,
        )

    def leave_pointer(self, customer_id: str, key: str, mark: dict[str, str]) -> None:
        self.call("PUT", f"/v1/accounts/{customer_id}", json={f"{k}__c": v for k, v in mark.items()})

    # ---- re-check against the platform's state now -------------------------------------------------------
    def precheck(self, p: Proposal) -> list[str]:
        params, kind, tid = p.typed_params().model_dump(), p.kind, p.target_id
        acct = None
        if p.target_type == "customer":
            acct = self.account(tid)
            if acct is None:
                return rules.exists("customer", tid, None)
        if kind == "metadata_update":
            obj = acct if p.target_type == "customer" else self.subscription(tid)
            if obj is None:
                return rules.exists(p.target_type, tid, None)
            bad = [k for k in params["metadata"] if not FIELD_NAME.match(k)]
            if bad:
                return [f"metadata keys {bad} cannot be Zuora custom field names (<key>__c)"]
        elif kind == "pending_invoice_item":
            # a Zuora account always has a currency: not knowing it fails closed
            problems = rules.same_currency(
                "customer", tid, str(acct.get("currency") or ""), params["currency"], billed=True, required=True
            )
            if problems or not params.get("subscription"):
                return problems
            sub = self.subscription(params["subscription"])
            return rules.live_subscription_of(
                params["subscription"],
                tid,
                live=sub is not None and sub.get("status") == "Active",
                owner=sub and sub.get("accountNumber"),
            )
        elif kind == "credit_note":
            inv = self.invoice(tid)
            cur = inv and str(inv["currency"]).lower()
            return rules.credit_fits(
                tid,
                inv
                and rules.CreditableInvoice(
                    status=str(inv.get("status")),
                    creditable=inv.get("status") == "Posted",
                    currency=cur,
                    uncredited=lambda: to_minor(inv["amount"], cur, "invoice.amount") - self._credited(inv, cur),
                ),
                params["amount"],
                params["currency"],
                needs="credit memos need a posted invoice",
            )
        elif kind == "subscription_change":
            if params["proration_behavior"] != "create_prorations":
                return [f"proration_behavior {params['proration_behavior']!r}: a Zuora order prorates by itself"]
            sub = self.subscription(tid)
            problems = rules.subscription_live(tid, sub is not None and sub.get("status") == "Active")
            if problems:
                return problems
            found = self.current_charge(sub, params["item"])
            target = self.catalog_charge(params["to_price"]) if found is not None else None
            return rules.price_change_allowed(
                tid,
                params["item"],
                params["to_price"],
                on_subscription=found is not None,
                already_current=bool(found and target and found[1].get("productRatePlanChargeId") == target[1]["id"]),
                target=target
                and rules.TargetPrice(
                    active=target[0].get("status") == "Active", currency=target[1]["pricing"][0]["currency"]
                ),
                item_currency=str(sub.get("currency") or ""),
            )
        return []

    def _credited(self, inv: dict, currency: str) -> int:
        """Minor units credited against the invoice so far (canceled credit memos excluded)."""
        memos = self.listing("/v1/creditmemos", "creditmemos", {"referredInvoiceId": inv["id"]})
        return sum(
            to_minor(cm["amount"], currency, "creditMemo.amount") for cm in memos if cm.get("status") != "Canceled"
        )

    # ---- read back: is the change already there? -------------------------------------------------------
    def read_back(self, p: Proposal) -> Applied | None:
        params, kind, tid, aid = p.typed_params().model_dump(), p.kind, p.target_id, p.action_id
        if kind == "metadata_update":
            obj = self.account(tid) if p.target_type == "customer" else self.subscription(tid)
            if not obj:
                return None
            done = all(
                (obj.get(f"{k}__c") == v) if v != "" else obj.get(f"{k}__c") is None
                for k, v in params["metadata"].items()
            )
            return Applied(tid) if done and _has_pointer(obj, aid) else None
        if kind == "pending_invoice_item":
            found = [
                m for m in self.listing("/v1/debitmemos", "debitmemos", {"accountNumber": tid}) if _has_pointer(m, aid)
            ]
            return Applied(found[0]["number"], {"id": found[0]["id"]}) if found else None
        if kind == "credit_note":
            inv = self.invoice(tid)
            found = (
                [
                    m
                    for m in self.listing("/v1/creditmemos", "creditmemos", {"referredInvoiceId": inv["id"]})
                    if _has_pointer(m, aid)
                ]
                if inv
                else []
            )
            return Applied(found[0]["number"], {"id": found[0]["id"]}) if found else None
        if kind == "subscription_change":
            found = [o for o in self.listing(f"/v1/orders/subscription/{tid}", "orders") if _has_pointer(o, aid)]
            return Applied(found[0]["orderNumber"], {"status": found[0].get("status")}) if found else None
        return None

    # ---- apply, with the attempt's idempotency key and the audit pointer in the same request -------------
    def apply(self, p: Proposal, key: str, audit_seq: int) -> Applied:
        params, kind, tid = p.typed_params().model_dump(), p.kind, p.target_id
        mark = {f"{k}__c": v for k, v in pointer(p.action_id, audit_seq).items()}
        if kind == "metadata_update":
            path = f"/v1/{'accounts' if p.target_type == 'customer' else 'subscriptions'}/{tid}"
            self.call("PUT", path, json={**{f"{k}__c": v for k, v in params["metadata"].items()}, **mark})
            return Applied(tid, {"custom_fields": len(params["metadata"]) + 1})
        if kind == "pending_invoice_item":
            cur = params["currency"]
            body = {
                "accountNumber": tid,
                "reasonCode": "Charge Dispute",
                "comment": params["description"],
                "charges": [{"amount": to_major(params["amount"], cur), "comment": params["description"]}],
                **mark,
            }
            if params.get("subscription"):
                body["subscription_number__c"] = params["subscription"]
            memo = self.call("POST", "/v1/debitmemos", json=body, key=key)
            return Applied(
                memo.get("number"), {"id": memo.get("id"), "amount": str(memo.get("amount")), "currency": cur}
            )
        if kind == "credit_note":
            inv = self.invoice(tid)
            if inv is None:
                raise Permanent(f"invoice {tid} does not exist on Zuora")
            cur = params["currency"]
            items, left = [], params["amount"]
            for it in self.listing(f"/v1/invoices/{inv['id']}/items", "invoiceItems"):
                if left <= 0 or it.get("processingType", "Charge") != "Charge":
                    continue
                room = to_minor(it["chargeAmount"], cur, "invoiceItem.chargeAmount")
                if room > 0:
                    take = min(room, left)
                    items.append({"invoiceItemId": it["id"], "amount": to_major(take, cur)})
                    left -= take
            if left > 0:
                raise Permanent(f"invoice {tid} has no charge items to credit {format_minor(left, cur)} against")
            memo = self.call(
                "POST",
                f"/v1/creditmemos/invoice/{inv['id']}",
                key=key,
                json={"reasonCode": params["reason"], "comment": params["memo"], "items": items, **mark},
            )
            return Applied(
                memo.get("number"),
                {"id": memo.get("id"), "amount": str(memo.get("amount")), "status": memo.get("status")},
            )
        if kind == "subscription_change":
            sub = self.subscription(tid)
            found = self.current_charge(sub or {}, params["item"])
            target = self.catalog_charge(params["to_price"])
            if sub is None or found is None or target is None:
                raise Permanent(f"subscription {tid}, item {params['item']} or price {params['to_price']} is gone")
            order = self.call(
                "POST",
                "/v1/orders",
                key=key,
                json={
                    "existingAccountNumber": sub["accountNumber"],
                    "subscriptions": [
                        {
                            "subscriptionNumber": tid,
                            "orderActions": [
                                {"type": "RemoveProduct", "removeProduct": {"ratePlanId": found[0]["id"]}},
                                {"type": "AddProduct", "addProduct": {"productRatePlanId": target[0]["id"]}},
                            ],
                        }
                    ],
                    **mark,
                },
            )
            return Applied(order.get("orderNumber"), {"status": order.get("status")})
        raise Permanent(f"no Zuora executor for kind {kind!r}")


def _reason(body) -> str:
    if isinstance(body, dict) and body.get("reasons"):
        return "; ".join(f"{r.get('code')}: {r.get('message')}" for r in body["reasons"])
    return str(body)[:300]
