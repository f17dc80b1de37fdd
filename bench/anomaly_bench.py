"""Anomaly detection benchmark: S customer-meter series x D days of hourly buckets, seconds and peak memory.

Ours: :func:`billing_ai.anomalies.detect_anomalies` (``rows="buckets"``, hourly grain, with an
endpoint/region per row so the composition detector runs; no multivariate pass, which works
on account-days and is measured separately) over S x D x 24 rows.

Floor (same run, same process isolation): the least any seasonal detector must do over the same
rows -- per series, a trailing 7-day mean of the value and a z-score against it, in Polars.

Each measurement runs in its own subprocess so peak RSS is its own; medians of the repeats.

    .venv/bin/python bench/run.py --bench anomaly [--series S] [--days D] [--repeats K]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import peak_mib, run_child  # noqa: E402 -- imported after the sys.path set-up above


def make_buckets(series: int, days: int, seed: int = 0):
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    hours = days * 24
    hod = 0.5 + np.sin(np.pi * (np.arange(hours) % 24) / 24) ** 2
    scale = rng.lognormal(3, 1.5, series)  # any scale: from a few units to tens of thousands an hour
    lam = scale[:, None] * hod[None, :]
    q = rng.poisson(lam).astype(np.float64).ravel()
    spikes = rng.integers(0, series * hours, series // 20)  # 5% of series get a spike
    q[spikes] *= 6
    start = np.datetime64("2026-08-01T00:00:00", "us")
    ts = start + (np.arange(hours) * 3_600_000_000).astype("timedelta64[us]")
    return pl.DataFrame(
        {
            "customer_id": np.repeat(np.array([f"cus_{i // 3:06d}" for i in range(series)]), hours),
            "meter_name": np.repeat(
                np.array(["api_calls", "storage_gb_hours", "compute_seconds"])[np.arange(series) % 3], hours
            ),
            "ts": np.tile(ts, series),
            "quantity": q,
            "endpoint": "/v1/query",
            "region": "us-east-1",
        }
    ).with_columns(__import__("polars").col("ts").dt.replace_time_zone("UTC"))


def child(spec: dict) -> dict:
    sys.path.insert(0, str(REPO))
    import polars as pl

    buckets = make_buckets(spec["series"], spec["days"])
    t = time.perf_counter()
    if spec["what"] == "floor":
        s = ["customer_id", "meter_name"]
        out = (
            buckets.sort(*s, "ts")
            .with_columns(
                pl.col("quantity").shift(1).rolling_mean(168, min_samples=1).over(s).alias("m"),
                pl.col("quantity").shift(1).rolling_std(168, min_samples=2).over(s).alias("sd"),
            )
            .filter((pl.col("quantity") - pl.col("m")) / (pl.col("sd") + 1e-9) > 6)
        )
        flagged = out.height
    else:
        from billing_ai.anomalies import detect_anomalies

        out = detect_anomalies(buckets, "1h", rows="buckets", multivariate_features=False)
        flagged = int(out["is_anomaly"].sum() or 0)
    return {"seconds": time.perf_counter() - t, "peak_mib": peak_mib(), "rows": buckets.height, "flagged": flagged}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child")
    args, _ = ap.parse_known_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    results: dict[str, list[dict]] = {"floor": [], "ours": []}
    for _ in range(args.repeats):
        for what in results:  # interleaved: both see the same machine load
            results[what].append(run_child(__file__, {"what": what, "series": args.series, "days": args.days}))
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in results.items()}
    peak = {k: max(r["peak_mib"] for r in v) for k, v in results.items()}
    rows = results["ours"][0]["rows"]
    print(f"{args.series:,} series x {args.days} days hourly = {rows:,} buckets; {args.repeats} repeats, medians")
    print(
        f"  floor (trailing mean + z-score)   {med['floor']:7.1f} s  peak {peak['floor']:7,.0f} MiB  "
        f"flagged {results['floor'][0]['flagged']:,}"
    )
    print(
        f"  ours detect_anomalies             {med['ours']:7.1f} s  peak {peak['ours']:7,.0f} MiB  "
        f"flagged {results['ours'][0]['flagged']:,}  ratio {med['ours'] / med['floor']:.1f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
