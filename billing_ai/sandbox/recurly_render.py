"""Render the platform-neutral world as Recurly API v3 (``v2021-02-25``) objects.

The Recurly facade is a view of the same world the Stripe facade serves: the
invoices and amounts are the world's (nothing is re-billed); only customers the
world assigns to ``recurly`` are served. Shapes follow the resources of the
official ``recurly`` Python SDK (4.x, ``recurly/resources.py``).

Where the merchant's own ids live (the canonical ids of ``core``):

* account ``code`` = the world's customer id; item ``code`` = product id;
  add-on ``code`` = price id; plans are one per world plan and currency
  (``growth-usd``);
* subscriptions and invoices (charge and credit) carry the world's id in the
  custom field ``merchant_ref`` (Recurly mints their ``id``);
* Recurly mints, and core keeps, the ids of subscription add-ons, line items,
  transactions and measured units (:func:`rid` is the facade's minting).

Money on the wire is Recurly's: decimal numbers in major units (``10.5`` USD),
rendered exactly from the world's minor units (never through a float):
objects are built with :class:`~decimal.Decimal` values and encoded by
:func:`dumps`. What Recurly has no field for is kept where a merchant would
keep it, in custom fields, in minor units like Stripe metadata: the plan name,
a subscription's minimum commitment, and per component of a plan its package
size / rounding (``<component>_package_size``, ``_package_rounding``) and flat
fees per tier (``<component>_tier_flat_amounts``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import polars as pl

from billing_ai.money import minor_unit_exponent

API_VERSION = "v2021-02-25"
_ALNUM = "0123456789abcdefghijklmnopqrstuvwxyz"

# world billing_reason / status / failure code <-> Recurly invoice origin / state / transaction status_code
ORIGIN = {
    "subscription_create": "purchase",
    "subscription_cycle": "renewal",
    "subscription_cancel": "termination",
    "subscription_update": "immediate_change",
    "manual": "one_time",
}
STATE = {"open": "past_due", "paid": "paid", "void": "voided", "uncollectible": "failed", "draft": "pending"}
STATUS_CODE = {"card_declined": "declined"}  # others are the same words on both platforms


def rid(kind: str, *parts: object) -> str:
    """A Recurly-looking id (12 lowercase alphanumerics), deterministic in the world's ids."""
    h = int.from_bytes(hashlib.sha256(f"recurly|{kind}|{'|'.join(map(str, parts))}".encode()).digest()[:10])
    out = []
    for _ in range(12):
        h, r = divmod(h, 36)
        out.append(_ALNUM[r])
    return "".join(out)


def iso(t: int | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def major(minor: int | str | Decimal | None, currency: str) -> Decimal | None:
    """Minor units (exact) -> Recurly's major-unit decimal."""
    if minor is None:
        return None
    return Decimal(minor).scaleb(-minor_unit_exponent(currency)).normalize()


# ---- exact JSON with Decimal numbers ------------------------------------------------------------
_DEC = re.compile(r'"\\u0000dec:([-0-9.eE+]+)"')


def _plain(d: Decimal) -> str:
    s = format(d, "f")
    return s.rstrip("0").rstrip(".") if "." in s else s


def dumps(obj) -> str:
    """JSON text in which every Decimal is written as an exact JSON number (no float on the way)."""

    def enc(o):
        if isinstance(o, Decimal):
            return "\u0000dec:" + _plain(o)
        raise TypeError(f"{type(o).__name__} is not JSON serializable")

    def walk(o):
        if isinstance(o, Decimal):
            return enc(o)
        if isinstance(o, dict):
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, list):
            return [walk(v) for v in o]
        return o

    return _DEC.sub(r"\1", json.dumps(walk(obj)))


def loads(text: str | bytes):
    """JSON with numbers that have a fraction parsed as Decimal (Recurly money stays exact)."""
    return json.loads(text, parse_float=Decimal)


def custom_fields(pairs: dict[str, str | None]) -> list[dict]:
    return [{"name": k, "value": v} for k, v in pairs.items() if v is not None]


# ---- objects -------------------------------------------------------------------------------------
def account_mini(c: dict) -> dict:
    return {
        "id": rid("acct", c["customer_id"]),
        "object": "account",
        "code": c["customer_id"],
        "email": c["email"],
        "first_name": None,
        "last_name": None,
        "company": c["name"],
        "parent_account_id": None,
        "bill_to": "self",
        "dunning_campaign_id": None,
    }


