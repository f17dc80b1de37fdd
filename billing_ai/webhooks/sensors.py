"""The sensor that turns verified webhook deliveries into runs.

Events that change what the warehouse mirrors (invoices, subscriptions, customers, credit notes,
payments) request a platform snapshot (``platform_sync_job``); the existing run-status sensors then
rebuild the usage window and the analytics (reconciliation, tier positions, forecasts). The deliveries
of one tick are coalesced into one run whose key is the inbox sequence range, so a re-evaluated tick
launches nothing twice and a redelivered event (deduplicated by the inbox) never runs again. The
cursor is the last inbox sequence number read.
"""

from __future__ import annotations

import os

import dagster as dg

from billing_ai.webhooks.receiver import DEFAULT_INBOX, WebhookInbox

INBOX_ENV = "BILLING_AI_WEBHOOK_INBOX"
# event types (any platform's spelling) that should refresh the snapshot
REFRESH_PREFIXES = ("invoice", "customer", "subscription", "credit_note", "payment", "charge", "account",
                    "Invoice", "Subscription", "Account", "Payment")


def wants_refresh(event_type: str) -> bool:
    return event_type.startswith(REFRESH_PREFIXES)


def requests_for(events: list[dict]) -> dg.RunRequest | None:
    relevant = [e for e in events if wants_refresh(e["type"])]
    if not relevant:
        return None
    first, last = relevant[0]["seq"], relevant[-1]["seq"]
    ids = ",".join(f"{e['platform']}:{e['event_id']}" for e in relevant[:20])
    return dg.RunRequest(run_key=f"webhooks-{first}-{last}",
                         tags={"billing_ai/webhook_events": ids[:1000], "billing_ai/webhook_count": str(len(relevant))})


@dg.sensor(job_name="platform_sync_job", minimum_interval_seconds=30,
           description="Verified webhook deliveries (invoices, subscriptions, customers...) -> one platform "
                       "snapshot run per tick, keyed by the inbox range read.")
def webhook_events(context: dg.SensorEvaluationContext):
    inbox = WebhookInbox(os.environ.get(INBOX_ENV, DEFAULT_INBOX))
    try:
        events = inbox.after(int(context.cursor or 0))
    finally:
        inbox.close()
    if not events:
        return dg.SkipReason("no new webhook deliveries")
    context.update_cursor(str(events[-1]["seq"]))
    req = requests_for(events)
    return req or dg.SkipReason(f"{len(events)} deliveries, none that changes the warehouse")
