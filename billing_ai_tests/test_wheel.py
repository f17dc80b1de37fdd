"""The built wheel works outside the checkout: every module and SQL mapping is in it, and it builds the
Definitions.

The wheel is built once (setuptools is pinned in requirements.lock, so no download) and installed with
``--no-deps --target`` into a folder; it is imported from a folder outside the checkout by an interpreter
started with ``-S`` (no site hooks: the editable install's finder, which would quietly fill a gap from the
checkout, never runs) that borrows this environment's packages through ``PYTHONPATH``. The full
fresh-environment install (``pip install -r requirements.lock`` and the wheel) runs in ``.ci/run``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # built from a copy of what the wheel is made of: setuptools builds in the source tree, and a build/
    # folder left there by an earlier build (git-ignored) would leak stale files into this one
    src, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("billing_ai", "sql"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "-w", str(out), str(src)], check=True, capture_output=True, text=True, cwd=out)
    (built,) = out.glob("billing_ai-*.whl")
    return built


def test_the_wheel_holds_every_module_sql_file_and_declared_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {str(p.relative_to(REPO)) for p in (REPO / "billing_ai").rglob("*.py")}
    expected |= {"billing_ai/sql/" + str(p.relative_to(REPO / "sql")) for p in (REPO / "sql").rglob("*.sql")}
    expected |= {"billing_ai/py.typed", "billing_ai/actions/policy.toml"}
    missing = sorted(expected - names)
    assert not missing, (
        f"not in the wheel: {missing[:10]} -- a new package must be listed in pyproject.toml [tool.setuptools] packages"
    )
    assert not [n for n in names if n.startswith(("billing_ai_tests/", "bench/", "data/"))]


def test_the_installed_wheel_loads_every_mapping_and_builds_the_definitions(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        text=True,
    )
    code = """
import billing_ai, billing_ai.definitions as d
from billing_ai import warehouse
from billing_ai.ingestion.platform_assets import CORE_TABLES
from billing_ai.platforms.registry import PLATFORM_SPECS
mappings = [f"core/{s.name}/{t}.sql" for s in PLATFORM_SPECS for t in CORE_TABLES if t in s.core_sources]
assert all(warehouse.read_sql(m).strip() for m in mappings)
assert warehouse.read_sql("marts/usage_buckets.sql").strip()
jobs = d.defs.resolve_all_job_defs()
print(billing_ai.__file__)
print(len(mappings), len(d.defs.resolve_asset_graph().get_all_asset_keys()), len(jobs))
"""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(target), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
        ),
        "STRIPE_API_KEY": "unused",
        "BILLING_AI_PII_KEY": "unused",
    }
    run = subprocess.run([sys.executable, "-S", "-c", code], cwd=outside, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    where, counts = run.stdout.split("\n")[:2]
    assert Path(where).is_relative_to(target), f"billing_ai was imported from {where}, not from the wheel"
    from billing_ai.definitions import defs  # the checkout's, for comparison

    mappings, assets, jobs = map(int, counts.split())
    assert mappings == len(list((REPO / "sql" / "core").rglob("*.sql")))
    assert assets == len(defs.resolve_asset_graph().get_all_asset_keys())
    assert jobs == len(defs.resolve_all_job_defs())
