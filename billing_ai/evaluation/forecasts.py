"""Score the nightly forecasts against what the sandbox world really did after ``as_of``.

* **MASE**: per series, the mean absolute error over the future days the forecast covers (whole days
  after ``as_of``), scaled by the in-sample MAE of the weekly seasonal naive over the last 8 weeks;
  ours beside the SeasonalNaive forecast (the last week repeated) of the same series, same days.
  Reported as the mean over series and as ours / SeasonalNaive.
* **Coverage**: the share of (series, day) truths inside the forecast's interval.
* **Tier crossing**: for items below their next threshold at ``as_of``, the call "will cross this
  period" (crossing probability >= 0.5) against whether units used + the real usage until the period
  end passed the threshold (the period end's day counted pro rata). Precision and recall.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

SEASON = 7
HISTORY_SQL = """
SELECT subscription_item_id AS series_id, CAST(bucket_start AS DATE) AS day, CAST(sum(quantity) AS DOUBLE) AS y
FROM marts.usage_daily WHERE bucket_start >= $start AND bucket_start < $today GROUP BY ALL
"""


def evaluate_forecasts(con, truth_dir: str | Path, now: datetime) -> dict:
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    items = con.sql(
        "SELECT subscription_item_id AS series_id, subscription_id, meter_name FROM marts.usage_forecasts"
    ).pl()
    fc = (
        con.sql("SELECT series_id, CAST(ds AS DATE) AS day, yhat, yhat_lo, yhat_hi FROM marts.usage_forecast_daily")
        .pl()
        .filter(pl.col("day") > today.date())
    )
    truth = pl.read_parquet(Path(truth_dir) / "future_usage_daily.parquet").with_columns(
        (pl.col("quantity_milli") / 1000).alias("actual")
    )
    truth_items = truth.join(items, on=["subscription_id", "meter_name"]).select("series_id", "day", "actual")
    hist = con.sql(HISTORY_SQL, params={"start": today - timedelta(days=8 * SEASON), "today": today}).pl()
    hist = hist.filter(pl.col("series_id").is_in(items["series_id"].implode()))
    # the last observed week, repeated: SeasonalNaive's forecast for the same future days
    last_week = (
        hist.filter(pl.col("day") >= (today - timedelta(days=SEASON)).date())
        .with_columns((pl.col("day").cast(pl.Int32) % SEASON).alias("dow"))
        .select("series_id", "dow", "y")
    )
    scale = (
        hist.sort("series_id", "day")
        .with_columns((pl.col("y") - pl.col("y").shift(SEASON).over("series_id")).abs().alias("d"))
        .group_by("series_id")
        .agg(pl.col("d").mean().alias("scale"))
    )
    j = (
        fc.join(truth_items, on=["series_id", "day"], how="left")
        .with_columns(pl.col("actual").fill_null(0.0))
        .with_columns((pl.col("day").cast(pl.Int32) % SEASON).alias("dow"))
        .join(last_week, on=["series_id", "dow"], how="left")
        .with_columns(pl.col("y").fill_null(0.0))
        .join(scale, on="series_id", how="inner")
        .filter(pl.col("scale") > 0)
    )
    per = j.group_by("series_id").agg(
        ((pl.col("yhat") - pl.col("actual")).abs().mean() / pl.col("scale").first()).alias("mase"),
        ((pl.col("y") - pl.col("actual")).abs().mean() / pl.col("scale").first()).alias("mase_sn"),
    )
    coverage = j.select(
        ((pl.col("actual") >= pl.col("yhat_lo")) & (pl.col("actual") <= pl.col("yhat_hi"))).mean()
    ).item()

    proj = (
        con.sql("""SELECT t.subscription_item_id AS series_id, t.next_threshold, t.crossing_probability,
                             t.period_end, f.units_used, f.subscription_id, f.meter_name
                      FROM marts.tier_projections t JOIN marts.usage_forecasts f USING (subscription_item_id)
                      WHERE t.next_threshold IS NOT NULL""")
        .pl()
        .filter(pl.col("units_used") < pl.col("next_threshold").cast(pl.Float64))
    )
    real = (
        truth.join(
            proj.select("subscription_id", "meter_name", "series_id", "period_end"),
            on=["subscription_id", "meter_name"],
        )
        .with_columns(pl.col("day").cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias("d0"))
        .with_columns(
            (
                (
                    pl.min_horizontal(pl.col("d0") + pl.duration(days=1), pl.col("period_end"))
                    - pl.max_horizontal(pl.col("d0"), pl.lit(now).cast(pl.Datetime("us", "UTC")))
                ).dt.total_seconds()
                / 86400
            )
            .clip(0.0, 1.0)
            .alias("frac")
        )
        .with_columns(
            pl.when(pl.col("d0") >= pl.lit(today).cast(pl.Datetime("us", "UTC")).dt.offset_by("1d"))
            .then(pl.col("frac"))
            .otherwise(1.0)
            .alias("frac")
        )  # day 0: truth is after as_of
        .group_by("series_id")
        .agg((pl.col("actual") * pl.col("frac")).sum().alias("future"))
    )
    calls = (
        proj.join(real, on="series_id", how="left")
        .with_columns(pl.col("future").fill_null(0.0))
        .with_columns(
            (pl.col("crossing_probability") >= 0.5).alias("called"),
            (pl.col("units_used") + pl.col("future") > pl.col("next_threshold").cast(pl.Float64)).alias("crossed"),
        )
    )
    tp = calls.filter(pl.col("called") & pl.col("crossed")).height
    n_called, n_crossed = calls["called"].sum(), calls["crossed"].sum()
    mase, mase_sn = float(per["mase"].mean() or 0.0), float(per["mase_sn"].mean() or 0.0)
    return {
        "series": per.height,
        "mase": round(mase, 4),
        "mase_seasonal_naive": round(mase_sn, 4),
        "mase_ratio": round(mase / mase_sn, 4) if mase_sn else None,
        "interval_coverage": round(float(coverage or 0.0), 4),
        "crossing_items": calls.height,
        "crossing_called": int(n_called),
        "crossing_real": int(n_crossed),
        "crossing_precision": round(tp / n_called, 4) if n_called else 1.0,
        "crossing_recall": round(tp / n_crossed, 4) if n_crossed else 1.0,
    }


def format_forecast_report(r: dict, seed: int | None = None) -> str:
    return "\n".join(
        [
            f"forecasts vs what the world did{f' (seed {seed})' if seed is not None else ''}: {r['series']} series",
            f"  MASE ours {r['mase']:.3f}  SeasonalNaive {r['mase_seasonal_naive']:.3f}  ratio {r['mase_ratio']}",
            f"  80% interval coverage {r['interval_coverage']:.3f}",
            f"  tier crossing: {r['crossing_items']} items below a threshold, called {r['crossing_called']}, "
            f"crossed {r['crossing_real']}: precision {r['crossing_precision']:.3f} recall {r['crossing_recall']:.3f}",
        ]
    )
