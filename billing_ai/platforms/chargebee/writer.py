"""Chargebee write-back: API v2 through ``PlatformHTTP``, every write with ``chargebee-idempotency-key``.

Mechanisms (Chargebee has no free-form metadata on most objects, so the audit
pointer ``billing_ai_audit_id=<action_id>#<seq>`` goes where Chargebee keeps
merchant notes):

* ``metadata_update``: the customer's or subscription's ``meta_data`` (Chargebee
  replaces it as a whole: read, merge, write back with the pointer in it);
* ``pending_invoice_item``: an unbilled charge on the customer's subscription
  (``POST /unbilled_charges/create``), which the next invoice picks up; its
  description ends with ``[<pointer>]`` (unbilled charges carry nothing else a
  read-back could find) and a comment on the subscription records it;
* ``credit_note``: ``POST /credit_notes`` against the invoice (refundable when
  paid, adjustment when still due), the pointer as the operation's comment;
* ``subscription_change``: ``POST /subscriptions/{id}/update_for_items`` with the
  new item price (it replaces the item's current price), ``prorate`` from the
  proposal, and the merchant's subscription item id carried over in
  ``meta_data.billing_ai_items`` in the same request, with the pointer.
* ``leave_pointer``: a comment on the customer (``POST /comments``).

Targets are canonical ids: customers, subscriptions, invoices and item prices
are Chargebee ids already; a subscription item id is looked up in the
subscription's ``meta_data.billing_ai_items``. Not carried out on Chargebee (the
router blocks them): ``invoice_line_description`` (lines of a posted invoice
cannot be edited), ``tier_upgrade_quote`` and ``payment_retry`` (not built yet).
"""

from __future__ import annotations

import json
from typing import Any

from billing_ai.platforms.chargebee.client import IDEMPOTENCY_HEADER
from billing_ai.platforms.http import PlatformHTTP, http_outcome
from billing_ai.retry import RetryPolicy
from billing_ai.writeback import prechecks as rules
from billing_ai.writeback.kinds import AUDIT_POINTER_KEY, Proposal
from billing_ai.writeback.outcomes import Applied, Contact, Permanent, none_if_missing, pointer

ITEMS_KEY = "billing_ai_items"
OPEN_STATUSES = ("payment_due", "not_paid", "posted")
LIVE_SUBSCRIPTION = ("active", "non_renewing", "in_trial", "future")
# Stripe's credit note reasons -> Chargebee reason codes
REASON_CODES = {
    "duplicate": "other",
    "order_change": "order_change",
    "product_unsatisfactory": "product_unsatisfactory",
}


def note(mark: dict[str, str]) -> str:
    return f"{AUDIT_POINTER_KEY}={mark[AUDIT_POINTER_KEY]}"


def _has_pointer(text: str | None, action_id: str) -> bool:
    return f"{AUDIT_POINTER_KEY}={action_id}#" in (text or "")


def _meta(obj: dict) -> dict:
    m = obj.get("meta_data") or {}
    return json.loads(m) if isinstance(m, str) else dict(m)


class ChargebeeWriter:
    """Writes through ``PlatformHTTP``. The key is a secret (``CHARGEBEE_PUSH_API_KEY``), never logged."""

    def __init__(
        self,
        api_key: str,
        api_base: str,
        requests_per_second: float = 10.0,
        policy: RetryPolicy = RetryPolicy(max_attempts=4, base_delay=0.2, max_delay=10),
    ):
        if not api_key:
            raise ValueError("CHARGEBEE_PUSH_API_KEY is not set")
        self.http = PlatformHTTP(
            "chargebee",
            f"{api_base.rstrip('/')}/api/v2",
            auth=(api_key, ""),
            requests_per_second=requests_per_second,
            policy=policy,
            idempotency_header=IDEMPOTENCY_HEADER,
        )

    def call(
        self, method: str, path: str, *, params: dict | None = None, data: dict | None = None, key: str | None = None
    ) -> Any:
        """One request (429s waited out and keyed 5xx retried by PlatformHTTP), its failure classified by
        :func:`billing_ai.platforms.http.http_outcome`."""
        return http_outcome(
            lambda: self.http.request(method, path, params=params, data=data, idempotency_key=key),
            lambda body: f"{_code(body)}: {_msg(body)}",
        )

    def read(self, path: str, params: dict | None = None) -> dict | None:
        """A read for a re-check or read-back; a missing object is None."""
        return none_if_missing(lambda: self.call("GET", path, params=params))

    def get(self, resource: str, oid: str) -> dict | None:
        body = self.read(f"/{resource}s/{oid}")
        return None if body is None else body[resource]

    def listing(self, resource: str, params: dict) -> list[dict]:
        out, params = [], {**params, "limit": 100}
        while True:
            page = self.call("GET", f"/{resource}", params=params)
            out += [next(iter(e.values())) for e in page.get("list", [])]
            if not page.get("next_offset"):
                return out
            params = {**params, "offset": page["next_offset"]}

    def close(self) -> None:
        self.http.close()


