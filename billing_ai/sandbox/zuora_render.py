"""Render the platform-neutral world as Zuora REST v1 objects.

The facade is a view of the world, not a second biller: the invoices, lines,
payments and credit notes are the world's (billed by ``sandbox.invoicing``),
drawn in Zuora's shapes. Only customers the world assigns to ``zuora`` are
served; the catalog is shared, and served only when at least one customer is
on Zuora (a merchant without Zuora customers has no Zuora tenant).

Where the merchant's own references live (the canonical ids of ``core``):

* account ``accountNumber`` = customer id; subscription ``subscriptionNumber``
  = subscription id; rate plan charge ``number`` (chargeNumber) = subscription
  item id; product ``sku`` = product id; invoice ``invoiceNumber`` = invoice number;
* custom fields (``*__c``) for the rest: ``price_id__c`` (and plan, component,
  lookup key, meter, package size) on product rate plan charges, ``invoice_id__c``
  on invoices, ``line_id__c`` on invoice items, ``payment_id__c`` on payments,
  ``credit_note_id__c`` on credit memos, and the account's ``segment__c`` ...

Zuora's own ids are minted like Zuora's: 32 lowercase hex characters.

Zuora's service dates are day-granular while the world's billing periods are
instants (Stripe semantics). The merchant's integration keeps the exact instants
in custom fields (``*_at__c``, ``period_start__c``...); the Zuora date fields are
rendered too, and the core SQL falls back to them (midnight UTC) when a field
is missing.

Money is decimal in the currency's major unit, as Zuora sends it (45.08 EUR,
5000 JPY); :func:`dumps` writes Decimals as exact JSON numbers, never floats.
A tier that has both a unit and a flat price (which one Zuora tier cannot hold)
is drawn as two entries with the same ``tier`` number, one ``PerUnit`` and one
``FlatFee``; the connector's mapping adds them back together.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import polars as pl

from billing_ai.money import minor_unit_exponent

_DEC = re.compile(r'"\\u0000dec:([-0-9.Ee+]+)"')


def dumps(obj: Any) -> str:
    """JSON with Decimals written as exact numbers (``45.08``, not ``"45.08"`` or a float)."""

    def default(o):
        if isinstance(o, Decimal):
            return f"\u0000dec:{o}"
        raise TypeError(f"{type(o).__name__} is not JSON serializable")

    return _DEC.sub(r"\1", json.dumps(obj, default=default))


def loads(text: str | bytes) -> Any:
    """JSON with every non-integer number parsed as an exact Decimal."""
    return json.loads(text, parse_float=Decimal)


def zid(kind: str, *parts: object) -> str:
    """A Zuora-style object id: 32 lowercase hex characters, deterministic per object."""
    return hashlib.sha256(f"zuora|{kind}|{'|'.join(map(str, parts))}".encode()).hexdigest()[:32]


def major(minor: int | str | Decimal, currency: str) -> Decimal:
    """A minor-unit amount (or unit price) as Zuora's major-unit decimal."""
    return Decimal(minor).scaleb(-minor_unit_exponent(currency))


