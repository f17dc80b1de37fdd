"""Usage anomaly detection over Polars frames: statistical, compositional, multivariate, logical.

Entry point: :func:`detect_anomalies` (usable outside Dagster). Input: one row per usage
event (or per pre-aggregated bucket) with ``customer_id, meter_name, ts, quantity`` and
optionally ``metadata`` (a struct or JSON text; ``endpoint`` and ``region`` keys are used
for root causes), ``event_id``, ``endpoint``, ``region``. Output: one row per flagged
bucket (see :data:`OUTPUT_SCHEMA`).

How the statistical detector works, per series (customer x meter) and bucket:

* missing buckets between the series' first bucket and the end of the data are zeros;
* expected = level x hour-of-day factor x day-of-week factor. The factors are the series'
  own (winsorised means, shrunk toward 1 when there is little history); the level is the
  trailing mean of deseasonalised values over the previous 7 days (excluding the bucket
  itself, capped at the series' 99.5th percentile so a spike does not lift its own
  baseline). Growth moves the level; seasonality moves the factors;
* noise: usage is a sum of event sizes, so its variance grows with the mean. A per-series
  dispersion ``phi`` (robust: from the median squared Pearson residual) turns quantities
  into effective counts, and the tail probability of the window's sum under a Poisson
  with the expected effective count is the evidence (``score = -log10 p``). This is
  scale-free: multiplying a series by 1,000 multiplies ``phi`` by 1,000 and changes nothing;
* spikes: windows of 1, 2, 3 and 6 buckets, ratio at least ``spike_ratio``; drops: windows
  of 6, 12 and 24 buckets, ratio at most ``drop_ratio``. Flat stretches have a dispersion
  floor, so a constant series needs a real change to be flagged.

Composition (when endpoint/region are known): per bucket, the count of events in each
endpoint x region cell against that cell's own seasonal rate in the series' history
(leave-one-out). A burst concentrated in one cell is improbable even when the total is
small; that cell is the root cause. A bucket is a spike when the volume evidence, or the
composition evidence together with a volume increase, passes the threshold.

Logical detectors: identical events under different ids (``duplicate``), usage after a
subscription was cancelled (``usage_after_cancel``), before it started or after now
(``out_of_period``), a meter the plan does not include (``unplanned_meter``), and active
accounts silent up to now (``zero_usage``); drops that run to the end of the data on an
account that went silent are reported as ``zero_usage``.

Multivariate: an IsolationForest (scikit-learn) over account-day features (meter mix,
endpoint and region distribution, volume against the account's own median, events per
unit) flags patterns no single series shows (``unusual_mix``), with the feature that
deviates most from the account's own history as the hint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import polars as pl
from scipy.special import gammainc, gammaincc

GRAINS = {"1h": (3600, "1h"), "1d": (86400, "1d")}
ROWS_PER_BATCH = 2_000_000  # input rows per statistical batch (bounds peak memory; series stay whole)

OUTPUT_SCHEMA = {
    "customer_id": pl.String,
    "meter_name": pl.String,
    "ts": pl.Datetime("us", "UTC"),
    "grain": pl.String,
    "kind": pl.String,
    "detector": pl.String,
    "score": pl.Float64,
    "confidence": pl.Float64,
    "is_anomaly": pl.Boolean,
    "observed": pl.Float64,
    "expected": pl.Float64,
    "ratio": pl.Float64,
    "window_buckets": pl.Int32,
    "root_cause": pl.String,
    "evidence": pl.String,
}


@dataclass(frozen=True)
class DetectorConfig:
    spike_windows: tuple[int, ...] = (1, 2, 3, 6)
    drop_windows: tuple[int, ...] = (6, 12, 24, 48)
    spike_ratio: float = 2.0  # the window's sum at least this multiple of expected
    drop_ratio: float = 0.3  # ... at most this share of expected
    min_score: float = 4.0  # candidates: -log10 p at least this (returned with is_anomaly False)
    spike_anomaly_score: float = 8.0  # is_anomaly for spikes: -log10 p at least this
    drop_anomaly_score: float = 6.0  # ... for drops (a drop removes events: less evidence per bucket)
    composition_score: float = 7.0  # a burst in one endpoint x region cell
    composition_min_ratio: float = 1.5  # ... with at least this volume increase
    min_history_buckets: int = 24  # below this the series is scored with a wider bar (short history)
    level_buckets: int = 168  # trailing window for the level (7 days hourly; 7 days daily -> 7)
    zero_usage_days: int = 7  # an active account silent this long up to now
    cancel_grace_seconds: int = 3600  # usage reported within this after a cancellation is not flagged
    dispersion_floor: float = 0.05  # relative: phi >= floor * typical bucket (flat series)
    duplicate_window_seconds: int = 0  # identical payloads with timestamps this close (0: same instant)
    isolation_contamination: float = 0.002
    seed: int = 0


def _to_frame(usage: pl.DataFrame) -> pl.DataFrame:
    missing = {"customer_id", "meter_name", "ts", "quantity"} - set(usage.columns)
    if missing:
        raise ValueError(f"usage is missing columns {sorted(missing)} (need customer_id, meter_name, ts, quantity)")
    df = usage
    ts = df.schema["ts"]
    if ts == pl.String:
        df = df.with_columns(pl.col("ts").str.to_datetime(time_zone="UTC"))
    elif isinstance(ts, pl.Datetime):
        df = df.with_columns(
            pl.col("ts").dt.replace_time_zone("UTC")
            if ts.time_zone is None
            else pl.col("ts").dt.convert_time_zone("UTC")
        )
    elif ts == pl.Date:
        df = df.with_columns(pl.col("ts").cast(pl.Datetime("us")).dt.replace_time_zone("UTC"))
    else:
        raise ValueError(f"ts must be a datetime, date or ISO string, not {ts}")
    df = df.with_columns(
        pl.col("ts").dt.cast_time_unit("us"),
        pl.col("quantity").cast(pl.Float64),
        pl.col("customer_id").cast(pl.String),
        pl.col("meter_name").cast(pl.String),
    )
    for dim in ("endpoint", "region"):
        if dim not in df.columns:
            if "metadata" in df.columns:
                meta = df.schema["metadata"]
                expr = (
                    pl.col("metadata").struct.field(dim)
                    if isinstance(meta, pl.Struct) and dim in [f.name for f in meta.fields]
                    else pl.col("metadata").cast(pl.String).str.json_path_match(f"$.{dim}")
                    if meta in (pl.String, pl.Utf8)
                    else pl.lit(None, pl.String)
                )
                df = df.with_columns(expr.cast(pl.String).alias(dim))
            else:
                df = df.with_columns(pl.lit(None, pl.String).alias(dim))
    bad = df.filter(pl.col("quantity").is_nan() | pl.col("quantity").is_null() | pl.col("ts").is_null())
    if bad.height:
        raise ValueError(f"{bad.height} rows have a null/NaN quantity or null ts; quarantine them first")
    return df


def _poisson_upper(k: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """P(X >= k) for X ~ Poisson(lam), continuous in k (regularised lower incomplete gamma)."""
    k = np.maximum(k, 0.0)
    out = np.ones_like(lam)
    pos = (k > 0) & (lam > 0)
    out[pos] = gammainc(k[pos], lam[pos])
    out[(k > 0) & (lam <= 0)] = 0.0
    return out


def _poisson_lower(k: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """P(X <= k) for X ~ Poisson(lam), continuous in k."""
    k = np.maximum(k, 0.0)
    return np.where(lam > 0, gammaincc(k + 1.0, np.maximum(lam, 1e-300)), 1.0)


def _score(p: np.ndarray) -> np.ndarray:
    return np.minimum(-np.log10(np.maximum(p, 1e-300)), 300.0)


def bucketize(df: pl.DataFrame, grain: str, end: datetime | None = None) -> pl.DataFrame:
    """Sum per series and bucket, with zero rows for missing buckets up to ``end`` (or the data's end)."""
    every = GRAINS[grain][1]
    b = (
        df.with_columns(pl.col("ts").dt.truncate(every).alias("bucket"))
        .group_by("customer_id", "meter_name", "bucket")
        .agg(pl.col("quantity").sum().alias("q"), pl.len().alias("n"))
    )
    # ``end`` is exclusive: the bucket starting at ``end`` has not begun
    last = (
        b["bucket"].max()
        if end is None
        else pl.Series([end - timedelta(microseconds=1)])
        .dt.replace_time_zone("UTC" if end.tzinfo is None else None)
        .dt.convert_time_zone("UTC")
        .dt.truncate(every)[0]
    )
    spans = b.group_by("customer_id", "meter_name").agg(pl.col("bucket").min().alias("first"))
    grid = (
        spans.with_columns(
            pl.datetime_ranges("first", pl.lit(last).cast(pl.Datetime("us", "UTC")), every).alias("bucket")
        )
        .explode("bucket")
        .drop("first")
    )
    return (
        grid.join(b, on=["customer_id", "meter_name", "bucket"], how="left")
        .with_columns(pl.col("q").fill_null(0.0), pl.col("n").fill_null(0).cast(pl.Int64))
        .sort("customer_id", "meter_name", "bucket")
    )


def expected_volume(b: pl.DataFrame, grain: str, cfg: DetectorConfig) -> pl.DataFrame:
    """Add ``e`` (expected), ``phi`` (dispersion) and ``history`` (buckets seen before) per bucket."""
    series = ["customer_id", "meter_name"]
    level_n = cfg.level_buckets if grain == "1h" else 7
    b = b.with_columns(
        pl.col("bucket").dt.hour().alias("hod"),
        pl.col("bucket").dt.weekday().alias("dow"),
        pl.int_range(pl.len()).over(series).alias("history"),
    )
    cap = pl.col("v").quantile(0.995).over(series)
    b = b.with_columns(pl.min_horizontal(pl.col("v"), cap).alias("qw"))
    mean = pl.col("qw").mean().over(series)
    shrink = 6.0  # pseudo-buckets at factor 1: few samples -> a factor near 1
    if grain == "1h":
        hod = (pl.col("qw").sum().over([*series, "hod"]) + shrink * mean) / (
            (pl.len().over([*series, "hod"]) + shrink) * mean
        )
    else:
        hod = pl.lit(1.0)
    dow = (pl.col("qw").sum().over([*series, "dow"]) + shrink * mean) / (
        (pl.len().over([*series, "dow"]) + shrink) * mean
    )
    b = b.with_columns(pl.when(mean > 0).then(hod * dow).otherwise(1.0).fill_nan(1.0).alias("season"))
    b = b.with_columns((pl.col("qw") / pl.col("season")).alias("y"))
    trailing = pl.col("y").shift(1).rolling_mean(level_n, min_samples=1).over(series)
    b = b.with_columns(trailing.fill_null(0.0).alias("level"))
    b = b.with_columns((pl.col("level") * pl.col("season")).alias("e"))
    # dispersion: the mean squared Pearson residual (1 for Poisson counts), winsorised at its own 99th
    # percentile so the anomalies being looked for do not inflate it
    r2 = (pl.col("v") - pl.col("e")) ** 2 / pl.col("e")
    r2_cap = r2.filter(pl.col("e") > 0).quantile(0.99).over(series)
    typical = pl.col("v").filter(pl.col("v") > 0).median().over(series).fill_null(1.0)
    b = b.with_columns(pl.when(pl.col("e") > 0).then(pl.min_horizontal(r2, r2_cap)).alias("r2w"), typical.alias("typ"))
    b = b.with_columns(pl.col("r2w").mean().over(series).fill_null(1.0).alias("phi_raw"))
    b = b.with_columns(pl.max_horizontal(pl.col("phi_raw"), cfg.dispersion_floor * pl.col("typ"), 1e-12).alias("phi"))
    return b.drop("qw", "phi_raw", "typ", "y", "r2w")


def _window_flags(b: pl.DataFrame, windows: tuple[int, ...], upper: bool, ratio_ok, prefix: str) -> pl.DataFrame:
    """Best window ending at each bucket: its p-value (as score), the window, observed and expected sums."""
    series = ["customer_id", "meter_name"]
    best_score = np.zeros(b.height)
    best_w = np.zeros(b.height, dtype=np.int32)
    best_obs = np.zeros(b.height)
    best_exp = np.zeros(b.height)
    for w in windows:
        sums = b.select(
            pl.col("v").rolling_sum(w, min_samples=w).over(series).alias("o"),
            pl.col("e").rolling_sum(w, min_samples=w).over(series).alias("x"),
        )
        o = sums["o"].fill_null(np.nan).to_numpy()
        x = sums["x"].fill_null(np.nan).to_numpy()
        phi = b["phi"].to_numpy()
        valid = ~np.isnan(o) & ~np.isnan(x) & (x > 0)
        k, lam = np.where(valid, o / phi, 0.0), np.where(valid, x / phi, 0.0)
        p = _poisson_upper(k, lam) if upper else _poisson_lower(k, lam)
        s = np.where(valid & ratio_ok(o, x), _score(p), 0.0)
        better = s > best_score
        best_score = np.where(better, s, best_score)
        best_w = np.where(better, w, best_w)
        best_obs = np.where(better, o, best_obs)
        best_exp = np.where(better, x, best_exp)
    return b.with_columns(
        pl.Series(f"{prefix}_score", best_score),
        pl.Series(f"{prefix}_w", best_w),
        pl.Series(f"{prefix}_obs", best_obs),
        pl.Series(f"{prefix}_exp", best_exp),
    )


def composition_scores(df: pl.DataFrame, b: pl.DataFrame, grain: str, cfg: DetectorConfig) -> pl.DataFrame:
    """Per candidate bucket (volume up, two events or more): the most surprising endpoint x region cell,
    against that cell's leave-one-out seasonal rate in the series' history."""
    every = GRAINS[grain][1]
    series = ["customer_id", "meter_name"]
    none = b.with_columns(
        pl.lit(0.0).alias("cell_score"), pl.lit(None, pl.String).alias("cell"), pl.lit(0.0).alias("cell_share")
    )
    dims = ["endpoint", "region"]
    if df.select(pl.struct(dims).n_unique()).item() <= 1:
        return none  # one cell everywhere: composition carries no information
    cand = b.filter((pl.col("v") >= cfg.composition_min_ratio * pl.col("e")) & (pl.col("n") >= 2)).select(
        *series, "bucket", "season", "n"
    )
    if cand.height == 0:
        return none
    # the series' history per cell (one pass), and the pooled share of each cell per meter (the prior:
    # a cell this account rarely uses but others use often is not surprising on one event)
    totals = df.group_by(*series, *dims).agg(pl.len().alias("Nc"))
    pooled = (
        totals.group_by("meter_name", *dims)
        .agg(pl.col("Nc").sum().alias("Pc"))
        .with_columns((pl.col("Pc") / pl.col("Pc").sum().over("meter_name")).alias("pool_share"))
    )
    nb = b.group_by(series).agg(pl.len().alias("nb"), pl.col("n").sum().alias("n_all"))
    rows = df.with_columns(pl.col("ts").dt.truncate(every).alias("bucket")).join(
        cand.select(*series, "bucket"), on=[*series, "bucket"], how="semi"
    )
    cells = (
        rows.group_by(*series, "bucket", *dims)
        .agg(pl.len().alias("nc"))
        .join(cand, on=[*series, "bucket"])
        .join(totals, on=[*series, *dims])
        .join(pooled.select("meter_name", *dims, "pool_share"), on=["meter_name", *dims], how="left")
        .join(nb, on=series)
    )
    prior_events = 20.0  # the prior weighs as much as this many of the series' own events
    share = (pl.col("Nc") - pl.col("nc") + prior_events * pl.col("pool_share").fill_null(0.0)) / (
        pl.col("n_all") - pl.col("n") + prior_events
    )
    rate = (pl.col("n_all") - pl.col("n")) / pl.max_horizontal(pl.col("nb") - 1, 1)
    cells = cells.with_columns((share * rate * pl.col("season")).alias("lam"))
    p = _poisson_upper(cells["nc"].to_numpy().astype(float), cells["lam"].to_numpy())
    cells = cells.with_columns(
        pl.Series("cs", _score(p)),
        (pl.col("nc") / pl.col("n")).alias("share"),
        pl.concat_str(
            pl.lit("endpoint="), pl.col("endpoint").fill_null("?"), pl.lit(" region="), pl.col("region").fill_null("?")
        ).alias("cell"),
    )
    best = (
        cells.sort("cs", descending=True)
        .group_by(*series, "bucket", maintain_order=True)
        .agg(
            pl.col("cs").first().alias("cell_score"),
            pl.col("cell").first(),
            pl.col("share").first().alias("cell_share"),
        )
    )
    return b.join(best, on=[*series, "bucket"], how="left").with_columns(
        pl.col("cell_score").fill_null(0.0), pl.col("cell_share").fill_null(0.0)
    )


def _confidence(score: pl.Expr, history: pl.Expr, cfg: DetectorConfig) -> pl.Expr:
    """0..1: saturates with the evidence; discounted for short histories."""
    base = 1.0 - (-(score - cfg.min_score).clip(0.0) / 3.0).exp() * 0.5
    return (base * pl.min_horizontal(1.0, (history + 1) / cfg.min_history_buckets)).clip(0.0, 1.0)


def statistical(
    df: pl.DataFrame,
    grain: str,
    cfg: DetectorConfig,
    end: datetime | None,
    active: pl.DataFrame | None,
    rows: str = "events",
) -> pl.DataFrame:
    b = bucketize(df, grain, end)
    # the scored value: event counts when rows are events (exactly Poisson-like, whatever the unit), else
    # the quantity; ``unit`` converts expected values back to quantity for the output
    b = b.with_columns((pl.col("n").cast(pl.Float64) if rows == "events" else pl.col("q")).alias("v"))
    b = b.with_columns(
        (pl.col("q").sum() / pl.col("v").sum())
        .over("customer_id", "meter_name")
        .fill_nan(1.0)
        .fill_null(1.0)
        .alias("unit")
    )
    b = expected_volume(b, grain, cfg)
    if active is not None:  # only buckets inside the subscription's life are scored for volume
        b = (
            b.join(active, on="customer_id", how="left")
            .filter(
                (pl.col("active_from").is_null() | (pl.col("bucket") >= pl.col("active_from")))
                & (pl.col("active_to").is_null() | (pl.col("bucket") < pl.col("active_to")))
            )
            .drop("active_from", "active_to")
        )
    b = _window_flags(b, cfg.spike_windows, True, lambda o, x: o >= cfg.spike_ratio * x, "spike")
    b = _window_flags(b, cfg.drop_windows, False, lambda o, x: o <= cfg.drop_ratio * x, "drop")
    b = composition_scores(df, b, grain, cfg)
    short = pl.col("history") < cfg.min_history_buckets
    # a short history raises the bar (the baseline is uncertain)
    penalty = pl.when(short).then(3.0).otherwise(0.0)
    comp_ok = (
        (pl.col("cell_score") - penalty >= cfg.composition_score)
        & (pl.col("v") >= cfg.composition_min_ratio * pl.col("e"))
        & (pl.col("n") >= 2)
    )
    spike_s = (
        pl.max_horizontal(pl.col("spike_score"), pl.when(comp_ok).then(pl.col("cell_score")).otherwise(0.0)) - penalty
    )
    drop_s = pl.col("drop_score") - penalty
    out = []
    series = ["customer_id", "meter_name"]
    for kind, s, w, obs, exp in (
        ("spike", spike_s, "spike_w", "spike_obs", "spike_exp"),
        ("drop", drop_s, "drop_w", "drop_obs", "drop_exp"),
    ):
        cand = b.with_columns(s.alias("s"))
        # the flagged window covers the buckets before its end: mark them all
        flagged = cand.with_columns((pl.col("s") >= cfg.min_score).alias("hit"))
        windows = cfg.spike_windows if kind == "spike" else cfg.drop_windows
        maxw = max(windows)
        # bucket b is covered by a flagged window of length n ending at t when b <= t < b + n: per length, a
        # rolling max over the next n window ends (computed on the reversed series)
        cover = pl.lit(False)
        for n in windows:
            ends = (pl.col("hit") & (pl.col(w) == n)).cast(pl.Int8)
            cover = cover | (ends.reverse().rolling_max(n, min_samples=1).reverse().over(series) > 0)
        flagged = flagged.with_columns(
            cover.alias("covered"),
            pl.col("s").reverse().rolling_max(maxw, min_samples=1).reverse().over(series).alias("s_cover"),
        )
        # ... but only the buckets that themselves look like it (a 6-hour window around a 1-hour burst
        # must not flag its five normal hours)
        own = (pl.col("v") >= cfg.spike_ratio * pl.col("e")) if kind == "spike" else (pl.col("v") < pl.col("e"))
        rows = flagged.filter(pl.col("covered") & own)
        if kind == "spike":
            hint = (
                pl.when(pl.col("cell_share") >= 0.5)
                .then(
                    pl.format(
                        "{} carries {}% of the bucket's events",
                        pl.col("cell"),
                        (pl.col("cell_share") * 100).round(0).cast(pl.Int64),
                    )
                )
                .otherwise(pl.lit("spread across endpoints and regions"))
            )
        else:
            hint = (
                pl.when(pl.col("q") == 0)
                .then(pl.lit("usage stopped entirely"))
                .otherwise(pl.lit("all endpoints and regions lower"))
            )
        s_final = pl.max_horizontal(pl.col("s"), pl.col("s_cover"))
        out.append(
            rows.select(
                *series,
                pl.col("bucket").alias("ts"),
                pl.lit(grain).alias("grain"),
                pl.lit(kind).alias("kind"),
                pl.lit("statistical").alias("detector"),
                s_final.alias("score"),
                _confidence(s_final, pl.col("history"), cfg).alias("confidence"),
                (s_final >= (cfg.spike_anomaly_score if kind == "spike" else cfg.drop_anomaly_score)).alias(
                    "is_anomaly"
                ),
                pl.col("q").alias("observed"),
                (pl.col("e") * pl.col("unit")).alias("expected"),
                (pl.col("v") / pl.when(pl.col("e") > 0).then(pl.col("e")).otherwise(None)).alias("ratio"),
                pl.when(pl.col(w) > 0).then(pl.col(w)).otherwise(1).cast(pl.Int32).alias("window_buckets"),
                hint.alias("root_cause"),
                pl.struct(
                    pl.col(obs).round(3).alias("window_observed"),
                    pl.col(exp).round(3).alias("window_expected"),
                    pl.col("cell_score").round(2),
                    pl.col("history").alias("history_buckets"),
                )
                .struct.json_encode()
                .alias("evidence"),
            )
        )
    return pl.concat(out) if out else pl.DataFrame(schema=OUTPUT_SCHEMA)


def duplicates(df: pl.DataFrame, grain: str) -> pl.DataFrame:
    """Identical payloads (customer, meter, instant, quantity, metadata) under more than one row."""
    every = GRAINS[grain][1]
    key = ["customer_id", "meter_name", "ts", "quantity", "endpoint", "region"]
    if "metadata" in df.columns:
        key.append("metadata")
    for extra in ("project", "subscription_id"):
        if extra in df.columns:
            key.append(extra)
    has_id = "event_id" in df.columns
    d = df.with_columns(
        pl.len().over(key).alias("copies"),
        (pl.int_range(pl.len()).over(key, order_by="event_id" if has_id else None)).alias("k"),
    )
    d = d.filter(pl.col("k") >= 1)  # the first copy is the original
    if d.height == 0:
        return pl.DataFrame(schema=OUTPUT_SCHEMA)
    agg = (
        d.with_columns(pl.col("ts").dt.truncate(every).alias("bucket"))
        .group_by("customer_id", "meter_name", "bucket")
        .agg(
            pl.len().alias("dups"),
            pl.col("quantity").sum().alias("dup_q"),
            (pl.col("event_id").head(5) if has_id else pl.lit(None, pl.String).head(1)).alias("ids"),
        )
    )
    return agg.select(
        "customer_id",
        "meter_name",
        pl.col("bucket").alias("ts"),
        pl.lit(grain).alias("grain"),
        pl.lit("duplicate").alias("kind"),
        pl.lit("logical").alias("detector"),
        pl.lit(10.0).alias("score"),
        pl.lit(0.99).alias("confidence"),
        pl.lit(True).alias("is_anomaly"),
        pl.col("dup_q").alias("observed"),
        pl.lit(0.0).alias("expected"),
        pl.lit(None, pl.Float64).alias("ratio"),
        pl.lit(1, pl.Int32).alias("window_buckets"),
        pl.format("{} event(s) repeat an earlier event's payload under a new id", pl.col("dups")).alias("root_cause"),
        pl.struct(pl.col("dups").alias("duplicate_events"), pl.col("ids").alias("example_ids"))
        .struct.json_encode()
        .alias("evidence"),
    )


def lifecycle(
    df: pl.DataFrame, grain: str, subscriptions: pl.DataFrame, now: datetime | None, cfg: DetectorConfig
) -> pl.DataFrame:
    """Usage after cancellation, outside the subscription's life, on meters the plan lacks; silent accounts."""
    every = GRAINS[grain][1]
    subs = subscriptions.select(
        "customer_id",
        pl.col("started_at").cast(pl.Datetime("us", "UTC")),
        pl.col("canceled_at").cast(pl.Datetime("us", "UTC")),
        *([pl.col("meters")] if "meters" in subscriptions.columns else []),
    )
    subs = subs.group_by("customer_id").agg(
        pl.col("started_at").min(),
        pl.when(pl.col("canceled_at").is_null().any())
        .then(None)
        .otherwise(pl.col("canceled_at").max())
        .first()
        .alias("canceled_at"),
        *([pl.col("meters").flatten().unique()] if "meters" in subs.columns else []),
    )
    j = df.join(subs, on="customer_id", how="left")
    grace = pl.duration(seconds=cfg.cancel_grace_seconds)
    kind = (
        pl.when(pl.col("canceled_at").is_not_null() & (pl.col("ts") >= pl.col("canceled_at") + grace))
        .then(pl.lit("usage_after_cancel"))
        .when(pl.col("started_at").is_not_null() & (pl.col("ts") < pl.col("started_at")))
        .then(pl.lit("out_of_period"))
    )
    if now is not None:
        kind = kind.when(pl.col("ts") > pl.lit(now).cast(pl.Datetime("us", "UTC"))).then(pl.lit("out_of_period"))
    if "meters" in subs.columns:
        kind = kind.when(pl.col("meters").is_not_null() & ~pl.col("meter_name").is_in(pl.col("meters"))).then(
            pl.lit("unplanned_meter")
        )
    flagged = j.with_columns(kind.otherwise(None).alias("kind")).filter(pl.col("kind").is_not_null())
    rows = (
        flagged.with_columns(pl.col("ts").dt.truncate(every).alias("bucket"))
        .group_by("customer_id", "meter_name", "bucket", "kind")
        .agg(
            pl.col("quantity").sum().alias("q"),
            pl.len().alias("n"),
            pl.col("canceled_at").first(),
            pl.col("started_at").first(),
        )
    )
    out = [
        rows.select(
            "customer_id",
            "meter_name",
            pl.col("bucket").alias("ts"),
            pl.lit(grain).alias("grain"),
            "kind",
            pl.lit("logical").alias("detector"),
            pl.lit(10.0).alias("score"),
            pl.lit(0.99).alias("confidence"),
            pl.lit(True).alias("is_anomaly"),
            pl.col("q").alias("observed"),
            pl.lit(0.0).alias("expected"),
            pl.lit(None, pl.Float64).alias("ratio"),
            pl.lit(1, pl.Int32).alias("window_buckets"),
            pl.when(pl.col("kind") == "usage_after_cancel")
            .then(pl.format("{} events after the subscription was cancelled at {}", pl.col("n"), pl.col("canceled_at")))
            .when(pl.col("kind") == "unplanned_meter")
            .then(pl.lit("the plan has no price for this meter"))
            .otherwise(
                pl.format("{} events outside the subscription's life (started {})", pl.col("n"), pl.col("started_at"))
            )
            .alias("root_cause"),
            pl.struct(pl.col("n").alias("events")).struct.json_encode().alias("evidence"),
        )
    ]
    if now is not None:  # active accounts that went silent up to now
        now_ = pl.lit(now).cast(pl.Datetime("us", "UTC"))
        last = df.group_by("customer_id").agg(
            pl.col("ts").max().alias("last_ts"),
            pl.col("ts").min().alias("first_ts"),
            pl.len().alias("n"),
            pl.col("meter_name").first(),
        )
        silent = (
            last.join(subs, on="customer_id", how="inner")
            .filter(pl.col("canceled_at").is_null() | (pl.col("canceled_at") > now_))
            .with_columns(
                ((now_ - pl.col("last_ts")).dt.total_seconds() / 86400).alias("days_silent"),
                ((pl.col("last_ts") - pl.col("first_ts")).dt.total_seconds() / 86400).alias("days_active"),
            )
            .filter((pl.col("days_silent") >= cfg.zero_usage_days) & (pl.col("days_active") >= 7))
        )
        out.append(
            silent.select(
                "customer_id",
                pl.lit("*").alias("meter_name"),
                pl.col("last_ts").dt.truncate(every).alias("ts"),
                pl.lit(grain).alias("grain"),
                pl.lit("zero_usage").alias("kind"),
                pl.lit("logical").alias("detector"),
                pl.lit(10.0).alias("score"),
                pl.lit(0.95).alias("confidence"),
                pl.lit(True).alias("is_anomaly"),
                pl.lit(0.0).alias("observed"),
                (pl.col("n") / pl.col("days_active")).alias("expected"),
                pl.lit(0.0).alias("ratio"),
                pl.lit(1, pl.Int32).alias("window_buckets"),
                pl.format(
                    "no usage on any meter for {} days on an active subscription", pl.col("days_silent").round(1)
                ).alias("root_cause"),
                pl.struct(
                    pl.col("last_ts").cast(pl.String).alias("last_event"),
                    (pl.col("n") / pl.col("days_active")).round(2).alias("events_per_day_before"),
                )
                .struct.json_encode()
                .alias("evidence"),
            )
        )
    return pl.concat(out)


def multivariate(df: pl.DataFrame, cfg: DetectorConfig) -> pl.DataFrame:
    """IsolationForest over account-day features; the most deviating feature is the hint."""
    from sklearn.ensemble import IsolationForest

    day = df.with_columns(pl.col("ts").dt.truncate("1d").alias("bucket"))
    meters = sorted(day["meter_name"].unique().to_list())
    endpoints = sorted(x for x in day["endpoint"].unique().to_list() if x is not None)
    base = day.group_by("customer_id", "bucket").agg(
        pl.len().alias("events"),
        pl.col("quantity").sum().alias("qty"),
        *[(pl.col("meter_name") == m).mean().alias(f"meter:{m}") for m in meters],
        *[(pl.col("endpoint") == e).mean().alias(f"endpoint:{e}") for e in endpoints],
        pl.col("region").drop_nulls().mode().first().alias("top_region"),
    )
    if base.height < 50:
        return pl.DataFrame(schema=OUTPUT_SCHEMA)
    top_share = day.group_by("customer_id", "bucket").agg(
        (pl.col("region").value_counts(sort=True).first().struct.field("count") / pl.len()).alias("top_region_share")
    )
    # in a fixed order: the forest (seeded) is fitted on the rows as they come, and a group_by's order varies
    # from run to run -- the same events must score the same
    base = (
        base.join(top_share, on=["customer_id", "bucket"])
        .sort("customer_id", "bucket")
        .with_columns(
            (pl.col("events").log1p() - pl.col("events").log1p().median().over("customer_id")).alias("volume_vs_own")
        )
    )
    feats = [c for c in base.columns if c.startswith(("meter:", "endpoint:"))] + ["top_region_share", "volume_vs_own"]
    x = base.select(feats).fill_null(0.0).to_numpy()
    # each feature against the account's own typical day: the hint for a flagged day
    own = base.select(
        [
            (pl.col(f) - pl.col(f).median().over("customer_id"))
            / (pl.col(f).std().over("customer_id").fill_null(0.0) + 0.05)
            for f in feats
        ]
    ).to_numpy()
    forest = IsolationForest(n_estimators=100, contamination=cfg.isolation_contamination, random_state=cfg.seed)
    forest.fit(x)
    raw = -forest.score_samples(x)
    flag = forest.predict(x) == -1
    worst = np.abs(own).argmax(axis=1)
    base = base.with_columns(
        pl.Series("raw", raw),
        pl.Series("flag", flag),
        pl.Series(
            "hint", [f"{feats[i]} is {own[r, i]:+.1f} sd from the account's usual day" for r, i in enumerate(worst)]
        ),
    )
    thr = float(np.quantile(raw, 1 - cfg.isolation_contamination))
    return base.filter(pl.col("flag")).select(
        "customer_id",
        pl.lit("*").alias("meter_name"),
        pl.col("bucket").alias("ts"),
        pl.lit("1d").alias("grain"),
        pl.lit("unusual_mix").alias("kind"),
        pl.lit("multivariate").alias("detector"),
        (pl.col("raw") * 10).alias("score"),
        (0.5 + (pl.col("raw") - thr).clip(0.0) * 2).clip(0.5, 0.9).alias("confidence"),
        pl.lit(True).alias("is_anomaly"),
        pl.col("qty").alias("observed"),
        pl.lit(None, pl.Float64).alias("expected"),
        pl.lit(None, pl.Float64).alias("ratio"),
        pl.lit(1, pl.Int32).alias("window_buckets"),
        pl.col("hint").alias("root_cause"),
        pl.struct("events", pl.col("raw").round(4).alias("isolation_score")).struct.json_encode().alias("evidence"),
    )


def detect_anomalies(
    usage: pl.DataFrame,
    grain: str = "1h",
    *,
    subscriptions: pl.DataFrame | None = None,
    now: datetime | None = None,
    rows: str = "events",
    config: DetectorConfig = DetectorConfig(),
    multivariate_features: bool = True,
) -> pl.DataFrame:
    """Flag abnormal usage buckets. ``grain``: ``"1h"`` or ``"1d"``.

    ``usage``: ``customer_id, meter_name, ts, quantity`` (+ optional ``metadata``, ``event_id``,
    ``endpoint``, ``region``). ``subscriptions`` (optional): ``customer_id, started_at, canceled_at``
    (+ ``meters``, a list of the plan's meters) enables the lifecycle detectors and keeps volume scoring
    inside each subscription's life. ``rows``: ``"events"`` (one row per usage event: the volume
    statistics run on event counts, Poisson-like at any unit scale) or ``"buckets"`` (rows are
    pre-aggregated: they run on the quantity with a per-series dispersion). ``now`` (optional) is the end
    of the data: buckets up to it count (silence is zero usage), and it enables ``zero_usage`` and the
    future-timestamp check.
    Returns one row per flagged bucket (:data:`OUTPUT_SCHEMA`), sorted by score.
    """
    if grain not in GRAINS:
        raise ValueError(f"grain must be one of {sorted(GRAINS)}, not {grain!r}")
    df = _to_frame(usage)
    if df.height == 0:
        return pl.DataFrame(schema=OUTPUT_SCHEMA)
    if now is not None:
        end = now
        scored = df.filter(pl.col("ts") <= pl.lit(now).cast(pl.Datetime("us", "UTC")))
    else:
        end, scored = None, df
    active = None
    if subscriptions is not None:
        active = subscriptions.group_by("customer_id").agg(
            pl.col("started_at").cast(pl.Datetime("us", "UTC")).min().alias("active_from"),
            pl.when(pl.col("canceled_at").is_null().any())
            .then(None)
            .otherwise(pl.col("canceled_at").cast(pl.Datetime("us", "UTC")).max())
            .first()
            .alias("active_to"),
        )
    if rows not in ("events", "buckets"):
        raise ValueError(f"rows must be 'events' or 'buckets', not {rows!r}")
    # the statistical pass holds a few dozen columns per bucket: run it on batches of customers so memory
    # stays bounded (series never span batches)
    batches = max(1, -(-scored.height // ROWS_PER_BATCH))
    if batches == 1:
        stat = [statistical(scored, grain, config, end, active, rows)]
    else:
        keyed = scored.with_columns((pl.col("customer_id").hash(seed=7) % batches).alias("_batch"))
        stat = [
            statistical(part.drop("_batch"), grain, config, end, active, rows) for _, part in keyed.group_by("_batch")
        ]
    parts = [*stat, duplicates(df, grain)]
    if subscriptions is not None:
        parts.append(lifecycle(df, grain, subscriptions, now, config))
    if multivariate_features and df["endpoint"].null_count() < df.height:
        parts.append(multivariate(scored, config))
    found = [p.select(list(OUTPUT_SCHEMA)).cast(OUTPUT_SCHEMA) for p in parts if p.height]
    if not found:
        return pl.DataFrame(schema=OUTPUT_SCHEMA)
    out = pl.concat(found)
    silent = out.filter(pl.col("kind") == "zero_usage").select("customer_id", pl.col("ts").alias("_silent_from"))
    if silent.height:  # a drop into an account's final silence is that silence, reported once as zero_usage
        step = GRAINS[grain][0] * max(config.drop_windows)
        out = (
            out.join(silent, on="customer_id", how="left")
            .filter(
                ~(
                    (pl.col("kind") == "drop")
                    & pl.col("_silent_from").is_not_null()
                    & (pl.col("ts") >= pl.col("_silent_from") - pl.duration(seconds=step))
                )
            )
            .drop("_silent_from")
        )
    return out.sort(["is_anomaly", "score"], descending=True)


EPISODE_GAP_BUCKETS = 6


def episodes(flags: pl.DataFrame, grain: str = "1h", gap_buckets: int = EPISODE_GAP_BUCKETS) -> pl.DataFrame:
    """Merge flagged buckets of one series and kind into episodes (start, end, peak score): buckets less
    than ``gap_buckets`` apart belong to one episode (a drop with a noisy hour inside is one drop)."""
    step = GRAINS[grain][0]
    f = flags.sort("customer_id", "meter_name", "kind", "ts")
    f = f.with_columns(
        (
            (pl.col("ts").diff().dt.total_seconds().fill_null(10**12) > step * gap_buckets)
            | (pl.col("customer_id") != pl.col("customer_id").shift(1))
            | (pl.col("meter_name") != pl.col("meter_name").shift(1))
            | (pl.col("kind") != pl.col("kind").shift(1))
        )
        .cum_sum()
        .alias("episode")
    )
    return (
        f.group_by("episode")
        .agg(
            pl.col("customer_id").first(),
            pl.col("meter_name").first(),
            pl.col("kind").first(),
            pl.col("ts").min().alias("start"),
            (pl.col("ts").max() + pl.duration(seconds=step)).alias("end"),
            pl.col("score").max(),
            pl.col("confidence").max(),
            pl.col("observed").sum(),
            pl.col("expected").sum(),
            pl.col("root_cause").sort_by("score", descending=True).first(),
            pl.col("evidence").sort_by("score", descending=True).first(),
            pl.len().alias("buckets"),
        )
        .drop("episode")
        .sort("start")
    )


def as_json(row: dict) -> str:
    return json.dumps(row, default=str, sort_keys=True)
