"""Score anomaly flags against the sandbox world's ground truth (faults.parquet).

Units per kind (what one true positive is):

* ``spike``, ``drop``: an injected episode (customer, meter, start, end). Predicted
  episodes are consecutive flagged buckets of that kind; a predicted episode is correct
  when it overlaps an injected one of the same kind, customer and meter; an injected
  one is found when any predicted episode overlaps it.
* ``duplicate``: an hour bucket (customer, meter, hour) holding re-sent events.
* ``usage_after_cancel``, ``zero_usage``: a customer.

Overall figures are the macro average over the five kinds (each kind weighs the same,
so thousands of duplicate buckets do not drown twenty spikes). The naive rule ("a day
over 5x the customer's typical daily volume on that meter") is scored the same way in
the same run; it only ever predicts spikes.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from billing_ai.anomalies.detect import EPISODE_GAP_BUCKETS, episodes

TRUTH_KINDS = ("spike", "drop", "duplicate", "usage_after_cancel", "zero_usage")


def _prf(tp_pred: int, n_pred: int, tp_truth: int, n_truth: int) -> dict:
    precision = tp_pred / n_pred if n_pred else (1.0 if n_truth == 0 else 0.0)
    recall = tp_truth / n_truth if n_truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "predicted": n_pred,
        "truth": n_truth,
    }


def _overlaps(pred: pl.DataFrame, truth: pl.DataFrame) -> tuple[int, int]:
    """(predicted episodes overlapping a truth episode, truth episodes overlapped)."""
    if pred.height == 0 or truth.height == 0:
        return 0, 0
    j = pred.with_row_index("p").join(truth.with_row_index("t"), on=["customer_id", "meter_name"])
    hit = j.filter((pl.col("start") < pl.col("t_end")) & (pl.col("end") > pl.col("t_start")))
    return hit["p"].n_unique(), hit["t"].n_unique()


def truth_frames(faults: pl.DataFrame) -> dict[str, pl.DataFrame]:
    f = faults.with_columns(
        pl.from_epoch("start").dt.replace_time_zone("UTC").alias("t_start"),
        pl.from_epoch(pl.col("end").fill_null(pl.col("start"))).dt.replace_time_zone("UTC").alias("t_end"),
    )
    return {k: f.filter(pl.col("kind") == k) for k in TRUTH_KINDS}


def score_kinds(pred: pl.DataFrame, faults: pl.DataFrame, now: datetime, grain: str = "1h") -> dict[str, dict]:
    """Per-kind precision/recall/F1 of flagged rows (``is_anomaly``) against the truth that had
    happened by ``now`` (the world also simulates what comes after ``as_of``)."""
    cutoff = pl.lit(now).cast(pl.Datetime("us", "UTC"))
    truth = {k: t.filter(pl.col("t_start") < cutoff) for k, t in truth_frames(faults).items()}
    pred = pred.filter(pl.col("is_anomaly"))
    out = {}
    for kind in ("spike", "drop"):
        gap = EPISODE_GAP_BUCKETS if grain == "1h" else 1
        p = episodes(pred.filter(pl.col("kind") == kind), grain, gap) if pred.height else pred
        tp_p, tp_t = _overlaps(p, truth[kind]) if p.height else (0, 0)
        out[kind] = _prf(tp_p, p.height, tp_t, truth[kind].height)
    dup_truth = (
        truth["duplicate"].select("customer_id", "meter_name", pl.col("t_start").dt.truncate("1h").alias("ts")).unique()
    )
    dup_pred = (
        pred.filter(pl.col("kind") == "duplicate")
        .select("customer_id", "meter_name", pl.col("ts").dt.truncate("1h"))
        .unique()
    )
    tp = dup_pred.join(dup_truth, on=["customer_id", "meter_name", "ts"]).height
    out["duplicate"] = _prf(tp, dup_pred.height, tp, dup_truth.height)
    for kind in ("usage_after_cancel", "zero_usage"):
        t = set(truth[kind]["customer_id"].to_list())
        p = set(pred.filter(pl.col("kind") == kind)["customer_id"].to_list())
        out[kind] = _prf(len(p & t), len(p), len(p & t), len(t))
    out["overall"] = {
        m: round(sum(out[k][m] for k in TRUTH_KINDS) / len(TRUTH_KINDS), 4) for m in ("precision", "recall", "f1")
    }
    return out


def naive_rule(daily: pl.DataFrame) -> pl.DataFrame:
    """Flag a day over 5x the customer's typical (median) daily volume on that meter, as a spike."""
    d = daily.with_columns(pl.col("quantity").cast(pl.Float64))
    typical = pl.col("quantity").median().over("customer_id", "meter_name")
    flagged = d.filter(pl.col("quantity") > 5 * typical)
    return flagged.select(
        "customer_id",
        "meter_name",
        pl.col("day").cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias("ts"),
        pl.lit("spike").alias("kind"),
        pl.lit(True).alias("is_anomaly"),
        pl.lit(1.0).alias("score"),
        pl.lit(1.0).alias("confidence"),
        pl.col("quantity").alias("observed"),
        typical.alias("expected"),
        pl.lit("").alias("root_cause"),
        pl.lit("").alias("evidence"),
    )


