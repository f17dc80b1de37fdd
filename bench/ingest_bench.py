"""Usage ingestion benchmark: Parquet and NDJSON inbox -> raw.usage_events -> core.usage_events.

For N usage events (default 10M) spread over ~30 daily files, measures

* ``floor_parquet``: ``CREATE TABLE t AS SELECT * FROM read_parquet('<dir>/*.parquet')``
* ``ours_parquet``:  ``land_inbox`` of the Parquet files + ``build_usage_events`` over the whole range
* ``floor_ndjson``:  ``CREATE TABLE t AS SELECT * FROM read_json('<dir>/*.ndjson')``
* ``shape_*``: a second baseline: the records written straight into core.usage_events' columns, no validation
* ``ours_ndjson``:   the same as ``ours_parquet`` for the NDJSON files

each in its own subprocess (so peak RSS is that measurement's), with the same DuckDB
``threads`` and ``memory_limit``, into a fresh database file. Timing covers the work and
closing the connection (the final checkpoint), not interpreter start-up or imports.

Target (issue): ours within 2x of the floor, peak RSS under 4 GiB.

The data carries ~0.1% duplicate event ids, ~0.1% invalid records (negative quantity,
unknown customer / meter / subscription, timestamp before the window) and ~0.3% late
events, so the dedup, quarantine and is_late paths all do work; the bench checks
accepted + quarantined == records generated, the exact quarantine reasons, and the is_late count.

The billing_ai package is copied at start and every measurement imports that copy (the
working tree may change during a long run); the header names the commit and the hash of the
ingestion sources measured. ``ours_*`` also reports where its time goes, statement by statement
(``warehouse.run`` is wrapped in the child), for the split between landing and build.

Generated data lives in a temp dir and is deleted at the end (``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

NAME = "usage ingestion"
METERS = ("api_calls", "storage_gb_hours", "compute_seconds")
METER_P = (0.5, 0.3, 0.2)
DEPARTMENTS = ("engineering", "data", "marketing", "support", "finance")
ENDPOINTS = ("/v1/search", "/v1/ingest", "/v1/query", "/v1/export", "/v1/auth")
REGIONS = ("us-east-1", "us-west-2", "eu-west-1", "ap-northeast-1")
INVALID_KINDS = ("negative_quantity", "unknown_customer", "unknown_meter", "unknown_subscription", "timestamp_too_old")
START = date(2025, 3, 1)
MEASUREMENTS = (
    "floor_parquet",
    "shape_parquet",
    "ours_parquet",
    "floor_ndjson",
    "shape_ndjson",
    "ours_ndjson",
    "day_parquet",
    "dayall_parquet",
)
# day_parquet / dayall_parquet: the nightly case, not the target's: the last day rebuilt alone over the
# whole landed history, its duplicates looked for among the day's ids (day) or among the repeated ids of
# the whole history (dayall, how every build did it before); time and peak RSS of that build only
# shape_*: a second baseline, not the target's: the files' records written straight into
# core.usage_events' columns (metadata as JSON text and its four promoted keys, event_date, source
# file and row), with no validation, dedup, late flags, ledger or raw. What writing the analysts'
# table alone costs beside the floor.
SHAPE_SQL = """
INSERT INTO core.usage_events
SELECT event_id, 'inbox', customer_id, subscription_id, meter_name, CAST(quantity AS DECIMAL(38, 9)),
       CAST("timestamp" AS TIMESTAMPTZ), CAST(CAST("timestamp" AS TIMESTAMPTZ) AT TIME ZONE 'UTC' AS DATE),
       metadata.project, metadata.department, metadata.endpoint, metadata.region, CAST(to_json(metadata) AS JSON),
       parse_filename(filename), file_row_number, CAST(received_at AS TIMESTAMPTZ), false
