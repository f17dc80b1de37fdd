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

from billing_ai.actions.kinds import Proposal, action_id
from billing_ai.actions.policy import Policy
from billing_ai.money import format_minor

RECONCILIATION_PROPOSER = "analytics:invoice_reconciliation"

# How sure a recomputation is. A plain line is an exact re-rating of the same events and prices; a proration
# depends on the change instant to the second, a late-usage adjustment on units that may still move.
CONFIDENCE = {"line": 0.95, "proration": 0.8, "late": 0.9, "investigate": 0.6}

FINDINGS_SQL = """
SELECT r.*, coalesce(s.customer_id, i.customer_id) AS customer_id, i.number AS invoice_number,
       i.status AS invoice_status
FROM marts.invoice_reconciliation r
LEFT JOIN core.subscriptions s USING (subscription_id)
LEFT JOIN core.invoices i USING (invoice_id)
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
            continue  # no customer to act on (cannot happen for Stripe rows; kept for other platforms)
        where = row["line_id"] or row["subscription_item_id"] or f"{row['subscription_id']}:{row['meter_name']}"
        dedup = f"{row['invoice_id']}|{where}|{finding}|{row.get('period_start')}"
        inv = row["invoice_number"] or row["invoice_id"] or "(no invoice)"
        evidence = {
            "finding": finding, "invoice_id": row["invoice_id"], "line_id": row["line_id"],
            "subscription_id": row["subscription_id"], "subscription_item_id": row["subscription_item_id"],
            "meter_name": row["meter_name"], "currency": currency, "expected_amount": row["expected_amount"],
            "billed_amount": row["billed_amount"], "difference": row["difference"],
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
            params = {"amount": amount, "currency": currency, "subscription": row["subscription_id"],
                      "description": f"Correction to invoice {inv}: {row['meter_name'] or description} "
                                     f"{_period(row)} was billed {format_minor(row['billed_amount'] or 0, currency)}, "
                                     f"should be {format_minor(row['expected_amount'], currency)}"}
            rationale = (f"Invoice {inv} {'is missing the line for' if finding == 'missing_line' else 'underbills'} "
                         f"'{description}' ({_period(row)}): billed {format_minor(row['billed_amount'] or 0, currency)}"
                         f" for {evidence['quantity_billed'] or 0} units, our re-rating of "
                         f"{evidence['quantity_expected']} units ({row['event_count'] or 0} events) gives "
                         f"{format_minor(row['expected_amount'], currency)}. Propose charging the "
                         f"{format_minor(amount, currency)} difference on the next invoice.")
        elif finding == "overbilled":
            amount = row["billed_amount"] - row["expected_amount"]
            duplicate = bool(row["detail"]) and "duplicate" in row["detail"]
            kind, target_type = "credit_note", "invoice"
            params = {"amount": amount, "currency": currency, "reason": "duplicate" if duplicate else "order_change",
                      "memo": f"Correction: {description} {_period(row)} "
                              f"{'was billed twice' if duplicate else 'was overbilled'}"}
            rationale = (f"Invoice {inv} bills '{description}' ({_period(row)}) at "
                         f"{format_minor(row['billed_amount'], currency)}; we expect "
                         f"{format_minor(row['expected_amount'], currency)}"
                         f"{' (the line is a duplicate)' if duplicate else ''}. Propose a credit note for "
                         f"{format_minor(amount, currency)}.")
        elif finding == "late_usage":
            amount = row["late_amount"] or 0
            if amount <= 0:
                continue
            kind, target_type = "pending_invoice_item", "customer"
            confidence = CONFIDENCE["late"]
            params = {"amount": amount, "currency": currency, "subscription": row["subscription_id"],
                      "description": f"Usage received after invoice {inv} was finalized: {row['late_quantity']} "
                                     f"{row['meter_name']} ({_period(row)})"}
            rationale = (f"{row['late_quantity']} {row['meter_name']} units for {_period(row)} arrived after "
                         f"invoice {inv} was finalized; they add {format_minor(amount, currency)} under the same "
                         "tiers. Propose billing them as an adjustment on the next invoice.")
        else:  # unbilled usage we cannot price: a person must look
            kind, target_type = "support_case", "customer"
            confidence = CONFIDENCE["investigate"]
            params = {"subject": f"Unbilled usage to investigate: {row['meter_name']} on {row['subscription_id']}",
                      "body": f"{description}. {evidence['quantity_expected']} units in {row['event_count']} events "
                              f"between {evidence['usage_from']} and {evidence['usage_to']} are on no invoice line "
                              "and no known price covers them. Query: " + evidence["events_query"],
                      "tags": ["Billing - Invoice Correction"], "priority": "normal"}
            rationale = f"{description}: usage no invoice billed and no known price covers ({_period(row)})."
        out.append(Proposal(
            action_id=action_id(RECONCILIATION_PROPOSER, kind, dedup), kind=kind, platform="stripe",
            target_type=target_type, target_id=row["invoice_id"] if target_type == "invoice" else cust,
            params=params, rationale=rationale, evidence=evidence, confidence=confidence,
            proposer=RECONCILIATION_PROPOSER, created_at=now, expires_at=now + policy.ttl(kind)))
    return out
