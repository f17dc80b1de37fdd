"""The analyst contract (billing_ai/contract.py) against what the pipeline really builds, and the docs page.

The contract is the promise; the warehouse is the truth. A freshly built tiny warehouse must hold exactly the
contract's tables, with exactly its columns, in its order, with its DuckDB types; and docs/contract.md must be the
page the contract renders. Two tables the full run does not build (the hourly anomalies partitions and the weekly
model selection) are materialized on a copy of the tiny warehouse: a second or two.

The marts written from Polars frames (anomalies, forecasts, tier projections, the model selection) are created
from the contract itself, so that a column NULL all night keeps its type; for them the comparison with the built
table holds by construction, and what keeps them honest is the write: ``warehouse.replace_table`` refuses a
frame whose columns or types do not fit the contract (tested below), on every run.
"""

from __future__ import annotations

import ast
import fnmatch
import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from billing_ai import contract
from billing_ai_tests.conftest import pipeline_resources

ROOT = Path(__file__).resolve().parent.parent
DOCS_PAGE = ROOT / "docs" / "contract.md"
NOT_IN_FULL_RUN = ("marts.usage_anomalies_hourly", "marts.forecast_model_selection")

COLUMNS_SQL = """
SELECT c.table_schema || '.' || c.table_name AS name, c.column_name, c.data_type, t.table_type
FROM information_schema.columns c
JOIN information_schema.tables t USING (table_catalog, table_schema, table_name)
WHERE c.table_schema IN ('core', 'marts', 'ops')
ORDER BY name, c.ordinal_position
"""
PRIMARY_KEYS_SQL = """
SELECT schema_name || '.' || table_name, constraint_column_names FROM duckdb_constraints()
WHERE constraint_type = 'PRIMARY KEY' AND schema_name IN ('core', 'marts', 'ops')
"""