def account(c: dict, created: int, subs: list[dict], as_of: int) -> dict:
    live = [s for s in subs if not (s["canceled_at"] and s["canceled_at"] <= as_of)]
    return {
        **account_mini(c),
        "state": "active",
        "hosted_login_token": rid("hlt", c["customer_id"]) * 2,
        "has_live_subscription": bool(live),
        "has_active_subscription": bool(live),
        "has_future_subscription": False,
        "has_canceled_subscription": len(live) < len(subs),
        "has_paused_subscription": False,
        "has_past_due_invoice": False,
        "username": None,
        "cc_emails": None,
        "preferred_locale": None,
        "preferred_time_zone": None,
        "vat_number": None,
        "tax_exempt": False,
        "exemption_certificate": None,
        "entity_use_code": None,
        "invoice_template_id": None,
        "override_business_entity_id": None,
        "external_accounts": [],
        "shipping_addresses": [],
        "address": {
            "phone": None,
            "street1": f"{c['name']} Street 1",
            "street2": None,
            "city": "Sandbox",
            "region": None,
            "postal_code": "00000",
            "country": "US",
        },
        "billing_info": None,
        "custom_fields": custom_fields(
            {
                "segment": c["segment"],
                "region": c["region"],
                "success_manager": c["success_manager"],
                "email_opt_out": "true" if c["email_opt_out"] else "false",
            }
        ),
        "created_at": iso(created),
        "updated_at": iso(created),
        "deleted_at": None,
    }


def account_balance(c: dict) -> dict:
    cur = c["currency"]
    return {
        "object": "account_balance",
        "account": account_mini(c),
        "past_due": False,
        "balances": [
            {
                "currency": cur.upper(),
                "amount": Decimal(0),
                "processing_prepayment_amount": Decimal(0),
                # the world's customer credit (a negative balance) is Recurly's available credit
                "available_credit_amount": major(max(0, -c["starting_credit"]), cur),
            }
        ],
    }


def item(p: dict) -> dict:
    return {
        "id": rid("item", p["product_id"]),
        "object": "item",
        "code": p["product_id"],
        "state": "active",
        "name": p["name"],
        "description": None,
        "external_sku": None,
        "accounting_code": None,
        "revenue_schedule_type": "never",
        "avalara_transaction_type": None,
        "avalara_service_type": None,
        "tax_code": None,
        "tax_exempt": False,
        "custom_fields": custom_fields({"component": p["component"]}),
        "currencies": [],
        "created_at": iso(p["created"]),
        "updated_at": iso(p["created"]),
        "deleted_at": None,
    }


def measured_unit(m: dict) -> dict:
    return {
        "id": rid("mu", m["meter_id"]),
        "object": "measured_unit",
        "name": m["event_name"],
        "display_name": m["display_name"],
        "state": "active",
        "description": None,
        "created_at": iso(m["created"]),
        "updated_at": iso(m["created"]),
        "deleted_at": None,
    }


def plan_code(plan: str, currency: str) -> str:
    return f"{plan}-{currency}"


def _tiers(p: dict) -> list[dict]:
    cur = p["currency"]
    out = []
    for t in json.loads(p["tiers_json"]):
        u = major(Decimal(t["unit_amount_decimal"]), cur)
        out.append(
            {
                "ending_quantity": t["up_to"],
                "usage_percentage": None,
                "currencies": [{"currency": cur.upper(), "unit_amount": None, "unit_amount_decimal": _plain(u)}],
            }
        )
    return out


