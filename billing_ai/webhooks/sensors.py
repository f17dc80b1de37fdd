"""The sensor that turns verified webhook deliveries into runs.

An event about one invoice or one subscription (``refresh.target_of``), on a platform whose connector
can fetch single objects, requests a ``targeted_refresh_job`` run for just those objects: their raw and
core rows, then reconciliation, rated usage and tier positions of their subscriptions, without a full
run. Other events that change what the warehouse mirrors (customers, payments, credit notes, or any
event of a platform without single-object fetches) are coalesced into one ``platform_sync_job`` run per
tick; the run-status sensors then rebuild the usage window and the analytics.

Each run's key is the inbox sequence range (and platform and kind) it covers, so a re-evaluated tick
launches nothing twice, and a redelivered event (deduplicated by the inbox) never runs again. The cursor
is the last inbox sequence number read.
"""

from __future__ import annotations

import os

import dagster as dg

from billing_ai.platforms.registry import PLATFORM_SPECS
from billing_ai.webhooks.receiver import DEFAULT_INBOX, WebhookInbox
from billing_ai.webhooks.refresh import target_of, targeted_refresh_job

INBOX_ENV = "BILLING_AI_WEBHOOK_INBOX"
# event types (any platform's spelling) that should refresh the snapshot
REFRESH_PREFIXES = (
    "invoice",
    "customer",
    "subscription",
    "credit_note",
    "payment",
    "charge",
    "account",
    "Invoice",
    "Subscription",
    "Account",
    "Payment",
)
TARGETED = {s.name for s in PLATFORM_SPECS if s.fetches_single_objects}


def wants_refresh(event_type: str) -> bool:
    return event_type.startswith(REFRESH_PREFIXES)


def requests_for(events: list[dict], snapshot_job) -> list[dg.RunRequest]:
    """Targeted runs per (platform, kind) for named invoices/subscriptions, one ``snapshot_job`` run (the
    platform sync) for the rest."""
    targeted: dict[tuple[str, str], list[dict]] = {}
    snapshot = []
    for e in events:
        kind = target_of(e["platform"], e["type"])
        if kind and e["platform"] in TARGETED and e.get("object_id"):
            targeted.setdefault((e["platform"], kind), []).append(e)
        elif wants_refresh(e["type"]):
            snapshot.append(e)
    out = []
    for (platform, kind), evs in sorted(targeted.items()):
        ids = sorted({e["object_id"] for e in evs})
        out.append(
            dg.RunRequest(
                job_name=targeted_refresh_job.name,
                run_key=f"webhook-{platform}-{kind}-{evs[0]['seq']}-{evs[-1]['seq']}",
                run_config={
                    "ops": {
                        "refresh_named_objects": {
                            "config": {
                                "platform": platform,
                                "kind": kind,
                                "ids": ids,
                                "events": [e["event_id"] for e in evs][:50],
                            }
                        }
                    }
                },
                tags={"billing_ai/webhook_count": str(len(evs)), "billing_ai/targets": ",".join(ids)[:1000]},
            )
        )
    if snapshot:
        first, last = snapshot[0]["seq"], snapshot[-1]["seq"]
        ids = ",".join(f"{e['platform']}:{e['event_id']}" for e in snapshot[:20])
        out.append(
            dg.RunRequest(
                job_name=snapshot_job.name,
                run_key=f"webhooks-{first}-{last}",
                tags={"billing_ai/webhook_events": ids[:1000], "billing_ai/webhook_count": str(len(snapshot))},
            )
        )
    return out


def webhook_sensor(platform_sync_job) -> dg.SensorDefinition:
    @dg.sensor(
        jobs=[platform_sync_job, targeted_refresh_job],
        minimum_interval_seconds=30,
        name="webhook_events",
        description="Verified webhook deliveries -> a targeted refresh of each named invoice or "
        "subscription, and one platform snapshot run per tick for the rest; keyed by the "
        "inbox range read.",
    )
    def webhook_events(context: dg.SensorEvaluationContext):
        inbox = WebhookInbox(os.environ.get(INBOX_ENV, DEFAULT_INBOX))
        try:
            events = inbox.after(int(context.cursor or 0))
        finally:
            inbox.close()
        if not events:
            return dg.SkipReason("no new webhook deliveries")
        context.update_cursor(str(events[-1]["seq"]))
        reqs = requests_for(events, platform_sync_job)
        return reqs or dg.SkipReason(f"{len(events)} deliveries, none that changes the warehouse")

    return webhook_events
