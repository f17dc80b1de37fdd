"""Rating benchmark: re-rating N usage events against the default plans, beside the floor.

Ours: ``rating`` is :func:`billing_ai.rating.reconcile.rate_periods` (usage windows
per item and billing period, the events summed in one pass per piece of their
subscription's time line, the quantities per window, the vectorized rating with
per-tier breakdown, tier positions); ``full`` is
:func:`~billing_ai.rating.reconcile.build_rating_marts` (that, plus the invoice
reconciliation) -- over a warehouse whose ``core.usage_events`` holds N events.

Floor (same run, same DuckDB threads and memory limit): a bare group-by sum of
the same events, ``SELECT subscription_id, meter_name, sum(quantity) ... GROUP BY``,
its rows fetched (under a ``count(*)`` DuckDB would drop the unused sum, and
the floor would be a bare group-by without it). ``windows`` is a second
baseline: the events summed per item and billing window by a range join, the
way rating used to read them.

Each measurement runs in its own subprocess so peak RSS is that measurement's.
The world's tables (customers, prices, subscriptions, invoices) come from the
sandbox generator run through the real platform ingestion; the events are
synthesized in SQL over those subscriptions (uniform over the history).

    .venv/bin/python bench/run.py --bench rating [--events N] [--repeats K]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import peak_mib, run_child  # noqa: E402 -- imported after the sys.path set-up above

THREADS = 2
MEMORY_LIMIT = "3GB"
TARGET_RATIO = 1.5


def build_template(root: Path, n_events: int, customers: int = 300, days: int = 60) -> Path:
    """A warehouse with the default plans, a small world's core tables and N synthetic events."""
    sys.path.insert(0, str(REPO))
    from billing_ai import warehouse as wh
    from billing_ai.platforms.chargebee.resource import ChargebeeResource
    from billing_ai.platforms.recurly.resource import RecurlyResource
    from billing_ai.platforms.stripe.resource import StripeResource
    from billing_ai.platforms.zuora.resource import ZuoraResource
    from billing_ai.resources import PipelineSettings, WarehouseResource
    from billing_ai.runner import Layout, ensure_world, materialize_all
    from billing_ai.sandbox.server import SandboxServer
    from billing_ai.sandbox.world import WorldConfig

    cfg = WorldConfig(seed=3, customers=customers, days=days)
    layout = Layout(root / "data")
    ensure_world(layout, cfg, lambda m: None)
    with SandboxServer(layout.world.world_dir, layout.sandbox_state) as server:
        res = {
            "warehouse": WarehouseResource(path=str(layout.warehouse)),
            "stripe": StripeResource(api_key="rk_test_sandbox_readonly", api_base=server.url, requests_per_second=1000),
            # the other platforms are not configured (no api_base): their raw tables land empty
            "zuora": ZuoraResource(),
            "recurly": RecurlyResource(),
            "chargebee": ChargebeeResource(),
            "settings": PipelineSettings(as_of=cfg.as_of, inbox_dir=str(layout.world.inbox_dir), pii_key="bench"),
        }
        materialize_all(
            cfg,
            resources=res,
            say=lambda m: None,
            reconciliation_tolerance={"max_mismatched_line_share": 1.0, "max_difference_share": 1.0},
        )
    con = wh.connect(layout.warehouse)
    start = cfg.start_dt()
    seconds = cfg.days * 86400
    wh.run(
        con,
        "CREATE OR REPLACE TEMP TABLE _subs AS SELECT row_number() OVER () - 1 AS k, subscription_id, "
        "customer_id FROM core.subscriptions",
    )
    n_subs = wh.run(con, "SELECT count(*) FROM _subs")[0][0]
    with wh.transaction(con):
        wh.run(con, "DELETE FROM core.usage_events")
        wh.run(
            con,
            f"""
            INSERT INTO core.usage_events
            WITH e AS (
                SELECT i, TIMESTAMPTZ '{start.isoformat()}' + to_seconds(CAST(hash(i * 13) % {seconds} AS BIGINT)) AS ts
                FROM range({n_events}) r(i))
            SELECT 'bench_' || i, 'inbox', s.customer_id, s.subscription_id,
                   ['api_calls', 'storage_gb_hours', 'compute_seconds'][CAST(1 + hash(i) % 3 AS BIGINT)],
                   CAST(1 + hash(i * 7) % 500 AS DECIMAL(38, 9)), ts, CAST(ts AS DATE),
                   NULL, NULL, NULL, NULL, NULL, 'bench', i, ts + INTERVAL 5 MINUTE, false
            FROM e JOIN _subs s ON s.k = CAST(hash(i * 31) % {n_subs} AS BIGINT)""",
        )
    wh.run(con, "CHECKPOINT")
    con.close()
    return layout.warehouse


