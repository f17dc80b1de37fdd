"""The `billing-ai` command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

from billing_ai.sandbox.world import WorldConfig


def parse_platforms(value: str) -> dict[str, float]:
    """``stripe`` (everyone on Stripe), ``mixed`` (all four platforms alike), or ``stripe=2,zuora=1`` weights."""
    from billing_ai.platforms.registry import PLATFORMS

    if value == "mixed":
        return {p: 1.0 for p in PLATFORMS}
    out: dict[str, float] = {}
    for part in value.split(","):
        name, _, weight = part.strip().partition("=")
        if name not in PLATFORMS:
            raise click.BadParameter(f"unknown platform {name!r}; known: {', '.join(PLATFORMS)}")
        try:
            out[name] = float(weight or 1)
        except ValueError:
            raise click.BadParameter(f"weight of {name} is not a number: {weight!r}") from None
        if out[name] <= 0:
            raise click.BadParameter(f"weight of {name} must be positive")
    return out


PLATFORMS_OPTION = click.option(
    "--platforms",
    default="stripe",
    show_default=True,
    callback=lambda _c, _p, v: parse_platforms(v),
    help="Which billing platforms the world's customers are on: stripe, mixed (all alike), or weights such "
    "as stripe=2,chargebee=1.",
)


@click.group()
def main() -> None:
    """billing_ai: machine intelligence beside a metered billing platform."""


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("data"), show_default=True)
@click.option("--seed", type=int, default=WorldConfig.seed, show_default=True)
@click.option("--customers", type=int, default=WorldConfig.customers, show_default=True)
@click.option("--days", type=int, default=WorldConfig.days, show_default=True)
@PLATFORMS_OPTION
def run(data_dir: Path, seed: int, customers: int, days: int, platforms: dict[str, float]) -> None:
    """Generate the world, start the sandbox, materialize every asset, print a summary."""
    from billing_ai.runner import Layout
    from billing_ai.runner import run as run_all

    run_all(Layout(data_dir), WorldConfig(seed=seed, customers=customers, days=days, platforms=platforms))


@main.command()
@click.option("--seed", type=int, default=WorldConfig.seed, show_default=True)
@click.option("--customers", type=int, default=WorldConfig.customers, show_default=True)
@click.option("--days", type=int, default=WorldConfig.days, show_default=True)
@click.option("--as-of", default=WorldConfig.as_of, show_default=True, help="The world's 'now' (ISO instant).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("data"), show_default=True)
@PLATFORMS_OPTION
def generate(seed: int, customers: int, days: int, as_of: str, data_dir: Path, platforms: dict[str, float]) -> None:
    """Write a synthetic world (platform tables, ground truth, inbox files)."""
    from billing_ai.runner import Layout, ensure_world

    cfg = WorldConfig(seed=seed, customers=customers, days=days, as_of=as_of, platforms=platforms)
    layout = Layout(data_dir)
    ensure_world(layout, cfg, click.echo)
    click.echo(f"world in {layout.world.world_dir}, usage files in {layout.world.inbox_dir}")


@main.command()
@click.argument("sql")
@click.option("--warehouse", type=click.Path(path_type=Path), default=Path("data/warehouse.duckdb"), show_default=True)
@click.option("--max-rows", type=int, default=50, show_default=True)
def query(sql: str, warehouse: Path, max_rows: int) -> None:
    """Run SQL on the published read-only snapshot (safe while a run writes the warehouse)."""
    import polars as pl

    from billing_ai import warehouse as wh

    con = wh.connect_published(warehouse)
    try:
        df = con.sql(sql).pl()
    finally:
        con.close()
    with pl.Config(tbl_rows=max_rows, tbl_cols=-1, fmt_str_lengths=60):
        click.echo(df)


@main.group()
def sandbox() -> None:
    """The local platform emulator."""


@sandbox.command("serve")
@click.option("--port", type=int, default=12111, show_default=True)
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("data"), show_default=True)
@click.option("--rate-limit", type=float, default=None, help="Requests per second before 429s.")
def sandbox_serve(port: int, data_dir: Path, rate_limit: float | None) -> None:
    """Serve the Stripe API emulator on 127.0.0.1 (generates the default world if missing)."""
    from billing_ai.runner import Layout, ensure_world
    from billing_ai.sandbox.server import serve
    from billing_ai.sandbox.stripe_api import DEFAULT_READONLY_KEY, DEFAULT_SECRET_KEY
    from billing_ai.sandbox.world import load_config

    layout = Layout(data_dir)
    if not layout.world.manifest.exists():
        ensure_world(layout, WorldConfig(), click.echo)
    cfg = load_config(layout.world.world_dir)
    click.echo(
        f"Stripe sandbox on http://127.0.0.1:{port}  (as_of {cfg.as_of}; keys {DEFAULT_SECRET_KEY}, "
        f"read-only {DEFAULT_READONLY_KEY})"
    )
    serve(layout.world.world_dir, layout.sandbox_state, port, rate_limit)


@main.command()
@click.option("--port", type=int, default=3000, show_default=True)
@click.option("--sandbox-port", type=int, default=12111, show_default=True)
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("data"), show_default=True)
def dev(port: int, sandbox_port: int, data_dir: Path) -> None:
    """Sandbox + Dagster UI with every asset visible and materializable."""
    from billing_ai.runner import Layout, ensure_world, sandbox_settings_env
    from billing_ai.sandbox.world import load_config

    layout = Layout(data_dir)
    if not layout.world.manifest.exists():
        ensure_world(layout, WorldConfig(), click.echo)
    cfg = load_config(layout.world.world_dir)
    home = layout.dagster_home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(Path("dagster.yaml").read_text())
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        **sandbox_settings_env(layout, cfg.as_of, f"http://127.0.0.1:{sandbox_port}"),
    }
    bin_dir = Path(sys.executable).parent
    sandbox_proc = subprocess.Popen(
        [str(bin_dir / "billing-ai"), "sandbox", "serve", "--port", str(sandbox_port), "--data-dir", str(data_dir)],
        env=env,
    )
    try:
        subprocess.run(
            [str(bin_dir / "dagster"), "dev", "-w", "workspace.yaml", "-p", str(port), "-h", "127.0.0.1"],
            env=env,
            check=False,
        )
    finally:
        sandbox_proc.terminate()
        sandbox_proc.wait(timeout=10)


@main.group()
def evaluate() -> None:
    """Score the analytics against a sandbox world's ground truth."""


