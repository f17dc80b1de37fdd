"""Execute one approved action: exactly once on the platform, every step audited.

The loop for one action (:func:`push_action`):

1. claim it in the ledger (a new attempt with its own idempotency key);
2. if an earlier attempt's outcome is unknown (a timeout, a dropped
   connection, a 5xx after sending), read the platform back first: if the
   change is there, record it as applied and stop; never resend blind;
3. re-check the business rules and the platform's current state (the plan
   still exists and is not already active, the invoice is still open, the
   customer has not opted out of e-mail...); a failed re-check blocks the
   action with the reason;
4. send, with the attempt's idempotency key (the SDK resends the same key on
   its own network retries); a 429 waits ``Retry-After``; a permanent error
   (4xx, a card decline) fails the action with the platform's message; an
   unknown outcome goes back to 2 after a backoff;
5. record the platform's response and leave the audit pointer on the object
   touched (``metadata[billing_ai_audit_id] = "<action_id>#<audit seq>"``),
   in the same request where the API allows it.

Only the typed ``params`` and the target reach a request; rationale and
evidence text never do. Contact details (the e-mail address) are read from the
platform here, at push time, and never stored.
"""

from __future__ import annotations

import html
import os
import re
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from string import Template
from typing import Any, Callable

import httpx
import stripe

from billing_ai.actions.kinds import AUDIT_POINTER_KEY, STRIPE_METADATA_MAX_KEYS, Proposal
from billing_ai.actions.ledger import Claim, Ledger
from billing_ai.actions.policy import Policy
from billing_ai.money import format_minor
from billing_ai.platforms.retry import RateLimited, RateLimiter, RetryPolicy, Transient, call_with_retries


class Permanent(Exception):
    """The platform refused: resending the same request cannot succeed."""


class Unknown(Exception):
    """The request may or may not have been applied."""


class PushIncomplete(Exception):
    """Attempts ran out with the outcome still unknown: the run fails and a retry reads back first."""


@dataclass(frozen=True)
class Applied:
    platform_object: str | None
    response: dict = field(default_factory=dict)


def pointer(action_id: str, audit_seq: int) -> dict[str, str]:
    return {AUDIT_POINTER_KEY: f"{action_id}#{audit_seq}"}


def _has_pointer(obj: dict, action_id: str) -> bool:
    return str((obj.get("metadata") or {}).get(AUDIT_POINTER_KEY, "")).startswith(f"{action_id}#")