def _msg(body: Any) -> str:
    return body.get("message", "") if isinstance(body, dict) else str(body)[:300]


def _code(body: Any) -> str:
    return body.get("api_error_code", "") if isinstance(body, dict) else ""


class ChargebeeExecutor:
    """Re-check, read back and apply the platform kinds against Chargebee (the sinks live in the router)."""

    platform = "chargebee"
    kinds = frozenset({"metadata_update", "pending_invoice_item", "credit_note", "subscription_change"})

    def __init__(self, writer: ChargebeeWriter):
        self.w = writer

    # -- contact details read now, never stored; the audit pointer on the customer
    def contact(self, customer_id: str) -> Contact | None:
        cust = self.w.get("customer", customer_id)
        if cust is None or cust.get("deleted"):
            return None
        return Contact(
            email=cust.get("email"),
            email_opt_out=_meta(cust).get("email_opt_out") == "true",
            currency=(cust.get("preferred_currency_code") or "").lower() or None,
        )

    def leave_pointer(self, customer_id: str, key: str, mark: dict[str, str]) -> None:
        self.w.call(
            "POST",
            "/comments",
            data={"entity_type": "customer", "entity_id": customer_id, "notes": note(mark)},
            key=key,
        )

    # -- helpers
    def _subscription_for(self, customer_id: str, sub_id: str | None) -> dict | None:
        if sub_id:
            sub = self.w.get("subscription", sub_id)
            ok = sub and sub["customer_id"] == customer_id and sub["status"] in LIVE_SUBSCRIPTION
            return sub if ok else None
        subs = self.w.listing(
            "subscriptions", {"customer_id[is]": customer_id, "status[in]": json.dumps(list(LIVE_SUBSCRIPTION))}
        )
        return subs[0] if subs else None

    @staticmethod
    def _item_price_of(sub: dict, item_id: str) -> str | None:
        """The item price currently on ``sub`` whose merchant item id is ``item_id``."""
        items = _meta(sub).get(ITEMS_KEY) or {}
        current = {e["item_price_id"] for e in sub.get("subscription_items") or []}
        return next((p for p, v in items.items() if v.get("id") == item_id and p in current), None)

    # -- re-check against the platform's state now
    def precheck(self, p: Proposal) -> list[str]:
        params, kind, tid = p.typed_params().model_dump(), p.kind, p.target_id
        cust = None
        if p.target_type == "customer":
            cust = self.w.get("customer", tid)
            if cust is None or cust.get("deleted"):
                return rules.exists("customer", tid, None)
        if kind == "metadata_update":
            obj = cust if p.target_type == "customer" else self.w.get("subscription", tid)
            return rules.exists(p.target_type, tid, obj)
        if kind == "pending_invoice_item":
            problems = rules.same_currency(
                "customer", tid, cust.get("preferred_currency_code"), params["currency"], billed=True
            )
            if problems:
                return problems
            if self._subscription_for(tid, params.get("subscription")) is None:
                which = params.get("subscription") or "no subscription"
                return [
                    f"{which} is not a live subscription of {tid}: Chargebee bills unbilled charges "
                    "through a subscription"
                ]
        elif kind == "credit_note":
            inv = self.w.get("invoice", tid)
            return rules.credit_fits(
                tid,
                inv
                and rules.CreditableInvoice(
                    status=inv["status"],
                    creditable=inv["status"] in ("paid", *OPEN_STATUSES),
                    currency=inv["currency_code"],
                    uncredited=lambda: inv["total"] - self._credited(tid),
                ),
                params["amount"],
                params["currency"],
                needs="credit notes need a paid or due invoice",
            )
        elif kind == "subscription_change":
            sub = self.w.get("subscription", tid)
            problems = rules.subscription_live(tid, sub is not None and sub["status"] in LIVE_SUBSCRIPTION)
            if problems:
                return problems
            current = self._item_price_of(sub, params["item"])
            new = self.w.get("item_price", params["to_price"]) if current not in (None, params["to_price"]) else None
            problems = rules.price_change_allowed(
                tid,
                params["item"],
                params["to_price"],
                on_subscription=current is not None,
                already_current=current == params["to_price"],
                target=new and rules.TargetPrice(active=new.get("status") == "active", currency=new["currency_code"]),
                item_currency=sub["currency_code"],
            )
            if problems:
                return problems
            old = self.w.get("item_price", current)
            if old and new["item_id"] != old["item_id"]:
                return [f"price {params['to_price']} is for item {new['item_id']}, not {old['item_id']}"]
        return []

    def _credited(self, invoice_id: str) -> int:
        """Minor units credited against the invoice so far (voided credit notes excluded)."""
        notes = self.w.listing("credit_notes", {"reference_invoice_id[is]": invoice_id})
        return sum(cn["total"] for cn in notes if cn.get("status") != "voided")

    # -- read back: is the change already there? (after an unknown outcome)
    def read_back(self, p: Proposal) -> Applied | None:
        params, kind, tid, aid = p.typed_params().model_dump(), p.kind, p.target_id, p.action_id
        if kind == "metadata_update":
            obj = self.w.get("customer" if p.target_type == "customer" else "subscription", tid)
            meta = _meta(obj or {})
            done = all((meta.get(k) == v) if v != "" else (k not in meta) for k, v in params["metadata"].items())
            return Applied(tid) if obj and done and str(meta.get(AUDIT_POINTER_KEY, "")).startswith(f"{aid}#") else None
        if kind == "pending_invoice_item":
            sub = self._subscription_for(tid, params.get("subscription"))
            if sub is None:
                return None
            found = [
                c
                for c in self.w.listing("unbilled_charges", {"subscription_id[is]": sub["id"]})
                if _has_pointer(c.get("description"), aid)
            ]
            return Applied(found[0]["id"], found[0]) if found else None
        if kind == "credit_note":
            for cn in self.w.listing("credit_notes", {"reference_invoice_id[is]": tid}):
                comments = self.w.listing("comments", {"entity_type": "credit_note", "entity_id": cn["id"]})
                if any(_has_pointer(c.get("notes"), aid) for c in comments):
                    return Applied(cn["id"], cn)
            return None
        if kind == "subscription_change":
            sub = self.w.get("subscription", tid)
            return Applied(tid) if sub and self._item_price_of(sub, params["item"]) == params["to_price"] else None
        return None

    # -- apply, with the attempt's idempotency key and the audit pointer
    def apply(self, p: Proposal, key: str, audit_seq: int) -> Applied:
        params, kind, tid = p.typed_params().model_dump(), p.kind, p.target_id
        mark = pointer(p.action_id, audit_seq)
        if kind == "metadata_update":
            resource = "customer" if p.target_type == "customer" else "subscription"
            obj = self.w.get(resource, tid)
            if obj is None:
                raise Permanent(f"{resource} {tid} does not exist")
            meta = _meta(obj)
            for k, v in params["metadata"].items():
                if v == "":
                    meta.pop(k, None)
                else:
                    meta[k] = v
            meta.update(mark)
            body = self.w.call("POST", f"/{resource}s/{tid}", data={"meta_data": json.dumps(meta)}, key=key)
            return Applied(tid, {"metadata_keys": len(_meta(body[resource]))})
        if kind == "pending_invoice_item":
            sub = self._subscription_for(tid, params.get("subscription"))
            if sub is None:
                raise Permanent(f"{tid} has no live subscription to carry the charge")
            body = self.w.call(
                "POST",
                "/unbilled_charges/create",
                key=key,
                data={
                    "subscription_id": sub["id"],
                    "currency_code": params["currency"].upper(),
                    "charges[amount][0]": str(params["amount"]),
                    "charges[description][0]": f"{params['description']} [{note(mark)}]",
                },
            )
            charge = body["unbilled_charges"][0]
            self.w.call(
                "POST",
                "/comments",
                key=key + "-ptr",
                data={
                    "entity_type": "subscription",
                    "entity_id": sub["id"],
                    "notes": f"{note(mark)}: unbilled charge {charge['id']}",
                },
            )
            return Applied(charge["id"], {"amount": charge["amount"], "currency": charge["currency_code"].lower()})
        if kind == "credit_note":
            inv = self.w.get("invoice", tid)
            if inv is None:
                raise Permanent(f"invoice {tid} does not exist")
            body = self.w.call(
                "POST",
                "/credit_notes",
                key=key,
                data={
                    "reference_invoice_id": tid,
                    "total": str(params["amount"]),
                    "type": "refundable" if inv["status"] == "paid" else "adjustment",
                    "reason_code": REASON_CODES[params["reason"]],
                    "customer_notes": params["memo"],
                    "comment": note(mark),
                },
            )
            cn = body["credit_note"]
            return Applied(cn["id"], {"amount": cn["total"], "status": cn["status"]})
        if kind == "subscription_change":
            sub = self.w.get("subscription", tid)
            current = self._item_price_of(sub, params["item"]) if sub else None
            if current is None:
                raise Permanent(f"subscription item {params['item']} is not on {tid}")
            meta = _meta(sub)
            items = dict(meta.get(ITEMS_KEY) or {})
            items[params["to_price"]] = items[current]  # the merchant's item keeps its id, as on Stripe
            meta[ITEMS_KEY] = items
            meta.update(mark)
            entry = next(e for e in sub["subscription_items"] if e["item_price_id"] == current)
            data = {
                "subscription_items[item_price_id][0]": params["to_price"],
                "prorate": "false" if params["proration_behavior"] == "none" else "true",
                "meta_data": json.dumps(meta),
            }
            if entry.get("quantity") is not None:
                data["subscription_items[quantity][0]"] = str(entry["quantity"])
            if params["proration_behavior"] == "always_invoice":
                data["invoice_immediately"] = "true"
            body = self.w.call("POST", f"/subscriptions/{tid}/update_for_items", data=data, key=key)
            return Applied(tid, {"status": body["subscription"]["status"]})
        raise Permanent(f"no executor for kind {kind!r}")
