"""How well the invoice reconciliation finds the billing errors the generator injected.

Truth (``truth/billing_errors.parquet``): per invoice and subscription item, the
kind of error the platform made (``wrong_tier``, ``missing_line``,
``duplicate_line``, ``proration_error``) or ``late_usage`` (units that reached
the platform after the invoice was finalized).

* recall, per kind: a truth row is found when the reconciliation has, for the
  same invoice and item, the finding that kind calls for (under/overbilled for
  a wrong tier or a proration, missing_line, overbilled for a duplicate) or,
  for late usage, a row carrying late units.
* precision: of the non-match findings on invoices, the share on an invoice and
  item (or, for a commitment true-up, an invoice) that truth explains.
* clean lines: lines of invoices truth says nothing about whose expected and
  billed amounts differ (must be 0: "our amounts equal the platform's").
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl

EXPECTED_FINDINGS = {
    "wrong_tier": ("underbilled", "overbilled"),
    "proration_error": ("underbilled", "overbilled"),
    "missing_line": ("missing_line",),
    "duplicate_line": ("overbilled",),
}


def evaluate_reconciliation(con: duckdb.DuckDBPyConnection, truth_dir: Path) -> dict:
    truth = pl.read_parquet(Path(truth_dir) / "billing_errors.parquet")
    # an item is matched by its price on the invoice, not by its id: some platforms mint their own item ids
    # (Recurly, docs/platforms.md), while (invoice, price) names the same item on every platform
    rec = con.sql(
        "SELECT invoice_id, line_id, price_id AS item, meter_name, finding, expected_amount, "
        "billed_amount, "
        "coalesce(late_quantity, 0) > 0 AS has_late FROM marts.invoice_reconciliation "
        "WHERE invoice_id IS NOT NULL"
    ).pl()
    known_invoices = set(con.sql("SELECT invoice_id FROM core.invoices").pl()["invoice_id"])
    truth = truth.filter(pl.col("invoice_id").is_in(list(known_invoices)))
    # the meter of each truth item, from the platform's side of the world
    items = pl.read_parquet(Path(truth_dir).parent / "platform" / "subscription_items.parquet")
    truth = truth.join(
        items.select("subscription_item_id", "meter_name", pl.col("price_id").alias("item")),
        on="subscription_item_id",
        how="left",
    )
    per_kind = {}
    for kind in sorted(set(truth["kind"])):
        rows = truth.filter(pl.col("kind") == kind)
        found = 0
        for t in rows.iter_rows(named=True):
            same = rec.filter((pl.col("invoice_id") == t["invoice_id"]) & (pl.col("item") == t["item"]))
            if kind == "late_usage":
                hit = same["has_late"].any()
            else:
                hit = same["finding"].is_in(list(EXPECTED_FINDINGS[kind])).any()
            if kind == "missing_line" and not hit:
                # a replaced item known only from its (missing) line: found as its meter's missing usage
                hit = (
                    rec.filter(
                        (pl.col("invoice_id") == t["invoice_id"])
                        & pl.col("item").is_null()
                        & (pl.col("meter_name") == t["meter_name"])
                        & (pl.col("finding") == "missing_line")
                    ).height
                    > 0
                )
            found += bool(hit)
        per_kind[kind] = {"truth": rows.height, "found": found, "recall": found / rows.height}
    # billing errors are findings about lines; unbilled usage (before a start, after a cancellation) is not
    findings = rec.filter(~pl.col("finding").is_in(["match", "late_usage", "unbilled_usage"]))
    errors = truth.filter(pl.col("kind") != "late_usage")
    explained_pairs = set(zip(errors["invoice_id"], errors["item"], strict=True))
    explained_invoices = set(errors["invoice_id"])
    true_pos = sum(
        ((inv, item) in explained_pairs) or (item is None and inv in explained_invoices)
        for inv, item in zip(findings["invoice_id"], findings["item"], strict=True)
    )
    # (an item-less finding counts when its invoice has a truth error: a commitment true-up that
    # absorbed a usage error, or the missing usage of a replaced item)
    late_findings = rec.filter(pl.col("finding") == "late_usage")
    late_pairs = set(
        zip(
            truth.filter(pl.col("kind") == "late_usage")["invoice_id"],
            truth.filter(pl.col("kind") == "late_usage")["item"],
            strict=True,
        )
    )
    late_tp = sum(
        (inv, item) in late_pairs for inv, item in zip(late_findings["invoice_id"], late_findings["item"], strict=True)
    )
    clean = rec.filter(~pl.col("invoice_id").is_in(list(set(truth["invoice_id"]))) & pl.col("line_id").is_not_null())
    clean_mismatch = clean.filter(pl.col("expected_amount") != pl.col("billed_amount")).height
    all_errors = sum(v["found"] for k, v in per_kind.items() if k != "late_usage")
    n_errors = sum(v["truth"] for k, v in per_kind.items() if k != "late_usage")
    return {
        "per_kind": per_kind,
        "error_recall": all_errors / n_errors if n_errors else 1.0,
        "error_precision": true_pos / findings.height if findings.height else 1.0,
        "late_precision": late_tp / late_findings.height if late_findings.height else 1.0,
        "findings": findings.height,
        "late_findings": late_findings.height,
        "clean_lines": clean.height,
        "clean_line_mismatches": clean_mismatch,
        "false_findings_on_clean_invoices": clean.filter(
            ~pl.col("finding").is_in(["match", "late_usage", "unbilled_usage"])
        ).height,
        "unbilled_usage_rows": rec.filter(pl.col("finding") == "unbilled_usage").height,
    }