def evaluate(pred: pl.DataFrame, daily: pl.DataFrame, faults: pl.DataFrame, now: datetime) -> dict:
    """Ours and the naive rule, side by side."""
    ours = score_kinds(pred, faults, now, "1h")
    naive = score_kinds(naive_rule(daily), faults, now, "1d")
    return {
        "ours": ours,
        "naive": naive,
        "f1_margin_over_naive": round(ours["overall"]["f1"] - naive["overall"]["f1"], 4),
    }


NAIVE_DAILY_SQL = """
SELECT customer_id, meter_name, event_date AS day, sum(quantity) AS quantity
FROM core.usage_events WHERE event_ts < $now GROUP BY ALL
"""


def evaluate_warehouse(con, truth_dir, now: datetime, pred: pl.DataFrame | None = None) -> dict:
    """Score ``marts.usage_anomalies`` (or ``pred``) and the naive rule (on the same events) against the truth."""
    from pathlib import Path

    if pred is None:
        pred = con.sql("SELECT * FROM marts.usage_anomalies").pl()
    daily = con.sql(NAIVE_DAILY_SQL, params={"now": now}).pl()
    faults = pl.read_parquet(Path(truth_dir) / "faults.parquet")
    # the nightly table covers the detectors' history window: score the truth inside it
    start = pred["ts"].min() if pred.height else now
    ts = lambda c: pl.from_epoch(pl.col(c)).dt.replace_time_zone("UTC")  # noqa: E731 -- a one-line local helper reads best inline
    faults = faults.filter(
        (pl.col("kind") == "zero_usage")  # silent until now: always inside
        | ((pl.col("kind") == "usage_after_cancel") & (ts("end") >= start))
        | (ts("start") >= start)
    )
    daily = daily.filter(pl.col("day").cast(pl.Datetime("us")).dt.replace_time_zone("UTC") >= start)
    return evaluate(pred, daily, faults, now)


def format_report(report: dict, seed: int | None = None, at: datetime | None = None) -> str:
    lines = [
        f"anomaly detection vs ground truth{f' (world seed {seed})' if seed is not None else ''}",
        f"{'kind':<20} {'precision':>9} {'recall':>7} {'f1':>6} {'pred':>6} {'truth':>6}   "
        f"{'naive p':>7} {'naive r':>7} {'naive f1':>8}",
    ]
    for k in (*TRUTH_KINDS, "overall"):
        o, n = report["ours"][k], report["naive"][k]
        lines.append(
            f"{k:<20} {o['precision']:>9.3f} {o['recall']:>7.3f} {o['f1']:>6.3f} "
            f"{o.get('predicted', ''):>6} {o.get('truth', ''):>6}   "
            f"{n['precision']:>7.3f} {n['recall']:>7.3f} {n['f1']:>8.3f}"
        )
    lines.append(f"overall F1 margin over the naive rule: {report['f1_margin_over_naive']:+.3f}")
    return "\n".join(lines)
