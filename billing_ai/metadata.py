"""Materialization metadata helpers shared by every asset."""

from __future__ import annotations

import html

import dagster as dg
import polars as pl


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