FROM {reader}"""
TARGET_RATIO = 2.0
TARGET_RSS_MIB = 4096
ID_MOD = 10**14
ID_MULT = 48_271_000_003  # odd, not a multiple of 5: i -> i*M mod 10^14 is a bijection


# --------------------------------------------------------------------------- data


def cycle_anchors(n_customers: int, days: int) -> list[datetime]:
    """End of each subscription's invoiced monthly period (spread over the bench's days)."""
    t0 = datetime(START.year, START.month, START.day, tzinfo=UTC)
    return [t0 + timedelta(days=int(i * 7919 % days), hours=int(i % 24)) for i in range(n_customers)]


def reference_tables(n_customers: int, days: int):
    """The small core tables the validation joins against (polars frames)."""
    import polars as pl

    idx = pl.int_range(0, n_customers, eager=True)
    customers = pl.DataFrame({"customer_id": "cus_" + idx.cast(pl.String).str.zfill(8)})
    subs = pl.DataFrame(
        {"subscription_id": "sub_" + idx.cast(pl.String).str.zfill(8), "customer_id": customers["customer_id"]}
    )
    meters = pl.DataFrame({"meter_name": list(METERS)})
    # per subscription: a 'subscription_create' invoice (ignored by is_late) and one monthly
    # 'subscription_cycle' invoice whose period ends inside the bench range, finalized an hour later
    anchor = cycle_anchors(n_customers, days)
    cycle = pl.DataFrame(
        {
            "subscription_id": subs["subscription_id"],
            "billing_reason": "subscription_cycle",
            "period_start": [a - timedelta(days=30) for a in anchor],
            "period_end": anchor,
            "finalized_at": [a + timedelta(hours=1) for a in anchor],
        }
    )
    create = cycle.with_columns(
        pl.lit("subscription_create").alias("billing_reason"),
        (pl.col("period_start") - pl.duration(days=30)).alias("period_start"),
        pl.col("period_start").alias("period_end"),
        (pl.col("period_start") + pl.duration(hours=1)).alias("finalized_at"),
    )
    invoices = pl.concat([create, cycle]).with_columns(
        ("in_" + pl.int_range(0, 2 * n_customers).cast(pl.String).str.zfill(8)).alias("invoice_id")
    )
    return {"customers": customers, "subscriptions": subs, "meters": meters, "invoices": invoices}


def _event_ids(lo: int, hi: int):
    import numpy as np
    import polars as pl

    k = (np.arange(lo, hi, dtype=np.uint64) * np.uint64(ID_MULT)) % np.uint64(ID_MOD)
    return "evt_" + pl.Series(k).cast(pl.String).str.zfill(14)


def generate(root: Path, n_events: int, days: int = 30, n_customers: int = 2000, seed: int = 7, say=print) -> dict:
    """Write ``root/parquet/usage-<day>.parquet`` and ``root/ndjson/usage-<day>.ndjson`` (same records)."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    pq_dir, nd_dir = root / "parquet", root / "ndjson"
    pq_dir.mkdir(parents=True)
    nd_dir.mkdir(parents=True)
    ref = reference_tables(n_customers, days)
    cust = ref["customers"]["customer_id"].to_numpy()
    subs = ref["subscriptions"]["subscription_id"].to_numpy()
    cust_w = rng.lognormal(0.0, 1.2, n_customers)
    cust_p = cust_w / cust_w.sum()
    projects = np.array([f"proj_{i:03d}" for i in range(200)])

    n_dup = round(n_events * 0.001)
    n_base = n_events - n_dup
    per_day = rng.multinomial(n_base, np.full(days, 1 / days))
    dup_per_day = rng.multinomial(n_dup, np.full(days, 1 / days))
    expected = {"records": 0, "duplicates": 0, "late": 0, "is_late": 0, **{k: 0 for k in INVALID_KINDS}}
    anchors = np.array([int(a.timestamp()) for a in cycle_anchors(n_customers, days)])
    offset = 0
    prev_valid = None
    t0 = int(datetime(START.year, START.month, START.day, tzinfo=UTC).timestamp())
    for d in range(days):
        n = int(per_day[d])
        ci = rng.choice(n_customers, size=n, p=cust_p)
        meter = rng.choice(len(METERS), size=n, p=METER_P)
        q_milli = np.maximum(1, rng.lognormal(8.0, 1.5, n).astype(np.int64))
        ts = t0 + d * 86400 + rng.integers(0, 86400, n)
        # ~0.3% late events: happened 1-10 days before the file they arrive in
        late = rng.random(n) < 0.003
        late_ts = ts - rng.integers(1, 11, n) * 86400
        late &= late_ts >= t0
        ts = np.where(late, late_ts, ts)
        # received_at: on-time events arrive within a minute (same file day); late ones some time on the file's day
        day0, day1 = t0 + d * 86400, t0 + (d + 1) * 86400 - 1
        recv = np.where(late, day0 + rng.integers(0, 86400, n), np.minimum(ts + rng.integers(0, 60, n), day1))
        frame = pl.DataFrame(
            {
                "event_id": _event_ids(offset, offset + n),
                "customer_id": cust[ci],
                "subscription_id": subs[ci],
                "meter_name": np.array(METERS)[meter],
                "q_milli": q_milli,
                "ts": ts,
                "recv": recv,
                "ci": ci,
                "project": projects[(ci * 7 + rng.integers(0, 3, n)) % len(projects)],
                "department": np.array(DEPARTMENTS)[rng.integers(0, len(DEPARTMENTS), n)],
                "endpoint": np.array(ENDPOINTS)[rng.integers(0, len(ENDPOINTS), n)],
                "region": np.array(REGIONS)[ci % len(REGIONS)],
            }
        )
        offset += n
        # ~0.1% invalid records, one of INVALID_KINDS each (not late, so counts stay exact)
        bad = np.flatnonzero((rng.random(n) < 0.001) & ~late)
        kinds = np.array(INVALID_KINDS)[rng.integers(0, len(INVALID_KINDS), bad.size)]
        kind_col = np.full(n, "", dtype=f"<U{max(map(len, INVALID_KINDS))}")
        kind_col[bad] = kinds
        frame = frame.with_columns(pl.Series("kind", kind_col).replace("", None)).with_columns(
            pl.when(pl.col("kind") == "negative_quantity")
            .then(-pl.col("q_milli"))
            .otherwise("q_milli")
            .alias("q_milli"),
            pl.when(pl.col("kind") == "unknown_customer")
            .then(pl.lit("cus_unknown_") + pl.col("event_id").str.slice(4, 6))
            .otherwise("customer_id")
            .alias("customer_id"),
            pl.when(pl.col("kind") == "unknown_meter")
            .then(pl.lit("gpu_hours"))
            .otherwise("meter_name")
            .alias("meter_name"),
            # another customer's subscription
            pl.when(pl.col("kind") == "unknown_subscription")
            .then(pl.when(pl.col("customer_id") == cust[0]).then(pl.lit(subs[1])).otherwise(pl.lit(subs[0])))
            .otherwise("subscription_id")
            .alias("subscription_id"),
            pl.when(pl.col("kind") == "timestamp_too_old").then(pl.col("ts") - 90 * 86400).otherwise("ts").alias("ts"),
        )
        for k in INVALID_KINDS:
            expected[k] += int((kinds == k).sum())
        expected["late"] += int(late.sum())
        # is_late as build_usage_events defines it: inside a non-create invoice's period and received after
        # that invoice was finalized (here: the one 'subscription_cycle' invoice of the event's subscription)
        anchor = anchors[frame["ci"].to_numpy()]
        fts, frecv = frame["ts"].to_numpy(), frame["recv"].to_numpy()
        is_late = (
            (fts >= anchor - 30 * 86400)
            & (fts < anchor)
            & (frecv >= anchor + 3600)
            & frame["kind"].is_null().to_numpy()
        )
        expected["is_late"] += int(is_late.sum())
        frame = frame.sort("ts")
        # ~0.1% duplicates: exact re-sends of valid, on-time events from this file or the previous one
        valid = frame.filter(pl.col("kind").is_null() & (pl.col("ts") >= t0 + d * 86400))
        nd = int(dup_per_day[d])
        from_prev = nd // 2 if prev_valid is not None else 0
        dups = [valid.sample(nd - from_prev, seed=seed * 1000 + d)]
        if from_prev:
            dups.append(prev_valid.sample(from_prev, seed=seed * 1000 + d + 500))
        frame = pl.concat([frame, *dups])
        expected["duplicates"] += nd
        expected["records"] += frame.height
        prev_valid = valid
        day = (START + timedelta(days=d)).isoformat()
        out = frame.select(
            "event_id",
            "customer_id",
            "subscription_id",
            "meter_name",
            (pl.col("q_milli").cast(pl.Decimal(38, 3)) / 1000).cast(pl.Decimal(38, 3)).alias("quantity"),
            pl.from_epoch("ts").dt.replace_time_zone("UTC").alias("timestamp"),
            pl.struct("project", "department", "endpoint", "region").alias("metadata"),
            pl.from_epoch("recv").dt.replace_time_zone("UTC").alias("received_at"),
        )
        out.write_parquet(pq_dir / f"usage-{day}.parquet")
        out.with_columns(
            pl.col("quantity").cast(pl.String), pl.col("timestamp", "received_at").dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        ).write_ndjson(nd_dir / f"usage-{day}.ndjson")
        if d % 10 == 0:
            say(f"  generated day {d + 1}/{days}")
    assert expected["records"] == n_events, expected
    expected["invalid"] = sum(expected[k] for k in INVALID_KINDS)
    expected["quarantined"] = expected["invalid"] + expected["duplicates"]
    expected["accepted"] = expected["records"] - expected["quarantined"]
    end = START + timedelta(days=days - 1)
    last_ts = datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1)
    return {
        "n_events": n_events,
        "days": days,
        "n_customers": n_customers,
        "seed": seed,
        "start": START.isoformat(),
        "end": end.isoformat(),
        "window_start": START.isoformat(),
        "now": (last_ts + timedelta(hours=6)).isoformat(),
        "expected": expected,
        "bytes": {
            "parquet": sum(p.stat().st_size for p in pq_dir.iterdir()),
            "ndjson": sum(p.stat().st_size for p in nd_dir.iterdir()),
        },
    }


