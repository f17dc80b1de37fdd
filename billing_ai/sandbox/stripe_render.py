"""Render the platform-neutral world as Stripe API objects.

Shapes follow the API version the pinned ``stripe`` SDK sends
(``stripe._api_version._ApiVersion.CURRENT``): invoice lines carry
``parent.subscription_item_details`` and ``pricing.price_details``, prices omit
``tiers`` unless expanded, and every key rendered here exists on the SDK's
typed resource (a test walks them).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal

import polars as pl

from billing_ai.sandbox.world import make_id


def _dec(milli: int) -> str:
    """Decimal string of a thousandths quantity, without trailing zeros."""
    d = (Decimal(milli) / 1000).normalize()
    return format(d, "f")


def customer(c: dict, created: int) -> dict:
    return {
        "id": c["customer_id"],
        "object": "customer",
        "address": None,
        "balance": c["starting_credit"],
        "created": created,
        "currency": c["currency"],
        "default_source": None,
        "delinquent": False,
        "description": None,
        "email": c["email"],
        "invoice_prefix": c["invoice_prefix"],
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": None,
            "footer": None,
            "rendering_options": None,
        },
        "livemode": False,
        "metadata": {
            "segment": c["segment"],
            "region": c["region"],
            "success_manager": c["success_manager"],
            "email_opt_out": "true" if c["email_opt_out"] else "false",
        },
        "name": c["name"],
        "phone": None,
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
    }


def product(p: dict) -> dict:
    return {
        "id": p["product_id"],
        "object": "product",
        "active": True,
        "created": p["created"],
        "default_price": None,
        "description": None,
        "images": [],
        "livemode": False,
        "marketing_features": [],
        "metadata": {"component": p["component"]},
        "name": p["name"],
        "package_dimensions": None,
        "shippable": None,
        "statement_descriptor": None,
        "tax_code": None,
        "type": "service",
        "unit_label": None,
        "updated": p["created"],
        "url": None,
    }


def price(p: dict) -> dict:
    tiers = None
    if p["tiers_json"]:
        tiers = [
            {
                "up_to": t["up_to"],
                "unit_amount": _int_or_none(t["unit_amount_decimal"]),
                "unit_amount_decimal": t["unit_amount_decimal"],
                "flat_amount": t["flat_amount"],
                "flat_amount_decimal": str(t["flat_amount"]),
            }
            for t in json.loads(p["tiers_json"])
        ]
    return {
        "id": p["price_id"],
        "object": "price",
        "active": True,
        "billing_scheme": p["billing_scheme"],
        "created": p["created"],
        "currency": p["currency"],
        "custom_unit_amount": None,
        "livemode": False,
        "lookup_key": p["lookup_key"],
        "metadata": {"plan": p["plan"], "component": p["component"]},
        "nickname": f"{p['plan']} {p['component']}",
        "product": p["product_id"],
        "recurring": {
            "interval": "month",
            "interval_count": 1,
            "meter": p["meter_id"],
            "trial_period_days": None,
            "usage_type": p["usage_type"],
        },
        "tax_behavior": "unspecified",
        "tiers_mode": p["tiers_mode"],
        "transform_quantity": {"divide_by": p["divide_by"], "round": p["round"]} if p["divide_by"] else None,
        "type": "recurring",
        "unit_amount": _int_or_none(p["unit_amount_decimal"]) if p["unit_amount_decimal"] else None,
        "unit_amount_decimal": p["unit_amount_decimal"],
        "_tiers": tiers,  # only rendered under expand[]=tiers / data.tiers
    }


def _int_or_none(s: str | None) -> int | None:
    if s is None:
        return None
    d = Decimal(s)
    return int(d) if d == d.to_integral_value() else None


def meter(m: dict) -> dict:
    return {
        "id": m["meter_id"],
        "object": "billing.meter",
        "created": m["created"],
        "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
        "default_aggregation": {"formula": m["aggregation"]},
        "display_name": m["display_name"],
        "event_name": m["event_name"],
        "event_time_window": None,
        "livemode": False,
        "status": "active",
        "status_transitions": {"deactivated_at": None},
        "updated": m["created"],
        "value_settings": {"event_payload_key": "value"},
    }


def subscription_item(it: dict, price_obj: dict, period: tuple[int, int]) -> dict:
    p = {k: v for k, v in price_obj.items() if k != "_tiers"}
    return {
        "id": it["subscription_item_id"],
        "object": "subscription_item",
        "billing_thresholds": None,
        "created": it["created"],
        "current_period_end": period[1],
        "current_period_start": period[0],
        "discounts": [],
        "metadata": {},
        "price": p,
        "quantity": it["quantity"],
        "subscription": it["subscription_id"],
        "tax_rates": [],
    }


def subscription(s: dict, items: list[dict], status: str, period: tuple[int, int], latest_invoice: str | None) -> dict:
    meta = {"plan": s["plan"]}
    if s["minimum_commitment"]:
        meta["minimum_commitment"] = str(s["minimum_commitment"])
    return {
        "id": s["subscription_id"],
        "object": "subscription",
        "application": None,
        "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
        "billing_cycle_anchor": s["anchor"],
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": s["canceled_at"],
        "cancellation_details": {
            "comment": None,
            "feedback": None,
            "reason": "cancellation_requested" if s["canceled_at"] else None,
        },
        "collection_method": "charge_automatically",
        "created": s["created"],
        "currency": s["currency"],
        "customer": s["customer_id"],
        "days_until_due": None,
        "default_payment_method": None,
        "description": None,
        "discounts": [],
        "ended_at": s["canceled_at"],
        "items": {
            "object": "list",
            "data": items,
            "has_more": False,
            "url": f"/v1/subscription_items?subscription={s['subscription_id']}",
        },
        "latest_invoice": latest_invoice,
        "livemode": False,
        "metadata": meta,
        "pending_update": None,
        "schedule": None,
        "start_date": s["start"],
        "status": status,
        "test_clock": None,
        "trial_end": None,
        "trial_start": None,
    }


def invoice_line(ln: dict) -> dict:
    is_sub = ln["kind"] == "subscription"
    parent = {
        "type": "subscription_item_details" if is_sub else "invoice_item_details",
        "subscription_item_details": {
            "invoice_item": None,
            "proration": ln["proration"],
            "proration_details": {"credited_items": None},
            "subscription": ln["subscription_id"],
            "subscription_item": ln["subscription_item_id"],
        }
        if is_sub
        else None,
        "invoice_item_details": None
        if is_sub
        else {
            "invoice_item": make_id("ii", 0, ln["line_id"]),
            "proration": False,
            "proration_details": {"credited_items": None},
            "subscription": ln["subscription_id"],
        },
    }
    qty = ln["quantity_milli"]
    return {
        "id": ln["line_id"],
        "object": "line_item",
        "amount": ln["amount"],
        "currency": ln["currency"],
        "description": ln["description"],
        "discount_amounts": [{"amount": ln["discount_amount"], "discount": "di_sandbox_coupon"}]
        if ln["discount_amount"]
        else [],
        "discountable": True,
        "discounts": [],
        "invoice": ln["invoice_id"],
        "livemode": False,
        "metadata": {},
        "parent": parent,
        "period": {"start": ln["period_start"], "end": ln["period_end"]},
        "pretax_credit_amounts": [],
        "pricing": {
            "type": "price_details",
            "price_details": {"price": ln["price_id"], "product": None},
            "unit_amount_decimal": None,
        }
        if ln["price_id"]
        else None,
        "quantity": qty // 1000 if qty % 1000 == 0 else round(qty / 1000),
        "quantity_decimal": _dec(qty),
        "subtotal": ln["amount"],
        "taxes": [],
    }


def invoice(inv: dict, lines: list[dict], pay: dict | None, customer_obj: dict) -> dict:
    paid_at = pay["paid_at"] if pay else (inv["finalized_at"] if inv["status"] == "paid" else None)
    return {
        "id": inv["invoice_id"],
        "object": "invoice",
        "account_country": "US",
        "account_name": "Sandbox Inc.",
        "amount_due": inv["amount_due"],
        "amount_overpaid": 0,
        "amount_paid": inv["amount_paid"],
        "amount_remaining": inv["amount_remaining"],
        "amount_shipping": 0,
        "application": None,
        "attempt_count": inv["attempt_count"],
        "attempted": inv["attempt_count"] > 0,
        "auto_advance": inv["status"] != "paid",
        "automatic_tax": {
            "disabled_reason": None,
            "enabled": False,
            "liability": None,
            "provider": None,
            "status": None,
        },
        "billing_reason": inv["billing_reason"],
        "collection_method": "charge_automatically",
        "created": inv["created"],
        "currency": inv["currency"],
        "customer": inv["customer_id"],
        "customer_email": customer_obj["email"],
        "customer_name": customer_obj["name"],
        "description": None,
        "discounts": [],
        "due_date": None,
        "effective_at": inv["finalized_at"],
        "ending_balance": inv["ending_balance"],
        "footer": None,
        "hosted_invoice_url": None,
        "invoice_pdf": None,
        "last_finalization_error": None,
        "lines": {
            "object": "list",
            "data": lines[:10],
            "has_more": len(lines) > 10,
            "url": f"/v1/invoices/{inv['invoice_id']}/lines",
        },
        "livemode": False,
        "metadata": {},
        "next_payment_attempt": None,
        "number": inv["number"],
        "parent": {
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {
                "metadata": {},
                "subscription": inv["subscription_id"],
                "subscription_proration_date": None,
            },
        },
        "period_end": inv["period_end"],
        "period_start": inv["period_start"],
        "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0,
        "starting_balance": inv["starting_balance"],
        "status": inv["status"],
        "status_transitions": {
            "finalized_at": inv["finalized_at"],
            "marked_uncollectible_at": None,
            "paid_at": paid_at,
            "voided_at": None,
        },
        "subtotal": inv["subtotal"],
        "subtotal_excluding_tax": inv["subtotal"],
        "test_clock": None,
        "total": inv["total"],
        "total_discount_amounts": [{"amount": inv["total_discount"], "discount": "di_sandbox_coupon"}]
        if inv["total_discount"]
        else [],
        "total_excluding_tax": inv["total"],
        "total_pretax_credit_amounts": [],
        "total_taxes": [],
    }


def payment_intent(p: dict) -> dict:
    err = None
    if p["failure_code"]:
        err = {
            "type": "card_error",
            "code": p["failure_code"],
            "decline_code": "generic_decline" if p["failure_code"] == "card_declined" else None,
            "message": f"The payment failed: {p['failure_code'].replace('_', ' ')}.",
            "doc_url": None,
            "param": None,
            "charge": None,
        }
    return {
        "id": p["payment_id"],
        "object": "payment_intent",
        "amount": p["amount"],
        "amount_capturable": 0,
        "amount_received": p["amount"] if p["status"] == "succeeded" else 0,
        "application": None,
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": "automatic",
        "client_secret": None,
        "confirmation_method": "automatic",
        "created": p["created"],
        "currency": p["currency"],
        "customer": p["customer_id"],
        "description": f"Invoice {p['invoice_id']}",
        "last_payment_error": err,
        "latest_charge": None,
        "livemode": False,
        "metadata": {"invoice": p["invoice_id"], "attempt_count": str(p["attempts_by_as_of"])},
        "payment_method": None,
        "payment_method_types": ["card"],
        "status": p["status"],
    }


def invoice_payment(p: dict) -> dict:
    return {
        "id": make_id("inpay", 0, p["payment_id"]),
        "object": "invoice_payment",
        "amount_paid": p["amount"] if p["status"] == "succeeded" else None,
        "amount_requested": p["amount"],
        "created": p["created"],
        "currency": p["currency"],
        "invoice": p["invoice_id"],
        "is_default": True,
        "livemode": False,
        "payment": {"type": "payment_intent", "payment_intent": p["payment_id"]},
        "status": "paid" if p["status"] == "succeeded" else "open",
        "status_transitions": {"canceled_at": None, "paid_at": p["paid_at"]},
    }


def credit_note(cn: dict) -> dict:
    return {
        "id": cn["credit_note_id"],
        "object": "credit_note",
        "amount": cn["amount"],
        "amount_shipping": 0,
        "created": cn["created"],
        "currency": cn["currency"],
        "customer": cn["customer_id"],
        "customer_balance_transaction": None,
        "discount_amount": 0,
        "discount_amounts": [],
        "effective_at": cn["created"],
        "invoice": cn["invoice_id"],
        "lines": {
            "object": "list",
            "data": [],
            "has_more": False,
            "url": f"/v1/credit_notes/{cn['credit_note_id']}/lines",
        },
        "livemode": False,
        "memo": None,
        "metadata": {},
        "number": cn["number"],
        "out_of_band_amount": None,
        "pdf": "",
        "post_payment_amount": cn["amount"],
        "pre_payment_amount": 0,
        "pretax_credit_amounts": [],
        "reason": cn["reason"],
        "refunds": [],
        "shipping_cost": None,
        "status": "issued",
        "subtotal": cn["amount"],
        "subtotal_excluding_tax": cn["amount"],
        "total": cn["amount"],
        "total_excluding_tax": cn["amount"],
        "total_taxes": [],
        "type": "post_payment",
        "voided_at": None,
    }


def render_world(tables: dict[str, pl.DataFrame], as_of: int) -> Iterator[tuple[str, dict, str | None, str | None]]:
    """Yield (type, object, customer, parent) for every object the facade serves."""
    from billing_ai.sandbox.invoicing import current_period  # the platform's own calendar

    custs = {c["customer_id"]: c for c in tables["customers"].iter_rows(named=True)}
    subs_rows = list(tables["subscriptions"].iter_rows(named=True))
    first_created = {s["customer_id"]: s["created"] - 86400 for s in subs_rows}
    cust_objs = {}
    for cid, c in custs.items():
        if c.get("platform", "stripe") != "stripe":
            continue
        cust_objs[cid] = customer(c, first_created.get(cid, as_of))
        yield "customer", cust_objs[cid], cid, None
    for p in tables["products"].iter_rows(named=True):
        yield "product", product(p), None, None
    price_objs = {}
    for p in tables["prices"].iter_rows(named=True):
        price_objs[p["price_id"]] = price(p)
        yield "price", price_objs[p["price_id"]], None, None
    for m in tables["meters"].iter_rows(named=True):
        yield "billing.meter", meter(m), None, None

    invoices = [i for i in tables["invoices"].iter_rows(named=True) if i["customer_id"] in cust_objs]
    latest = {}
    for inv in invoices:
        if inv["created"] >= latest.get(inv["subscription_id"], ("", -1))[1]:
            latest[inv["subscription_id"]] = (inv["invoice_id"], inv["created"])
    items_by_sub: dict[str, list[dict]] = {}
    for it in tables["subscription_items"].iter_rows(named=True):
        items_by_sub.setdefault(it["subscription_id"], []).append(it)
    for s in subs_rows:
        if s["customer_id"] not in cust_objs:
            continue
        cur = current_period(s["anchor"], as_of)
        status = "canceled" if s["canceled_at"] and s["canceled_at"] <= as_of else "active"
        # a subscription shows its current items only; replaced items survive on invoice lines
        at = min(as_of, s["canceled_at"] - 1) if s["canceled_at"] else as_of
        current = [
            it
            for it in items_by_sub[s["subscription_id"]]
            if it["valid_from"] <= at and (it["valid_to"] is None or at < it["valid_to"])
        ]
        item_objs = [subscription_item(it, price_objs[it["price_id"]], cur) for it in current]
        for io in item_objs:
            yield "subscription_item", io, s["customer_id"], s["subscription_id"]
        yield (
            "subscription",
            subscription(s, item_objs, status, cur, latest.get(s["subscription_id"], (None,))[0]),
            s["customer_id"],
            None,
        )

    lines_by_inv: dict[str, list[dict]] = {}
    for ln in tables["invoice_lines"].iter_rows(named=True):
        lines_by_inv.setdefault(ln["invoice_id"], []).append(invoice_line(ln))
    pays = {p["invoice_id"]: p for p in tables["payments"].iter_rows(named=True)}
    for inv in invoices:
        lines = lines_by_inv.get(inv["invoice_id"], [])
        for ln in lines:
            yield "line_item", ln, inv["customer_id"], inv["invoice_id"]
        yield (
            "invoice",
            invoice(inv, lines, pays.get(inv["invoice_id"]), custs[inv["customer_id"]]),
            inv["customer_id"],
            None,
        )
    for p in tables["payments"].iter_rows(named=True):
        if p["customer_id"] in cust_objs:
            yield "payment_intent", payment_intent(p), p["customer_id"], p["invoice_id"]
            yield "invoice_payment", invoice_payment(p), p["customer_id"], p["invoice_id"]
    for cn in tables["credit_notes"].iter_rows(named=True):
        if cn["customer_id"] in cust_objs:
            yield "credit_note", credit_note(cn), cn["customer_id"], cn["invoice_id"]
