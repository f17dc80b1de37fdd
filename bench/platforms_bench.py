"""Platforms benchmark: each connector's full snapshot over its facade, and a webhook's targeted refresh.

1. **Snapshot.** One world (``--customers``, default 100, 60 days) written once per platform with every
   customer on that platform; each connector pulls its full snapshot from its sandbox facade (the same
   loopback server, rate limits lifted). Figures: seconds, objects landed, HTTP requests, objects/s.
   Baseline: the Stripe connector (official SDK) over the same world, in the same run.
2. **Targeted refresh.** On the Stripe world's warehouse (every asset materialized): one invoice
   refreshed as a webhook's ``targeted_refresh_job`` would (fetch, raw and core rows, rating marts for its
   subscription), beside the full rating marts rebuild it replaces, in the same run.

    .venv/bin/python bench/run.py --bench platforms [--customers N] [--repeats K]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLATFORMS = ("stripe", "chargebee", "recurly", "zuora")


def _world(root: Path, platform: str, customers: int):
    sys.path.insert(0, str(REPO))
    from billing_ai.sandbox.generator import generate_world, write_world
    from billing_ai.sandbox.world import WorldConfig, WorldPaths

    cfg = WorldConfig(seed=5, customers=customers, days=60, platforms={platform: 1.0})
    paths = WorldPaths(world_dir=root / platform / "world", inbox_dir=root / platform / "inbox")
    world = generate_world(cfg)
    write_world(world, paths)
    return cfg, world, paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    args, _ = ap.parse_known_args(argv)
    sys.path.insert(0, str(REPO))
    from billing_ai.sandbox.server import SandboxServer
    from billing_ai_tests.conftest import GeneratedWorld, pipeline_resources

    root = Path(tempfile.mkdtemp(prefix="platforms_bench_"))
    try:
        rows = {}
        stripe_world = None
        for platform in PLATFORMS:
            cfg, world, paths = _world(root, platform, args.customers)
            gw = GeneratedWorld(config=cfg, world=world, paths=paths)
            if platform == "stripe":
                stripe_world = gw
            times, objects, requests = [], 0, 0
            for k in range(args.repeats):
                with SandboxServer(paths.world_dir, root / platform / f"state{k}") as server:
                    res = pipeline_resources(server.url, root / platform / "wh.duckdb", gw)
                    resource = res[platform]
                    conn = resource.connector("bench-pii-key")
                    t = time.perf_counter()
                    snap = conn.fetch_snapshot(cfg.as_of_dt())
                    times.append(time.perf_counter() - t)
                    objects = sum(len(v) for k2, v in snap.items() if k2 != "quarantine")
                    requests = conn.stats.get("requests", 0)
            med = statistics.median(times)
            rows[platform] = (med, objects, requests)
        base = rows["stripe"][0]
        print(
            f"snapshot of a {args.customers}-customer, 60-day world, every customer on one platform "
            f"(median of {args.repeats}):"
        )
        print(f"{'platform':<10} {'seconds':>8} {'objects':>9} {'requests':>9} {'objects/s':>10} {'vs stripe':>10}")
        for p, (sec, n, req) in rows.items():
            print(f"{p:<10} {sec:>8.2f} {n:>9,} {req:>9,} {n / sec:>10,.0f} {sec / base:>9.2f}x")

        # targeted refresh of one invoice vs the full rating marts rebuild, on the Stripe world
        from billing_ai import warehouse as wh
        from billing_ai.platforms.stripe import SPEC
        from billing_ai.rating.reconcile import build_rating_marts
        from billing_ai.runner import materialize_all
        from billing_ai.webhooks.refresh import refresh

        gw = stripe_world
        whp = root / "stripe" / "full.duckdb"
        with SandboxServer(gw.paths.world_dir, root / "stripe" / "state_full") as server:
            res = pipeline_resources(server.url, whp, gw)
            materialize_all(gw.config, resources=res, say=lambda m: None)
            now = gw.config.as_of_dt()
            con = wh.connect(whp)
            invoices = [
                r[0]
                for r in wh.run(
                    con,
                    "SELECT platform_invoice_id FROM core.invoices ORDER BY created_at DESC LIMIT ?",
                    [args.repeats],
                )
            ]
            conn = res["stripe"].connector("bench-pii-key")
            targeted, fetch, full = [], [], []
            for inv in invoices:
                t = time.perf_counter()
                fetched = conn.fetch_objects("invoice", [inv])
                fetch.append(time.perf_counter() - t)
                refresh(con, SPEC, "invoice", [inv], fetched, now)
                targeted.append(time.perf_counter() - t)
                t = time.perf_counter()
                build_rating_marts(con, now)
                full.append(time.perf_counter() - t)
            con.close()
        tm, fm, ft = statistics.median(targeted), statistics.median(full), statistics.median(fetch)
        print(
            f"targeted refresh of one invoice: {tm:.2f} s ({ft * 1000:.0f} ms fetching it, the rest raw/core rows "
            f"and the rating marts of its subscription), median of {len(invoices)}"
        )
        print(
            f"  what it replaces, same world: the Stripe snapshot {base:.2f} s + the full rating marts rebuild "
            f"{fm:.2f} s = {base + fm:.2f} s ({(base + fm) / tm:.1f}x); the snapshot grows with the account, "
            "the targeted refresh with one subscription"
        )
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
