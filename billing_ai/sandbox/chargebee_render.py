"""Render the platform-neutral world as Chargebee API v2 objects (Product Catalog 2.0).

The facade is a view of the world: the same customers (only those the world
assigns to ``chargebee``), the same invoices and amounts, in Chargebee's
shapes. Money is in minor units (``price``, ``amount``, ``total``...); unit
prices with fractions of a minor unit are carried by ``price_in_decimal`` /
``unit_amount_in_decimal``, which Chargebee states in *major* units.

Where the merchant's own ids live (see docs/platforms.md, Chargebee):

* customers, subscriptions, items (products), item prices, invoices (imported
  with the merchant's reference as their number) and credit notes: ``id``;
* subscription items (Chargebee has no item ids): the subscription's
  ``meta_data.billing_ai_items`` maps each item price ever on it to
  ``{"id": <subscription item id>, "created": <unix>}``;
* meters (Chargebee meters usage on the metered item): the item's
  ``metadata.meter_id`` / ``meter_event_name`` / ``meter_display_name``.

Chargebee mints its own ids for invoice line items (``li_``) and transactions
(``txn_``, one per payment attempt).

Two things the world bills that Chargebee's objects cannot express natively,
and how they are carried: a tier with both a flat fee and a per-unit price
(Chargebee tiers are one or the other) keeps its flat part in the item price's
``metadata.tier_flat_amounts``; a negative proration line (a downgrade's
credit, which real Chargebee issues as an adjustment credit note) stays a
negative line item so the invoice's totals are the world's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal

import polars as pl

from billing_ai.money import minor_unit_exponent
from billing_ai.sandbox.invoicing import RETRY_DAYS, current_period
from billing_ai.sandbox.world import make_id

AGGREGATION = {"sum": "sum_of_usages", "max": "max_usage", "last": "last_usage"}
FAMILY = "billing-ai"


def dec(milli: int) -> str:
    """Decimal string of a thousandths quantity, without trailing zeros."""
    return format((Decimal(milli) / 1000).normalize(), "f")


def major(minor: str | int | Decimal, currency: str) -> str:
    """A minor-unit amount (possibly fractional) as Chargebee's major-unit decimal string."""
    d = Decimal(str(minor)).scaleb(-minor_unit_exponent(currency)).normalize()
    return format(d, "f")