def slack_escape(text: str) -> str:
    """Slack's own escaping: customer text cannot mention @channel, link or format."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ---- Stripe -----------------------------------------------------------------------------------------
class StripeWriter:
    """Writes through the official SDK. The key is a secret (``STRIPE_PUSH_API_KEY``), never logged."""

    def __init__(self, api_key: str, api_base: str, max_network_retries: int = 2, requests_per_second: float = 20.0,
                 policy: RetryPolicy = RetryPolicy(max_attempts=5, base_delay=0.2, max_delay=10)):
        if not api_key:
            raise ValueError("STRIPE_PUSH_API_KEY is not set")
        self.client = stripe.StripeClient(api_key, base_addresses={"api": api_base},
                                          max_network_retries=max_network_retries)
        self.limiter = RateLimiter(requests_per_second)
        self.policy = policy

    def call(self, fn: Callable[[], Any]) -> dict:
        """One request: 429s waited out; 4xx -> Permanent; connection errors and 5xx -> Unknown."""

        def attempt():
            self.limiter.acquire()
            try:
                obj = fn()
            except stripe.RateLimitError as e:
                ra = (e.headers or {}).get("retry-after")
                raise RateLimited(float(ra) if ra and ra.isdigit() else None, str(e)) from e
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
            raise Permanent(f"{e.http_status} {getattr(e, 'code', None) or ''}: {e.user_message or e}".strip()) from e

    def read(self, fn: Callable[[], Any]) -> dict | None:
        """A read for a re-check or read-back; a missing object is None."""
        try:
            return self.call(fn)
        except Permanent as e:
            if "404" in str(e).split(" ", 1)[0]:
                return None
            raise

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
            page = self.call(lambda: fn(params))
            out += page["data"]
            if not page["has_more"] or not page["data"]:
                return out
            params = {**params, "starting_after": page["data"][-1]["id"]}


# ---- sinks (support cases, chat, e-mail) --------------------------------------------------------
@dataclass
class Sinks:
    """Where non-platform actions go. ``chat_webhook_url`` is a secret (the URL is the credential)."""

    case_url: str
    chat_webhook_url: str
    outbox_dir: Path
    sender: str = "billing@billing-ai.invalid"
    timeout: float = 10.0

    def post(self, url: str, body: dict) -> httpx.Response:
        def attempt():
            try:
                r = httpx.post(url, json=body, timeout=self.timeout)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                raise Transient(type(e).__name__) from e
            if r.status_code == 429:
                ra = r.headers.get("retry-after")
                raise RateLimited(float(ra) if ra and ra.isdigit() else None)
            if r.status_code >= 500:
                raise Transient(f"{r.status_code}")
            return r

        try:
            r = call_with_retries(attempt, RetryPolicy(max_attempts=4, base_delay=0.2, max_delay=5),
                                  retry_transient=True)
        except (Transient, RateLimited) as e:
            raise Unknown(f"sink {url.split('?')[0].rsplit('/', 1)[0]}: {e}") from e
        if r.status_code >= 400:
            raise Permanent(f"sink answered {r.status_code}: {r.text[:300]}")
        return r


EMAIL_TEMPLATES: dict[str, str] = {
    "usage_anomaly_heads_up": "Hello,\n\nWe noticed unusual usage on your account: $summary\n\n"
                              "If this is expected, no action is needed. If not, reply to this e-mail and "
                              "we will look into it with you.\n",
    "tier_crossing_notice": "Hello,\n\nAt your current pace your $meter usage will cross into the next pricing "
                            "tier around $date: $summary\n",
    "upgrade_recommendation": "Hello,\n\n$summary\n\nWe have prepared a quote you can review any time.\n",
    "invoice_correction_notice": "Hello,\n\nWe found a difference on invoice $invoice: $summary\n",
}


def render_email(p: Proposal, to: str, sender: str) -> EmailMessage:
    """Plain text plus an HTML part in which every variable is escaped (they may carry customer text)."""
    params = p.typed_params()
    variables = dict(params.variables)
    text = Template(EMAIL_TEMPLATES[params.template]).safe_substitute(variables)
    html_body = Template(html.escape(EMAIL_TEMPLATES[params.template]).replace("\n", "<br>\n")).safe_substitute(
        {k: html.escape(v) for k, v in variables.items()})
    msg = EmailMessage()
    msg["From"], msg["To"] = sender, to
    msg["Subject"] = re.sub(r"[\r\n]+", " ", params.subject)  # no header injection
    msg["X-Billing-AI-Action"] = p.action_id
    msg.set_content(text)
    msg.add_alternative(f"<html><body>{html_body}</body></html>", subtype="html")
    return msg


# ---- per-kind behaviour -------------------------------------------------------------------------
class Executor:
    """Re-check, read back and apply each kind against Stripe and the sinks."""

    def __init__(self, stripe_writer: StripeWriter, sinks: Sinks):
        self.s = stripe_writer
        self.sinks = sinks
        self.v1 = stripe_writer.client.v1

    # -- re-check against the platform's state now (business rules that depend on it)
    def precheck(self, p: Proposal) -> list[str]:
        params, kind, tid = p.typed_params().model_dump(), p.kind, p.target_id
        cust = None  # read once: every customer-targeted check below looks at the same object
        if p.target_type == "customer":
            cust = self.s.customer(tid)
            if cust is None or cust.get("deleted"):
                return [f"customer {tid} does not exist"]
        if kind == "metadata_update":
            obj = cust if p.target_type == "customer" else self.s.subscription(tid)
            if obj is None:
                return [f"{p.target_type} {tid} does not exist"]
            keys = set(obj.get("metadata") or {}) | {AUDIT_POINTER_KEY}
            keys |= {k for k, v in params["metadata"].items() if v != ""}
            keys -= {k for k, v in params["metadata"].items() if v == ""}
            if len(keys) > STRIPE_METADATA_MAX_KEYS:
                return [f"{p.target_type} would have {len(keys)} metadata keys; Stripe allows "
                        f"{STRIPE_METADATA_MAX_KEYS}"]
        elif kind == "invoice_line_description":
            inv = self.s.invoice(tid)
            if inv is None:
                return [f"invoice {tid} does not exist"]
            if inv["status"] != "draft":
                return [f"invoice {tid} is {inv['status']}: Stripe edits lines on draft invoices only"]
        elif kind == "pending_invoice_item":
            if cust.get("currency") and cust["currency"] != params["currency"]:
                return [f"customer {tid} is billed in {cust['currency']}, not {params['currency']}"]
            if params.get("subscription"):
                sub = self.s.subscription(params["subscription"])
                if sub is None or sub["customer"] != tid or sub["status"] == "canceled":
                    return [f"subscription {params['subscription']} is not an active subscription of {tid}"]
        elif kind == "credit_note":
            inv = self.s.invoice(tid)
            if inv is None:
                return [f"invoice {tid} does not exist"]
            if inv["status"] not in ("open", "paid"):
                return [f"invoice {tid} is {inv['status']}: credit notes need an open or paid invoice"]
            if inv["currency"] != params["currency"]:
                return [f"invoice {tid} is in {inv['currency']}, not {params['currency']}"]
            credited = sum(cn["amount"] for cn in self.s.listing(self.v1.credit_notes.list, {"invoice": tid})
                           if cn.get("status") != "void")
            room = inv["total"] - credited
            if params["amount"] > room:
                return [f"{format_minor(params['amount'], params['currency'])} is more than the invoice's "
                        f"uncredited {format_minor(room, params['currency'])}"]
        elif kind in ("tier_upgrade_quote", "subscription_change"):
            sub_id = params["subscription"] if kind == "tier_upgrade_quote" else tid
            sub = self.s.subscription(sub_id)
            if sub is None or sub["status"] == "canceled":
                return [f"subscription {sub_id} is not active"]
            if kind == "tier_upgrade_quote" and sub["customer"] != tid:
                return [f"subscription {sub_id} does not belong to {tid}"]
            item = next((i for i in sub["items"]["data"] if i["id"] == params["item"]), None)
            if item is None:
                return [f"subscription item {params['item']} is not on {sub_id}"]
            price = self.s.price(params["to_price"])
            if price is None or not price.get("active", True):
                return [f"price {params['to_price']} does not exist or is inactive"]
            if item["price"]["id"] == params["to_price"]:
                return [f"price {params['to_price']} is already active on {params['item']}"]
            if price["currency"] != item["price"]["currency"]:
                return [f"price {params['to_price']} is in {price['currency']}, the item in "
                        f"{item['price']['currency']}"]
        elif kind == "payment_retry":
            inv = self.s.invoice(tid)
            if inv is None:
                return [f"invoice {tid} does not exist"]
            if inv["status"] != "open" or inv["amount_remaining"] <= 0:
                return [f"invoice {tid} is {inv['status']} with {inv['amount_remaining']} remaining: nothing to retry"]
            if inv["amount_remaining"] != params["amount_due"] or inv["currency"] != params["currency"]:
                return [f"the amount due changed since approval: approved "
                        f"{format_minor(params['amount_due'], params['currency'])}, now "
                        f"{format_minor(inv['amount_remaining'], inv['currency'])}"]
        elif kind == "customer_email":
            if (cust.get("metadata") or {}).get("email_opt_out") == "true":
                return [f"customer {tid} opted out of e-mail"]
            if not cust.get("email"):
                return [f"customer {tid} has no e-mail address on the platform"]
        return []

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
        if kind == "support_case":
            r = httpx.get(self.sinks.case_url, params={"external_id": aid}, timeout=self.sinks.timeout)
            cases = r.json().get("cases", []) if r.status_code == 200 else []
            return Applied(cases[0]["id"], cases[0]) if cases else None
        if kind == "customer_email":
            path = self.sinks.outbox_dir / f"{aid}.eml"
            return Applied(str(path.name)) if path.exists() else None
        return None  # chat_message: a webhook cannot be read back; resent (internal, at least once)

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
            obj = self.s.call(lambda: self.v1.invoices.line_items.update(
                tid, params["line_id"], {"description": params["description"], "metadata": mark}, opts))
            return Applied(obj["id"], {"description": obj.get("description")})
        if kind == "pending_invoice_item":
            body = {"customer": tid, "amount": params["amount"], "currency": params["currency"],
                    "description": params["description"], "metadata": mark}
            if params.get("subscription"):
                body["subscription"] = params["subscription"]
            obj = self.s.call(lambda: self.v1.invoice_items.create(body, opts))
            return Applied(obj["id"], {"amount": obj["amount"], "currency": obj["currency"]})
        if kind == "credit_note":
            obj = self.s.call(lambda: self.v1.credit_notes.create(
                {"invoice": tid, "amount": params["amount"], "reason": params["reason"], "memo": params["memo"],
                 "metadata": mark}, opts))
            return Applied(obj["id"], {"amount": obj["amount"], "status": obj.get("status")})
        if kind == "tier_upgrade_quote":
            obj = self.s.call(lambda: self.v1.quotes.create(
                {"customer": tid, "line_items": [{"price": params["to_price"], "quantity": 1}],
                 "description": f"Upgrade of {params['item']} to {params['to_price']}", "metadata": mark}, opts))
            return Applied(obj["id"], {"status": obj.get("status")})
        if kind == "subscription_change":
            obj = self.s.call(lambda: self.v1.subscriptions.update(
                tid, {"items": [{"id": params["item"], "price": params["to_price"]}],
                      "proration_behavior": params["proration_behavior"], "metadata": mark}, opts))
            return Applied(tid, {"status": obj.get("status")})
        if kind == "payment_retry":
            obj = self.s.call(lambda: self.v1.invoices.pay(tid, {}, opts))
            # pay() takes no metadata: the pointer is a second, idempotent update of the invoice
            self.s.call(lambda: self.v1.invoices.update(tid, {"metadata": mark}, {"idempotency_key": key + "-ptr"}))
            return Applied(tid, {"status": obj.get("status"), "amount_paid": obj.get("amount_paid")})
        if kind == "support_case":
            r = self.sinks.post(self.sinks.case_url, {
                "external_id": p.action_id, "customer": tid, "subject": params["subject"], "body": params["body"],
                "tags": list(params["tags"]), "priority": params["priority"]})
            case = r.json()
            return Applied(case.get("id"), case)
        if kind == "chat_message":
            text = f"*For {slack_escape(params['recipient'])}* ({p.action_id})\n{slack_escape(params['text'])}"
            self.sinks.post(self.sinks.chat_webhook_url, {"text": text})
            return Applied(None, {"sent": True})
        if kind == "customer_email":
            cust = self.s.customer(tid)  # the address is read now, from the platform, and never stored
            msg = render_email(p, cust["email"], self.sinks.sender)
            self.sinks.outbox_dir.mkdir(parents=True, exist_ok=True)
            final = self.sinks.outbox_dir / f"{p.action_id}.eml"
            tmp = final.with_suffix(".tmp")
            tmp.write_bytes(bytes(msg))
            os.replace(tmp, final)  # atomic: a crash leaves no half e-mail
            self.s.call(lambda: self.v1.customers.update(tid, {"metadata": mark}, {"idempotency_key": key + "-ptr"}))
            return Applied(final.name, {"template": p.params["template"]})
        raise Permanent(f"no executor for kind {kind!r}")


# ---- the push loop ------------------------------------------------------------------------------
def push_action(ledger: Ledger, executor: Executor, policy: Policy, action_id: str, *, actor: str = "push_job",
                run_id: str = "", max_attempts: int = 3, backoff: Callable[[int], float] | None = None,
                sleep: Callable[[float], None] | None = None) -> dict:
    """Push one action; returns the ledger row after. Raises :class:`PushIncomplete` if the outcome
    stays unknown after ``max_attempts`` (the run fails; its retry reads back before resending)."""
    backoff = backoff or (lambda n: min(10.0, 0.5 * 2 ** (n - 1)))
    sleep = sleep or time.sleep
    for _ in range(max_attempts):
        claim: Claim | None = ledger.claim(action_id, actor, run_id)
        if claim is None:
            return ledger.get(action_id)  # already done, failed, blocked, or not approved: nothing to send
        p, n = claim.proposal, claim.attempt
        try:
            if claim.outcome_unknown:
                found = executor.read_back(p)
                if found:
                    ledger.finish(action_id, n, "already_applied", actor, platform_object=found.platform_object,
                                  response=found.response)
                    return ledger.get(action_id)
            problems = policy.violations(p) + executor.precheck(p)
            if problems:
                ledger.finish(action_id, n, "blocked", actor, error="; ".join(problems))
                return ledger.get(action_id)
            done = executor.apply(p, claim.idempotency_key, claim.audit_seq)
        except Permanent as e:
            ledger.finish(action_id, n, "failed", actor, error=str(e))
            return ledger.get(action_id)
        except Unknown as e:
            ledger.finish(action_id, n, "unknown", actor, error=str(e))
            sleep(backoff(n))
            continue
        except BaseException as e:  # auth/config errors, crashes: not sent as far as we know -> read back next time
            ledger.finish(action_id, n, "unknown", actor, error=f"{type(e).__name__}: {e}")
            raise
        ledger.finish(action_id, n, "succeeded", actor, platform_object=done.platform_object, response=done.response)
        return ledger.get(action_id)
    raise PushIncomplete(f"{action_id}: outcome still unknown after {max_attempts} attempts; "
                         "the next run reads the platform back before any resend")

