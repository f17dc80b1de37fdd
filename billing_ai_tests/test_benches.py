"""Every benchmark in bench/ runs, end to end, at a tiny size: a bench that no longer starts (an import
moved, a resource it does not provide) is found here, not on the day its figures are needed. Nothing
here is timed: the figures are the benches' own business (``make bench``), and each bench returns
non-zero when its own correctness checks fail (rows conserved, quarantine reasons, outputs agreeing)."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

# the smallest sizes at which each bench still does all of its work; a new bench must add its own
TINY = {
    "actions_bench": ["--actions", "5", "--audit-rows", "100"],
    "anomaly_bench": ["--series", "20", "--days", "30"],
    "forecast_bench": ["--series", "20", "--days", "60"],
    "ingest_bench": ["--events", "20000", "--customers", "50"],
    "platforms_bench": ["--customers", "6"],
    "rating_bench": ["--events", "5000", "--customers", "8", "--world-days", "20"],
}
# what each prints once it has measured: its ratio against the baseline measured in the same run
PRINTS = {
    "actions_bench": "ratio",
    "anomaly_bench": "ratio",
    "forecast_bench": "ratio",
    "ingest_bench": "ours/floor",
    "platforms_bench": "targeted refresh",
    "rating_bench": "ratio rating/floor",
}


def test_every_bench_has_a_tiny_size():
    assert sorted(p.stem for p in BENCH.glob("*_bench.py")) == sorted(TINY)


@pytest.mark.parametrize("name", sorted(TINY))
def test_bench_runs_at_a_tiny_size(name, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--bench", name, "--repeats", "1", *TINY[name]],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"### {name}: ok" in proc.stdout
    assert PRINTS[name] in proc.stdout