def add_on(p: dict, product: dict, plan_id: str) -> dict:
    cur, usage = p["currency"], p["usage_type"] == "metered"
    tier_type = {"graduated": "tiered", "volume": "volume"}.get(p["tiers_mode"] or "", "flat")
    pricing = []
    if p["unit_amount_decimal"] is not None:
        u = major(Decimal(p["unit_amount_decimal"]), cur)
        # unit_amount takes 2 places; usage add-ons give any finer price as unit_amount_decimal instead
        pricing = [
            {
                "currency": cur.upper(),
                "tax_inclusive": False,
                "unit_amount": None if usage else u,
                "unit_amount_decimal": _plain(u) if usage else None,
            }
        ]
    return {
        "id": rid("addon", p["price_id"]),
        "object": "add_on",
        "plan_id": plan_id,
        "code": p["price_id"],
        "state": "active",
        "name": f"{p['plan']} {p['component']}",
        "add_on_type": "usage" if usage else "fixed",
        "usage_type": "price" if usage else None,
        "usage_calculation_type": "cumulative" if usage else None,
        "usage_timeframe": "billing_period" if usage else None,
        "usage_percentage": None,
        "measured_unit_id": rid("mu", p["meter_id"]) if p["meter_id"] else None,
        "accounting_code": None,
        "revenue_schedule_type": "evenly",
        "avalara_transaction_type": None,
        "avalara_service_type": None,
        "tax_code": None,
        "display_quantity": not usage,
        "default_quantity": 1,
        "optional": True,
        "external_sku": p["lookup_key"],
        "item": {
            "id": rid("item", product["product_id"]),
            "object": "item",
            "code": product["product_id"],
            "state": "active",
            "name": product["name"],
            "description": None,
        },
        "tier_type": tier_type,
        "currencies": pricing,
        "tiers": _tiers(p) if p["tiers_json"] else [],
        "percentage_tiers": [],
        "created_at": iso(p["created"]),
        "updated_at": iso(p["created"]),
        "deleted_at": None,
    }


def plan(name: str, cur: str, prices: list[dict]) -> dict:
    fields: dict[str, str | None] = {"plan": name}
    for p in prices:
        comp = p["component"]
        if p["divide_by"]:
            fields[f"{comp}_package_size"] = str(p["divide_by"])
            fields[f"{comp}_package_rounding"] = p["round"]
        if p["tiers_json"]:
            flats = [int(t["flat_amount"] or 0) for t in json.loads(p["tiers_json"])]
            if any(flats):  # Recurly tiers have no flat fee: the merchant keeps it here, minor units
                fields[f"{comp}_tier_flat_amounts"] = ",".join(map(str, flats))
    created = min(p["created"] for p in prices)
    return {
        "id": rid("plan", plan_code(name, cur)),
        "object": "plan",
        "code": plan_code(name, cur),
        "state": "active",
        "name": f"{name.title()} ({cur.upper()})",
        "description": None,
        "interval_unit": "months",
        "interval_length": 1,
        "trial_unit": "days",
        "trial_length": 0,
        "trial_requires_billing_info": True,
        "total_billing_cycles": None,
        "auto_renew": True,
        "pricing_model": "fixed",
        "ramp_intervals": [],
        "custom_fields": custom_fields(fields),
        "accounting_code": None,
        "revenue_schedule_type": "evenly",
        "setup_fee_revenue_schedule_type": "evenly",
        "setup_fee_accounting_code": None,
        "tax_code": None,
        "tax_exempt": False,
        "currencies": [
            {"currency": cur.upper(), "setup_fee": Decimal(0), "unit_amount": Decimal(0), "tax_inclusive": False}
        ],
        "hosted_pages": {
            "success_url": None,
            "cancel_url": None,
            "bypass_confirmation": False,
            "display_quantity": False,
        },
        "allow_any_item_on_subscriptions": False,
        "dunning_campaign_id": None,
        "created_at": iso(created),
        "updated_at": iso(created),
        "deleted_at": None,
    }


def subscription_add_on(it: dict, addon: dict, sub_rid: str) -> dict:
    pricing = addon["currencies"][0] if addon["currencies"] else {}
    return {
        "id": rid("sao", it["subscription_item_id"]),
        "object": "subscription_add_on",
        "subscription_id": sub_rid,
        "add_on": {
            k: addon[k]
            for k in (
                "id",
                "object",
                "code",
                "name",
                "add_on_type",
                "usage_type",
                "usage_percentage",
                "measured_unit_id",
                "external_sku",
                "accounting_code",
            )
        }
        | {"item_id": addon["item"]["id"]},
        "add_on_source": "plan_add_on",
        "quantity": it["quantity"] if it["quantity"] is not None else 1,
        "unit_amount": pricing.get("unit_amount"),
        "unit_amount_decimal": pricing.get("unit_amount_decimal"),
        "revenue_schedule_type": "evenly",
        "tier_type": addon["tier_type"],
        "tiers": addon["tiers"],
        "percentage_tiers": [],
        "usage_percentage": None,
        "usage_calculation_type": addon["usage_calculation_type"],
        "usage_timeframe": addon["usage_timeframe"],
        "created_at": iso(it["created"]),
        "updated_at": iso(it["created"]),
        "expired_at": None,
    }


