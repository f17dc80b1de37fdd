"""Turn analytics into proposals. The first proposer: the invoice reconciliation.

Each reconciliation finding that needs money corrected becomes one proposal:

=================  ====================================================================
finding            proposal
=================  ====================================================================
underbilled        ``pending_invoice_item`` for the shortfall (Stripe never edits a
missing_line       finalized invoice: the correction rides on the next one)
overbilled         ``credit_note`` on the invoice for the excess (reason ``duplicate``
                   for a duplicated line)
late_usage         ``pending_invoice_item`` for what the late units add (next period's
                   adjustment)
unbilled_usage     ``pending_invoice_item`` when we can price it; usage no known price
                   covers (or after the subscription ended) becomes a ``support_case``
                   for a person to investigate
rounding, match    nothing (within the platform's rounding rule)
=================  ====================================================================

The action id is derived from the finding (invoice, line or item, finding), so
the nightly run proposes the same finding once, however often it runs.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from billing_ai.actions.policy import Policy
from billing_ai.money import format_minor
from billing_ai.writeback.kinds import Proposal, action_id

RECONCILIATION_PROPOSER = "analytics:invoice_reconciliation"

# How sure a recomputation is. A plain line is an exact re-rating of the same events and prices; a proration
# depends on the change instant to the second, a late-usage adjustment on units that may still move.
CONFIDENCE = {"line": 0.95, "proration": 0.8, "late": 0.9, "investigate": 0.6}

FINDINGS_SQL = """
SELECT r.*, coalesce(s.customer_id, i.customer_id) AS customer_id, i.number AS invoice_number,
       i.status AS invoice_status, c.platform
