"""The `billing-ai` command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

from billing_ai.sandbox.world import WorldConfig


@click.group()
def main() -> None:
    """billing_ai: machine intelligence beside a metered billing platform."""


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("data"), show_default=True)
@click.option("--seed", type=int, default=WorldConfig.seed, show_default=True)
@click.option("--customers", type=int, default=WorldConfig.customers, show_default=True)
@click.option("--days", type=int, default=WorldConfig.days, show_default=True)
def run(data_dir: Path, seed: int, customers: int, days: int) -> None:
    """Generate the world, start the sandbox, materialize every asset, print a summary."""
    from billing_ai.runner import Layout, run as run_all

    run_all(Layout(data_dir), WorldConfig(seed=seed, customers=customers, days=days))


@main.command()
@click.option("--seed", type=int, default=WorldConfig.seed, show_default=True)
@click.option("--customers", type=int, default=WorldConfig.customers, show_default=True)
@click.option("--days", type=int, default=WorldConfig.days, show_default=True)
@click.option("--as-of", default=WorldConfig.as_of, show_default=True, help="The world's 'now' (ISO instant).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("data"), show_default=True)
def generate(seed: int, customers: int, days: int, as_of: str, data_dir: Path) -> None:
    """Write a synthetic world (platform tables, ground truth, inbox files)."""
    from billing_ai.runner import Layout, ensure_world

    cfg = WorldConfig(seed=seed, customers=customers, days=days, as_of=as_of)
    layout = Layout(data_dir)
    ensure_world(layout, cfg, click.echo)
    click.echo(f"world in {layout.world.world_dir}, usage files in {layout.world.inbox_dir}")


@main.command()
@click.argument("sql")
@click.option("--warehouse", type=click.Path(path_type=Path), default=Path("data/warehouse.duckdb"),
              show_default=True)
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
    click.echo(f"Stripe sandbox on http://127.0.0.1:{port}  (as_of {cfg.as_of}; keys {DEFAULT_SECRET_KEY}, "
               f"read-only {DEFAULT_READONLY_KEY})")
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
    env = {**os.environ, "DAGSTER_HOME": str(home),
           **sandbox_settings_env(layout, cfg.as_of, f"http://127.0.0.1:{sandbox_port}")}
    bin_dir = Path(sys.executable).parent
    sandbox_proc = subprocess.Popen([str(bin_dir / "billing-ai"), "sandbox", "serve", "--port", str(sandbox_port),
                                     "--data-dir", str(data_dir)], env=env)
    try:
        subprocess.run([str(bin_dir / "dagster"), "dev", "-w", "workspace.yaml", "-p", str(port),
                        "-h", "127.0.0.1"], env=env, check=False)
    finally:
        sandbox_proc.terminate()
        sandbox_proc.wait(timeout=10)


if __name__ == "__main__":
    main()
