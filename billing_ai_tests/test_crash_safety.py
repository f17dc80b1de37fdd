"""A writer killed (SIGKILL) mid-partition leaves the previous contents intact."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta

from billing_ai import warehouse as wh

# The child runs the real partition rebuild, but pauses (inside its transaction) right after the
# partition's rows were deleted and the new ones inserted, so the parent can kill it there.
CHILD = textwrap.dedent("""
    import sys, time
    from datetime import date, datetime
    from pathlib import Path
    from billing_ai import warehouse as wh
    from billing_ai.ingestion import usage_events

    path, day, marker = sys.argv[1], date.fromisoformat(sys.argv[2]), Path(sys.argv[3])
    real_run = wh.run

    def run(con, sql, params=None):
        out = real_run(con, sql, params)
        if sql.lstrip().startswith("INSERT INTO core.usage_events"):
            marker.write_text("inside the transaction")
            time.sleep(60)
        return out

    usage_events.wh.run = run
    con = wh.connect(path)
    usage_events.build_usage_events(con, day, day, datetime.fromisoformat("2026-11-01T06:00:00+00:00"))
    print("committed")
""")


def snapshot(path, day):
    con = wh.connect(path, read_only=True)
    try:
        return (
            wh.run(
                con,
                "SELECT count(*), sum(quantity), min(event_id), max(event_id) FROM core.usage_events "
                "WHERE event_date = ?",
                [day],
            )[0],
            wh.run(con, "SELECT count(*) FROM core.usage_events")[0][0],
            wh.run(con, "SELECT count(*) FROM core.quarantine")[0][0],
        )
    finally:
        con.close()


def test_sigkill_mid_partition_keeps_previous_contents(tiny_world, tiny_warehouse, tmp_path):
    path = tmp_path / "w.duckdb"
    shutil.copy(tiny_warehouse, path)
    day = tiny_world.config.start_dt().date() + timedelta(days=15)
    before = snapshot(path, day)
    assert before[0][0] > 0
    marker = tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), day.isoformat(), str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the child never reached its write"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert b"committed" not in proc.stdout.read()
    assert snapshot(path, day) == before  # the WAL's uncommitted transaction was discarded


def test_interrupted_then_rerun_converges(tiny_world, tiny_warehouse, tmp_path):
    """After a crash, simply re-running the partition gives the same result as a clean run."""
    from billing_ai.clock import parse_instant
    from billing_ai.ingestion.usage_events import build_usage_events

    path = tmp_path / "w.duckdb"
    shutil.copy(tiny_warehouse, path)
    day = tiny_world.config.start_dt().date() + timedelta(days=16)
    before = snapshot(path, day)
    con = wh.connect(path)
    try:
        wh.run(con, "BEGIN TRANSACTION")
        wh.run(con, "DELETE FROM core.usage_events WHERE event_date = ?", [day])
        wh.run(con, "ROLLBACK")  # what a crash amounts to
        build_usage_events(con, day, day, parse_instant(tiny_world.config.as_of))
    finally:
        con.close()
    assert snapshot(path, day) == before