@evaluate.command("anomalies")
@click.option("--seed", type=int, required=True, help="The world's seed (use seeds nobody tuned on).")
@click.option("--customers", type=int, default=WorldConfig.customers, show_default=True)
@click.option("--days", type=int, default=WorldConfig.days, show_default=True)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Default: data/eval/seed-<seed> (kept, so a second call reuses the world).",
)
def evaluate_anomalies(seed: int, customers: int, days: int, data_dir: Path | None) -> None:
    """Generate the world of SEED, run the pipeline, print anomaly precision/recall/F1 beside the naive rule."""
    from billing_ai.runner import evaluate_seed

    figures = evaluate_seed(
        WorldConfig(seed=seed, customers=customers, days=days),
        data_dir or Path("data/eval") / f"seed-{seed}",
        say=lambda m: None,
    )
    click.echo(figures["evaluation/anomaly_quality"]["report"].strip("`\n"))


@evaluate.command("forecasts")
@click.option("--seed", type=int, required=True, help="The world's seed (use seeds nobody tuned on).")
@click.option("--customers", type=int, default=WorldConfig.customers, show_default=True)
@click.option("--days", type=int, default=WorldConfig.days, show_default=True)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Default: data/eval/seed-<seed> (kept, so a second call reuses the world).",
)
def evaluate_forecasts(seed: int, customers: int, days: int, data_dir: Path | None) -> None:
    """Generate the world of SEED, run the pipeline, print forecast MASE, coverage and tier-crossing calls."""
    from billing_ai.runner import evaluate_seed

    figures = evaluate_seed(
        WorldConfig(seed=seed, customers=customers, days=days),
        data_dir or Path("data/eval") / f"seed-{seed}",
        say=lambda m: None,
    )
    click.echo(figures["evaluation/forecast_quality"]["report"].strip("`\n"))


@main.group()
def webhooks() -> None:
    """The signed-webhook receiver."""