def subscription(s: dict, c: dict, plan_obj: dict, add_ons: list[dict], period: tuple[int, int], as_of: int) -> dict:
    ended = s["canceled_at"] is not None and s["canceled_at"] <= as_of
    fields = {
        "merchant_ref": s["subscription_id"],
        "plan": s["plan"],
        "minimum_commitment": str(s["minimum_commitment"]) if s["minimum_commitment"] else None,
    }
    return {
        "id": rid("sub", s["subscription_id"]),
        "object": "subscription",
        "uuid": rid("subu", s["subscription_id"]) * 2,
        "account": account_mini(c),
        "plan": {k: plan_obj[k] for k in ("id", "object", "code", "name")},
        "state": "expired" if ended else "active",
        "shipping": None,
        "coupon_redemptions": [],
        "pending_change": None,
        "current_period_started_at": iso(period[0]),
        "current_period_ends_at": iso(period[1]),
        "current_term_started_at": iso(s["start"]),
        "current_term_ends_at": None,
        "trial_started_at": None,
        "trial_ends_at": None,
        "remaining_billing_cycles": None,
        "total_billing_cycles": None,
        "renewal_billing_cycles": None,
        "auto_renew": True,
        "ramp_intervals": [],
        "paused_at": None,
        "remaining_pause_cycles": None,
        "currency": s["currency"].upper(),
        "revenue_schedule_type": "evenly",
        "unit_amount": Decimal(0),
        "tax_inclusive": False,
        "quantity": 1,
        "add_ons": add_ons,
        "add_ons_total": None,
        "subtotal": None,
        "tax": None,
        "tax_info": None,
        "total": None,
        "collection_method": "automatic",
        "po_number": None,
        "net_terms": 0,
        "net_terms_type": "net",
        "terms_and_conditions": None,
        "customer_notes": None,
        "expiration_reason": "canceled" if ended else None,
        "custom_fields": custom_fields(fields),
        "created_at": iso(s["created"]),
        "updated_at": iso(s["canceled_at"] or s["created"]),
        # Recurly renews on the activation date: that is the billing cycle anchor
        "activated_at": iso(s["start"]),
        "canceled_at": iso(s["canceled_at"]),
        "expires_at": iso(s["canceled_at"]),
        "bank_account_authorized_at": None,
        "gateway_code": None,
        "billing_info_id": None,
        "active_invoice_id": None,
        "started_with_gift": False,
        "converted_at": None,
        "action_result": None,
        "business_entity_id": None,
        "price_segment_id": None,
    }


