"""`billing-ai run`: the whole pipeline on the embedded default, end to end.

Generates the default world (unless it is already there), starts the sandbox
on a free loopback port, materializes every asset (the usage partitions of
the world's whole history as one single-run backfill), stops the sandbox and
prints a summary.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from billing_ai import warehouse as wh
from billing_ai.sandbox.chargebee_api import DEFAULT_API_KEY as CHARGEBEE_SANDBOX_KEY
from billing_ai.sandbox.recurly_api import DEFAULT_API_KEY as RECURLY_API_KEY
from billing_ai.sandbox.stripe_api import DEFAULT_SECRET_KEY
from billing_ai.sandbox.world import WorldConfig, WorldPaths, stored_fingerprint
from billing_ai.sandbox.zuora_api import (
    ZUORA_CLIENT_ID,
    ZUORA_CLIENT_SECRET,
    ZUORA_READONLY_CLIENT_ID,
    ZUORA_READONLY_CLIENT_SECRET,
)

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
SANDBOX_PII_KEY = "sandbox-only-pii-key"  # the embedded default only; production sets BILLING_AI_PII_KEY


@dataclass(frozen=True)
class Layout:
    data_dir: Path = Path("data")

    @property
    def world(self) -> WorldPaths:
        return WorldPaths(self.data_dir / "world", self.data_dir / "inbox" / "usage")

    @property
    def sandbox_state(self) -> Path:
        return self.data_dir / "sandbox"

    @property
    def warehouse(self) -> Path:
        return self.data_dir / "warehouse.duckdb"

    @property
    def ops_dir(self) -> Path:
        return self.data_dir / "ops"

    @property
    def dagster_home(self) -> Path:
        return self.data_dir / "dagster_home"


def ensure_world(layout: Layout, config: WorldConfig, say: Callable[[str], None]) -> WorldConfig:
    """Generate the world unless the same one (by fingerprint) is already written."""
    from billing_ai.sandbox.generator import generate_world, write_world

    paths = layout.world
    if stored_fingerprint(paths.world_dir) == config.fingerprint():
        say(f"world: reusing {paths.world_dir} (seed {config.seed})")
        return config
    # the action ledger and outbox refer to the old world's objects: they go with it
    for d in (paths.world_dir, paths.inbox_dir, layout.sandbox_state, layout.ops_dir, layout.data_dir / "outbox"):
        shutil.rmtree(d, ignore_errors=True)
    layout.warehouse.unlink(missing_ok=True)
    from billing_ai.ingestion.usage_files import kept_dir

    shutil.rmtree(kept_dir(layout.warehouse), ignore_errors=True)  # the usage files kept beside it go with it
    t = time.monotonic()
    world = generate_world(config, progress=lambda m: say(f"  generate: {m}"))
    write_world(world, paths, progress=lambda m: say(f"  write: {m}"))
    say(f"world: generated in {time.monotonic() - t:.1f}s ({world.events.height:,} events simulated)")
    return config


def sandbox_settings_env(layout: Layout, as_of: str, sandbox_url: str) -> dict[str, str]:
    """The pipeline settings (env vars) that point it at the sandbox and its world.
    Keys and the PII key already set in the environment win over the sandbox defaults."""
    return {
        "STRIPE_API_BASE": sandbox_url,
        "STRIPE_API_KEY": os.environ.get("STRIPE_API_KEY", DEFAULT_SECRET_KEY),
        "STRIPE_REQUESTS_PER_SECOND": os.environ.get("STRIPE_REQUESTS_PER_SECOND", "300"),
        "ZUORA_API_BASE": f"{sandbox_url}/zuora",
        "ZUORA_CLIENT_ID": os.environ.get("ZUORA_CLIENT_ID", ZUORA_READONLY_CLIENT_ID),
        "ZUORA_CLIENT_SECRET": os.environ.get("ZUORA_CLIENT_SECRET", ZUORA_READONLY_CLIENT_SECRET),
        "ZUORA_PUSH_CLIENT_ID": os.environ.get("ZUORA_PUSH_CLIENT_ID", ZUORA_CLIENT_ID),
        "ZUORA_PUSH_CLIENT_SECRET": os.environ.get("ZUORA_PUSH_CLIENT_SECRET", ZUORA_CLIENT_SECRET),
        "RECURLY_API_BASE": f"{sandbox_url}/recurly",
        "RECURLY_API_KEY": os.environ.get("RECURLY_API_KEY", RECURLY_API_KEY),
        "RECURLY_PUSH_API_KEY": os.environ.get("RECURLY_PUSH_API_KEY", RECURLY_API_KEY),
        "RECURLY_REQUESTS_PER_SECOND": os.environ.get("RECURLY_REQUESTS_PER_SECOND", "300"),
        "CHARGEBEE_API_BASE": f"{sandbox_url}/chargebee",
        "CHARGEBEE_API_KEY": os.environ.get("CHARGEBEE_API_KEY", CHARGEBEE_SANDBOX_KEY),
        "CHARGEBEE_PUSH_API_KEY": os.environ.get("CHARGEBEE_PUSH_API_KEY", CHARGEBEE_SANDBOX_KEY),
        "BILLING_AI_AS_OF": as_of,
        "BILLING_AI_INBOX": str(layout.world.inbox_dir.resolve()),
        "BILLING_AI_WAREHOUSE": str(layout.warehouse.resolve()),
        "BILLING_AI_PII_KEY": os.environ.get("BILLING_AI_PII_KEY", SANDBOX_PII_KEY),
        "STRIPE_PUSH_API_KEY": os.environ.get("STRIPE_PUSH_API_KEY", DEFAULT_SECRET_KEY),
        "BILLING_AI_LEDGER": str((layout.ops_dir / "actions.sqlite").resolve()),
        "BILLING_AI_AUDIT_HEADS": str((layout.ops_dir / "audit_heads.jsonl").resolve()),
        "BILLING_AI_OUTBOX": str((layout.data_dir / "outbox").resolve()),
        "BILLING_AI_CASE_URL": f"{sandbox_url}/sinks/cases",
        "BILLING_AI_CHAT_WEBHOOK_URL": f"{sandbox_url}/sinks/chat/T0SANDBOX/B0SANDBOX/sandbox",
    }


@contextmanager
def sandbox_environment(layout: Layout, config: WorldConfig) -> Iterator[str]:
    """Start the sandbox and point the pipeline's settings at it (env vars)."""
    from billing_ai.sandbox.server import SandboxServer

    with SandboxServer(layout.world.world_dir, layout.sandbox_state) as server:
        env = sandbox_settings_env(layout, config.as_of, server.url)
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield server.url
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def materialize_all(
    config: WorldConfig,
    instance: dg.DagsterInstance | None = None,
    resources: dict | None = None,
    say: Callable[[str], None] = print,
    reconciliation_tolerance: dict | None = None,
) -> None:
    """Materialize every asset: platform snapshot, then all usage days as one run."""
    from billing_ai import definitions as d
    from billing_ai import pipeline

    resources = dict(resources or d.default_resources())
    if "actions" not in resources:  # the action ledger beside the warehouse, unless configured
        from billing_ai.actions.resources import ActionsResource

        ops = Path(resources["warehouse"].path).parent / "ops"
        resources["actions"] = ActionsResource(
            ledger_path=str(ops / "actions.sqlite"), heads_file=str(ops / "audit_heads.jsonl")
        )
    instance = instance or dg.DagsterInstance.ephemeral()
    t = time.monotonic()
    res = dg.materialize(pipeline.PLATFORM_ASSETS, resources=resources, instance=instance, run_config=QUIET)
    assert res.success
    say(f"platform_sync: {time.monotonic() - t:.1f}s")
    first = config.start_dt().date()
    last = config.as_of_dt().date()
    t = time.monotonic()
    res = dg.materialize(
        [*pipeline.USAGE_ASSETS, *pipeline.PLATFORM_ASSETS],
        selection=pipeline.USAGE_ASSETS,
        resources=resources,
        instance=instance,
        run_config=QUIET,
        tags={
            "dagster/asset_partition_range_start": first.isoformat(),
            "dagster/asset_partition_range_end": last.isoformat(),
        },
    )
    assert res.success
    say(f"usage_daily {first}..{last} (one run): {time.monotonic() - t:.1f}s")
    t = time.monotonic()
    run_config = {**QUIET, "ops": {"rating_marts": {"config": reconciliation_tolerance or {}}}}
    res = dg.materialize(
        [*pipeline.ANALYTICS_ASSETS, *pipeline.PUBLISH_ASSETS],
        resources=resources,
        instance=instance,
        run_config=run_config,
        raise_on_error=False,
    )
    for ev in res.get_asset_check_evaluations():
        if not ev.passed:
            say(
                f"CHECK FAILED: {ev.asset_key.to_user_string()} {ev.check_name}: "
                f"{ {k: v.value for k, v in ev.metadata.items()} }"
            )
    assert res.success, "the analytics run failed (see the check above)"
    say(f"analytics (rating, reconciliation) and snapshot: {time.monotonic() - t:.1f}s")