@webhooks.command("serve")
@click.option("--port", type=int, default=12112, show_default=True)
@click.option("--inbox", type=click.Path(path_type=Path), default=Path("data/webhooks/inbox.sqlite"), show_default=True)
def webhooks_serve(port: int, inbox: Path) -> None:
    """Receive /webhooks/<platform> on 127.0.0.1 (secrets from the environment; see docs/configuration.md)."""
    import uvicorn

    from billing_ai.webhooks.receiver import WebhookInbox, WebhookSecrets, create_app

    uvicorn.run(
        create_app(WebhookInbox(inbox), WebhookSecrets.from_env()),
        host="127.0.0.1",
        port=port,
        log_level="info",
        access_log=False,
        lifespan="off",
    )


# ---- proposed actions ---------------------------------------------------------------------------
def _ledger(path: str | None):
    from billing_ai.actions.ledger import Ledger

    return Ledger(path)


def _safe(text: object) -> str:
    """Untrusted text (rationales may quote customer strings) shown as text: no terminal control sequences."""
    import re

    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", lambda m: f"\\x{ord(m.group()):02x}", str(text))


def _identity(value: str | None) -> str:
    import getpass

    return value or os.environ.get("BILLING_AI_USER") or getpass.getuser()


LEDGER_OPTION = click.option(
    "--ledger",
    "ledger_path",
    default=None,
    help="Action ledger (default: $BILLING_AI_LEDGER or data/ops/actions.sqlite).",
)


@main.group()
def actions() -> None:
    """Review, approve, reject and push proposed actions."""


@actions.command("list")
@click.option("--status", default=None, help="e.g. proposed, approved, succeeded")
@click.option("--kind", default=None)
@click.option("--limit", type=int, default=50, show_default=True)
@LEDGER_OPTION
def actions_list(status: str | None, kind: str | None, limit: int, ledger_path: str | None) -> None:
    """List proposals (newest last)."""
    from billing_ai.money import format_minor

    rows = _ledger(ledger_path).actions(status=status, kind=kind)
    click.echo(f"{len(rows)} action(s)" + (f", showing the last {limit}" if len(rows) > limit else ""))
    for r in rows[-limit:]:
        amount = format_minor(r["amount"], r["currency"]) if r["amount"] is not None else ""
        click.echo(
            f"{r['action_id']}  {r['status']:<18} {r['kind']:<24} {r['target_id']:<22} {amount:>14}  "
            f"{_safe(r['rationale'])[:70]}"
        )


@actions.command("show")
@click.argument("action_id")
@LEDGER_OPTION
def actions_show(action_id: str, ledger_path: str | None) -> None:
    """A proposal with its evidence, approvals, push attempts and audit rows."""
    import json

    ledger = _ledger(ledger_path)
    r = ledger.get(action_id)
    click.echo(f"{r['action_id']}  [{r['status']}]  {r['kind']} -> {r['platform']} {r['target_type']} {r['target_id']}")
    click.echo(
        f"proposed by {_safe(r['proposer'])} at {r['created_at']}, expires {r['expires_at']}, "
        f"confidence {r['confidence']:.2f}, approvals required {r['required_approvals']}"
    )
    if r["status_reason"]:
        click.echo(f"reason: {_safe(r['status_reason'])}")
    click.echo(
        "\nparams (what would be executed):\n  "
        + _safe(json.dumps(json.loads(r["params"]), indent=2, ensure_ascii=False)).replace("\n", "\n  ")
    )
    click.echo("\nrationale (text for the reviewer; never executed):\n  " + _safe(r["rationale"]))
    click.echo(
        "\nevidence:\n  "
        + _safe(json.dumps(json.loads(r["evidence"]), indent=2, ensure_ascii=False)).replace("\n", "\n  ")
    )
    hist = ledger.history(action_id)
    click.echo("\napprovals:")
    if not hist["approvals"]:
        click.echo("  none yet")
    for a in hist["approvals"]:
        click.echo(
            f"  {a['recorded_at']}  {_safe(a['approver'])} {a['decision']} ({a['method']}): {_safe(a['reason'])}"
        )
    click.echo("attempts:")
    for a in hist["attempts"]:
        click.echo(
            f"  #{a['attempt']} {a['idempotency_key']} -> {a['outcome']} {a['platform_object'] or ''} "
            f"{_safe(a['error'] or '')}"
        )
    click.echo("audit:")
    for a in hist["audit_log"]:
        click.echo(f"  #{a['seq']} {a['recorded_at']} {_safe(a['actor'])} {a['event']}")


