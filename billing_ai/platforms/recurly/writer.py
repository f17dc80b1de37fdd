"""Recurly write-back: custom fields, one-time line items and refunds to credit invoices, over API v3.

* ``metadata_update``: the account's or subscription's custom fields (``PUT``); an empty value removes a
  field. The audit pointer is the custom field ``billing_ai_audit_id`` in the same request.
* ``pending_invoice_item``: a one-time charge (``POST /accounts/{id}/line_items``), pending until the next
  invoice, the pointer in its own custom fields.
* ``credit_note``: a refund by amount (``POST /invoices/{id}/refund``), which Recurly answers with a credit
  invoice; refunds take no custom fields, so the pointer is in the credit's customer notes.
* ``leave_pointer`` (after an e-mail): the account custom field. ``contact``: the account's e-mail and
  ``email_opt_out`` custom field, read at push time.

Every write carries ``Idempotency-Key``. It is sent as a plain header (not as PlatformHTTP's
``idempotency_key``) so that a 5xx or a dropped connection is *not* retried here: the push loop records the
outcome as unknown and reads the platform back (by the audit pointer) before anything is resent. 429s are
waited out. Targets are canonical ids: the account ``code``, the ``merchant_ref`` custom field of
subscriptions and invoices (mapped to Recurly ids by listing, cached per executor).

Not carried out on Recurly (the router blocks them with a reason): ``subscription_change`` and
``tier_upgrade_quote`` (their ``item`` must be a Stripe-shaped ``si_`` id, while a Recurly subscription
item is a Recurly-minted subscription add-on id), ``invoice_line_description`` (posted invoices are
immutable), ``payment_retry`` (not implemented). Account notes are read-only in API v3.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from billing_ai.money import major_to_minor, minor_unit_exponent
from billing_ai.platforms.http import PlatformHTTP, http_outcome
from billing_ai.platforms.recurly.client import ACCEPT, _decimal_json
from billing_ai.retry import RetryPolicy
from billing_ai.writeback import prechecks as rules
from billing_ai.writeback.kinds import AUDIT_POINTER_KEY, Proposal
from billing_ai.writeback.outcomes import Applied, Contact, Permanent, none_if_missing, pointer

CUSTOM_FIELD_MAX = 255


def _fields(obj: dict | None) -> dict[str, str]:
    return {f["name"]: f["value"] for f in (obj or {}).get("custom_fields") or []}


def _major(amount_minor: int, currency: str) -> str:
    return format(Decimal(amount_minor).scaleb(-minor_unit_exponent(currency)), "f")


def _minor(value: Any, currency: str) -> int:
    return int(major_to_minor(str(value), currency.lower()))


class RecurlyWriter:
    """Writes through PlatformHTTP. The key is a secret (``RECURLY_PUSH_API_KEY``), never logged."""

    def __init__(
        self,
        api_key: str,
        api_base: str,
        requests_per_second: float = 20.0,
        policy: RetryPolicy = RetryPolicy(max_attempts=5, base_delay=0.2, max_delay=10),
    ):
        if not api_key:
            raise ValueError("RECURLY_PUSH_API_KEY is not set")
        self.http = PlatformHTTP(
            "recurly",
            api_base,
            auth=(api_key, ""),
            headers={"Accept": ACCEPT},
            requests_per_second=requests_per_second,
            policy=policy,
        )
        self.http.http.event_hooks["response"].append(_decimal_json)
        self._ids: dict[str, dict[str, str]] = {}

    def call(
        self, method: str, path: str, body: dict | None = None, key: str | None = None, params: dict | None = None
    ) -> Any:
        """One request (429s waited out by PlatformHTTP), its failure classified by
        :func:`billing_ai.platforms.http.http_outcome`."""
        headers = {"Idempotency-Key": key} if key else None
        return http_outcome(
            lambda: self.http.request(method, path, json=body, params=params, headers=headers),
            lambda b: f"{_error_type(b)}: {_message(b)}",
        )

    def read(self, path: str, params: dict | None = None) -> Any:
        return none_if_missing(lambda: self.call("GET", path, params=params))

    def listing(self, path: str, params: dict | None = None) -> list[dict]:
        out: list[dict] = []
        body = self.read(path, {"limit": 200, **(params or {})})
        while body:
            out += body["data"]
            if not body.get("has_more") or not body.get("next"):
                break
            body = self.read(body["next"])
        return out

    def recurly_id(self, kind: str, canonical: str) -> str | None:
        """A subscription's or invoice's Recurly id from the merchant's id (custom field merchant_ref)."""
        ids = self._ids.get(kind, {})
        if canonical not in ids:
            path = {"subscription": "/subscriptions", "invoice": "/invoices"}[kind]
            ids = {_fields(o).get("merchant_ref", o["id"]): o["id"] for o in self.listing(path)}
            self._ids[kind] = ids
        return ids.get(canonical)

    def account(self, code: str) -> dict | None:
        return self.read(f"/accounts/code-{code}")

    def subscription(self, canonical: str) -> dict | None:
        sid = self.recurly_id("subscription", canonical)
        return self.read(f"/subscriptions/{sid}") if sid else None

    def invoice(self, canonical: str) -> dict | None:
        iid = self.recurly_id("invoice", canonical)
        return self.read(f"/invoices/{iid}") if iid else None

    def close(self) -> None:
        self.http.close()