def evaluate_all(resources: dict, instance: dg.DagsterInstance | None = None) -> dict:
    """Materialize the evaluation assets (ground truth needed) and return their metadata."""
    from billing_ai import pipeline
    from billing_ai.evaluation.assets import EVALUATION_ASSETS

    res = dg.materialize(
        [*EVALUATION_ASSETS, *pipeline.ANALYTICS_ASSETS],
        selection=EVALUATION_ASSETS,
        resources=resources,
        instance=instance or dg.DagsterInstance.ephemeral(),
        run_config=QUIET,
    )
    out = {}
    for m in res.get_asset_materialization_events():
        mat = m.event_specific_data.materialization
        out[mat.asset_key.to_user_string()] = {k: v.value for k, v in mat.metadata.items() if k != "full_result"}
    return out


SUMMARY_TABLES = (
    "marts.usage_daily",
    "marts.usage_hourly",
    "marts.rated_usage",
    "marts.tier_positions",
    "marts.invoice_reconciliation",
    "core.customers",
    "core.products",
    "core.prices",
    "core.price_tiers",
    "core.meters",
    "core.subscriptions",
    "core.subscription_items",
    "core.invoices",
    "core.invoice_lines",
    "core.payments",
    "core.credit_notes",
    "core.meter_usage_summaries",
    "core.usage_events",
    "core.quarantine",
)