def line_item(ln: dict, inv: dict, c: dict, sub_rid: str, plan_obj: dict | None, addon: dict | None) -> dict:
    cur, qty = ln["currency"], ln["quantity_milli"]
    is_sub = ln["kind"] == "subscription"
    rate = None
    if ln["proration"]:
        length = inv["period_end"] - inv["period_start"]
        rate = (
            (Decimal(ln["period_end"] - ln["period_start"]) / Decimal(length)).quantize(Decimal("0.000001"))
            if length
            else Decimal(1)
        )
    return {
        "id": rid("li", ln["line_id"]),
        "object": "line_item",
        "uuid": rid("liu", ln["line_id"]) * 2,
        "type": "credit" if ln["amount"] < 0 else "charge",
        "item_code": addon["item"]["code"] if addon else None,
        "item_id": addon["item"]["id"] if addon else None,
        "external_sku": addon["external_sku"] if addon else None,
        "revenue_schedule_type": "evenly",
        "state": "invoiced",
        "legacy_category": None,
        "account": account_mini(c),
        "bill_for_account_id": None,
        "subscription_id": sub_rid,
        "plan_id": plan_obj["id"] if plan_obj and is_sub else None,
        "plan_code": plan_obj["code"] if plan_obj and is_sub else None,
        # the subscription add-on the charge is for (the usage path's add_on_id)
        "add_on_id": rid("sao", ln["subscription_item_id"]) if is_sub else None,
        "add_on_code": ln["price_id"] if is_sub else None,
        "invoice_id": rid("inv", ln["invoice_id"]),
        "invoice_number": inv["number"],
        "previous_line_item_id": None,
        "original_line_item_invoice_id": None,
        "origin": "add_on" if is_sub else "one_time",
        "accounting_code": None,
        "product_code": None,
        "credit_reason_code": None,
        "currency": cur.upper(),
        "amount": major(ln["amount"], cur),
        "description": ln["description"],
        "quantity": qty // 1000 if qty % 1000 == 0 else round(qty / 1000),
        "quantity_decimal": _plain(Decimal(qty) / 1000),
        "refunded_quantity": None,
        "refunded_quantity_decimal": None,
        "unit_amount": None,
        "unit_amount_decimal": None,
        "tax_inclusive": False,
        "subtotal": major(ln["amount"], cur),
        "discount": major(ln["discount_amount"], cur),
        "discounts": [],
        "tax": Decimal(0),
        "taxable": False,
        "tax_exempt": False,
        "tax_code": None,
        "tax_info": None,
        "proration_rate": rate,
        "refund": False,
        "credit_applied": None,
        "shipping_address": None,
        "start_date": iso(ln["period_start"]),
        "end_date": iso(ln["period_end"]),
        "custom_fields": [],
        "created_at": iso(inv["created"]),
        "updated_at": iso(inv["created"]),
    }


def invoice(inv: dict, c: dict, lines: list[dict], pay: dict | None) -> dict:
    cur = inv["currency"]
    paid_at = pay["paid_at"] if pay else (inv["finalized_at"] if inv["status"] == "paid" else None)
    # customer credit used on this invoice (Stripe's starting balance): a credit payment in Recurly
    credit = inv["total"] - inv["amount_due"] if inv["total"] >= 0 else 0
    inv_rid = rid("inv", inv["invoice_id"])
    credit_payments = (
        [
            {
                "id": rid("cp", inv["invoice_id"]),
                "object": "credit_payment",
                "uuid": rid("cpu", inv["invoice_id"]) * 2,
                "action": "payment",
                "account": account_mini(c),
                "applied_to_invoice": {"id": inv_rid, "number": inv["number"]},
                "original_invoice": None,
                "currency": cur.upper(),
                "amount": major(credit, cur),
                "original_credit_payment_id": None,
                "refund_transaction": None,
                "created_at": iso(inv["finalized_at"]),
                "updated_at": iso(inv["finalized_at"]),
                "voided_at": None,
            }
        ]
        if credit
        else []
    )
    return {
        "id": inv_rid,
        "uuid": rid("invu", inv["invoice_id"]) * 2,
        "object": "invoice",
        "type": "charge",
        "origin": ORIGIN[inv["billing_reason"]],
        "state": STATE[inv["status"]],
        "account": account_mini(c),
        "billing_info_id": None,
        "subscription_ids": [rid("sub", inv["subscription_id"])],
        "previous_invoice_id": None,
        "number": inv["number"],
        "collection_method": "automatic",
        "po_number": None,
        "net_terms": 0,
        "net_terms_type": "net",
        "address": None,
        "shipping_address": None,
        "currency": cur.upper(),
        "discount": major(inv["total_discount"], cur),
        "subtotal": major(inv["subtotal"], cur),
        "subtotal_after_discount": major(inv["total"], cur),
        "tax": Decimal(0),
        "total": major(inv["total"], cur),
        "refundable_amount": major(inv["amount_paid"], cur),
        "paid": major(inv["amount_paid"], cur),
        "balance": major(inv["amount_remaining"], cur),
        "tax_info": None,
        "used_tax_service": False,
        "vat_number": None,
        "vat_reverse_charge_notes": None,
        "terms_and_conditions": None,
        "customer_notes": None,
        "line_items": lines[:200],
        "has_more_line_items": len(lines) > 200,
        "transactions": [],
        "credit_payments": credit_payments,
        "coupon_redemptions": [],
        "custom_fields": custom_fields({"merchant_ref": inv["invoice_id"]}),
        "created_at": iso(inv["created"]),
        "updated_at": iso(paid_at or inv["finalized_at"]),
        # collection starts when the invoice is posted after its grace period: the invoice is due then
        "due_at": iso(inv["finalized_at"]),
        "closed_at": iso(paid_at) if inv["status"] == "paid" else None,
        "dunning_campaign_id": None,
        "dunning_events_sent": None,
        "final_dunning_event": None,
        "business_entity_id": None,
        "reference_only_currency_conversion": None,
    }


