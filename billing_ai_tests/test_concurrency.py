"""Parallel steps never fail on DuckDB's lock, and readers never see a lock error.

A real multi-process run on a persistent Dagster instance (SQLite storage,
the project's dagster.yaml: every warehouse writer in the `warehouse` pool of
one slot) materializes the platform job while another process queries the
published snapshot in a loop.
"""

import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import pytest

from billing_ai import warehouse as wh
from billing_ai.platforms.stripe import SPEC as STRIPE
from billing_ai.sandbox.server import SandboxServer
from billing_ai_tests.conftest import TEST_PII_KEY

ROOT = Path(__file__).resolve().parent.parent

READER = textwrap.dedent("""
    import json, sys, time
    from billing_ai import warehouse as wh
    warehouse, out, stop = sys.argv[1], sys.argv[2], sys.argv[3]
    ok, errors, counts = 0, [], set()
    from pathlib import Path
    while not Path(stop).exists():
        try:
            con = wh.connect_published(warehouse)
            try:
                n = wh.run(con, "SELECT count(*) FROM core.invoices")[0][0]
                if n not in counts:  # tell the test what it has seen so far (written whole, then renamed)
                    counts.add(n)
                    Path(out + ".tmp").write_text(json.dumps(sorted(counts)))
                    Path(out + ".tmp").replace(out + ".seen")
                ok += 1
            finally:
                con.close()
        except Exception as e:  # noqa: BLE001 - every failure is what we count
            errors.append(f"{type(e).__name__}: {e}")
        time.sleep(0.02)
    Path(out).write_text(json.dumps({"ok": ok, "errors": errors, "counts": sorted(counts)}))
""")


# two independent roots (they would run side by side without the pool), two core tables, the publisher
SELECTION = [
    *(dg.AssetKey(["raw", f"stripe_{o}"]) for o in STRIPE.raw_objects),
    dg.AssetKey(["raw", "usage_events"]),
    dg.AssetKey(["core", "customers"]),
    dg.AssetKey(["core", "invoices"]),
    dg.AssetKey(["published", "warehouse"]),
]


def platform_job():
    from billing_ai.definitions import defs

    return defs.resolve_job_def("platform_sync_job")


@pytest.mark.slow
def test_multiprocess_run_while_a_reader_queries(tiny_world, tiny_warehouse, tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    warehouse = tmp_path / "warehouse.duckdb"
    shutil.copy(tiny_warehouse, warehouse)
    con = wh.connect(warehouse)
    # the snapshot readers start from lacks 3 invoices, until the run rebuilds and republishes
    wh.run(con, "DELETE FROM core.invoices WHERE invoice_id IN (SELECT invoice_id FROM core.invoices LIMIT 3)")
    wh.publish(con, warehouse)
    con.close()

    stop, out = tmp_path / "stop", tmp_path / "reader.json"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(warehouse), str(out), str(stop)])
    try:
        with SandboxServer(tiny_world.paths.world_dir, tmp_path / "state") as server:
            env = {
                "DAGSTER_HOME": str(home),
                "STRIPE_API_BASE": server.url,
                "STRIPE_API_KEY": "rk_test_sandbox_readonly",
                "STRIPE_REQUESTS_PER_SECOND": "500",
                "BILLING_AI_AS_OF": tiny_world.config.as_of,
                "BILLING_AI_INBOX": str(tiny_world.paths.inbox_dir),
                "BILLING_AI_WAREHOUSE": str(warehouse),
                "BILLING_AI_PII_KEY": TEST_PII_KEY,
            }
            for k, v in env.items():
                monkeypatch.setenv(k, v)
            with dg.DagsterInstance.get() as instance:
                result = dg.execute_job(
                    dg.reconstructable(platform_job),
                    instance=instance,
                    asset_selection=SELECTION,
                    run_config={"execution": {"config": {"multiprocess": {"max_concurrent": 2}}}},
                )
                assert result.success
                records = instance.all_logs(result.run_id)
                limits = instance.event_log_storage.get_concurrency_info("warehouse")
        # the reader has seen the snapshot the run published (it polls; no fixed wait on the clock)
        seen_file, n_world = Path(f"{out}.seen"), tiny_world.world.tables["invoices"].height
        deadline = time.monotonic() + 30
        while not (seen_file.exists() and n_world in json.loads(seen_file.read_text())):
            assert reader.poll() is None and time.monotonic() < deadline, "the reader never saw the new snapshot"
            time.sleep(0.02)
    finally:
        stop.write_text("stop")
        reader.wait(timeout=30)
    seen = json.loads(out.read_text())
    assert seen["errors"] == []
    assert seen["ok"] > 20
    assert seen["counts"] == [n_world - 3, n_world]  # the old snapshot, then the new one: nothing in between
    # each step ran in its own process, and the pool let one warehouse writer run at a time
    events = [r for r in records if r.dagster_event]
    starts = {r.step_key: r.timestamp for r in events if r.dagster_event.event_type_value == "STEP_START"}
    ends = {r.step_key: r.timestamp for r in events if r.dagster_event.event_type_value == "STEP_SUCCESS"}
    pids = {r.dagster_event.pid for r in events if r.dagster_event.event_type_value == "STEP_START"}
    assert len(starts) == len(SELECTION) - len(STRIPE.raw_objects) + 1 and len(pids) == len(starts)
    windows = sorted((starts[k], ends[k]) for k in starts)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(windows, windows[1:], strict=False))
    assert limits.slot_count == 1