def summary(warehouse_path: Path) -> str:
    con = wh.connect_published(warehouse_path)
    try:
        lines = [
            f"warehouse: {warehouse_path.resolve()}",
            f"read-only snapshot for queries: {wh.published_path_for(warehouse_path).resolve()}",
            "",
        ]
        for t in SUMMARY_TABLES:
            n = wh.count(con, t) if wh.table_exists(con, t) else 0
            lines.append(f"  {t:<32} {n:>12,}")
        files = wh.run(con, "SELECT count(*), sum(records), sum(landed), sum(quarantined) FROM raw.usage_files")[0]
        lines += [
            "",
            f"usage files landed: {files[0]}, records in {files[1]:,} = landed {files[2]:,} "
            f"+ quarantined at landing {files[3]:,}",
        ]
        by_platform = wh.run(
            con,
            "SELECT c.platform, count(DISTINCT c.customer_id), count(DISTINCT i.invoice_id) "
            "FROM core.customers c LEFT JOIN core.invoices i USING (customer_id) "
            "GROUP BY 1 ORDER BY 1",
        )
        lines.append("platforms: " + ", ".join(f"{p} ({c:,} customers, {n:,} invoices)" for p, c, n in by_platform))
        findings = wh.run(con, "SELECT finding, count(*) FROM marts.invoice_reconciliation GROUP BY 1 ORDER BY 2 DESC")
        lines.append("invoice reconciliation: " + ", ".join(f"{f}={n:,}" for f, n in findings))
        if wh.table_exists(con, "ops.proposed_actions"):
            kinds = wh.run(
                con, "SELECT kind || ':' || status, count(*) FROM ops.proposed_actions GROUP BY 1 ORDER BY 2 DESC"
            )
            lines.append("proposed actions (await approval): " + ", ".join(f"{k}={n:,}" for k, n in kinds))
        reasons = wh.run(con, "SELECT reason, count(*) FROM core.quarantine GROUP BY 1 ORDER BY 2 DESC")
        if reasons:
            lines.append("quarantine by reason: " + ", ".join(f"{r}={n:,}" for r, n in reasons))
    finally:
        con.close()
    lines += [
        "",
        "example query:",
        '  .venv/bin/billing-ai query "SELECT c.segment, u.meter_name, sum(u.quantity) AS units '
        'FROM core.usage_events u JOIN core.customers c USING (customer_id) GROUP BY ALL ORDER BY ALL"'
        + (f" --warehouse {warehouse_path}" if warehouse_path != Path("data/warehouse.duckdb") else ""),
        "review and approve proposals:",
        "  .venv/bin/billing-ai actions list --status proposed   |   actions show ID   |   "
        "actions approve ID --as ana --reason '...'",
    ]
    return "\n".join(lines)


def run(layout: Layout = Layout(), config: WorldConfig = WorldConfig(), say: Callable[[str], None] = print) -> None:
    t0 = time.monotonic()
    say(
        f"billing_ai: default world = seed {config.seed}, {config.customers} customers, {config.days} days "
        f"to as_of {config.as_of}"
    )
    ensure_world(layout, config, say)
    layout.warehouse.unlink(missing_ok=True)
    from billing_ai.ingestion.usage_files import kept_dir

    shutil.rmtree(kept_dir(layout.warehouse), ignore_errors=True)  # the usage files kept beside it go with it
    with sandbox_environment(layout, config) as url:
        say(f"sandbox: Stripe API emulator on {url}")
        materialize_all(config, say=say)
        os.environ["BILLING_AI_TRUTH_DIR"] = str(layout.world.truth)
        from billing_ai import definitions as d

        evaluation = evaluate_all(d.default_resources())
    say("sandbox: stopped")
    say("")
    say(summary(layout.warehouse))
    say("")
    say("evaluation against the world's ground truth (evaluation group; the production graph never reads it):")
    for asset, figures in evaluation.items():
        if "report" in figures:  # a formatted table
            say(f"  {asset}:\n" + figures["report"].strip("`\n"))
        else:
            say(f"  {asset}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    say(f"\ndone in {time.monotonic() - t0:.1f}s")


def evaluate_seed(config: WorldConfig, data_dir: Path, say: Callable[[str], None] = print) -> dict:
    """The whole pipeline on the world of ``config.seed``, then the evaluation assets; returns their figures."""
    layout = Layout(data_dir)
    ensure_world(layout, config, say)
    layout.warehouse.unlink(missing_ok=True)
    from billing_ai.ingestion.usage_files import kept_dir

    shutil.rmtree(kept_dir(layout.warehouse), ignore_errors=True)  # the usage files kept beside it go with it
    with sandbox_environment(layout, config):
        materialize_all(config, say=say)
        os.environ["BILLING_AI_TRUTH_DIR"] = str(layout.world.truth)
        from billing_ai import definitions as d

        return evaluate_all(d.default_resources())