def iso(ts: int | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def day(ts: int | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _tiers(tiers_json: str | None, currency: str) -> list[dict] | None:
    if not tiers_json:
        return None
    out, start = [], Decimal(0)
    for i, t in enumerate(json.loads(tiers_json)):
        end = None if t["up_to"] is None else Decimal(t["up_to"])
        base = {"tier": i + 1, "startingUnit": start, "endingUnit": end, "currency": currency.upper()}
        out.append({**base, "price": major(t["unit_amount_decimal"], currency), "priceFormat": "PerUnit"})
        if t["flat_amount"]:
            out.append({**base, "price": major(t["flat_amount"], currency), "priceFormat": "FlatFee"})
        start = end if end is not None else start
    return out


MODEL = {("per_unit", None): "PerUnit", ("tiered", "graduated"): "Tiered", ("tiered", "volume"): "Volume"}


def product_rate_plan_charge(p: dict) -> dict:
    cur = p["currency"]
    tiers = _tiers(p["tiers_json"], cur)
    price = major(p["unit_amount_decimal"], cur) if p["unit_amount_decimal"] is not None else None
    return {
        "id": zid("prpc", p["price_id"]),
        "name": p["component"],
        "type": "Usage" if p["usage_type"] == "metered" else "Recurring",
        "model": MODEL[(p["billing_scheme"], p["tiers_mode"])],
        "uom": p["meter_name"],
        "billingPeriod": "Month",
        "billingDay": "DefaultFromCustomer",
        "billingTiming": "IN_ARREARS" if p["usage_type"] == "metered" else "IN_ADVANCE",
        "pricing": [{"currency": cur.upper(), "price": price, "tiers": tiers}],
        "createdDate": iso(p["created"]),
        "updatedDate": iso(p["created"]),
        "price_id__c": p["price_id"],
        "plan__c": p["plan"],
        "component__c": p["component"],
        "lookup_key__c": p["lookup_key"],
        "meter_id__c": p["meter_id"],
        "package_size__c": str(p["divide_by"]) if p["divide_by"] else None,
        "package_rounding__c": p["round"] if p["divide_by"] else None,
    }


def product(p: dict, prices: list[dict]) -> dict:
    return {
        "id": zid("prod", p["product_id"]),
        "sku": p["product_id"],
        "name": p["name"],
        "description": "",
        "category": "Base Products",
        "effectiveStartDate": "2020-01-01",
        "effectiveEndDate": "2099-12-31",
        "createdDate": iso(p["created"]),
        "component__c": p["component"],
        "productRatePlans": [
            {
                "id": zid("prp", pr["price_id"]),
                "name": f"{pr['plan']} {pr['component']} {pr['currency'].upper()}",
                "status": "Active",
                "effectiveStartDate": "2020-01-01",
                "effectiveEndDate": "2099-12-31",
                "productRatePlanCharges": [product_rate_plan_charge(pr)],
            }
            for pr in prices
        ],
    }


def unit_of_measure(m: dict) -> dict:
    return {
        "id": zid("uom", m["meter_id"]),
        "uomName": m["event_name"],
        "displayedAs": m["display_name"],
        "decimalPlaces": 3,
        "roundingMode": "UP",
        "active": True,
    }


def account(c: dict, created: int, balance: Decimal) -> dict:
    cur = c["currency"]
    return {
        "id": zid("acct", c["customer_id"]),
        "accountNumber": c["customer_id"],
        "name": c["name"],
        "currency": cur.upper(),
        "status": "Active",
        "billCycleDay": 0,
        "autoPay": True,
        "paymentTerm": "Due Upon Receipt",
        "balance": balance,
        # the world's customer balance (negative: credit) is Zuora's credit balance (positive)
        "creditBalance": major(max(0, -c["starting_credit"]), cur),
        "createdDate": iso(created),
        "updatedDate": iso(created),
        "billTo": {
            "id": zid("contact", c["customer_id"]),
            "firstName": "Billing",
            "lastName": c["name"],
            "workEmail": c["email"],
            "workPhone": None,
            "address1": "1 Sandbox Way",
            "city": "Springfield",
            "state": None,
            "postalCode": "00000",
            "country": "United States",
        },
        "segment__c": c["segment"],
        "region__c": c["region"],
        "success_manager__c": c["success_manager"],
        "email_opt_out__c": "true" if c["email_opt_out"] else "false",
    }


def rate_plan(it: dict, price: dict, product_row: dict, current: bool, sub_end: int | None) -> dict:
    charge = product_rate_plan_charge(price)
    end = it["valid_to"] if it["valid_to"] is not None else sub_end
    return {
        "id": zid("rp", it["subscription_item_id"]),
        "productId": zid("prod", price["product_id"]),
        "productName": product_row["name"],
        "productSku": price["product_id"],
        "productRatePlanId": zid("prp", price["price_id"]),
        "ratePlanName": f"{price['plan']} {price['component']}",
        "lastChangeType": None if current else "Remove",
        "ratePlanCharges": [
            {
                "id": zid("rpc", it["subscription_item_id"]),
                "number": it["subscription_item_id"],
                "originalChargeId": zid("rpc", it["subscription_item_id"]),
                "productRatePlanChargeId": charge["id"],
                "name": charge["name"],
                "type": charge["type"],
                "model": charge["model"],
                "uom": charge["uom"],
                "currency": price["currency"].upper(),
                "quantity": Decimal(it["quantity"]) if it["quantity"] is not None else None,
                "price": charge["pricing"][0]["price"],
                "tiers": charge["pricing"][0]["tiers"],
                "billingPeriod": "Month",
                "effectiveStartDate": day(it["valid_from"]),
                "effectiveEndDate": day(end),
                "effective_start_at__c": iso(it["valid_from"]),
                "effective_end_at__c": iso(end),
                "created_at__c": iso(it["created"]),
            }
        ],
    }


def subscription(s: dict, acct: dict, rate_plans: list[dict], status: str, period: tuple[int, int]) -> dict:
    return {
        "id": zid("sub", s["subscription_id"]),
        "subscriptionNumber": s["subscription_id"],
        "accountId": acct["id"],
        "accountNumber": acct["accountNumber"],
        "accountName": acct["name"],
        "status": status,
        "termType": "EVERGREEN",
        "currency": s["currency"].upper(),
        "contractEffectiveDate": day(s["start"]),
        "serviceActivationDate": day(s["start"]),
        "customerAcceptanceDate": day(s["start"]),
        "subscriptionStartDate": day(s["start"]),
        "termStartDate": day(s["start"]),
        "cancelledDate": day(s["canceled_at"]),
        "createdDate": iso(s["created"]),
        "updatedDate": iso(s["created"]),
        "plan__c": s["plan"],
        "minimum_commitment__c": str(s["minimum_commitment"]) if s["minimum_commitment"] else None,
        "started_at__c": iso(s["start"]),
        "billing_cycle_anchor_at__c": iso(s["anchor"]),
        "cancelled_at__c": iso(s["canceled_at"]),
        "current_period_start_at__c": iso(period[0]),
        "current_period_end_at__c": iso(period[1]),
        "ratePlans": rate_plans,
    }


def invoice(inv: dict, acct: dict) -> dict:
    cur = inv["currency"]
    applied = inv["amount_due"] - inv["total"]  # credit balance used (negative) or debit carried
    return {
        "id": zid("inv", inv["invoice_id"]),
        "invoiceNumber": inv["number"],
        "accountId": acct["id"],
        "accountNumber": acct["accountNumber"],
        "accountName": acct["name"],
        "currency": cur.upper(),
        "invoiceDate": day(inv["created"]),
        "invoiceTargetDate": day(inv["created"]),
        "dueDate": day(inv["finalized_at"]),
        "status": "Posted",
        "amount": major(inv["total"], cur),
        "amountWithoutTax": major(inv["total"], cur),
        "taxAmount": Decimal(0),
        "balance": major(inv["amount_remaining"], cur),
        "paymentAmount": major(inv["amount_paid"], cur),
        "creditBalanceAdjustmentAmount": major(-applied, cur),
        "createdDate": iso(inv["created"]),
        "postedDate": iso(inv["finalized_at"]),
        "invoice_id__c": inv["invoice_id"],
        "subscription_number__c": inv["subscription_id"],
        "billing_reason__c": inv["billing_reason"],
        "period_start__c": iso(inv["period_start"]),
        "period_end__c": iso(inv["period_end"]),
        "starting_balance__c": major(inv["starting_balance"], cur),
        "attempt_count__c": str(inv["attempt_count"]),
    }


def invoice_items(ln: dict, inv: dict, price: dict | None) -> list[dict]:
    cur = ln["currency"]
    sub_line = ln["kind"] == "subscription"
    item = {
        "id": zid("ii", ln["line_id"]),
        "invoiceId": zid("inv", inv["invoice_id"]),
        "subscriptionName": ln["subscription_id"],
        "subscriptionId": zid("sub", ln["subscription_id"]) if ln["subscription_id"] else None,
        "chargeNumber": ln["subscription_item_id"] if sub_line else None,
        "chargeId": zid("rpc", ln["subscription_item_id"]) if sub_line else None,
        "productRatePlanChargeId": zid("prpc", ln["price_id"]) if ln["price_id"] else None,
        "chargeName": price["component"] if price else "Adjustment",
        "chargeDescription": ln["description"],
        "chargeType": ("Usage" if price and price["usage_type"] == "metered" else "Recurring")
        if sub_line
        else "OneTime",
        "processingType": "Charge",
        "quantity": Decimal(ln["quantity_milli"]) / 1000,
        "unitOfMeasure": price["meter_name"] if price else None,
        "chargeAmount": major(ln["amount"], cur),
        "taxAmount": Decimal(0),
        "serviceStartDate": day(ln["period_start"]),
        "serviceEndDate": day(max(ln["period_start"], ln["period_end"] - 1)),
        "chargeDate": iso(inv["created"]),
        "appliedToItemId": None,
        "line_id__c": ln["line_id"],
        "period_start__c": iso(ln["period_start"]),
        "period_end__c": iso(ln["period_end"]),
        "proration__c": "true" if ln["proration"] else "false",
    }
    out = [item]
    if ln["discount_amount"]:
        # Zuora bills a discount as its own item, applied to the item it discounts
        out.append(
            {
                **{k: v for k, v in item.items() if not k.endswith("__c")},
                "id": zid("iid", ln["line_id"]),
                "chargeName": "Coupon",
                "chargeDescription": "Discount",
                "chargeNumber": None,
                "chargeId": None,
                "productRatePlanChargeId": None,
                "chargeType": "Recurring",
                "processingType": "Discount",
                "quantity": Decimal(1),
                "chargeAmount": major(-ln["discount_amount"], cur),
                "appliedToItemId": item["id"],
            }
        )
    return out


PAYMENT_STATUS = {
    "succeeded": "Processed",
    "requires_payment_method": "Error",
    "processing": "Processing",
    "canceled": "Canceled",
}


def payment(p: dict, acct: dict, inv: dict, number: int) -> dict:
    cur = p["currency"]
    ok = p["status"] == "succeeded"
    code = p["failure_code"]
    return {
        "id": zid("pay", p["payment_id"]),
        "number": f"P-{number:08d}",
        "accountId": acct["id"],
        "accountNumber": acct["accountNumber"],
        "currency": cur.upper(),
        "type": "Electronic",
        "status": PAYMENT_STATUS[p["status"]],
        "amount": major(p["amount"], cur),
        "appliedAmount": major(p["amount"] if ok else 0, cur),
        "unappliedAmount": Decimal(0),
        "effectiveDate": day(p["created"]),
        "createdDate": iso(p["created"]),
        "submittedOn": iso(p["created"]),
        "settledOn": iso(p["paid_at"]),
        "gatewayState": "Settled" if ok else "FailedToSettle",
        "gatewayResponseCode": code,
        "gatewayResponse": f"The payment failed: {code.replace('_', ' ')}." if code else "Approved",
        "paymentMethodId": zid("pm", p["customer_id"]),
        "paidInvoices": [
            {
                "invoiceId": zid("inv", inv["invoice_id"]),
                "invoiceNumber": inv["number"],
                "appliedPaymentAmount": major(p["amount"] if ok else 0, cur),
            }
        ],
        "payment_id__c": p["payment_id"],
        "attempt_count__c": str(p["attempts_by_as_of"]),
        "decline_code__c": "generic_decline" if code == "card_declined" else None,
    }


def credit_memo(cn: dict, acct: dict) -> dict:
    cur = cn["currency"]
    return {
        "id": zid("cm", cn["credit_note_id"]),
        "number": cn["number"],
        "accountId": acct["id"],
        "accountNumber": acct["accountNumber"],
        "currency": cur.upper(),
        "amount": major(cn["amount"], cur),
        "unappliedAmount": Decimal(0),
        "appliedAmount": major(cn["amount"], cur),
        "referredInvoiceId": zid("inv", cn["invoice_id"]),
        "reasonCode": cn["reason"],
        "status": "Posted",
        "memoDate": day(cn["created"]),
        "createdDate": iso(cn["created"]),
        "postedOn": iso(cn["created"]),
        "comment": None,
        "credit_note_id__c": cn["credit_note_id"],
    }


def usage(u: dict, acct: dict, meter_name: str, as_of: int) -> dict:
    return {
        "id": zid("usage", u["meter_id"], u["customer_id"], u["day_start"]),
        "accountId": acct["id"],
        "accountNumber": acct["accountNumber"],
        "unitOfMeasure": meter_name,
        "quantity": Decimal(u["value_milli"]) / 1000,
        "startDateTime": iso(u["day_start"]),
        "endDateTime": iso(u["day_start"] + 86399),
        "submissionDateTime": iso(min(as_of, u["day_start"] + 86400)),
        "sourceName": "API",
        "status": "Processed",
    }


def render_world(tables: dict[str, pl.DataFrame], as_of: int) -> Iterator[tuple[str, dict, str | None, str | None]]:
    """Yield (type, object, accountNumber, parent) for every object the Zuora facade serves."""
    from billing_ai.sandbox.invoicing import current_period  # the platform's own calendar

    custs = {c["customer_id"]: c for c in tables["customers"].iter_rows(named=True)}
    mine = {cid for cid, c in custs.items() if c.get("platform", "stripe") == "zuora"}
    subs_rows = list(tables["subscriptions"].iter_rows(named=True))
    first_created = {s["customer_id"]: s["created"] - 86400 for s in subs_rows}
    invoices = [i for i in tables["invoices"].iter_rows(named=True) if i["customer_id"] in mine]
    open_balance: dict[str, int] = {}
    for inv in invoices:
        open_balance[inv["customer_id"]] = open_balance.get(inv["customer_id"], 0) + inv["amount_remaining"]

    accts = {}
    for cid in sorted(mine, key=lambda c: list(custs).index(c)):
        c = custs[cid]
        accts[cid] = account(c, first_created.get(cid, as_of), major(open_balance.get(cid, 0), c["currency"]))
        yield "account", accts[cid], cid, None

    prices_by_product: dict[str, list[dict]] = {}
    prices = {}
    for p in tables["prices"].iter_rows(named=True):
        prices_by_product.setdefault(p["product_id"], []).append(p)
        prices[p["price_id"]] = p
    products = {p["product_id"]: p for p in tables["products"].iter_rows(named=True)}
    if mine:  # a world with no customer on Zuora has no Zuora tenant: no catalog either
        for p in products.values():
            yield "product", product(p, prices_by_product.get(p["product_id"], [])), None, None
        for m in tables["meters"].iter_rows(named=True):
            yield "uom", unit_of_measure(m), None, None

    items_by_sub: dict[str, list[dict]] = {}
    for it in tables["subscription_items"].iter_rows(named=True):
        items_by_sub.setdefault(it["subscription_id"], []).append(it)
    for s in subs_rows:
        if s["customer_id"] not in mine:
            continue
        cur = current_period(s["anchor"], as_of)
        canceled = s["canceled_at"] is not None and s["canceled_at"] <= as_of
        at = min(as_of, s["canceled_at"] - 1) if s["canceled_at"] else as_of
        rps = []
        for it in items_by_sub[s["subscription_id"]]:
            if it["valid_from"] > as_of:
                continue
            current = it["valid_from"] <= at and (it["valid_to"] is None or at < it["valid_to"])
            price = prices[it["price_id"]]
            rps.append(rate_plan(it, price, products[price["product_id"]], current, s["canceled_at"]))
        yield (
            "subscription",
            subscription(s, accts[s["customer_id"]], rps, "Cancelled" if canceled else "Active", cur),
            s["customer_id"],
            None,
        )

    invs = {}
    for inv in invoices:
        invs[inv["invoice_id"]] = inv
        yield "invoice", invoice(inv, accts[inv["customer_id"]]), inv["customer_id"], None
    for ln in tables["invoice_lines"].iter_rows(named=True):
        inv = invs.get(ln["invoice_id"])
        if inv is None:
            continue
        for obj in invoice_items(ln, inv, prices.get(ln["price_id"]) if ln["price_id"] else None):
            yield "invoice_item", obj, inv["customer_id"], obj["invoiceId"]
    n = 0
    for p in tables["payments"].iter_rows(named=True):
        if p["customer_id"] in mine and p["invoice_id"] in invs:
            n += 1
            yield "payment", payment(p, accts[p["customer_id"]], invs[p["invoice_id"]], n), p["customer_id"], None
    for cn in tables["credit_notes"].iter_rows(named=True):
        if cn["customer_id"] in mine:
            yield (
                "credit_memo",
                credit_memo(cn, accts[cn["customer_id"]]),
                cn["customer_id"],
                zid("inv", cn["invoice_id"]),
            )
    meter_names = dict(tables["meters"].select("meter_id", "event_name").iter_rows())
    for u in tables["meter_usage"].sort("customer_id", "meter_id", "day_start").iter_rows(named=True):
        if u["customer_id"] in mine:
            yield "usage", usage(u, accts[u["customer_id"]], meter_names[u["meter_id"]], as_of), u["customer_id"], None