def transactions(p: dict, inv: dict, c: dict) -> list[dict]:
    """One Recurly transaction per collection attempt of the world's payment."""
    cur, n = p["currency"], max(1, p["attempts_by_as_of"])
    ok = p["status"] == "succeeded"
    out = []
    for k in range(1, n + 1):
        success = ok and k == n
        code = None if success else STATUS_CODE.get(p["failure_code"] or "declined", p["failure_code"] or "declined")
        at = p["created"] + (k - 1) * 3 * 86400
        if success and p["paid_at"]:
            at = p["paid_at"] if k > 1 else p["created"]
        out.append(
            {
                "id": rid("txn", p["payment_id"], k),
                "object": "transaction",
                "uuid": rid("txnu", p["payment_id"], k) * 2,
                "original_transaction_id": None,
                "account": account_mini(c),
                "invoice": {
                    "id": rid("inv", inv["invoice_id"]),
                    "object": "invoice",
                    "number": inv["number"],
                    "type": "charge",
                    "state": STATE[inv["status"]],
                },
                "voided_by_invoice": None,
                "subscription_ids": [rid("sub", inv["subscription_id"])],
                "type": "purchase",
                "origin": "recurring" if k > 1 else "api",
                "currency": cur.upper(),
                "amount": major(p["amount"], cur),
                "status": "success" if success else "declined",
                "success": success,
                "backup_payment_method_used": False,
                "refunded": False,
                "billing_address": {"first_name": None, "last_name": None, "street1": "1 Sandbox Way", "country": "US"},
                "collection_method": "automatic",
                "payment_method": {
                    "object": "credit_card",
                    "card_type": "Visa",
                    "first_six": "411111",
                    "last_four": "1111",
                    "exp_month": 12,
                    "exp_year": 2030,
                },
                "ip_address_v4": None,
                "ip_address_country": None,
                "status_code": code,
                "status_message": None if success else f"The transaction was declined: {code}.",
                "customer_message": None,
                "customer_message_locale": None,
                "payment_gateway": {
                    "id": rid("gw", "sandbox"),
                    "object": "payment_gateway",
                    "type": "test",
                    "name": "Sandbox gateway",
                },
                "gateway_message": None,
                "gateway_reference": rid("gwref", p["payment_id"], k),
                "gateway_approval_code": None,
                "gateway_response_code": "generic_decline" if code == "declined" else None,
                "gateway_response_time": None,
                "gateway_response_values": {},
                "cvv_check": None,
                "avs_check": None,
                "created_at": iso(at),
                "updated_at": iso(at),
                "voided_at": None,
                "collected_at": iso(at) if success else None,
                "action_result": None,
                "fraud_info": None,
            }
        )
    return out


