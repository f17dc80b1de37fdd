"""Targeted refreshes: a webhook names an invoice or a subscription; refresh only that.

``target_of`` reads what an event is about in each platform's vocabulary. The
``targeted_refresh_job`` fetches just the named objects through the platform's
connector (``fetch_objects``), replaces their raw rows (an invoice's lines with
it), rebuilds the core tables that read them (SQL over raw: cheap), recomputes
the rating marts -- reconciliation, rated usage, tier positions -- for the
affected subscriptions only (:func:`billing_ai.rating.reconcile.refresh_rating_marts`),
and publishes the snapshot. A platform whose connector cannot fetch one object
at a time gets the coalesced snapshot run instead (see ``sensors``).

The core tables it rebuilds get their asset checks, as in the nightly run, in the
refresh's transaction: if a blocking one fails, nothing of the refresh is kept (raw
and core roll back; no rating marts, no snapshot: the analysts keep the last good
one, and a later refresh cannot publish it), and the run fails naming the checks. The
nightly run still rebuilds everything and runs every asset check; a targeted
refresh is the fast path between two nights, not a replacement.
"""

from datetime import datetime

import dagster as dg

from billing_ai import warehouse as wh
from billing_ai.ingestion.checks import Scope, evaluate_table
from billing_ai.ingestion.platform_assets import build_core_table, check_evaluation, raw_ids, write_raw
from billing_ai.platforms.registry import PLATFORM_SPECS
from billing_ai.platforms.spec import PlatformSpec
from billing_ai.rating.reconcile import ReconcileSettings, refresh_rating_marts
from billing_ai.resources import WAREHOUSE_POOL

SPECS = {s.name: s for s in PLATFORM_SPECS}

# (platform, event type prefix) -> the object the event is about; first match wins
_TARGETS: tuple[tuple[str, str, str], ...] = (
    ("stripe", "invoice.", "invoice"),
    ("stripe", "customer.subscription.", "subscription"),
    ("chargebee", "invoice_", "invoice"),
    ("chargebee", "subscription_", "subscription"),
    ("recurly", "charge_invoice.", "invoice"),
    ("recurly", "credit_invoice.", "invoice"),
    ("recurly", "subscription.", "subscription"),
    ("zuora", "Invoice", "invoice"),
    ("zuora", "Subscription", "subscription"),
)
# which core table holds each kind's platform id, and its canonical subscription
_LOOKUP = {
    "invoice": ("core.invoices", "platform_invoice_id"),
    "subscription": ("core.subscriptions", "platform_subscription_id"),
}


def target_of(platform: str, event_type: str) -> str | None:
    """ "invoice" or "subscription" if the event is about one, else None."""
    return next((kind for p, prefix, kind in _TARGETS if p == platform and event_type.startswith(prefix)), None)


def upsert_raw(con, spec: PlatformSpec, fetched: dict[str, list[dict]], landed_at: datetime) -> dict[str, int]:
    """Replace the raw rows of the fetched objects (and, for a fetched parent, all its children), in the
    caller's transaction. Returns rows written per raw object."""
    for obj in fetched:
        if obj not in spec.raw_objects:
            raise ValueError(f"{spec.name} has no raw object {obj!r}")
    ids = {obj: raw_ids(spec, obj, rows) for obj, rows in fetched.items()}
    # every delete before any insert: a parent's refresh drops all its children, then the fetched ones land
    for obj in fetched:
        wh.run(con, f"DELETE FROM {spec.raw_table(obj)} WHERE id IN (SELECT unnest(?::VARCHAR[]))", [ids[obj]])
        for child, (parent, field) in spec.children.items():
            if parent == obj:  # lines the platform no longer has must go with their invoice
                wh.run(
                    con,
                    f"DELETE FROM {spec.raw_table(child)} WHERE payload->>'{field}' IN (SELECT unnest(?::VARCHAR[]))",
                    [ids[obj]],
                )
    return {obj: write_raw(con, spec, obj, rows, landed_at, replace=False) for obj, rows in fetched.items()}


def core_tables_reading(spec: PlatformSpec, objects: set[str]) -> list[str]:
    return [t for t, sources in spec.core_sources.items() if objects & set(sources)]


def subscriptions_of(con, platform: str, kind: str, platform_ids: list[str]) -> list[str]:
    table, column = _LOOKUP[kind]
    rows = wh.run(
        con,
        f"SELECT DISTINCT subscription_id FROM {table} WHERE platform = ? AND {column} IN "
        "(SELECT unnest(?::VARCHAR[])) AND subscription_id IS NOT NULL",
        [platform, platform_ids],
    )
    return [r[0] for r in rows]


class _RollBack(Exception):
    """Leaves the refresh's transaction without landing it (a blocking check failed)."""