def _decide(action_ids: tuple[str, ...], decision: str, who: str | None, reason: str, ledger_path: str | None) -> None:
    from billing_ai.actions.ledger import ApprovalRefused, UnknownAction
    from billing_ai.actions.policy import Policy
    from billing_ai.clock import Clock

    ledger, policy = _ledger(ledger_path), Policy.load()
    now = Clock.from_setting(os.environ.get("BILLING_AI_AS_OF") or ledger.meta().get("clock", "")).now()
    failed = False
    for aid in action_ids:
        try:
            status = ledger.decide(aid, _identity(who), decision, reason, "cli", policy, now)
            click.echo(f"{aid}: {status}")
        except (ApprovalRefused, UnknownAction) as e:
            failed = True
            click.echo(f"{aid}: REFUSED: {_safe(e)}", err=True)
    if failed:
        raise SystemExit(1)


@actions.command("approve")
@click.argument("action_ids", nargs=-1, required=True)
@click.option("--as", "who", default=None, help="Your approver name (default: $BILLING_AI_USER, then your login).")
@click.option("--reason", required=True)
@LEDGER_OPTION
def actions_approve(action_ids: tuple[str, ...], who: str | None, reason: str, ledger_path: str | None) -> None:
    """Approve actions (works while a run writes the warehouse)."""
    _decide(action_ids, "approve", who, reason, ledger_path)


@actions.command("reject")
@click.argument("action_ids", nargs=-1, required=True)
@click.option("--as", "who", default=None)
@click.option("--reason", required=True)
@LEDGER_OPTION
def actions_reject(action_ids: tuple[str, ...], who: str | None, reason: str, ledger_path: str | None) -> None:
    """Reject actions with a reason."""
    _decide(action_ids, "reject", who, reason, ledger_path)


@actions.command("push")
@click.argument("action_id")
@LEDGER_OPTION
def actions_push(action_id: str, ledger_path: str | None) -> None:
    """Push one approved action now (what the sensor's run does), using the environment's settings."""
    from billing_ai.actions.policy import Policy
    from billing_ai.actions.push import push_action
    from billing_ai.definitions import default_resources

    # the same writers the push job uses, with the environment's secrets resolved
    executor = default_resources()["push"].process_config_and_initialize().executor()
    row = push_action(_ledger(ledger_path), executor, Policy.load(), action_id, actor=f"cli:{_identity(None)}")
    click.echo(f"{action_id}: {row['status']} {row['platform_object'] or ''} {_safe(row['status_reason'] or '')}")


@main.group()
def audit() -> None:
    """The tamper-evident audit trail."""


@audit.command("verify")
@LEDGER_OPTION
@click.option(
    "--heads",
    type=click.Path(path_type=Path),
    default=None,
    help="Chain heads recorded after each run (default: beside the ledger, audit_heads.jsonl).",
)
@click.option(
    "--warehouse",
    type=click.Path(path_type=Path),
    default=None,
    help="Also verify this warehouse's ops.audit_log (reads its published snapshot).",
)
def audit_verify(ledger_path: str | None, heads: Path | None, warehouse: Path | None) -> None:
    """Check the hash chain; name the first broken row. Exit 1 if broken."""
    from billing_ai.actions import audit as chain
    from billing_ai.actions.ledger import read_heads

    ledger = _ledger(ledger_path)
    heads = heads or ledger.path.with_name("audit_heads.jsonl")
    verdicts = [("ledger", ledger.verify(heads))]
    if warehouse:
        from billing_ai import warehouse as wh

        con = wh.connect_published(warehouse)
        try:
            rows = con.sql("SELECT * FROM ops.audit_log ORDER BY seq").pl().iter_rows(named=True)
            verdicts.append(("warehouse ops.audit_log", chain.verify(rows, read_heads(heads))))
        finally:
            con.close()
    for name, v in verdicts:
        click.echo(f"{name}: {v}")
    if not all(v.ok for _, v in verdicts):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