def make_template(path: Path, n_customers: int, days: int) -> None:
    """A warehouse holding only the small core tables (copied fresh for every 'ours' run)."""
    from billing_ai import warehouse as wh

    ref = reference_tables(n_customers, days)
    con = wh.connect(path)
    for name, frame in ref.items():
        wh.write_frame(con, f"core.{name}", frame, replace=True)
    con.close()


# --------------------------------------------------------------------------- code version

REPO = Path(__file__).resolve().parent.parent
CODE_FILES = (
    "billing_ai/ingestion/usage_files",
    "billing_ai/ingestion/usage_events.py",
    "billing_ai/warehouse.py",
)


def code_hash(base: Path = REPO) -> str:
    """Hash of the ingestion sources under ``base`` (the directory holding the billing_ai package)."""
    h = hashlib.sha256()
    for name in CODE_FILES:
        path = base / name
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def snapshot_code(dest: Path) -> Path:
    """Copy the billing_ai package as it is now; every measurement imports this copy, so all of them run
    the same code even if the working tree changes during a long run."""
    shutil.copytree(REPO / "billing_ai", dest / "billing_ai", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def git_version() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", *CODE_FILES], capture_output=True, text=True
        ).stdout.strip()
        return f"{head}{' + uncommitted ingestion changes' if dirty else ''}"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# --------------------------------------------------------------------------- child


