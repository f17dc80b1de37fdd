"""Metadata every asset shares: materialization previews, owners, and the analyst contract's columns."""

from __future__ import annotations

import html

import dagster as dg
import polars as pl

from billing_ai import contract


def markdown_preview(df: pl.DataFrame, rows: int = 5) -> dg.MetadataValue:
    """A small Markdown table of ``df``. Cell text is escaped: customer-controlled
    strings (project names, metadata) must not render as markup in the UI."""
    if df.height == 0:
        return dg.MetadataValue.md("_empty_")
    head = df.head(rows)

    def cell(v: object) -> str:
        return html.escape(str(v)).replace("|", "\\|").replace("\n", " ")[:80]

    lines = ["| " + " | ".join(cell(c) for c in head.columns) + " |", "|" + "---|" * len(head.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in head.iter_rows()]
    return dg.MetadataValue.md("\n".join(lines))


# ---- what every asset carries: its owners, and for a public table its columns --------------------------------
# Who answers for an asset, by its group (Dagster shows owners on every asset; a check answers to its asset's).
OWNERS_BY_GROUP: dict[str, list[str]] = {
    "ingestion": ["team:data-engineering"],
    "core": ["team:data-engineering"],
    "usage": ["team:data-engineering"],
    "ops": ["team:data-engineering"],
    "rating": ["team:revenue-operations"],
    "actions": ["team:revenue-operations"],
    "anomalies": ["team:data-science"],
    "forecasting": ["team:data-science"],
    "evaluation": ["team:data-science"],
}


def check_owners(group: str) -> dict:
    """Metadata naming who answers for an asset check (Dagster's check specs take no ``owners``): its asset's
    group's owners."""
    return {"owners": OWNERS_BY_GROUP[group]}


def table_schema(name: str) -> dg.TableSchema:
    """The analyst contract's columns of table ``name`` (``"core.customers"``) as Dagster shows them."""
    return dg.TableSchema(
        columns=[dg.TableColumn(c.name, c.type, description=c.description) for c in contract.table(name).columns]
    )


def _with_contract(spec: dg.AssetSpec) -> dg.AssetSpec:
    owners = OWNERS_BY_GROUP.get(spec.group_name or "")
    if owners is None:
        raise ValueError(
            f"asset {spec.key.to_user_string()} is in group {spec.group_name!r}, which has no owners "
            "(billing_ai.metadata.OWNERS_BY_GROUP)"
        )
    table = contract.for_asset(spec.key.to_user_string())
    if table is None:
        return spec.merge_attributes(owners=owners)
    spec = spec.merge_attributes(
        owners=owners,
        metadata={"dagster/column_schema": table_schema(table.name), "dagster/table_name": f"warehouse.{table.name}"},
    )
    return spec if spec.description else spec.replace_attributes(description=table.description)


def with_contract(assets: list) -> list:
    """``assets`` as the Definitions hold them: every asset with its owners, and every asset named after a
    public table (core, marts, ops) with that table's columns from the analyst contract
    (``dagster/column_schema``, shown in the UI) -- one source for the UI and docs/contract.md."""
    return dg.map_asset_specs(_with_contract, assets)