def _read_schema(
    path: Path, only: tuple[str, ...] | None = None
) -> tuple[dict[str, list[tuple[str, str]]], dict[str, bool], dict[str, tuple]]:
    """{table: [(column, type), ...]}, {table: is_view}, {table: primary key} of a warehouse file."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = con.execute(COLUMNS_SQL).fetchall()
        pks = {t: tuple(cols) for t, cols in con.execute(PRIMARY_KEYS_SQL).fetchall()}
    finally:
        con.close()
    columns: dict[str, list[tuple[str, str]]] = {}
    views: dict[str, bool] = {}
    for name, column, data_type, table_type in rows:
        if only is None or name in only:
            columns.setdefault(name, []).append((column, data_type))
            views[name] = table_type == "VIEW"
    return columns, views, pks


@pytest.fixture(scope="module")
def built(tiny_warehouse, tiny_world, tmp_path_factory):
    """The schema of every core/marts/ops table a run builds: the shared tiny warehouse (read-only), plus the two
    tables only their own jobs build, materialized through their assets on a copy of it."""
    import dagster as dg

    from billing_ai.anomalies.assets import HOURLY_ANOMALY_ASSETS
    from billing_ai.clock import parse_instant
    from billing_ai.forecasting.assets import SELECTION_ASSETS
    from billing_ai.pipeline import ANALYTICS_ASSETS

    columns, views, pks = _read_schema(tiny_warehouse)
    path = tmp_path_factory.mktemp("contract") / "warehouse.duckdb"
    shutil.copy(tiny_warehouse, path)
    res = pipeline_resources("http://127.0.0.1:9", path, tiny_world)  # no platform is called: analytics only
    assert dg.materialize([*SELECTION_ASSETS, *ANALYTICS_ASSETS], resources=res, selection=[*SELECTION_ASSETS]).success
    hour = parse_instant(tiny_world.config.as_of).replace(minute=0, second=0, microsecond=0)
    assert dg.materialize([*HOURLY_ANOMALY_ASSETS], resources=res, partition_key=f"{hour:%Y-%m-%d-%H:%M}").success
    extra_columns, extra_views, _ = _read_schema(path, only=NOT_IN_FULL_RUN)
    assert set(extra_columns) == set(NOT_IN_FULL_RUN), "the assets did not create their tables"
    return {**columns, **extra_columns}, {**views, **extra_views}, pks


# ---- the contract against the warehouse --------------------------------------------------------------------------
def test_every_built_table_is_in_the_contract_and_every_contract_table_is_built(built):
    columns, _, _ = built
    missing = sorted(set(contract.TABLES) - set(columns))
    undocumented = sorted(set(columns) - set(contract.TABLES))
    assert not missing, f"in billing_ai/contract.py but not built by the pipeline: {missing}"
    assert not undocumented, (
        f"built in a public schema but not in the analyst contract: {undocumented}; add them to billing_ai/contract.py"
    )


@pytest.mark.parametrize("name", list(contract.TABLES))
def test_columns_order_and_types_match_the_warehouse(built, name):
    columns, views, _ = built
    t = contract.table(name)
    assert name in columns, f"{name} was not built"
    expected = [(c.name, c.type) for c in t.columns]
    if columns[name] != expected:
        diff = [
            f"  #{i}: warehouse {w}, contract {c}"
            for i, (w, c) in enumerate(itertools.zip_longest(columns[name], expected))
            if w != c
        ]
        pytest.fail(
            f"{name}: the warehouse and billing_ai/contract.py disagree (a rename, removal or type change "
            f"is a breaking change for analysts):\n" + "\n".join(diff)
        )
    assert views[name] == t.is_view, f"{name}: is_view should be {views[name]}"


def test_keys_are_the_ones_the_pipeline_enforces(built):
    from billing_ai.ingestion.checks import KEYS

    _, _, pks = built
    for name, t in contract.TABLES.items():
        if t.schema == "core" and t.table_name in KEYS:  # enforced by the blocking <table>_unique_key check
            assert t.key == KEYS[t.table_name], f"{name}: key {t.key}, the unique_key check uses {KEYS[t.table_name]}"
        elif name in pks:  # a PRIMARY KEY in the DDL
            assert t.key == pks[name], f"{name}: key {t.key}, the table's primary key is {pks[name]}"
        else:
            assert not t.key, f"{name}: nothing enforces the key {t.key}; drop it or enforce it"


def test_written_by_names_real_assets_and_every_public_asset_has_its_table():
    from billing_ai.definitions import defs

    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    for t in contract.TABLES.values():
        for w in t.written_by:
            assert any(fnmatch.fnmatchcase(k, w) for k in keys), f"{t.name}: written_by {w!r} matches no asset"
    public = {k for k in keys if k.split("/")[0] in contract.SCHEMAS}
    with_table = {t.asset_key for t in contract.TABLES.values() if t.asset_key}
    assert public == with_table, f"assets without a contract table: {sorted(public - with_table)}"
    assert contract.for_asset("core/customers") is contract.table("core.customers")
    assert contract.for_asset("raw/stripe_customers") is None
    assert contract.table("core.quarantine") in contract.written_by("raw/zuora_accounts")


# ---- the contract itself -----------------------------------------------------------------------------------------
def test_every_table_and_column_is_described_once():
    assert len(contract.TABLES) >= 30
    for name, t in contract.TABLES.items():
        assert t.name == name and t.schema in contract.SCHEMAS
        assert t.description.strip() and t.grain, name
        names = t.column_names()
        assert len(names) == len(set(names)), f"{name}: duplicate column names"
        for c in t.columns:
            assert c.description.strip() and "\n" not in c.description, f"{name}.{c.name}"
            assert c.type == c.type.strip().upper(), f"{name}.{c.name}: {c.type!r} is not as DuckDB reports it"


def test_money_is_never_described_as_a_float():
    for t in contract.TABLES.values():
        for c in t.columns:
            if "minor units" in c.description and "per unit" not in c.description:
                assert c.type == contract.BIGINT, f"{t.name}.{c.name}: an amount must be integer minor units"


def test_the_module_imports_only_the_standard_library():
    tree = ast.parse(Path(contract.__file__).read_text(encoding="utf-8"))
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
    # and importing it (with its package) does not pull in Dagster: a fresh interpreter, as the test session has it
    code = "import sys, billing_ai.contract; assert 'dagster' not in sys.modules, 'dagster imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ---- the docs page -----------------------------------------------------------------------------------------------
def test_docs_page_is_the_rendered_contract():
    assert DOCS_PAGE.exists(), f"docs/contract.md is missing; generate it with: {contract.REGENERATE}"
    assert DOCS_PAGE.read_text(encoding="utf-8") == contract.render_markdown(), (
        f"docs/contract.md is out of date with billing_ai/contract.py; regenerate it with: {contract.REGENERATE}"
    )


def test_rendered_page_has_a_row_per_column_and_escapes_pipes():
    page = contract.render_markdown()
    assert page.startswith("<!-- generated from billing_ai/contract.py; do not edit by hand")
    for t in contract.TABLES.values():
        assert f"### {t.name}\n" in page
        for c in t.columns:
            assert f"\n| {c.name} | {c.type} | " in page, f"{t.name}.{c.name}"
    assert contract._md("a | b") == "a \\| b"
    # every table row has exactly three cells: no unescaped pipe leaked out of a description
    for line in page.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            assert len(line.replace("\\|", "").split("|")) == 5, line


def test_cli_prints_and_writes_the_page(tmp_path, capsys):
    assert contract.main([]) == 0
    assert capsys.readouterr().out == contract.render_markdown()
    out = tmp_path / "sub" / "contract.md"
    assert contract.main(["--write", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == contract.render_markdown()


def test_a_table_written_from_a_frame_keeps_its_contract_types_when_a_column_is_null_all_night():
    """The forecast and anomaly marts are written from Polars frames; a column that is NULL in every row
    (no item crosses a threshold tonight) would make a type-less (NULL) column if the table were made from
    the frame. They are made from the contract instead."""
    import duckdb
    import polars as pl

    from billing_ai import warehouse as wh

    t = contract.table("marts.tier_projections")
    frame = pl.DataFrame({c.name: [None, None] for c in t.columns})
    con = duckdb.connect()
    wh.run(con, "CREATE SCHEMA marts")
    wh.replace_table(con, t.name, t.ddl(), frame)
    types = wh.run(
        con,
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'marts' AND table_name = 'tier_projections' ORDER BY ordinal_position",
    )
    assert types == [(c.name, c.type) for c in t.columns]
    assert wh.run(con, "SELECT count(*) FROM marts.tier_projections") == [(2,)]


def test_a_frame_that_does_not_fit_its_contract_is_refused_not_cast():
    """A mart made from the contract cannot hide a frame that drifted from it: a column the frame lacks
    (NULL every night) or a float bound for a money column (rounded on the way in) fails the write."""
    import duckdb
    import polars as pl

    from billing_ai import warehouse as wh

    t = contract.table("marts.tier_projections")
    good = {c.name: [None] for c in t.columns}
    con = duckdb.connect()
    wh.run(con, "CREATE SCHEMA marts")
    missing = pl.DataFrame({k: v for k, v in good.items() if k != "amount_so_far"})
    with pytest.raises(ValueError, match="amount_so_far"):
        wh.replace_table(con, t.name, t.ddl(), missing)
    floats = pl.DataFrame({**good, "projected_amount": [1.6]})
    with pytest.raises(ValueError, match="projected_amount.*DOUBLE for BIGINT"):
        wh.replace_table(con, t.name, t.ddl(), floats)
    extra = pl.DataFrame({**good, "surprise": [1]})
    with pytest.raises(ValueError, match="surprise"):
        wh.replace_table(con, t.name, t.ddl(), extra)
    wh.replace_table(con, t.name, t.ddl(), pl.DataFrame({**good, "tier_count": pl.Series([3], dtype=pl.Int32)}))