FROM marts.invoice_reconciliation r
LEFT JOIN core.subscriptions s USING (subscription_id)
LEFT JOIN core.invoices i USING (invoice_id)
LEFT JOIN core.customers c ON c.customer_id = coalesce(s.customer_id, i.customer_id)
WHERE r.finding IN ('underbilled', 'missing_line', 'overbilled', 'late_usage', 'unbilled_usage')
ORDER BY r.invoice_id NULLS LAST, r.line_id NULLS LAST, r.subscription_item_id NULLS LAST, r.meter_name
"""


def _period(row: dict) -> str:
    a, b = row.get("period_start"), row.get("period_end")
    return f"{a:%Y-%m-%d} to {b:%Y-%m-%d}" if a and b else "an unknown period"


def proposals_from_reconciliation(findings: pl.DataFrame, policy: Policy, now: datetime) -> list[Proposal]:
    """One proposal per finding that needs money corrected (see the module docstring)."""
    out: list[Proposal] = []
    for row in findings.iter_rows(named=True):
        finding, currency, cust = row["finding"], row["currency"], row["customer_id"]
        if cust is None:
            continue  # no customer to act on
        where = row["line_id"] or row["subscription_item_id"] or f"{row['subscription_id']}:{row['meter_name']}"
        dedup = f"{row['invoice_id']}|{where}|{finding}|{row.get('period_start')}"
        inv = row["invoice_number"] or row["invoice_id"] or "(no invoice)"
        evidence = {
            "finding": finding,
            "invoice_id": row["invoice_id"],
            "line_id": row["line_id"],
            "subscription_id": row["subscription_id"],
            "subscription_item_id": row["subscription_item_id"],
            "meter_name": row["meter_name"],
            "currency": currency,
            "expected_amount": row["expected_amount"],
            "billed_amount": row["billed_amount"],
            "difference": row["difference"],
            "quantity_billed": None if row["quantity_billed"] is None else str(row["quantity_billed"]),
            "quantity_expected": None if row["quantity_expected"] is None else str(row["quantity_expected"]),
            "late_amount": row["late_amount"],
            "event_count": None if row["event_count"] is None else int(row["event_count"]),
            "usage_from": str(row["usage_from"]) if row["usage_from"] else None,
            "usage_to": str(row["usage_to"]) if row["usage_to"] else None,
            "detail": row["detail"],
            "events_query": "SELECT * FROM marts.reconciliation_events "
            f"WHERE invoice_id = '{row['invoice_id']}' AND line_id IS NOT DISTINCT FROM "
            + (f"'{row['line_id']}'" if row["line_id"] else "NULL"),
        }
        confidence = CONFIDENCE["proration"] if row["is_proration"] else CONFIDENCE["line"]
        description = row["description"] or ""
        kind: str
        if finding in ("underbilled", "missing_line") or (finding == "unbilled_usage" and row["expected_amount"]):
            amount = (row["expected_amount"] or 0) - (row["billed_amount"] or 0)
            if amount <= 0:
                continue
            kind, target_type = "pending_invoice_item", "customer"
            params = {
                "amount": amount,
                "currency": currency,
                "subscription": row["subscription_id"],
                "description": f"Correction to invoice {inv}: {row['meter_name'] or description} "
                f"{_period(row)} was billed {format_minor(row['billed_amount'] or 0, currency)}, "
                f"should be {format_minor(row['expected_amount'], currency)}",
            }
            rationale = (
                f"Invoice {inv} {'is missing the line for' if finding == 'missing_line' else 'underbills'} "
                f"'{description}' ({_period(row)}): billed {format_minor(row['billed_amount'] or 0, currency)}"
                f" for {evidence['quantity_billed'] or 0} units, our re-rating of "
                f"{evidence['quantity_expected']} units ({row['event_count'] or 0} events) gives "
                f"{format_minor(row['expected_amount'], currency)}. Propose charging the "
                f"{format_minor(amount, currency)} difference on the next invoice."
            )
        elif finding == "overbilled":
            amount = row["billed_amount"] - row["expected_amount"]
            duplicate = bool(row["detail"]) and "duplicate" in row["detail"]
            kind, target_type = "credit_note", "invoice"
            params = {
                "amount": amount,
                "currency": currency,
                "reason": "duplicate" if duplicate else "order_change",
                "memo": f"Correction: {description} {_period(row)} "
                f"{'was billed twice' if duplicate else 'was overbilled'}",
            }
            rationale = (
                f"Invoice {inv} bills '{description}' ({_period(row)}) at "
                f"{format_minor(row['billed_amount'], currency)}; we expect "
                f"{format_minor(row['expected_amount'], currency)}"
                f"{' (the line is a duplicate)' if duplicate else ''}. Propose a credit note for "
                f"{format_minor(amount, currency)}."
            )
        elif finding == "late_usage":
            amount = row["late_amount"] or 0
            if amount <= 0:
                continue
            kind, target_type = "pending_invoice_item", "customer"
            confidence = CONFIDENCE["late"]
            params = {
                "amount": amount,
                "currency": currency,
                "subscription": row["subscription_id"],
                "description": f"Usage received after invoice {inv} was finalized: {row['late_quantity']} "
                f"{row['meter_name']} ({_period(row)})",
            }
            rationale = (
                f"{row['late_quantity']} {row['meter_name']} units for {_period(row)} arrived after "
                f"invoice {inv} was finalized; they add {format_minor(amount, currency)} under the same "
                "tiers. Propose billing them as an adjustment on the next invoice."
            )
        else:  # unbilled usage we cannot price: a person must look
            kind, target_type = "support_case", "customer"
            confidence = CONFIDENCE["investigate"]
            params = {
                "subject": f"Unbilled usage to investigate: {row['meter_name']} on {row['subscription_id']}",
                "body": f"{description}. {evidence['quantity_expected']} units in {row['event_count']} events "
                f"between {evidence['usage_from']} and {evidence['usage_to']} are on no invoice line "
                "and no known price covers them. Query: " + evidence["events_query"],
                "tags": ["Billing - Invoice Correction"],
                "priority": "normal",
            }
            rationale = f"{description}: usage no invoice billed and no known price covers ({_period(row)})."
        out.append(
            Proposal(
                action_id=action_id(RECONCILIATION_PROPOSER, kind, dedup),
                kind=kind,
                platform=row["platform"],
                target_type=target_type,
                target_id=row["invoice_id"] if target_type == "invoice" else cust,
                params=params,
                rationale=rationale,
                evidence=evidence,
                confidence=confidence,
                proposer=RECONCILIATION_PROPOSER,
                created_at=now,
                expires_at=now + policy.ttl(kind),
            )
        )
    return out


# ---- usage anomalies ------------------------------------------------------------------------------
ANOMALY_PROPOSER = "analytics:usage_anomalies"
ANOMALY_TAG = "Billing - Usage Anomaly"
MIN_ANOMALY_CONFIDENCE = 0.9
# what a customer may be told about, and how
CUSTOMER_NOTICE = {
    "spike": "usage_anomaly_heads_up",
    "drop": "usage_anomaly_heads_up",
    "zero_usage": "usage_anomaly_heads_up",
    "usage_after_cancel": "usage_anomaly_heads_up",
}
KIND_WORDS = {
    "spike": "a usage spike",
    "drop": "a sudden usage drop",
    "zero_usage": "no usage at all",
    "usage_after_cancel": "usage after cancellation",
    "duplicate": "duplicated usage events",
    "unusual_mix": "an unusual mix of usage",
    "out_of_period": "usage outside the subscription period",
    "unplanned_meter": "usage of a meter the plan does not include",
}


def proposals_from_anomalies(
    anomaly_episodes: pl.DataFrame, customers: pl.DataFrame, policy: Policy, now: datetime
) -> list[Proposal]:
    """Each confident anomaly episode: a support case, a message to the success manager and, where it
    concerns the customer, a templated heads-up e-mail. ``anomaly_episodes``: the output of
    :func:`billing_ai.anomalies.episodes`; ``customers``: ``customer_id, success_manager, platform``."""
    managers = dict(customers.select("customer_id", "success_manager").iter_rows())
    platforms = dict(customers.select("customer_id", "platform").iter_rows())
    confident = anomaly_episodes.filter(pl.col("confidence") >= MIN_ANOMALY_CONFIDENCE)
    # re-sent events are a data-quality matter for support, not one alert per hour: one case per customer
    dups = (
        confident.filter(pl.col("kind") == "duplicate")
        .group_by("customer_id")
        .agg(
            pl.lit("*").alias("meter_name"),
            pl.lit("duplicate").alias("kind"),
            pl.col("start").min(),
            pl.col("end").max(),
            pl.col("score").max(),
            pl.col("confidence").max(),
            pl.col("observed").sum(),
            pl.col("expected").sum(),
            pl.col("buckets").sum(),
            pl.format(
                "events re-sent under new ids in {} hour(s); they are billed twice unless removed",
                pl.col("buckets").sum(),
            ).alias("root_cause"),
            pl.col("evidence").first(),
        )
    )
    rows = (
        pl.concat(
            [confident.filter(pl.col("kind") != "duplicate").select(dups.columns), dups.select(dups.columns)],
            how="vertical_relaxed",
        )
        if dups.height
        else confident
    )
    out: list[Proposal] = []
    for ep in rows.iter_rows(named=True):
        cust, kind, meter = ep["customer_id"], ep["kind"], ep["meter_name"]
        words = KIND_WORDS.get(kind, kind)
        when = f"{ep['start']:%Y-%m-%d %H:%M} to {ep['end']:%Y-%m-%d %H:%M} UTC"
        ratio = (
            f"{ep['observed']:,.0f} observed vs {ep['expected']:,.0f} expected"
            if ep.get("expected")
            else f"{ep['observed']:,.0f} observed"
        )
        summary = f"{words} on {meter if meter != '*' else 'all meters'} from {when} ({ratio}); {ep['root_cause']}"
        evidence = {
            "kind": kind,
            "meter_name": meter,
            "start": str(ep["start"]),
            "end": str(ep["end"]),
            "observed": ep["observed"],
            "expected": ep["expected"],
            "score": round(ep["score"], 2),
            "confidence": round(ep["confidence"], 3),
            "buckets": ep["buckets"],
            "root_cause": ep["root_cause"],
            "detector_evidence": ep["evidence"],
            "query": "SELECT * FROM marts.usage_anomalies WHERE customer_id = "
            f"'{cust}' AND kind = '{kind}' ORDER BY ts",
        }
        # nightly and hourly runs see one anomaly once (duplicates: once a week per customer)
        key = (
            f"{cust}|{meter}|{kind}|{ep['start']:%G-W%V}"
            if kind == "duplicate"
            else f"{cust}|{meter}|{kind}|{ep['start']:%Y-%m-%d}"
        )
        if cust not in platforms:
            continue  # usage of a customer no platform knows: quarantined upstream, nobody to tell
        base = dict(
            platform=platforms[cust],
            target_type="customer",
            target_id=cust,
            evidence=evidence,
            confidence=float(ep["confidence"]),
            proposer=ANOMALY_PROPOSER,
            created_at=now,
        )
        out.append(
            Proposal(
                action_id=action_id(ANOMALY_PROPOSER, "support_case", key),
                kind="support_case",
                params={
                    "subject": f"Usage anomaly: {words} ({cust})"[:200],
                    "body": f"Detected {summary}. Evidence query: {evidence['query']}"[:5000],
                    "tags": [ANOMALY_TAG],
                    "priority": "high" if ep["score"] >= 20 else "normal",
                },
                rationale=f"Confident {words}: {summary}.",
                expires_at=now + policy.ttl("support_case"),
                **base,
            )
        )
        manager = managers.get(cust)
        if manager and kind != "duplicate":
            out.append(
                Proposal(
                    action_id=action_id(ANOMALY_PROPOSER, "chat_message", key),
                    kind="chat_message",
                    params={"recipient": manager, "text": f"Heads-up for {cust}: {summary}"[:3000]},
                    rationale=f"The account's success manager should know: {summary}.",
                    expires_at=now + policy.ttl("chat_message"),
                    **base,
                )
            )
        if kind in CUSTOMER_NOTICE:
            out.append(
                Proposal(
                    action_id=action_id(ANOMALY_PROPOSER, "customer_email", key),
                    kind="customer_email",
                    params={
                        "template": CUSTOMER_NOTICE[kind],
                        "subject": "We noticed unusual usage on your account",
                        "variables": {"summary": summary},
                    },
                    rationale=f"Tell the customer before it shows on an invoice: {summary}.",
                    expires_at=now + policy.ttl("customer_email"),
                    **base,
                )
            )
    return out
