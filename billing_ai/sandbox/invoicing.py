"""The sandbox platform's own billing: meter summaries, invoices, payments.

This is the *platform's* rating, written independently of
``billing_ai.rating`` (neither imports the other), so that our re-rating of the
same usage is a real cross-check rather than the same code run twice.

Billing follows Stripe's documented behaviour for usage-based subscriptions:

* monthly periods from the billing cycle anchor (day clamped to month end);
* an invoice at each period boundary: metered usage of the period that just
  ended (in arrears), licensed items for the period that starts (in advance),
  and the prorations of mid-period plan changes;
* a plan change prorates licensed items by seconds remaining in the period;
  metered usage is not prorated, it is billed per item for the time it ran;
* a cancellation ends the subscription at once and invoices the usage so far;
* each line's exact amount is rounded once, half away from zero;
* a coupon's percentage is taken off each line (rounded per line);
* usage that reaches the platform after the invoice was finalized is not on
  it (the reconciliation later calls this late usage).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal, localcontext

import numpy as np
import polars as pl

from billing_ai.sandbox.world import WorldConfig, add_months, make_id, ts

FINALIZE_GRACE = 3600  # invoices finalize an hour after the period closes
FAILURE_CODES = ("card_declined", "insufficient_funds", "expired_card")
RETRY_DAYS = (3, 5, 7)  # smart retries after the first attempt
RECOVERY_P = {"card_declined": 0.25, "insufficient_funds": 0.4, "expired_card": 0.08}
FIRST_ATTEMPT_OK = {"self_serve": 0.88, "mid_market": 0.94, "enterprise": 0.97}


@dataclass
class Billing:
    tables: dict[str, pl.DataFrame]
    truth: dict[str, pl.DataFrame]


def _round(x: Decimal) -> int:
    return int(x.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def price_amount(price: dict, qty: Decimal) -> Decimal:
    """Exact (unrounded) amount in minor units for ``qty`` units of ``price``."""
    if price["billing_scheme"] == "per_unit":
        unit = Decimal(price["unit_amount_decimal"])
        if price.get("divide_by"):
            mode = ROUND_CEILING if price["round"] == "up" else ROUND_FLOOR
            packages = (qty / Decimal(price["divide_by"])).to_integral_value(rounding=mode)
            return packages * unit
        return qty * unit
    tiers = json.loads(price["tiers_json"])
    if price["tiers_mode"] == "volume":
        for t in tiers:
            if t["up_to"] is None or qty <= t["up_to"]:
                return qty * Decimal(t["unit_amount_decimal"]) + (t["flat_amount"] if qty > 0 else 0)
        raise AssertionError("volume tiers must end with up_to=inf")
    total, lower = Decimal(0), Decimal(0)
    for t in tiers:
        upper = Decimal(t["up_to"]) if t["up_to"] is not None else None
        if qty <= lower:
            break
        in_tier = (min(qty, upper) if upper is not None else qty) - lower
        total += in_tier * Decimal(t["unit_amount_decimal"]) + t["flat_amount"]
        if upper is None:
            break
        lower = upper
    return total


def _periods(anchor: int, until: int) -> list[int]:
    a = datetime.fromtimestamp(anchor, UTC)
    out, k = [], 0
    while True:
        b = ts(add_months(a, k, a.day))
        out.append(b)
        if b > until:
            return out
        k += 1


def current_period(anchor: int, as_of: int) -> tuple[int, int]:
    """The monthly billing period [start, end) of a subscription anchored at ``anchor`` that holds
    ``as_of`` (unix seconds), as the platforms show it; a subscription anchored after ``as_of``
    (created at the end of the world) shows its first period."""
    bounds = _periods(anchor, as_of)  # ends with the first bound after as_of
    if len(bounds) == 1:  # anchored after as_of
        a = datetime.fromtimestamp(anchor, UTC)
        return bounds[0], ts(add_months(a, 1, a.day))
    return bounds[-2], bounds[-1]


def bill_world(
    config: WorldConfig, tables: dict[str, pl.DataFrame], events: pl.DataFrame, rng: np.random.Generator
) -> Billing:
    seed = config.seed
    as_of = ts(config.as_of_dt())
    customers = {c["customer_id"]: c for c in tables["customers"].iter_rows(named=True)}
    prices = {p["price_id"]: p for p in tables["prices"].iter_rows(named=True)}
    items = tables["subscription_items"]
    subs = list(tables["subscriptions"].iter_rows(named=True))

    # meter event summaries: what reached the platform by as_of, per customer x meter x day
    meter_ids = dict(tables["meters"].select("meter_name", "meter_id").iter_rows())
    reached = events.filter((pl.col("ts") < as_of) & (pl.col("landed_at") < as_of))
    meter_usage = (
        reached.group_by("customer_id", "meter_name", (pl.col("ts") // 86400 * 86400).alias("day_start"))
        .agg(pl.col("quantity_milli").sum().alias("value_milli"))
        .with_columns(pl.col("meter_name").replace_strict(meter_ids).alias("meter_id"))
        .sort("meter_id", "customer_id", "day_start")
    )

    # usage per metered item and billing period, counting only what landed before finalization
    boundaries = []
    for s in subs:
        for b in _periods(s["anchor"], as_of):
            boundaries.append({"subscription_id": s["subscription_id"], "period_start": b})
    bdf = pl.DataFrame(boundaries).sort("period_start")
    metered = items.filter(pl.col("meter_name").is_not_null()).select(
        "subscription_item_id", "subscription_id", "meter_name", "valid_from", "valid_to"
    )
    ev = events.filter(pl.col("ts") < as_of).select(
        "subscription_id", "meter_name", "ts", "landed_at", "quantity_milli"
    )
    ev = ev.join(metered, on=["subscription_id", "meter_name"]).filter(
        (pl.col("ts") >= pl.col("valid_from")) & (pl.col("valid_to").is_null() | (pl.col("ts") < pl.col("valid_to")))
    )
    ev = ev.sort("ts").join_asof(
        bdf, left_on="ts", right_on="period_start", by="subscription_id", check_sortedness=False
    )
    usage_rows = ev.group_by("subscription_item_id", "period_start").agg(
        pl.col("quantity_milli").alias("q"), pl.col("landed_at").alias("landed")
    )
    usage: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {
        (r["subscription_item_id"], r["period_start"]): (np.asarray(r["q"]), np.asarray(r["landed"]))
        for r in usage_rows.iter_rows(named=True)
    }

    items_by_sub: dict[str, list[dict]] = {}
    for it in items.iter_rows(named=True):
        items_by_sub.setdefault(it["subscription_id"], []).append(it)

    invoices, lines, payments, credit_notes, outcomes = [], [], [], [], []
    billing_errors: list[dict] = []
    late_truth: list[dict] = []
    seq: dict[str, int] = {}
    balance = {cid: c["starting_credit"] for cid, c in customers.items()}

    def active(it: dict, at: int) -> bool:
        return it["valid_from"] <= at and (it["valid_to"] is None or at < it["valid_to"])

    for s in subs:
        sid, cid, cur = s["subscription_id"], s["customer_id"], s["currency"]
        cust = customers[cid]
        sub_items = items_by_sub[sid]
        bounds = _periods(s["anchor"], as_of)
        cancel = s["canceled_at"]
        changes = sorted({it["valid_from"] for it in sub_items if it["valid_from"] != s["start"]})
        # invoice moments: creation, each boundary up to as_of, and a final one at cancellation
        moments: list[tuple[int, int | None, int | None, str]] = [(bounds[0], None, None, "subscription_create")]
        for k in range(1, len(bounds)):
            b = bounds[k]
            if cancel is not None and cancel < b:
                if cancel <= as_of:
                    moments.append((cancel, bounds[k - 1], cancel, "subscription_cancel"))
                break
            if b > as_of:
                break
            moments.append((b, bounds[k - 1], b, "subscription_cycle"))

        for inv_at, p_start, p_end, reason in moments:
            if inv_at + FINALIZE_GRACE > as_of:
                continue  # not finalized yet at as_of: the upcoming invoice
            cust_seq = seq.get(cid, 0) + 1
            seq[cid] = cust_seq
            inv_id = make_id("in", seed, sid, inv_at)
            inv_lines = []
            # metered usage of the closing period, per item for the time it ran
            usage_subtotal = 0
            if p_start is not None:
                for it in sub_items:
                    if it["meter_name"] is None:
                        continue
                    lo, hi = max(p_start, it["valid_from"]), min(p_end, it["valid_to"] or p_end)
                    if lo >= hi:
                        continue
                    q_arr, landed = usage.get(
                        (it["subscription_item_id"], p_start), (np.zeros(0, np.int64), np.zeros(0, np.int64))
                    )
                    on_time = landed < inv_at + FINALIZE_GRACE
                    billed_milli = int(q_arr[on_time].sum()) if q_arr.size else 0
                    qty = Decimal(billed_milli) / 1000
                    price = prices[it["price_id"]]
                    amount = _round(price_amount(price, qty))
                    usage_subtotal += amount
                    inv_lines.append(
                        _line(
                            seed,
                            inv_id,
                            it,
                            price,
                            qty,
                            amount,
                            lo,
                            hi,
                            False,
                            f"{price['component']} usage ({price['plan']})",
                        )
                    )
                    # arrived after finalization (and by as_of, so it can be seen): not on this invoice
                    late_milli = int(q_arr[~on_time & (landed < as_of)].sum()) if q_arr.size else 0
                    if late_milli:
                        late_truth.append(
                            {
                                "kind": "late_usage",
                                "invoice_id": inv_id,
                                "line_id": inv_lines[-1]["line_id"],
                                "subscription_item_id": it["subscription_item_id"],
                                "period_start": lo,
                                "period_end": hi,
                                "expected_amount": amount,
                                "billed_amount": amount,
                            }
                        )
                # prorations of plan changes inside the closing period
                for t in changes:
                    if not (p_start <= t < p_end) or reason == "subscription_cancel":
                        continue
                    frac_num, frac_den = p_end - t, p_end - p_start
                    for it in sub_items:
                        if it["meter_name"] is not None:
                            continue
                        price = prices[it["price_id"]]
                        full = Decimal(price["unit_amount_decimal"]) * it["quantity"]
                        with localcontext() as ctx:
                            ctx.prec = 50
                            part = full * frac_num / frac_den
                        if it["valid_to"] == t:
                            inv_lines.append(
                                _line(
                                    seed,
                                    inv_id,
                                    it,
                                    price,
                                    Decimal(it["quantity"]),
                                    -_round(part),
                                    t,
                                    p_end,
                                    True,
                                    f"Unused time on {price['component']} ({price['plan']})",
                                )
                            )
                        elif it["valid_from"] == t:
                            inv_lines.append(
                                _line(
                                    seed,
                                    inv_id,
                                    it,
                                    price,
                                    Decimal(it["quantity"]),
                                    _round(part),
                                    t,
                                    p_end,
                                    True,
                                    f"Remaining time on {price['component']} ({price['plan']})",
                                )
                            )
                if (
                    s["minimum_commitment"]
                    and usage_subtotal < s["minimum_commitment"]
                    and reason != "subscription_cancel"
                ):
                    true_up = s["minimum_commitment"] - usage_subtotal
                    inv_lines.append(
                        {
                            "line_id": make_id("il", seed, inv_id, "commitment"),
                            "invoice_id": inv_id,
                            "subscription_item_id": None,
                            "price_id": None,
                            "kind": "invoice_item",
                            "quantity_milli": 1000,
                            "amount": true_up,
                            "period_start": p_start,
                            "period_end": p_end,
                            "proration": False,
                            "description": "Minimum commitment true-up",
                        }
                    )
            # licensed items in advance for the period that starts
            if reason != "subscription_cancel":
                nxt = bounds[bounds.index(inv_at) + 1] if inv_at in bounds else None
                for it in sub_items:
                    if it["meter_name"] is not None or not active(it, inv_at) or nxt is None:
                        continue
                    price = prices[it["price_id"]]
                    qty = Decimal(it["quantity"])
                    amount = _round(price_amount(price, qty))
                    inv_lines.append(
                        _line(
                            seed,
                            inv_id,
                            it,
                            price,
                            qty,
                            amount,
                            inv_at,
                            nxt,
                            False,
                            f"{price['component']} ({price['plan']})",
                        )
                    )
            if p_start is not None and config.billing_error_rate:
                inv_lines = _inject_billing_errors(
                    inv_lines, prices, rng, config.billing_error_rate, seed, billing_errors, p_start, p_end
                )
            pct = cust["coupon_percent_off"]
            for ln in inv_lines:
                ln["discount_amount"] = _round(Decimal(ln["amount"]) * pct / 100) if pct else 0
                ln["currency"] = cur
                ln["customer_id"] = cid
                ln["subscription_id"] = sid
            subtotal = sum(ln["amount"] for ln in inv_lines)
            discount = sum(ln["discount_amount"] for ln in inv_lines)
            total = subtotal - discount
            starting = balance[cid]
            applied = max(starting, -max(total, 0))  # credit (negative) used up to the total
            balance[cid] = starting - applied
            amount_due = total + applied
            if total < 0:  # as Stripe does: a negative total (a downgrade's credit) becomes balance, 0 is due
                balance[cid] = starting + total
                amount_due = 0
            finalized = inv_at + FINALIZE_GRACE
            pay = _simulate_payment(rng, seed, inv_id, cust, amount_due, finalized, as_of, cur)
            status = "paid" if pay["paid_at"] is not None and pay["paid_at"] <= as_of else "open"
            if amount_due <= 0:
                status = "paid"
            invoices.append(
                {
                    "invoice_id": inv_id,
                    "customer_id": cid,
                    "subscription_id": sid,
                    "currency": cur,
                    "number": f"{cust['invoice_prefix']}-{cust_seq:04d}",
                    "billing_reason": reason,
                    "created": inv_at,
                    "finalized_at": finalized,
                    "period_start": p_start if p_start is not None else inv_at,
                    "period_end": p_end if p_end is not None else inv_at,
                    "subtotal": subtotal,
                    "total_discount": discount,
                    "total": total,
                    "starting_balance": starting,
                    "ending_balance": balance[cid],
                    "amount_due": amount_due,
                    "amount_paid": amount_due if status == "paid" else 0,
                    "amount_remaining": 0 if status == "paid" else amount_due,
                    "status": status,
                    "attempt_count": pay["attempts_by_as_of"] if amount_due > 0 else 0,
                    "coupon_percent_off": pct,
                }
            )
            lines.extend(inv_lines)
            if amount_due > 0:
                payments.append({k: v for k, v in pay.items() if k != "outcome"})
                outcomes.append(pay["outcome"])
            if status == "paid" and total > 0 and rng.random() < 0.02:
                cn_at = (pay["paid_at"] or finalized) + 2 * 86400
                if cn_at <= as_of:
                    credit_notes.append(
                        {
                            "credit_note_id": make_id("cn", seed, inv_id),
                            "invoice_id": inv_id,
                            "customer_id": cid,
                            "currency": cur,
                            "amount": _round(Decimal(total) / 10),
                            "reason": "product_unsatisfactory",
                            "created": cn_at,
                            "number": f"{cust['invoice_prefix']}-{cust_seq:04d}-CN-01",
                        }
                    )

    line_schema = {
        "line_id": pl.String,
        "invoice_id": pl.String,
        "subscription_item_id": pl.String,
        "price_id": pl.String,
        "kind": pl.String,
        "quantity_milli": pl.Int64,
        "amount": pl.Int64,
        "period_start": pl.Int64,
        "period_end": pl.Int64,
        "proration": pl.Boolean,
        "description": pl.String,
        "discount_amount": pl.Int64,
        "currency": pl.String,
        "customer_id": pl.String,
        "subscription_id": pl.String,
    }
    return Billing(
        tables={
            "meter_usage": meter_usage,
            "invoices": pl.DataFrame(invoices, infer_schema_length=None),
            "invoice_lines": pl.DataFrame(lines, schema=line_schema),
            "payments": pl.DataFrame(payments, infer_schema_length=None),
            "credit_notes": pl.DataFrame(
                credit_notes,
                schema={
                    "credit_note_id": pl.String,
                    "invoice_id": pl.String,
                    "customer_id": pl.String,
                    "currency": pl.String,
                    "amount": pl.Int64,
                    "reason": pl.String,
                    "created": pl.Int64,
                    "number": pl.String,
                },
            ),
        },
        truth={
            "payment_outcomes": pl.DataFrame(outcomes, infer_schema_length=None),
            "billing_errors": pl.DataFrame(
                billing_errors + late_truth,
                schema={
                    "kind": pl.String,
                    "invoice_id": pl.String,
                    "line_id": pl.String,
                    "subscription_item_id": pl.String,
                    "period_start": pl.Int64,
                    "period_end": pl.Int64,
                    "expected_amount": pl.Int64,
                    "billed_amount": pl.Int64,
                },
            ),
        },
    )


BILLING_ERRORS = ("wrong_tier", "missing_line", "duplicate_line", "proration_error")


def _inject_billing_errors(
    lines: list[dict],
    prices: dict,
    rng: np.random.Generator,
    rate: float,
    seed: int,
    out: list[dict],
    p_start: int,
    p_end: int,
) -> list[dict]:
    """The platform gets an invoice wrong, the way platforms do; each error is recorded as ground truth.

    * ``wrong_tier``: a tiered usage line priced with the wrong tier logic (graduated billed as
      volume, volume billed as graduated);
    * ``missing_line``: a usage line left off the invoice;
    * ``duplicate_line``: a line billed twice;
    * ``proration_error``: a proration computed by whole days of a 30-day month instead of by seconds.
    """
    draws = rng.random(len(BILLING_ERRORS))
    lines = list(lines)

    def record(kind, ln, expected, billed):
        out.append(
            {
                "kind": kind,
                "invoice_id": ln["invoice_id"],
                "line_id": ln["line_id"],
                "subscription_item_id": ln["subscription_item_id"],
                "period_start": ln["period_start"],
                "period_end": ln["period_end"],
                "expected_amount": expected,
                "billed_amount": billed,
            }
        )

    usage = [
        ln
        for ln in lines
        if ln["price_id"]
        and prices[ln["price_id"]]["usage_type"] == "metered"
        and not ln["proration"]
        and ln["quantity_milli"] > 0
    ]
    if draws[0] < rate:
        tiered = [ln for ln in usage if prices[ln["price_id"]]["billing_scheme"] == "tiered"]
        for ln in tiered:
            price = prices[ln["price_id"]]
            wrong = dict(price, tiers_mode="volume" if price["tiers_mode"] == "graduated" else "graduated")
            billed = _round(price_amount(wrong, Decimal(ln["quantity_milli"]) / 1000))
            if billed != ln["amount"]:
                record("wrong_tier", ln, ln["amount"], billed)
                ln["amount"] = billed
                break
    if draws[1] < rate:
        billable = [ln for ln in usage if ln["amount"] > 0 and ln["line_id"] not in {e["line_id"] for e in out}]
        if billable:
            ln = billable[int(rng.integers(len(billable)))]
            record("missing_line", ln, ln["amount"], 0)
            lines.remove(ln)
    if draws[2] < rate:
        candidates = [ln for ln in lines if ln["amount"] > 0 and ln["line_id"] not in {e["line_id"] for e in out}]
        if candidates:
            ln = candidates[int(rng.integers(len(candidates)))]
            copy = dict(ln, line_id=make_id("il", seed, ln["line_id"], "dup"))
            record("duplicate_line", copy, 0, ln["amount"])
            lines.append(copy)
    if draws[3] < min(1.0, rate * 10):  # prorations are rare: give them a fair chance of going wrong
        for ln in [x for x in lines if x["proration"]]:
            price = prices[ln["price_id"]]
            days = (ln["period_end"] - ln["period_start"]) // 86400
            full = Decimal(price["unit_amount_decimal"]) * Decimal(ln["quantity_milli"]) / 1000
            billed = _round(full * days / 30) * (1 if ln["amount"] >= 0 else -1)
            if billed != ln["amount"]:
                record("proration_error", ln, ln["amount"], billed)
                ln["amount"] = billed
                break
    return lines


def _line(
    seed, inv_id, it, price, qty: Decimal, amount: int, start: int, end: int, proration: bool, description: str
) -> dict:
    return {
        "line_id": make_id("il", seed, inv_id, it["subscription_item_id"], start, proration, amount),
        "invoice_id": inv_id,
        "subscription_item_id": it["subscription_item_id"],
        "price_id": price["price_id"],
        "kind": "subscription",
        "quantity_milli": int(qty * 1000),
        "amount": amount,
        "period_start": start,
        "period_end": end,
        "proration": proration,
        "description": description,
    }


def _simulate_payment(rng, seed, inv_id, cust, amount_due, finalized, as_of, cur) -> dict:
    """First attempt at finalization, smart retries after; the full future goes to truth."""
    attempts = [finalized]
    ok_first = rng.random() < FIRST_ATTEMPT_OK[cust["segment"]]
    code = None
    paid_at = finalized if ok_first else None
    if not ok_first:
        code = FAILURE_CODES[int(rng.choice(3, p=[0.5, 0.3, 0.2]))]
        t = finalized
        for d in RETRY_DAYS:
            t = t + d * 86400
            attempts.append(t)
            if rng.random() < RECOVERY_P[code]:
                paid_at = t
                break
    by_as_of = [a for a in attempts if a <= as_of]
    paid_now = paid_at is not None and paid_at <= as_of
    status = "succeeded" if paid_now else "requires_payment_method"
    pi = make_id("pi", seed, inv_id)
    return {
        "payment_id": pi,
        "invoice_id": inv_id,
        "customer_id": cust["customer_id"],
        "currency": cur,
        "amount": amount_due,
        "status": status,
        "created": finalized,
        "failure_code": None if paid_now and len(by_as_of) == 1 else code,
        "attempts_by_as_of": len(by_as_of),
        "paid_at": paid_at if paid_now else None,
        "outcome": {
            "invoice_id": inv_id,
            "payment_id": pi,
            "final_status": "paid" if paid_at else "uncollectible",
            "paid_at": paid_at,
            "attempts": len(attempts) if paid_at is None else attempts.index(paid_at) + 1,
            "failure_code": code,
        },
    }