def _error_type(body: Any) -> str:
    return (body.get("error") or {}).get("type", "") if isinstance(body, dict) else ""


def _message(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", ""))[:300]
    return str(body)[:300]


class RecurlyExecutor:
    """Re-check, read back and apply the platform kinds Recurly can carry out."""

    platform = "recurly"
    kinds = frozenset({"metadata_update", "pending_invoice_item", "credit_note"})

    def __init__(self, writer: RecurlyWriter):
        self.w = writer

    # -- what the sinks need: contact details read now, never stored; the audit pointer
    def contact(self, customer_id: str) -> Contact | None:
        acct = self.w.account(customer_id)
        if acct is None or acct.get("state") == "inactive":
            return None
        bal = self.w.read(f"/accounts/{acct['id']}/balance") or {}
        cur = ((bal.get("balances") or [{}])[0].get("currency") or "").lower() or None
        return Contact(
            email=acct.get("email"), email_opt_out=_fields(acct).get("email_opt_out") == "true", currency=cur
        )

    def leave_pointer(self, customer_id: str, key: str, mark: dict[str, str]) -> None:
        self.w.call(
            "PUT",
            f"/accounts/code-{customer_id}",
            {"custom_fields": [{"name": k, "value": v} for k, v in mark.items()]},
            key,
        )

    # -- re-check against the platform's state now
    def precheck(self, p: Proposal) -> list[str]:
        params, kind, tid = p.typed_params().model_dump(), p.kind, p.target_id
        acct = None
        if p.target_type == "customer":
            acct = self.w.account(tid)
            if acct is None or acct.get("state") == "inactive":
                return rules.exists("customer", tid, None)
        if kind == "metadata_update":
            obj = acct if p.target_type == "customer" else self.w.subscription(tid)
            if obj is None:
                return rules.exists(p.target_type, tid, None)
            long = [k for k, v in params["metadata"].items() if len(v) > CUSTOM_FIELD_MAX]
            if long:
                return [f"Recurly custom field values hold at most {CUSTOM_FIELD_MAX} characters: {long}"]
        elif kind == "pending_invoice_item":
            contact = self.contact(tid)
            problems = rules.same_currency(
                "customer", tid, contact and contact.currency, params["currency"], billed=True
            )
            if problems or not params.get("subscription"):
                return problems
            sub = self.w.subscription(params["subscription"])
            return rules.live_subscription_of(
                params["subscription"],
                tid,
                live=sub is not None and sub["state"] not in ("expired", "failed"),
                owner=sub and sub["account"]["code"],
            )
        elif kind == "credit_note":
            inv = self.w.invoice(tid)
            if inv is not None and inv.get("type") != "charge":
                inv = None  # a credit invoice is not something to credit
            cur = inv and inv["currency"].lower()
            return rules.credit_fits(
                tid,
                inv
                and rules.CreditableInvoice(
                    status=inv["state"],
                    creditable=inv["state"] in ("paid", "past_due", "pending", "processing"),
                    currency=cur,
                    uncredited=lambda: (
                        _minor(inv["total"], cur) - sum(-_minor(c["total"], cur) for c in self._credits(inv))
                    ),
                ),
                params["amount"],
                params["currency"],
                needs="credits need an open or paid invoice",
            )
        return []

    def _credits(self, inv: dict) -> list[dict]:
        return [
            c
            for c in self.w.listing(f"/accounts/{inv['account']['id']}/invoices", {"type": "credit"})
            if c.get("previous_invoice_id") == inv["id"] and c.get("state") != "voided"
        ]

    # -- read back: is the change already there? (after an unknown outcome)
    def read_back(self, p: Proposal) -> Applied | None:
        params, kind, tid, aid = p.typed_params().model_dump(), p.kind, p.target_id, p.action_id
        if kind == "metadata_update":
            obj = self.w.account(tid) if p.target_type == "customer" else self.w.subscription(tid)
            f = _fields(obj)
            done = all((f.get(k) == v) if v != "" else (k not in f) for k, v in params["metadata"].items())
            return Applied(tid) if obj and done else None
        if kind == "pending_invoice_item":
            found = [
                li
                for li in self.w.listing(f"/accounts/code-{tid}/line_items")
                if str(_fields(li).get(AUDIT_POINTER_KEY, "")).startswith(f"{aid}#")
            ]
            return (
                Applied(found[0]["id"], {"amount": _minor(found[0]["amount"], found[0]["currency"])}) if found else None
            )
        if kind == "credit_note":
            inv = self.w.invoice(tid)
            found = (
                [c for c in self._credits(inv) if f"{AUDIT_POINTER_KEY}={aid}#" in (c.get("customer_notes") or "")]
                if inv
                else []
            )
            return Applied(found[0]["id"], {"number": found[0].get("number")}) if found else None
        return None

    # -- apply, with the attempt's idempotency key and the audit pointer in the same request
    def apply(self, p: Proposal, key: str, audit_seq: int) -> Applied:
        params, kind, tid = p.typed_params().model_dump(), p.kind, p.target_id
        mark = pointer(p.action_id, audit_seq)
        if kind == "metadata_update":
            fields = [{"name": k, "value": v} for k, v in {**params["metadata"], **mark}.items()]
            if p.target_type == "customer":
                obj = self.w.call("PUT", f"/accounts/code-{tid}", {"custom_fields": fields}, key)
            else:
                sid = self.w.recurly_id("subscription", tid)
                if sid is None:
                    raise Permanent(f"subscription {tid} does not exist")
                obj = self.w.call("PUT", f"/subscriptions/{sid}", {"custom_fields": fields}, key)
            return Applied(tid, {"custom_fields": len(obj.get("custom_fields") or [])})
        if kind == "pending_invoice_item":
            cur = params["currency"]
            body = {
                "currency": cur.upper(),
                "unit_amount": _major(params["amount"], cur),
                "quantity": 1,
                "type": "charge",
                "description": params["description"],
                "custom_fields": [{"name": k, "value": v} for k, v in mark.items()],
            }
            if params.get("subscription"):
                body["subscription_id"] = self.w.recurly_id("subscription", params["subscription"])
            obj = self.w.call("POST", f"/accounts/code-{tid}/line_items", body, key)
            return Applied(obj["id"], {"amount": _minor(obj["amount"], obj["currency"]), "state": obj.get("state")})
        if kind == "credit_note":
            iid = self.w.recurly_id("invoice", tid)
            if iid is None:
                raise Permanent(f"invoice {tid} does not exist")
            notes = f"{params['memo']}\n{AUDIT_POINTER_KEY}={mark[AUDIT_POINTER_KEY]}"
            obj = self.w.call(
                "POST",
                f"/invoices/{iid}/refund",
                {
                    "type": "amount",
                    "amount": _major(params["amount"], params["currency"]),
                    "refund_method": "credit_first",
                    "credit_customer_notes": notes,
                },
                key,
            )
            return Applied(obj["id"], {"number": obj.get("number"), "state": obj.get("state")})
        raise Permanent(f"no executor for kind {kind!r}")