def refresh(
    con,
    spec: PlatformSpec,
    kind: str,
    platform_ids: list[str],
    fetched: dict[str, list[dict]],
    now: datetime,
    settings: ReconcileSettings = ReconcileSettings(),
) -> dict:
    """Raw upsert, core rebuild of the tables that read them and their checks, in one transaction that
    lands only if no blocking check fails (``blocked`` names those: then nothing of the refresh stays,
    and a later refresh cannot publish it); then the rating marts for the affected subscriptions."""
    tables = core_tables_reading(spec, set(fetched))
    scope = Scope(now=now)
    try:
        with wh.transaction(con):
            written = upsert_raw(con, spec, fetched, now)
            for t in tables:
                build_core_table(con, t, in_transaction=True)
            checks = {t: evaluate_table(con, t, scope) for t in tables}
            blocked = [
                o.rule.name for outcomes in checks.values() for o in outcomes if o.rule.blocking and not o.passed
            ]
            if blocked:
                raise _RollBack
    except _RollBack:
        return {
            "raw_rows": {},
            "core_tables": tables,
            "subscriptions": [],
            "mart_rows": {},
            "checks": checks,
            "blocked": blocked,
        }
    subs = subscriptions_of(con, spec.name, kind, platform_ids)
    marts = refresh_rating_marts(con, now, subs, settings) if subs else {}
    return {
        "raw_rows": written,
        "core_tables": tables,
        "subscriptions": subs,
        "mart_rows": marts,
        "checks": checks,
        "blocked": blocked,
    }


class RefreshConfig(dg.Config):
    platform: str
    kind: str  # "invoice" | "subscription"
    ids: list[str]  # the platform's own ids, as the webhook named them
    events: list[str] = []  # the webhook event ids behind this run (for the record)


@dg.op(
    description="Fetch the objects a webhook named, refresh their raw and core rows, and recompute "
    "reconciliation, rated usage and tier positions for their subscriptions only.",
    required_resource_keys={"warehouse", "settings", *(s.resource_key for s in PLATFORM_SPECS)},
    pool=WAREHOUSE_POOL,
)
def refresh_named_objects(context: dg.OpExecutionContext, config: RefreshConfig):
    spec = SPECS[config.platform]
    platform = getattr(context.resources, spec.resource_key)
    settings = context.resources.settings
    now = settings.clock().now()
    if not platform.enabled:
        raise dg.Failure(
            f"{config.platform} is not configured here (its resource has no api_base): a webhook "
            f"named {config.kind} {config.ids}, but nothing can be fetched from it"
        )
    conn = platform.connector(settings.pii_key)
    fetched = conn.fetch_objects(config.kind, config.ids)  # HTTP first: no warehouse connection held
    warehouse = context.resources.warehouse
    with warehouse.connect() as con:
        out = refresh(con, spec, config.kind, config.ids, fetched, now)
        findings = (
            dict(
                wh.run(
                    con,
                    "SELECT finding, count(*) FROM marts.invoice_reconciliation WHERE "
                    "subscription_id IN (SELECT unnest(?::VARCHAR[])) GROUP BY 1",
                    [out["subscriptions"]],
                )
            )
            if out["subscriptions"]
            else {}
        )
        if not out["blocked"]:
            wh.publish(con, warehouse.path)
    meta = {
        "platform": config.platform,
        "kind": config.kind,
        "ids": ", ".join(config.ids),
        "webhook_events": ", ".join(config.events),
        "subscriptions": ", ".join(out["subscriptions"]),
        "targeted": True,
    }
    # yielded, not logged: events logged with context.log_event are dropped when the op then fails
    for t in out["core_tables"]:
        if not out["blocked"]:  # rolled back: nothing was materialized, only checked
            yield dg.AssetMaterialization(asset_key=["core", t], metadata=meta)
        for o in out["checks"][t]:
            yield check_evaluation(t, o, targeted=True)
    out["checks"] = {o.rule.name: o.violations for outcomes in out["checks"].values() for o in outcomes}
    if out["blocked"]:
        raise dg.Failure(
            f"blocking checks failed after refreshing {config.kind} {config.ids}: "
            f"{', '.join(out['blocked'])}; nothing of the refresh was kept (raw and core rolled "
            "back, marts and snapshot untouched)",
            metadata={"failed_checks": ", ".join(out["blocked"])},
            allow_retries=False,
        )  # the same objects would fail the same way; the nightly run decides
    for t, n in out["mart_rows"].items():
        yield dg.AssetMaterialization(
            asset_key=["marts", t],
            metadata={
                **meta,
                "rows_refreshed": n,
                **({"findings": dg.MetadataValue.json(findings)} if t == "invoice_reconciliation" else {}),
            },
        )
    context.log.info(f"refreshed {config.kind} {config.ids}: {out}")
    yield dg.Output(out)


@dg.job(
    description="A webhook's named invoice or subscription, refreshed without a full run: its raw and "
    "core rows, then reconciliation, rated usage and tier positions of its subscription.",
    tags={"dagster/max_retries": "2"},
)
def targeted_refresh_job():
    refresh_named_objects()