def credit_invoice(cn: dict, inv: dict, c: dict) -> dict:
    cur = cn["currency"]
    cid = rid("inv", cn["credit_note_id"])
    line = {
        "id": rid("li", cn["credit_note_id"]),
        "object": "line_item",
        "uuid": rid("liu", cn["credit_note_id"]) * 2,
        "type": "credit",
        "state": "invoiced",
        "account": account_mini(c),
        "subscription_id": None,
        "add_on_id": None,
        "add_on_code": None,
        "invoice_id": cid,
        "invoice_number": cn["number"],
        "original_line_item_invoice_id": rid("inv", cn["invoice_id"]),
        "origin": "credit",
        # the site's credit reason codes are the merchant's reasons (duplicate, order_change, ...)
        "credit_reason_code": cn["reason"],
        "currency": cur.upper(),
        "amount": major(-cn["amount"], cur),
        "description": "Credit",
        "quantity": 1,
        "quantity_decimal": "1",
        "subtotal": major(-cn["amount"], cur),
        "discount": Decimal(0),
        "tax": Decimal(0),
        "proration_rate": None,
        "refund": False,
        "custom_fields": [],
        "start_date": iso(cn["created"]),
        "end_date": None,
        "created_at": iso(cn["created"]),
        "updated_at": iso(cn["created"]),
    }
    return {
        "id": cid,
        "uuid": rid("invu", cn["credit_note_id"]) * 2,
        "object": "invoice",
        "type": "credit",
        "origin": "credit",
        "state": "closed",
        "account": account_mini(c),
        "subscription_ids": [],
        "previous_invoice_id": rid("inv", cn["invoice_id"]),
        "number": cn["number"],
        "collection_method": "automatic",
        "po_number": None,
        "net_terms": 0,
        "currency": cur.upper(),
        "discount": Decimal(0),
        "subtotal": major(-cn["amount"], cur),
        "subtotal_after_discount": major(-cn["amount"], cur),
        "tax": Decimal(0),
        "total": major(-cn["amount"], cur),
        "refundable_amount": Decimal(0),
        "paid": Decimal(0),
        "balance": Decimal(0),
        "customer_notes": None,
        "line_items": [line],
        "has_more_line_items": False,
        "transactions": [],
        "credit_payments": [],
        "custom_fields": custom_fields({"merchant_ref": cn["credit_note_id"]}),
        "created_at": iso(cn["created"]),
        "updated_at": iso(cn["created"]),
        "due_at": iso(cn["created"]),
        "closed_at": iso(cn["created"]),
    }, line


def usage(row: dict, addon: dict, sao_id: str) -> dict:
    day = row["day_start"]
    return {
        "id": rid("usage", row["customer_id"], row["meter_id"], day),
        "object": "usage",
        "merchant_tag": None,
        "amount": Decimal(row["value_milli"]) / 1000,
        "usage_type": "price",
        "tier_type": addon["tier_type"],
        "tiers": addon["tiers"],
        "percentage_tiers": [],
        "measured_unit_id": addon["measured_unit_id"],
        "recording_timestamp": iso(day),
        "usage_timestamp": iso(day),
        "usage_percentage": None,
        "unit_amount": None,
        "unit_amount_decimal": (addon["currencies"] or [{}])[0].get("unit_amount_decimal"),
        "billed_at": None,
        "created_at": iso(day),
        "updated_at": iso(day),
        "subscription_add_on_id": sao_id,
    }