def _int(minor: str | Decimal) -> int:
    return int(Decimal(str(minor)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def customer(c: dict, created: int) -> dict:
    return {
        "id": c["customer_id"],
        "company": c["name"],
        "email": c["email"],
        "auto_collection": "on",
        "net_term_days": 0,
        "allow_direct_debit": False,
        "created_at": created,
        "taxability": "taxable",
        "updated_at": created,
        "pii_cleared": "active",
        "channel": "web",
        "resource_version": created * 1000,
        "deleted": False,
        "object": "customer",
        "card_status": "valid",
        "preferred_currency_code": c["currency"].upper(),
        "promotional_credits": -c["starting_credit"],
        "refundable_credits": 0,
        "excess_payments": 0,
        "unbilled_charges": 0,
        "meta_data": {
            "segment": c["segment"],
            "region": c["region"],
            "success_manager": c["success_manager"],
            "email_opt_out": "true" if c["email_opt_out"] else "false",
        },
    }


def item(p: dict, meter: dict | None) -> dict:
    meta = {"component": p["component"]}
    if meter:
        meta.update(
            meter_id=meter["meter_id"], meter_event_name=meter["event_name"], meter_display_name=meter["display_name"]
        )
    out = {
        "id": p["product_id"],
        "name": p["name"],
        "external_name": p["name"],
        "status": "active",
        "resource_version": p["created"] * 1000,
        "updated_at": p["created"],
        "item_family_id": FAMILY,
        "type": "plan" if p["component"] == "platform" else "addon",
        "is_shippable": False,
        "is_giftable": False,
        "enabled_for_checkout": True,
        "enabled_in_portal": True,
        "item_applicability": "all",
        "metered": meter is not None,
        "channel": "web",
        "metadata": meta,
        "deleted": False,
        "object": "item",
    }
    if meter:
        out["usage_calculation"] = AGGREGATION[meter["aggregation"]]
    return out


def _tiers(p: dict) -> tuple[list[dict], list[int] | None]:
    cur = p["currency"]
    tiers, flats, lower = [], [], 0
    for t in json.loads(p["tiers_json"]):
        unit, flat = Decimal(t["unit_amount_decimal"]), int(t["flat_amount"])
        if unit == 0 and flat:
            tier = {"pricing_type": "flat_fee", "price": flat, "price_in_decimal": major(flat, cur)}
            flats.append(0)
        else:
            tier = {"pricing_type": "per_unit", "price": _int(unit), "price_in_decimal": major(unit, cur)}
            flats.append(flat)
        tier["starting_unit"] = lower + 1
        if t["up_to"] is not None:
            tier["ending_unit"] = int(t["up_to"])
            lower = int(t["up_to"])
        tiers.append(dict(sorted(tier.items(), key=lambda kv: kv[0] != "starting_unit")))
    return tiers, (flats if any(flats) else None)


def item_price(p: dict, item_type: str) -> dict:
    cur = p["currency"]
    meta: dict = {"plan": p["plan"], "component": p["component"]}
    out = {
        "id": p["price_id"],
        "name": p["lookup_key"],
        "external_name": f"{p['plan']} {p['component']}",
        "item_family_id": FAMILY,
        "item_id": p["product_id"],
        "item_type": item_type,
        "status": "active",
        "period": 1,
        "period_unit": "month",
        "currency_code": cur.upper(),
        "free_quantity": 0,
        "channel": "web",
        "resource_version": p["created"] * 1000,
        "updated_at": p["created"],
        "created_at": p["created"],
        "is_taxable": True,
        "archivable": True,
        "show_description_in_invoices": False,
        "show_description_in_quotes": False,
        "deleted": False,
        "object": "item_price",
    }
    if p["billing_scheme"] == "tiered":
        out["pricing_model"] = "tiered" if p["tiers_mode"] == "graduated" else "volume"
        out["tiers"], flats = _tiers(p)
        if flats:
            meta["tier_flat_amounts"] = flats
    elif p["divide_by"]:
        # a price per package of N units (rounded up, as Chargebee's package tiers are)
        unit = p["unit_amount_decimal"]
        out["pricing_model"] = "tiered"
        out["tiers"] = [
            {
                "starting_unit": 1,
                "price": _int(unit),
                "price_in_decimal": major(unit, cur),
                "pricing_type": "package",
                "package_size": int(p["divide_by"]),
            }
        ]
        if p["round"] != "up":
            meta["package_rounding"] = p["round"]
    else:
        out["pricing_model"] = "per_unit"
        out["price"] = _int(p["unit_amount_decimal"])
        out["price_in_decimal"] = major(p["unit_amount_decimal"], cur)
    out["metadata"] = meta
    return out


def subscription(
    s: dict, items: list[dict], all_items: list[dict], prices: dict, status: str, period: tuple[int, int], as_of: int
) -> dict:
    meta: dict = {"plan": s["plan"]}
    if s["minimum_commitment"]:
        meta["minimum_commitment"] = str(s["minimum_commitment"])
    meta["billing_ai_items"] = {
        it["price_id"]: {"id": it["subscription_item_id"], "created": it["created"]}
        for it in sorted(all_items, key=lambda i: i["valid_from"])
    }
    sub_items = []
    for it in items:
        pr = prices[it["price_id"]]
        entry = {
            "item_price_id": it["price_id"],
            "item_type": pr["item_type"],
            "current_term_start": period[0],
            "current_term_end": period[1],
            "free_quantity": 0,
            "object": "subscription_item",
        }
        if it["quantity"] is not None:  # licensed; metered addons have no quantity
            entry["quantity"] = int(it["quantity"])
            if "price" in pr:
                entry["unit_price"] = pr["price"]
                entry["amount"] = pr["price"] * int(it["quantity"])
        sub_items.append(entry)
    out = {
        "id": s["subscription_id"],
        "customer_id": s["customer_id"],
        "currency_code": s["currency"].upper(),
        "billing_period": 1,
        "billing_period_unit": "month",
        "status": status,
        "current_term_start": period[0],
        "current_term_end": period[1],
        "created_at": s["created"],
        "started_at": s["start"],
        "activated_at": s["start"],
        "updated_at": max(s["created"], s["canceled_at"] or 0),
        "has_scheduled_changes": False,
        "auto_collection": "on",
        "channel": "web",
        "resource_version": s["created"] * 1000,
        "deleted": False,
        "object": "subscription",
        "subscription_items": sub_items,
        "meta_data": meta,
        "due_invoices_count": 0,
    }
    if status != "cancelled":
        out["next_billing_at"] = period[1]
    if s["canceled_at"]:
        out["cancelled_at"] = s["canceled_at"]
        out["cancel_reason_code"] = "Not Satisfied"
    return out


def line_item(ln: dict, price: dict | None, inv: dict) -> dict:
    is_sub = ln["kind"] == "subscription"
    qty = ln["quantity_milli"]
    out = {
        "id": make_id("li", 0, ln["line_id"]),
        "date_from": ln["period_start"],
        "date_to": ln["period_end"],
        "quantity": qty // 1000 if qty % 1000 == 0 else _int(Decimal(qty) / 1000),
        "quantity_in_decimal": dec(qty),
        "amount": ln["amount"],
        "amount_in_decimal": major(ln["amount"], ln["currency"]),
        "is_taxed": False,
        "tax_amount": 0,
        "discount_amount": ln["discount_amount"],
        "item_level_discount_amount": ln["discount_amount"],
        "is_percentage_pricing": False,
        "description": ln["description"],
        "subscription_id": ln["subscription_id"],
        "customer_id": ln["customer_id"],
        "object": "line_item",
    }
    if is_sub and price is not None:
        out.update(
            entity_type=f"{price['item_type']}_item_price",
            entity_id=ln["price_id"],
            entity_description=price["external_name"],
            pricing_model=price["pricing_model"],
            metered=price["_metered"],
        )
        unit = (Decimal(ln["amount"]) / (Decimal(qty) / 1000)) if qty else Decimal(0)
        out["unit_amount"] = _int(unit)
        out["unit_amount_in_decimal"] = major(unit.quantize(Decimal("0.000000001")), ln["currency"])
    else:
        out.update(
            entity_type="adhoc",
            pricing_model="flat_fee",
            metered=False,
            unit_amount=ln["amount"],
            entity_description=ln["description"],
        )
    return out


def transactions(p: dict, sub_id: str, inv: dict) -> list[dict]:
    """One transaction per payment attempt made by as_of: failures, then the success if it was paid."""
    n = p["attempts_by_as_of"]
    at, out = p["created"], []
    for k in range(n):
        if k:
            at += RETRY_DAYS[k - 1] * 86400
        ok = p["status"] == "succeeded" and k == n - 1
        txn = {
            "id": make_id("txn", 0, p["payment_id"], k),
            "customer_id": p["customer_id"],
            "subscription_id": sub_id,
            "gateway_account_id": "gw_sandbox",
            "payment_method": "card",
            "gateway": "chargebee",
            "type": "payment",
            "date": at,
            "currency_code": p["currency"].upper(),
            "amount": p["amount"],
            "id_at_gateway": make_id("ch", 0, p["payment_id"], k),
            "status": "success" if ok else "failure",
            "resource_version": at * 1000,
            "updated_at": at,
            "amount_unused": 0,
            "deleted": False,
            "object": "transaction",
            "linked_invoices": [
                {
                    "invoice_id": p["invoice_id"],
                    "applied_amount": p["amount"] if ok else 0,
                    "applied_at": at,
                    "invoice_date": inv["created"],
                    "invoice_total": inv["total"],
                    "invoice_status": "paid" if ok else "payment_due",
                }
            ],
        }
        if ok:
            txn["settled_at"] = at
        else:
            code = p["failure_code"]
            txn.update(
                error_code=code,
                error_text=f"The payment failed: {code.replace('_', ' ')}.",
                error_detail={
                    "error_code": code,
                    "error_message": f"{code.replace('_', ' ')}",
                    "decline_code": "generic_decline" if code == "card_declined" else None,
                },
            )
        out.append(txn)
    return out


def invoice(inv: dict, lines: list[dict], txns: list[dict], cns: list[dict]) -> dict:
    status = {"paid": "paid", "open": "payment_due", "draft": "pending", "void": "voided"}[inv["status"]]
    credits = max(0, inv["ending_balance"] - inv["starting_balance"]) if inv["total"] >= 0 else 0
    paid_txn = next((t for t in txns if t["status"] == "success"), None)
    paid_at = paid_txn["date"] if paid_txn else (inv["finalized_at"] if inv["status"] == "paid" else None)
    out = {
        "id": inv["invoice_id"],
        "customer_id": inv["customer_id"],
        "subscription_id": inv["subscription_id"],
        "recurring": True,
        "status": status,
        "price_type": "tax_exclusive",
        "date": inv["created"],
        "due_date": inv["finalized_at"],
        "net_term_days": 0,
        "exchange_rate": 1.0,
        "currency_code": inv["currency"].upper(),
        "total": inv["total"],
        "amount_paid": inv["amount_paid"],
        "amount_adjusted": 0,
        "write_off_amount": 0,
        "credits_applied": credits,
        "amount_due": inv["amount_remaining"],
        "resource_version": inv["finalized_at"] * 1000,
        "updated_at": paid_at or inv["finalized_at"],
        "sub_total": inv["subtotal"],
        "tax": 0,
        "first_invoice": inv["billing_reason"] == "subscription_create",
        "has_advance_charges": False,
        "term_finalized": True,
        "is_gifted": False,
        "generated_at": inv["finalized_at"],
        "channel": "web",
        "deleted": False,
        "object": "invoice",
        "round_off_amount": 0,
        "line_items": lines,
        "taxes": [],
        "line_item_taxes": [],
        "applied_credits": [],
        "adjustment_credit_notes": [],
        "issued_credit_notes": [
            {
                "cn_id": c["credit_note_id"],
                "cn_reason_code": c["reason"],
                "cn_date": c["created"],
                "cn_total": c["amount"],
                "cn_status": "refund_due",
            }
            for c in cns
        ],
        "linked_payments": [
            {
                "txn_id": t["id"],
                "applied_amount": t["linked_invoices"][0]["applied_amount"],
                "applied_at": t["date"],
                "txn_status": t["status"],
                "txn_date": t["date"],
                "txn_amount": t["amount"],
            }
            for t in txns
        ],
        "dunning_attempts": [
            {
                "attempt": k,
                "transaction_id": t["id"],
                "dunning_type": "auto_collect",
                "created_at": t["date"],
                "txn_status": t["status"],
                "txn_amount": t["amount"],
            }
            for k, t in enumerate(txns)
        ],
    }
    if paid_at is not None and inv["status"] == "paid":
        out["paid_at"] = paid_at
    if inv["total_discount"]:
        out["discounts"] = [
            {
                "amount": inv["total_discount"],
                "description": f"{inv['coupon_percent_off']}% off",
                "entity_type": "item_level_coupon",
                "entity_id": "billing-ai-coupon",
                "object": "discount",
            }
        ]
        out["line_item_discounts"] = [
            {
                "line_item_id": ln["id"],
                "discount_type": "item_level_coupon",
                "coupon_id": "billing-ai-coupon",
                "entity_id": "billing-ai-coupon",
                "discount_amount": ln["discount_amount"],
            }
            for ln in lines
            if ln["discount_amount"]
        ]
    else:
        out["discounts"], out["line_item_discounts"] = [], []
    return out


def credit_note(cn: dict, sub_id: str) -> dict:
    return {
        "id": cn["credit_note_id"],
        "customer_id": cn["customer_id"],
        "subscription_id": sub_id,
        "reference_invoice_id": cn["invoice_id"],
        "type": "refundable",
        "reason_code": cn["reason"],
        "status": "refund_due",
        "date": cn["created"],
        "price_type": "tax_exclusive",
        "currency_code": cn["currency"].upper(),
        "total": cn["amount"],
        "amount_allocated": 0,
        "amount_refunded": 0,
        "amount_available": cn["amount"],
        "generated_at": cn["created"],
        "resource_version": cn["created"] * 1000,
        "updated_at": cn["created"],
        "channel": "web",
        "sub_total": cn["amount"],
        "round_off_amount": 0,
        "fractional_correction": 0,
        "deleted": False,
        "object": "credit_note",
        "line_items": [],
        "taxes": [],
        "allocations": [],
        "linked_refunds": [],
        "discounts": [],
    }


def render_world(tables: dict[str, pl.DataFrame], as_of: int) -> Iterator[tuple[str, dict, str | None, str | None]]:
    """Yield (type, object, customer, parent) for every object the Chargebee facade serves."""
    custs = {
        c["customer_id"]: c
        for c in tables["customers"].iter_rows(named=True)
        if c.get("platform", "stripe") == "chargebee"
    }
    if not custs:
        # no merchant customers on this site: it serves nothing, not even the catalog
        return
    subs_rows = [s for s in tables["subscriptions"].iter_rows(named=True) if s["customer_id"] in custs]
    first_created: dict[str, int] = {}
    for s in tables["subscriptions"].iter_rows(named=True):
        first_created[s["customer_id"]] = s["created"] - 86400
    for cid, c in custs.items():
        yield "customer", customer(c, first_created.get(cid, as_of)), cid, None

    meters_by_name = {m["meter_name"]: m for m in tables["meters"].iter_rows(named=True)}
    price_rows = list(tables["prices"].iter_rows(named=True))
    metered_products = {p["product_id"] for p in price_rows if p["usage_type"] == "metered"}
    item_types = {}
    for p in tables["products"].iter_rows(named=True):
        meter = meters_by_name.get(p["component"]) if p["product_id"] in metered_products else None
        obj = item(p, meter)
        item_types[p["product_id"]] = (obj["type"], obj["metered"])
        yield "item", obj, None, None
    prices = {}
    for p in price_rows:
        typ, metered = item_types[p["product_id"]]
        obj = item_price(p, typ)
        prices[p["price_id"]] = {**obj, "_metered": metered}
        yield "item_price", obj, None, None

    items_by_sub: dict[str, list[dict]] = {}
    for it in tables["subscription_items"].iter_rows(named=True):
        items_by_sub.setdefault(it["subscription_id"], []).append(it)
    sub_of_cust: dict[str, list[dict]] = {}
    for s in subs_rows:
        sub_of_cust.setdefault(s["customer_id"], []).append(s)
        cur = current_period(s["anchor"], as_of)
        status = (
            "cancelled"
            if s["canceled_at"] and s["canceled_at"] <= as_of
            else ("non_renewing" if s["canceled_at"] else "active")
        )
        at = min(as_of, s["canceled_at"] - 1) if s["canceled_at"] else as_of
        all_items = items_by_sub[s["subscription_id"]]
        current = [it for it in all_items if it["valid_from"] <= at and (it["valid_to"] is None or at < it["valid_to"])]
        yield ("subscription", subscription(s, current, all_items, prices, status, cur, as_of), s["customer_id"], None)

    invoices = [i for i in tables["invoices"].iter_rows(named=True) if i["customer_id"] in custs]
    inv_by_id = {i["invoice_id"]: i for i in invoices}
    lines_by_inv: dict[str, list[dict]] = {}
    for ln in tables["invoice_lines"].iter_rows(named=True):
        if ln["invoice_id"] in inv_by_id:
            lines_by_inv.setdefault(ln["invoice_id"], []).append(
                line_item(ln, prices.get(ln["price_id"]) if ln["price_id"] else None, inv_by_id[ln["invoice_id"]])
            )
    txns_by_inv: dict[str, list[dict]] = {}
    for p in tables["payments"].iter_rows(named=True):
        if p["invoice_id"] in inv_by_id:
            inv = inv_by_id[p["invoice_id"]]
            txns_by_inv[p["invoice_id"]] = transactions(p, inv["subscription_id"], inv)
    cns_by_inv: dict[str, list[dict]] = {}
    for cn in tables["credit_notes"].iter_rows(named=True):
        if cn["invoice_id"] in inv_by_id:
            cns_by_inv.setdefault(cn["invoice_id"], []).append(cn)
    for inv in invoices:
        txns = txns_by_inv.get(inv["invoice_id"], [])
        yield (
            "invoice",
            invoice(inv, lines_by_inv.get(inv["invoice_id"], []), txns, cns_by_inv.get(inv["invoice_id"], [])),
            inv["customer_id"],
            inv["subscription_id"],
        )
        for t in txns:
            yield "transaction", t, inv["customer_id"], inv["invoice_id"]
        for cn in cns_by_inv.get(inv["invoice_id"], []):
            yield "credit_note", credit_note(cn, inv["subscription_id"]), cn["customer_id"], inv["invoice_id"]

    # usage records: the world's daily totals per customer x meter, on the subscription's metered item price
    # for that meter (the one active that day, else the last one it had)
    meter_of = {m["meter_id"]: m for m in tables["meters"].iter_rows(named=True)}
    mu = tables["meter_usage"].filter(pl.col("customer_id").is_in(list(custs)))
    for r in mu.sort("customer_id", "meter_id", "day_start").iter_rows(named=True):
        day = r["day_start"]
        subs = sub_of_cust.get(r["customer_id"], [])
        sub = next(
            (s for s in subs if s["start"] <= day and (not s["canceled_at"] or day < s["canceled_at"])),
            subs[-1] if subs else None,
        )
        if sub is None:
            continue
        name = meter_of[r["meter_id"]]["meter_name"]
        cands = sorted(
            (it for it in items_by_sub[sub["subscription_id"]] if it["meter_name"] == name),
            key=lambda it: it["valid_from"],
        )
        if not cands:
            continue
        it = next(
            (i for i in cands if i["valid_from"] <= day and (i["valid_to"] is None or day < i["valid_to"])), cands[-1]
        )
        usage = {
            "id": make_id("usage", 0, sub["subscription_id"], r["meter_id"], day),
            "usage_date": day,
            "subscription_id": sub["subscription_id"],
            "item_price_id": it["price_id"],
            "quantity": dec(r["value_milli"]),
            "source": "api",
            "resource_version": (day + 86400) * 1000,
            "updated_at": day + 86400,
            "created_at": day + 86400,
            "object": "usage",
        }
        yield "usage", usage, r["customer_id"], sub["subscription_id"]