def _rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB: VmRSS and max(VmHWM, ru_maxrss)."""
    cur = peak = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return cur, max(peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _label(sql: str) -> str:
    s = re.sub(r"'[^']*'", "'…'", " ".join(sql.split()))
    m = re.match(
        r"(CREATE OR REPLACE TEMP TABLE \w+|INSERT INTO [\w.]+|DELETE FROM [\w.]+|DROP TABLE( IF EXISTS)? \w+"
        r"|DESCRIBE|SELECT|BEGIN TRANSACTION|COMMIT|CREATE TABLE IF NOT EXISTS [\w.]+|SET|CREATE SCHEMA)",
        s,
    )
    label = m.group(0) if m else s[:50]
    if label == "SELECT":
        label = "SELECT " + s[7:45]
    return label


def child(spec: dict) -> dict:
    if spec.get("code_dir"):
        sys.path.insert(0, spec["code_dir"])
    import duckdb  # noqa: F401  (import cost outside the timed region, the same for every measurement)

    import billing_ai
    from billing_ai import warehouse as wh
    from billing_ai.ingestion import usage_events, usage_files
    from billing_ai.ingestion.usage_files import landing

    code = code_hash(Path(billing_ai.__file__).resolve().parent.parent)  # what this process imported
    kind, fmt = spec["measurement"].split("_")
    db = Path(spec["db"])
    src = Path(spec["root"]) / fmt
    out: dict = {"measurement": spec["measurement"], "code": code, "billing_ai": billing_ai.__file__}
    rss0, _ = _rss_mib()
    out["rss_start_mib"] = rss0

    if kind in ("floor", "shape"):
        if kind == "floor":
            reader = f"read_parquet('{src}/*.parquet')" if fmt == "parquet" else f"read_json('{src}/*.ndjson')"
            sql, table = f"CREATE TABLE t AS SELECT * FROM {reader}", "t"
        else:  # read_json numbers no rows (a window over the scan would cost more than the rest): none
            reader = (
                f"read_parquet('{src}/*.parquet', filename=true, file_row_number=true)"
                if fmt == "parquet"
                else f"(SELECT *, CAST(NULL AS BIGINT) AS file_row_number FROM read_json('{src}/*.ndjson', "
                "filename=true))"
            )
            sql, table = SHAPE_SQL.format(reader=reader), "core.usage_events"
            shutil.copyfile(spec["template"], db)
            con = wh.connect(db)
            wh.run(con, usage_events.DDL)
            con.close()
        t0 = time.perf_counter()
        con = wh.connect(db, threads=spec["threads"], memory_limit=spec["memory_limit"])
        wh.run(con, sql)
        con.close()
        out["seconds"] = time.perf_counter() - t0
        _, out["peak_rss_mib"] = _rss_mib()
        con = wh.connect(db, read_only=True)
        out["rows"] = wh.run(con, f"SELECT count(*) FROM {table}")[0][0]
        out["accepted"], out["quarantined"] = out["rows"], 0
        con.close()
        return out

    if kind in ("day", "dayall"):
        # a nightly partition: the whole history landed and built (not timed), then its last day rebuilt
        # alone -- finding the earlier copies of that day's events among every landed id (day: the
        # default; dayall: the repeated ids of the whole history, as every build did before)
        shutil.copyfile(spec["template"], db)
        now = datetime.fromisoformat(spec["now"])
        start, end = date.fromisoformat(spec["start"]), date.fromisoformat(spec["end"])
        con = wh.connect(db, threads=spec["threads"], memory_limit=spec["memory_limit"])
        usage_files.land_inbox(con, src, now, date.fromisoformat(spec["window_start"]))
        usage_events.build_usage_events(con, start, end, now)
        con.close()
        if kind == "dayall":
            usage_events.RANGE_DEDUP_BELOW = 0.0
        with open("/proc/self/clear_refs", "w") as f:  # peak RSS from here on (Linux)
            f.write("5")
        t0 = time.perf_counter()
        con = wh.connect(db, threads=spec["threads"], memory_limit=spec["memory_limit"])
        stats = usage_events.build_usage_events(con, end, end, now)
        con.close()
        out["seconds"] = time.perf_counter() - t0
        with open("/proc/self/status") as f:
            out["peak_rss_mib"] = next(int(x.split()[1]) / 1024 for x in f if x.startswith("VmHWM:"))
        out["rows"], out["accepted"], out["quarantined"] = stats["records"], stats["accepted"], stats["quarantined"]
        return out

    # ours: per-statement timings by wrapping warehouse.run (both modules call it as wh.run)
    stmt_t: dict[str, float] = defaultdict(float)
    stmt_n: dict[str, int] = defaultdict(int)
    orig_run, orig_sha = wh.run, landing.sha256_of
    phase = ["-"]

    def timed_run(con, sql, params=None):
        t = time.perf_counter()
        try:
            return orig_run(con, sql, params)
        finally:
            key = f"{phase[0]}: {_label(sql)}"
            stmt_t[key] += time.perf_counter() - t
            stmt_n[key] += 1

    def timed_sha(path):
        t = time.perf_counter()
        try:
            return orig_sha(path)
        finally:
            stmt_t["land: sha256 (python)"] += time.perf_counter() - t
            stmt_n["land: sha256 (python)"] += 1

    wh.run = timed_run
    landing.sha256_of = timed_sha  # (the landing hashes through its own name of it)
    shutil.copyfile(spec["template"], db)
    now = datetime.fromisoformat(spec["now"])
    start, end = date.fromisoformat(spec["start"]), date.fromisoformat(spec["end"])

    t0 = time.perf_counter()
    con = wh.connect(db, threads=spec["threads"], memory_limit=spec["memory_limit"])
    phase[0] = "land"
    results = usage_files.land_inbox(con, src, now, date.fromisoformat(spec["window_start"]))
    t1 = time.perf_counter()
    phase[0] = "build"
    stats = usage_events.build_usage_events(con, start, end, now)
    t2 = time.perf_counter()
    phase[0] = "close"
    con.close()
    t3 = time.perf_counter()
    _, out["peak_rss_mib"] = _rss_mib()
    wh.run, landing.sha256_of = orig_run, orig_sha

    out.update(
        seconds=t3 - t0,
        land_s=t1 - t0,
        build_s=t2 - t1,
        close_s=t3 - t2,
        statements={k: [v, stmt_n[k]] for k, v in stmt_t.items()},
    )
    failed = [r.file_name for r in results if r.status != "landed"]
    con = wh.connect(db, read_only=True)
    out["rows"] = sum(r.records for r in results)
    out["land_quarantined"] = sum(r.quarantined for r in results)
    out["accepted"] = wh.count(con, "core.usage_events")
    out["quarantined"] = wh.count(con, "core.quarantine")
    out["late"] = stats["late"]
    out["failed_files"] = failed
    out["reasons"] = dict(wh.run(con, "SELECT reason, count(*) FROM core.quarantine GROUP BY 1"))
    out["build_stats"] = stats
    con.close()
    return out


# --------------------------------------------------------------------------- parent


def _run_child(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['measurement']} failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check(res: dict, expected: dict, code: str) -> list[str]:
    errs = []
    if res["measurement"].startswith(("day", "dayall")):  # one day of the history: reported, not checked
        return errs
    if res["measurement"].startswith(("floor", "shape")):
        if res["rows"] != expected["records"]:
            errs.append(f"{res['measurement']}: {res['rows']} rows, expected {expected['records']}")
        return errs
    m = res["measurement"]
    if res["failed_files"]:
        errs.append(f"{m}: failed files {res['failed_files']}")
    if res["rows"] != expected["records"]:
        errs.append(f"{m}: landed {res['rows']} records in, expected {expected['records']}")
    if res["accepted"] + res["quarantined"] != expected["records"]:
        errs.append(f"{m}: accepted {res['accepted']} + quarantined {res['quarantined']} != {expected['records']}")
    want = {k: expected[k] for k in INVALID_KINDS if expected[k]}
    want["duplicate_of"] = expected["duplicates"]
    if res["reasons"] != want:
        errs.append(f"{m}: quarantine reasons {res['reasons']} != expected {want}")
    if res["accepted"] != expected["accepted"]:
        errs.append(f"{m}: accepted {res['accepted']} != expected {expected['accepted']}")
    if res["late"] != expected["is_late"]:
        errs.append(
            f"{m}: {res['late']} accepted rows is_late, expected {expected['is_late']} (received_at at or "
            "after the finalization of a non-create invoice whose period holds the event)"
        )
    if res["code"] != code:
        errs.append(f"{m}: ran ingestion code {res['code']}, not the run's {code}")
    return errs


def _fmt_n(x: float) -> str:
    return f"{x:,.0f}"


def report(results: dict[str, list[dict]], manifest: dict, cfg: dict) -> dict:
    med = lambda xs: statistics.median(xs)  # noqa: E731 -- a one-line local helper reads best inline
    n = manifest["expected"]["records"]
    summary = {}
    for m, runs in results.items():
        s = {
            "seconds": med([r["seconds"] for r in runs]),
            "peak_rss_mib": med([r["peak_rss_mib"] for r in runs]),
            "rss_start_mib": med([r["rss_start_mib"] for r in runs]),
            "runs_s": [round(r["seconds"], 2) for r in runs],
        }
        s["events_per_s"] = (runs[0]["rows"] if m.startswith("day") else n) / s["seconds"]
        if m.startswith("ours"):
            for k in ("land_s", "build_s", "close_s"):
                s[k] = med([r[k] for r in runs])
        summary[m] = s
    e = manifest["expected"]
    print()
    print(
        f"== {NAME}: {n:,} events over {manifest['days']} daily files "
        f"(parquet {manifest['bytes']['parquet'] / 2**20:,.0f} MiB, "
        f"ndjson {manifest['bytes']['ndjson'] / 2**20:,.0f} MiB); "
        f"DuckDB threads={cfg['threads']} memory_limit={cfg['memory_limit']}; median of {cfg['repeats']} run(s); "
        f"load avg {cfg['load_before']:.1f} before, {os.getloadavg()[0]:.1f} after on {os.cpu_count()} cores"
    )
    now_code = code_hash()
    print(
        f"   code: {cfg['version']}, ingestion sources {cfg['code']}"
        f"{' (snapshot taken at start)' if cfg['code_dir'] else ''}"
        f"{f'; NOTE: the working tree has changed since ({now_code})' if now_code != cfg['code'] else ''}; "
        f"duckdb {cfg.get('duckdb', '?')}"
    )
    print(
        f"   data: {e['duplicates']:,} duplicates, {e['invalid']:,} invalid "
        f"({', '.join(f'{k} {e[k]}' for k in INVALID_KINDS)}), {e['late']:,} late arrivals; "
        f"expect accepted {e['accepted']:,} (is_late {e['is_late']:,}) + quarantined {e['quarantined']:,}"
    )
    hdr = (
        f"   {'measurement':<14} {'seconds':>9} {'events/s':>12} {'peak RSS MiB':>13} {'(at start)':>10} "
        f"{'land s':>8} {'build s':>8} {'close s':>8}  runs (s)"
    )
    print(hdr)
    print("   " + "-" * (len(hdr) - 3))
    for m in MEASUREMENTS:
        if m not in summary:
            continue
        s = summary[m]
        extra = (
            f"{s['land_s']:>8.1f} {s['build_s']:>8.1f} {s['close_s']:>8.1f}"
            if m.startswith("ours")
            else f"{'':>8} {'':>8} {'':>8}"
        )
        print(
            f"   {m:<14} {s['seconds']:>9.1f} {_fmt_n(s['events_per_s']):>12} {s['peak_rss_mib']:>13,.0f} "
            f"{s['rss_start_mib']:>10,.0f} {extra}  {s['runs_s']}"
        )
    print()
    verdicts = {}
    for fmt in ("parquet", "ndjson"):
        o, f = summary.get(f"ours_{fmt}"), summary.get(f"floor_{fmt}")
        if not (o and f):
            continue
        ratio = o["seconds"] / f["seconds"]
        ok_t, ok_m = ratio <= TARGET_RATIO, o["peak_rss_mib"] < TARGET_RSS_MIB
        verdicts[fmt] = {
            "ratio": ratio,
            "meets_time": ok_t,
            "meets_memory": ok_m,
            "rss_ratio": o["peak_rss_mib"] / f["peak_rss_mib"],
        }
        print(
            f"   {fmt:<8} ours/floor time {ratio:5.2f}x  -> <= {TARGET_RATIO:.1f}x: {'PASS' if ok_t else 'FAIL'};   "
            f"ours peak RSS {o['peak_rss_mib']:,.0f} MiB (floor {f['peak_rss_mib']:,.0f}) -> < 4 GiB: "
            f"{'PASS' if ok_m else 'FAIL'}"
        )
        if sh := summary.get(f"shape_{fmt}"):
            verdicts[fmt]["shape_ratio"] = sh["seconds"] / f["seconds"]
            print(
                f"   {'':<8} shape/floor time {sh['seconds'] / f['seconds']:5.2f}x (writing core's columns, "
                f"no validation);  ours/shape {o['seconds'] / sh['seconds']:5.2f}x"
            )
    return {"summary": summary, "verdicts": verdicts}


def print_statements(results: dict[str, list[dict]], top: int) -> None:
    for m in ("ours_parquet", "ours_ndjson"):
        runs = results.get(m)
        if not runs:
            continue
        keys = set().union(*(r["statements"] for r in runs))
        rows = sorted(
            (
                (
                    k,
                    statistics.median([r["statements"].get(k, [0, 0])[0] for r in runs]),
                    runs[0]["statements"].get(k, [0, 0])[1],
                )
                for k in keys
            ),
            key=lambda x: -x[1],
        )
        total = statistics.median([r["seconds"] for r in runs])
        print(f"\n   where {m} spends its time (median s per statement kind, summed over files):")
        for k, t, cnt in rows[:top]:
            print(f"     {t:8.2f} s {100 * t / total:5.1f}%  x{cnt:<4} {k}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--quick", action="store_true", help="1M events")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--customers", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-limit", default="3GB")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--only", default="", help="comma-separated subset of " + ",".join(MEASUREMENTS))
    ap.add_argument("--tmpdir", default=None, help="where to put the generated data (default: system temp)")
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    ap.add_argument(
        "--no-snapshot",
        action="store_true",
        help="import billing_ai from the working tree in every measurement, not from a copy taken at start",
    )
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--top", type=int, default=12, help="statements to list in the breakdown")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args, _unknown = ap.parse_known_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child)), default=str))
        return 0
    n = 1_000_000 if args.quick else args.events
    which = [m for m in MEASUREMENTS if not args.only or m in args.only.split(",")]
    root = Path(tempfile.mkdtemp(prefix="billing_ai_bench_", dir=args.tmpdir))
    try:
        code_dir = None if args.no_snapshot else snapshot_code(root / "code")
        version = git_version()
        print(f"[{NAME}] generating {n:,} events in {root} ...", flush=True)
        t = time.perf_counter()
        manifest = generate(
            root, n, days=args.days, n_customers=args.customers, seed=args.seed, say=lambda s: print(s, flush=True)
        )
        make_template(root / "template.duckdb", args.customers, args.days)
        print(f"  generated in {time.perf_counter() - t:.1f} s", flush=True)
        cfg = {
            "threads": args.threads,
            "memory_limit": args.memory_limit,
            "repeats": args.repeats,
            "load_before": os.getloadavg()[0],
            "version": version,
            "code": code_hash(code_dir or REPO),
            "code_dir": code_dir and str(code_dir),
            "duckdb": importlib.metadata.version("duckdb"),
        }
        results: dict[str, list[dict]] = {m: [] for m in which}
        errors: list[str] = []
        for rep in range(args.repeats):
            for m in which:  # interleaved, so machine noise spreads over all measurements
                db = root / f"{m}.duckdb"
                spec = {
                    "measurement": m,
                    "root": str(root),
                    "db": str(db),
                    "template": str(root / "template.duckdb"),
                    "code_dir": cfg["code_dir"],
                    "threads": args.threads,
                    "memory_limit": args.memory_limit,
                    **{k: manifest[k] for k in ("start", "end", "window_start", "now")},
                }
                res = _run_child(spec)
                for p in root.glob(f"{m}.duckdb*"):
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
                errors += _check(res, manifest["expected"], cfg["code"])
                results[m].append(res)
                print(
                    f"  run {rep + 1}/{args.repeats} {m:<14} {res['seconds']:8.1f} s  peak RSS "
                    f"{res['peak_rss_mib']:,.0f} MiB",
                    flush=True,
                )
        days = [results.get(m, []) for m in ("day_parquet", "dayall_parquet")]
        if all(days) and {(r["accepted"], r["quarantined"]) for r in days[0] + days[1]} != {
            (days[0][0]["accepted"], days[0][0]["quarantined"])
        }:
            errors.append("day_parquet and dayall_parquet disagree on the day's accepted/quarantined records")
        out = report(results, manifest, cfg)
        print_statements(results, args.top)
        print()
        if errors:
            print("   CORRECTNESS: FAIL")
            for e in errors:
                print("     " + e)
        else:
            e = manifest["expected"]
            late = {m: results[m][0]["late"] for m in results if m.startswith("ours")}
            print(
                f"   correctness: OK (accepted {e['accepted']:,} + quarantined {e['quarantined']:,} == "
                f"{e['records']:,} generated, quarantine reasons as injected; accepted is_late: {late})"
            )
        if args.json:
            Path(args.json).write_text(
                json.dumps({"manifest": manifest, "config": cfg, **out, "runs": results}, indent=2, default=str)
            )
        return 1 if errors else 0
    finally:
        if args.keep:
            print(f"  kept data in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
