"""Stripe write-back: the official SDK for every platform kind, the audit pointer in ``metadata``."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import stripe

from billing_ai.retry import RateLimited, RateLimiter, RetryPolicy, call_with_retries, retry_after_seconds
from billing_ai.writeback import prechecks as rules
from billing_ai.writeback.kinds import AUDIT_POINTER_KEY, STRIPE_METADATA_MAX_KEYS, Proposal
from billing_ai.writeback.outcomes import Applied, Contact, Permanent, Unknown, none_if_missing, pointer


def _has_pointer(obj: dict, action_id: str) -> bool:
    return str((obj.get("metadata") or {}).get(AUDIT_POINTER_KEY, "")).startswith(f"{action_id}#")


# ---- the SDK -----------------------------------------------------------------------------------------
class StripeWriter:
    """Writes through the official SDK. The key is a secret (``STRIPE_PUSH_API_KEY``), never logged."""

    def __init__(
        self,
        api_key: str,
        api_base: str,
        max_network_retries: int = 2,
        requests_per_second: float = 20.0,
        policy: RetryPolicy = RetryPolicy(max_attempts=5, base_delay=0.2, max_delay=10),
    ):
        if not api_key:
            raise ValueError("STRIPE_PUSH_API_KEY is not set")
        self.client = stripe.StripeClient(
            api_key, base_addresses={"api": api_base}, max_network_retries=max_network_retries
        )
        self.limiter = RateLimiter(requests_per_second)
        self.policy = policy

    def call(self, fn: Callable[[], Any]) -> dict:
        """One request: 429s waited out; 4xx -> Permanent; connection errors and 5xx -> Unknown."""

        def attempt():
            self.limiter.acquire()
            try:
                obj = fn()
            except stripe.RateLimitError as e:
                raise RateLimited(retry_after_seconds((e.headers or {}).get("retry-after")), str(e)) from e
            return obj.to_dict(for_json=True) if hasattr(obj, "to_dict") else obj

        try:
            return call_with_retries(attempt, self.policy, retry_transient=False)
        except RateLimited as e:
            raise Unknown(f"rate limited: {e}") from e
        except stripe.APIConnectionError as e:
            raise Unknown(f"connection: {e.user_message or e}") from e
        except stripe.APIError as e:  # 5xx: Stripe may have processed the request
            raise Unknown(f"{e.http_status}: {e.user_message or e}") from e
        except (stripe.AuthenticationError, stripe.PermissionError):
            raise  # configuration, not the action's fault: the run fails and the action stays approved
        except stripe.StripeError as e:  # 400, 402, 404, idempotency: the platform said no
            raise Permanent(
                f"{e.http_status} {getattr(e, 'code', None) or ''}: {e.user_message or e}".strip(), status=e.http_status
            ) from e

    def read(self, fn: Callable[[], Any]) -> dict | None:
        """A read for a re-check or read-back; a missing object is None."""
        return none_if_missing(lambda: self.call(fn))

    # ---- objects ---------------------------------------------------------------------------
    def customer(self, cid: str) -> dict | None:
        return self.read(lambda: self.client.v1.customers.retrieve(cid))

    def subscription(self, sid: str) -> dict | None:
        return self.read(lambda: self.client.v1.subscriptions.retrieve(sid))

    def invoice(self, iid: str) -> dict | None:
        return self.read(lambda: self.client.v1.invoices.retrieve(iid))

    def price(self, pid: str) -> dict | None:
        return self.read(lambda: self.client.v1.prices.retrieve(pid))

    def listing(self, fn: Callable[[dict], Any], params: dict) -> list[dict]:
        out, params = [], {**params, "limit": 100}
        while True:
            page = self.call(partial(fn, params))
            out += page["data"]
            if not page["has_more"] or not page["data"]:
                return out
            params = {**params, "starting_after": page["data"][-1]["id"]}


# ---- per-kind behaviour -------------------------------------------------------------------------
class StripeExecutor:
    """Re-check, read back and apply the platform kinds against Stripe (the sinks live in the router)."""

    platform = "stripe"
    kinds = frozenset(
        {
            "metadata_update",
            "invoice_line_description",
            "pending_invoice_item",
            "credit_note",
            "tier_upgrade_quote",
            "subscription_change",
            "payment_retry",
        }
    )

    def __init__(self, stripe_writer: StripeWriter):
        self.s = stripe_writer
        self.v1 = stripe_writer.client.v1

    # -- what the sinks need from the platform: contact details read now, never stored; the audit pointer
    def contact(self, customer_id: str) -> Contact | None:
        cust = self.s.customer(customer_id)
        if cust is None or cust.get("deleted"):
            return None
        return Contact(
            email=cust.get("email"),
            email_opt_out=(cust.get("metadata") or {}).get("email_opt_out") == "true",
            currency=cust.get("currency"),
        )

    def leave_pointer(self, customer_id: str, key: str, mark: dict[str, str]) -> None:
        self.s.call(lambda: self.v1.customers.update(customer_id, {"metadata": mark}, {"idempotency_key": key}))

    # -- re-check against the platform's state now (business rules that depend on it)
    def precheck(self, p: Proposal) -> list[str]:
        params, kind, tid = p.typed_params().model_dump(), p.kind, p.target_id
        cust = None  # read once: every customer-targeted check below looks at the same object
        if p.target_type == "customer":
            cust = self.s.customer(tid)
            if cust is None or cust.get("deleted"):
                return rules.exists("customer", tid, None)
        if kind == "metadata_update":
            obj = cust if p.target_type == "customer" else self.s.subscription(tid)
            if obj is None:
                return rules.exists(p.target_type, tid, None)
            keys = set(obj.get("metadata") or {}) | {AUDIT_POINTER_KEY}
            keys |= {k for k, v in params["metadata"].items() if v != ""}
            keys -= {k for k, v in params["metadata"].items() if v == ""}
            if len(keys) > STRIPE_METADATA_MAX_KEYS:
                return [
                    f"{p.target_type} would have {len(keys)} metadata keys; Stripe allows {STRIPE_METADATA_MAX_KEYS}"
                ]
        elif kind == "invoice_line_description":
            inv = self.s.invoice(tid)
            if inv is None:
                return rules.exists("invoice", tid, None)
            if inv["status"] != "draft":
                return [f"invoice {tid} is {inv['status']}: Stripe edits lines on draft invoices only"]
        elif kind == "pending_invoice_item":
            problems = rules.same_currency("customer", tid, cust.get("currency"), params["currency"], billed=True)
            if problems or not params.get("subscription"):
                return problems
            sub = self.s.subscription(params["subscription"])
            return rules.live_subscription_of(
                params["subscription"],
                tid,
                live=sub is not None and sub["status"] != "canceled",
                owner=sub and sub["customer"],
            )
        elif kind == "credit_note":
            inv = self.s.invoice(tid)
            return rules.credit_fits(
                tid,
                inv
                and rules.CreditableInvoice(
                    status=inv["status"],
                    creditable=inv["status"] in ("open", "paid"),
                    currency=inv["currency"],
                    uncredited=lambda: inv["total"] - self._credited(tid),
                ),
                params["amount"],
                params["currency"],
                needs="credit notes need an open or paid invoice",
            )
        elif kind in ("tier_upgrade_quote", "subscription_change"):
            sub_id = params["subscription"] if kind == "tier_upgrade_quote" else tid
            sub = self.s.subscription(sub_id)
            problems = rules.subscription_live(sub_id, sub is not None and sub["status"] != "canceled")
            if problems:
                return problems
            if kind == "tier_upgrade_quote" and sub["customer"] != tid:
                return [f"subscription {sub_id} does not belong to {tid}"]
            item = next((i for i in sub["items"]["data"] if i["id"] == params["item"]), None)
            price = self.s.price(params["to_price"]) if item is not None else None
            return rules.price_change_allowed(
                sub_id,
                params["item"],
                params["to_price"],
                on_subscription=item is not None,
                already_current=item is not None and item["price"]["id"] == params["to_price"],
                target=price and rules.TargetPrice(active=price.get("active", True), currency=price["currency"]),
                item_currency=item["price"]["currency"] if item else "",
            )
        elif kind == "payment_retry":
            inv = self.s.invoice(tid)
            if inv is None:
                return rules.exists("invoice", tid, None)
            return rules.retry_matches_approval(
                tid,
                open_=inv["status"] == "open",
                status=inv["status"],
                amount_due=inv["amount_remaining"],
                currency=inv["currency"],
                approved_amount=params["amount_due"],
                approved_currency=params["currency"],
            )
        return []

    def _credited(self, invoice_id: str) -> int:
        """Minor units credited against the invoice so far (voided credit notes excluded)."""
        notes = self.s.listing(self.v1.credit_notes.list, {"invoice": invoice_id})
        return sum(cn["amount"] for cn in notes if cn.get("status") != "void")

    # -- read back: is the change already there? (after an unknown outcome)
    def read_back(self, p: Proposal) -> Applied | None:
        params, kind, tid, aid = p.typed_params().model_dump(), p.kind, p.target_id, p.action_id
        if kind == "metadata_update":
            obj = self.s.customer(tid) if p.target_type == "customer" else self.s.subscription(tid)
            meta = (obj or {}).get("metadata") or {}
            done = all((meta.get(k) == v) if v != "" else (k not in meta) for k, v in params["metadata"].items())
            return Applied(tid) if obj and done else None
        if kind == "invoice_line_description":
            lines = self.s.listing(lambda q: self.v1.invoices.line_items.list(tid, q), {})
            line = next((x for x in lines if x["id"] == params["line_id"]), None)
            return Applied(params["line_id"]) if line and line.get("description") == params["description"] else None
        if kind == "pending_invoice_item":
            found = [i for i in self.s.listing(self.v1.invoice_items.list, {"customer": tid}) if _has_pointer(i, aid)]
            return Applied(found[0]["id"], found[0]) if found else None
        if kind == "credit_note":
            found = [c for c in self.s.listing(self.v1.credit_notes.list, {"invoice": tid}) if _has_pointer(c, aid)]
            return Applied(found[0]["id"], found[0]) if found else None
        if kind == "tier_upgrade_quote":
            found = [q for q in self.s.listing(self.v1.quotes.list, {"customer": tid}) if _has_pointer(q, aid)]
            return Applied(found[0]["id"], found[0]) if found else None
        if kind == "subscription_change":
            sub = self.s.subscription(tid)
            item = next((i for i in (sub or {}).get("items", {}).get("data", []) if i["id"] == params["item"]), None)
            return Applied(tid) if item and item["price"]["id"] == params["to_price"] else None
        if kind == "payment_retry":
            inv = self.s.invoice(tid)
            return Applied(tid, {"status": inv["status"]}) if inv and inv["status"] == "paid" else None
        return None

    # -- apply, with the attempt's idempotency key and the audit pointer in the same request
    def apply(self, p: Proposal, key: str, audit_seq: int) -> Applied:
        params, kind, tid = p.typed_params().model_dump(), p.kind, p.target_id  # schema defaults filled in
        opts = {"idempotency_key": key}
        mark = pointer(p.action_id, audit_seq)
        if kind == "metadata_update":
            svc = self.v1.customers if p.target_type == "customer" else self.v1.subscriptions
            obj = self.s.call(lambda: svc.update(tid, {"metadata": {**params["metadata"], **mark}}, opts))
            return Applied(tid, {"metadata_keys": len(obj.get("metadata") or {})})
        if kind == "invoice_line_description":
            obj = self.s.call(
                lambda: self.v1.invoices.line_items.update(
                    tid, params["line_id"], {"description": params["description"], "metadata": mark}, opts
                )
            )
            return Applied(obj["id"], {"description": obj.get("description")})
        if kind == "pending_invoice_item":
            body = {
                "customer": tid,
                "amount": params["amount"],
                "currency": params["currency"],
                "description": params["description"],
                "metadata": mark,
            }
            if params.get("subscription"):
                body["subscription"] = params["subscription"]
            obj = self.s.call(lambda: self.v1.invoice_items.create(body, opts))
            return Applied(obj["id"], {"amount": obj["amount"], "currency": obj["currency"]})
        if kind == "credit_note":
            obj = self.s.call(
                lambda: self.v1.credit_notes.create(
                    {
                        "invoice": tid,
                        "amount": params["amount"],
                        "reason": params["reason"],
                        "memo": params["memo"],
                        "metadata": mark,
                    },
                    opts,
                )
            )
            return Applied(obj["id"], {"amount": obj["amount"], "status": obj.get("status")})
        if kind == "tier_upgrade_quote":
            obj = self.s.call(
                lambda: self.v1.quotes.create(
                    {
                        "customer": tid,
                        "line_items": [{"price": params["to_price"], "quantity": 1}],
                        "description": f"Upgrade of {params['item']} to {params['to_price']}",
                        "metadata": mark,
                    },
                    opts,
                )
            )
            return Applied(obj["id"], {"status": obj.get("status")})
        if kind == "subscription_change":
            obj = self.s.call(
                lambda: self.v1.subscriptions.update(
                    tid,
                    {
                        "items": [{"id": params["item"], "price": params["to_price"]}],
                        "proration_behavior": params["proration_behavior"],
                        "metadata": mark,
                    },
                    opts,
                )
            )
            return Applied(tid, {"status": obj.get("status")})
        if kind == "payment_retry":
            obj = self.s.call(lambda: self.v1.invoices.pay(tid, {}, opts))
            # pay() takes no metadata: the pointer is a second, idempotent update of the invoice
            self.s.call(lambda: self.v1.invoices.update(tid, {"metadata": mark}, {"idempotency_key": key + "-ptr"}))
            return Applied(tid, {"status": obj.get("status"), "amount_paid": obj.get("amount_paid")})
        raise Permanent(f"no executor for kind {kind!r}")