# ---- the whole world -------------------------------------------------------------------------------
def render_world(
    tables: dict[str, pl.DataFrame], as_of: int
) -> Iterator[tuple[str, dict, str | None, str | None, int]]:
    """Yield (type, object, account code, parent id, created) for every object the facade serves."""
    from billing_ai.sandbox.invoicing import current_period  # the world's billing calendar

    custs = {
        c["customer_id"]: c
        for c in tables["customers"].iter_rows(named=True)
        if c.get("platform", "stripe") == "recurly"
    }
    if not custs:
        return  # the world puts no customer on Recurly: the sandbox has no Recurly site (no catalog either)
    subs_rows = [s for s in tables["subscriptions"].iter_rows(named=True) if s["customer_id"] in custs]
    subs_by_cust: dict[str, list[dict]] = {}
    for s in subs_rows:
        subs_by_cust.setdefault(s["customer_id"], []).append(s)
    for cid, c in custs.items():
        created = min((s["created"] for s in subs_by_cust.get(cid, [])), default=as_of) - 86400
        yield "account", account(c, created, subs_by_cust.get(cid, []), as_of), cid, None, created
        yield "account_balance", {"id": rid("acct", cid), **account_balance(c)}, cid, rid("acct", cid), created

    products = {p["product_id"]: p for p in tables["products"].iter_rows(named=True)}
    for p in products.values():
        yield "item", item(p), None, None, p["created"]
    for m in tables["meters"].iter_rows(named=True):
        yield "measured_unit", measured_unit(m), None, None, m["created"]
    prices = list(tables["prices"].iter_rows(named=True))
    by_plan: dict[tuple[str, str], list[dict]] = {}
    for p in prices:
        by_plan.setdefault((p["plan"], p["currency"]), []).append(p)
    addons: dict[str, dict] = {}
    plans: dict[str, dict] = {}
    for (name, cur), ps in by_plan.items():
        pl_obj = plan(name, cur, ps)
        yield "plan", pl_obj, None, None, min(p["created"] for p in ps)
        for p in ps:
            addons[p["price_id"]] = add_on(p, products[p["product_id"]], pl_obj["id"])
            plans[p["price_id"]] = pl_obj
            yield "add_on", addons[p["price_id"]], None, pl_obj["id"], p["created"]

    items_by_sub: dict[str, list[dict]] = {}
    for it in tables["subscription_items"].iter_rows(named=True):
        items_by_sub.setdefault(it["subscription_id"], []).append(it)
    for s in subs_rows:
        cur = current_period(s["anchor"], as_of)
        at = min(as_of, s["canceled_at"] - 1) if s["canceled_at"] else as_of
        current = [
            it
            for it in items_by_sub[s["subscription_id"]]
            if it["valid_from"] <= at and (it["valid_to"] is None or at < it["valid_to"])
        ]
        srid = rid("sub", s["subscription_id"])
        saos = [subscription_add_on(it, addons[it["price_id"]], srid) for it in current]
        plan_obj = plans[current[0]["price_id"]]
        yield (
            "subscription",
            subscription(s, custs[s["customer_id"]], plan_obj, saos, cur, as_of),
            s["customer_id"],
            None,
            s["created"],
        )

    # usage records: the world's daily totals per customer x meter, on the subscription add-on of that meter
    # that priced the start of the day (after a cancellation: the last one)
    meter_items: dict[tuple[str, str], list[dict]] = {}
    for s in subs_rows:
        for it in items_by_sub[s["subscription_id"]]:
            mid = addons[it["price_id"]]["measured_unit_id"]
            if mid:
                meter_items.setdefault((s["customer_id"], mid), []).append(it)
    mu = tables["meter_usage"].filter(pl.col("customer_id").is_in(list(custs)))
    for row in mu.iter_rows(named=True):
        its = sorted(
            meter_items.get((row["customer_id"], rid("mu", row["meter_id"])), []), key=lambda i: i["valid_from"]
        )
        if not its:
            continue
        day, nxt = row["day_start"], row["day_start"] + 86400
        over = [i for i in its if i["valid_from"] < nxt and (i["valid_to"] is None or i["valid_to"] > day)]
        it = over[0] if over else its[-1]
        sao = rid("sao", it["subscription_item_id"])
        yield "usage", usage(row, addons[it["price_id"]], sao), row["customer_id"], sao, day

    invoices = [i for i in tables["invoices"].iter_rows(named=True) if i["customer_id"] in custs]
    inv_by_id = {i["invoice_id"]: i for i in invoices}
    lines_by_inv: dict[str, list[dict]] = {}
    for ln in tables["invoice_lines"].iter_rows(named=True):
        inv = inv_by_id.get(ln["invoice_id"])
        if inv is None:
            continue
        addon = addons.get(ln["price_id"]) if ln["price_id"] else None
        lobj = line_item(
            ln,
            inv,
            custs[inv["customer_id"]],
            rid("sub", inv["subscription_id"]),
            plans.get(ln["price_id"]) if ln["price_id"] else None,
            addon,
        )
        lines_by_inv.setdefault(ln["invoice_id"], []).append(lobj)
    pays = {p["invoice_id"]: p for p in tables["payments"].iter_rows(named=True)}
    for inv in invoices:
        c = custs[inv["customer_id"]]
        lines = lines_by_inv.get(inv["invoice_id"], [])
        irid = rid("inv", inv["invoice_id"])
        for ln in lines:
            yield "line_item", ln, inv["customer_id"], irid, inv["created"]
        yield "invoice", invoice(inv, c, lines, pays.get(inv["invoice_id"])), inv["customer_id"], None, inv["created"]
        p = pays.get(inv["invoice_id"])
        if p is not None:
            for t in transactions(p, inv, c):
                yield "transaction", t, inv["customer_id"], irid, p["created"]
    for cn in tables["credit_notes"].iter_rows(named=True):
        if cn["customer_id"] in custs:
            obj, line = credit_invoice(cn, inv_by_id[cn["invoice_id"]], custs[cn["customer_id"]])
            yield "line_item", line, cn["customer_id"], obj["id"], cn["created"]
            yield "invoice", obj, cn["customer_id"], None, cn["created"]