def child(spec: dict) -> dict:
    sys.path.insert(0, str(REPO))
    from billing_ai import warehouse as wh
    from billing_ai.clock import parse_instant

    db = Path(spec["db"])
    con = wh.connect(db, threads=THREADS, memory_limit=MEMORY_LIMIT)
    t = time.perf_counter()
    if spec["what"] == "floor":
        rows = len(wh.run(con, "SELECT subscription_id, meter_name, sum(quantity) FROM core.usage_events GROUP BY ALL"))
        out = {"groups": rows}
    elif spec["what"] == "windows":
        # a second baseline: sum the events per item and billing window by a range join (how rating
        # read the events before it summed them per piece), nothing else
        from billing_ai.rating import reconcile

        wh.run(con, reconcile.PERIODS, {"now": parse_instant(spec["now"])})
        wh.run(con, reconcile.WINDOWS, {"now": parse_instant(spec["now"])})
        t = time.perf_counter()
        rows = len(
            wh.run(
                con,
                """SELECT w.w, sum(u.quantity) FROM core.usage_events u
                                  JOIN _windows w ON w.subscription_id = u.subscription_id
                                   AND w.meter_name = u.meter_name
                                   AND u.event_ts >= w.usage_from AND u.event_ts < w.usage_to GROUP BY ALL""",
            )
        )
        out = {"groups": rows}
    elif spec["what"] == "rating":
        from billing_ai.rating.reconcile import rate_periods

        with wh.transaction(con):
            rate_periods(con, parse_instant(spec["now"]))
        (rated_events, item_periods) = wh.run(con, "SELECT sum(event_count), count(*) FROM marts.rated_usage")[0]
        out = {"rated_events": int(rated_events), "rated_usage": item_periods}
    else:
        from billing_ai.rating.reconcile import build_rating_marts

        out = build_rating_marts(con, parse_instant(spec["now"]))
    seconds = time.perf_counter() - t
    con.close()
    return {"seconds": seconds, "peak_mib": peak_mib(), **out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--customers", type=int, default=300, help="customers in the world whose plans rate the events")
    ap.add_argument("--world-days", type=int, default=60, help="days of that world's history")
    ap.add_argument("--child")
    args, _ = ap.parse_known_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    root = Path(tempfile.mkdtemp(prefix="billing_ai_rating_bench_"))
    try:
        t = time.perf_counter()
        template = build_template(root, args.events, args.customers, args.world_days)
        print(
            f"setup: {args.events:,} events over the default plans in {time.perf_counter() - t:.0f} s "
            f"(threads={THREADS}, memory_limit={MEMORY_LIMIT})",
            flush=True,
        )
        from billing_ai.sandbox.world import WorldConfig

        now = WorldConfig(seed=3, customers=args.customers, days=args.world_days).as_of
        results: dict[str, list[dict]] = {"floor": [], "windows": [], "rating": [], "full": []}
        for _ in range(args.repeats):
            for what in results:  # interleaved: all see the same machine load
                db = root / f"{what}.duckdb"
                shutil.copy(template, db)
                results[what].append(run_child(__file__, {"what": what, "db": str(db), "now": now}))
                db.unlink()
        med = {k: statistics.median(r["seconds"] for r in v) for k, v in results.items()}
        peak = {k: max(r["peak_mib"] for r in v) for k, v in results.items()}
        ratio = med["rating"] / med["floor"]
        print(f"{'measurement':<10} {'median s':>9} {'events/s':>14} {'peak MiB':>9}")
        labels = {
            "floor": "floor: group-by sum per subscription x meter",
            "windows": "baseline: sum per item x billing window by a range join over the events",
            "rating": "ours: rated_usage + tier_positions (windows, quantities, rating, tiers)",
            "full": "ours + invoice reconciliation",
        }
        for k in results:
            print(f"{k:<10} {med[k]:>9.2f} {args.events / med[k]:>14,.0f} {peak[k]:>9.0f}   {labels[k]}")
        ours = results["rating"][0]
        print(f"rated {ours['rated_events']:,} events into {ours['rated_usage']:,} item-periods")
        print(
            f"ratio rating/floor = {ratio:.2f} (target <= {TARGET_RATIO}: "
            f"{'met' if ratio <= TARGET_RATIO else 'NOT met'}); rating/windows = {med['rating'] / med['windows']:.2f}; "
            f"full/floor = {med['full'] / med['floor']:.2f}"
        )
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
