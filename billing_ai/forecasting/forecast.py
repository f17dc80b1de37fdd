"""Usage forecasting: per-series model selection by rolling-origin cross-validation, and forecasts with
calibrated intervals. Pure functions over Polars frames (no Dagster); fitting runs through StatsForecast
over the whole frame at once (grouped by model), never a Python loop per series.

Input (``history``): ``series_id, ds, y`` -- ``ds`` a date or datetime (naive or tz-aware), ``y`` a
usage quantity. Daily (``"1d"``) or hourly (``"1h"``) frequency.

**Preparation.** ``ds`` is taken in UTC (tz-aware input converted; the output gets the input's dtype
and zone back), truncated to the period (UTC days or hours) and duplicates summed; negative or null ``y`` count
as 0 (usage cannot be negative). Every series is filled with zeros from its own first period to the
*last period of the whole frame*: a period without usage reported is a period of zero usage, and all
series share one forecast origin (tomorrow), which the period projections downstream rely on. Each
series is divided by its own mean before fitting and multiplied back after, so series in the millions
and series below 1 look alike to the models (ETS/Theta optimisers and STL are not scale-free in practice).

**Per-series route** (decided every run from the filled history, ``season`` = 7 daily, 24 hourly):

* all zeros -> 0, interval [0, 0]; ``fallback:zeros``.
* 1-3 points (a new customer) -> the mean of what exists, interval +-z*max(sd, mean)*sqrt(1 + 1/n):
  one to three points cannot estimate a spread, so usage is taken to vary by its own level;
  ``fallback:new_series``.
* constant (>= 4 points, all equal) -> the constant, interval [c, c]; ``fallback:constant``.
* fewer than 2 seasons (< 14 days / 48 hours) -> the mean of the last ``season`` points (k of them),
  interval +-z*sd*sqrt(1 + 1/k) from those points (a mean forecast's prediction interval);
  ``fallback:short_history``.
* 2 seasons or more but too short for CV (< 3 * horizon + 2 * season) -> SeasonalNaive, or
  CrostonOptimized when intermittent, no CV (``backtest_error`` null).
* long enough for CV -> the model chosen by cross-validation (or named by the cached ``selection``).

**Models** (:data:`MODELS`), chosen with the budget in mind (~1,000-10,000 series nightly on 2 cores):

* ``MSTL`` (STL seasonal decomposition + AutoETS on the non-seasonal trend): the seasonal workhorse,
  weekly cycle on daily data, daily cycle on hourly data; handles trend.
* ``AutoTheta``: seasonally adjusted Theta (SES with drift) -- a second, differently built seasonal
  model that often wins on trending or level-shifting series; about MSTL's cost.
* ``SeasonalNaive``: the floor (same period last season); cheap, and the right answer for perfectly
  periodic usage.
* ``CrostonOptimized``: intermittent demand; only a candidate for *intermittent* series, i.e. average
  demand interval ADI >= 1.32 (Syntetos-Boylan), which is a share of zero periods >= 24%.
* ``AutoETS`` is *not* in the set: at ~60-80 ms a 180-day series (and 3-4x that with CV or conformal
  windows) it alone would cost more than all the others together; MSTL already fits AutoETS to the
  deseasonalised trend.

**Selection** (:func:`select_models`): rolling-origin CV, ``n_windows`` (3) windows of ``horizon``
steps each, step = horizon; the lowest ``backtest_error`` wins, ties going to the simpler model (order of
:data:`MODELS`). ``backtest_error`` is the **RMSSE**: root mean squared error over all CV windows
divided by the root mean squared in-sample seasonal-naive error (one season back) of that series; < 1
beats "same as last season" in-sample. Squared (not absolute) error because downstream the daily
forecasts are summed into a period total, which the mean serves and an absolute-error criterion
(the median: 0 for sparse series) does not. A perfectly periodic series has a zero seasonal-naive
error; its scale is then its mean level. The selection frame (``series_id, model, backtest_error,
chosen_at, calibration_horizon, calibration_errors``) can be cached (weekly) and passed to
:func:`forecast_usage` as ``selection=``: the nightly run then refits only each series' chosen model, one
StatsForecast call per model, and takes its conformal interval from the cached calibration errors (below)
instead of cross-validating again.

**Intervals** at ``level``%:

* ``conformal`` (split conformal, rolling origin) when the series has at least ``k * horizon + 2 *
  season`` points, ``k`` = 3 windows (more for short horizons, for ~30 scores): StatsForecast
  ``cross_validation`` of the chosen model over ``k`` windows of the forecast horizon, the absolute
  errors pooled over windows and steps, and the ``ceil((n + 1) * level)``-th smallest of the ``n``
  as a symmetric half-width (the finite-sample conformal quantile). No distributional assumption.
  With at least 8 seasons of history before the oldest window the model is fitted once, there, and
  carried forward to the others with its parameters kept (``refit=False``): one extra fit of one model;
  shorter histories (and Croston, which cannot be carried) are refitted at every window.
  These calibration errors (in the series' own units) are what ``select_models(...,
  calibration_horizon=H)`` caches; a forecast of ``horizon <= H`` reuses them, pooling the first
  ``max(horizon, ceil(30 / k))`` steps of each cached window -- all of them when ``horizon == H``,
  which gives the very half-widths a fresh computation on the same history gives. Series without
  usable cached errors (an older selection, a series new or grown since, a longer horizon) are
  calibrated in the run. *Why not* StatsForecast's ``ConformalIntervals``: it calibrates every
  horizon step on its own ``n_windows`` scores with a plain quantile, and with the 3-4 windows a
  180-day history affords that under-covers (measured on the Poisson weekly test data: 0.70-0.75 at
  80%, 0.82-0.84 at 95%; the pooled version: 0.80-0.83 and 0.95-0.96). Pooling assumes errors do not
  grow much over the horizon, true of the seasonal usage series here; it is mildly optimistic for
  strongly trending ones.
* ``model``: the model's own (normal) intervals when the history is too short for the conformal windows.
* ``empirical``: CrostonOptimized has no intervals of its own: +-z * sd of the series (Croston forecasts
  a flat rate, the spread of the periods around it is the series' spread).
* ``rule``: the fallbacks' intervals in the list above (normal, from the observed variability).

A model that fails on a series (optimiser trouble) is stood in for by SeasonalNaive inside StatsForecast
(``fallback_model``) rather than failing the batch. Everything is clipped at 0 (usage cannot be negative)
and ordered ``yhat_lo <= yhat <= yhat_hi``.
"""

from __future__ import annotations

import math
import os
import warnings
from datetime import UTC, datetime
from statistics import NormalDist

import polars as pl

MODELS = ("SeasonalNaive", "CrostonOptimized", "MSTL", "AutoTheta")  # tie-break order: simplest first
FALLBACK_ZEROS = "fallback:zeros"
FALLBACK_NEW = "fallback:new_series"
FALLBACK_CONSTANT = "fallback:constant"
FALLBACK_SHORT = "fallback:short_history"
NEW_SERIES_MAX_POINTS = 3
INTERMITTENT_ZERO_SHARE = 1 - 1 / 1.32  # ADI >= 1.32 (Syntetos-Boylan): >= ~24% zero periods
CV_WINDOWS = 3
CONFORMAL_WINDOWS = 3  # calibration windows of the forecast horizon (more when the horizon is short)
CONFORMAL_MIN_SCORES = 30  # pooled calibration errors wanted per series
CARRY_MIN_SEASONS = 8  # history before the oldest calibration window to carry one fit across the windows
SEASON = {"1d": 7, "1h": 24}
_STEP = {"1d": "days", "1h": "hours"}
_FREQ_ALIASES = {"1d": "1d", "d": "1d", "day": "1d", "daily": "1d", "1h": "1h", "h": "1h", "hour": "1h", "hourly": "1h"}

SELECTION_SCHEMA = {
    "series_id": pl.String,
    "model": pl.String,
    "backtest_error": pl.Float64,
    "chosen_at": pl.Datetime("us", "UTC"),
    "calibration_horizon": pl.Int32,
    "calibration_errors": pl.List(pl.Float64),
}
_CALIBRATION = {"calibration_horizon": pl.Int32, "calibration_errors": pl.List(pl.Float64)}
OUTPUT_COLUMNS = ("series_id", "ds", "yhat", "yhat_lo", "yhat_hi", "model", "backtest_error", "interval_method")


# --------------------------------------------------------------------------------------------- preparation


def _freq(freq: str) -> str:
    f = _FREQ_ALIASES.get(str(freq).strip().lower())
    if f is None:
        raise ValueError(f"freq must be '1d' (daily) or '1h' (hourly), got {freq!r}")
    return f


def _prepare(history: pl.DataFrame, freq: str) -> tuple[pl.DataFrame, dict]:
    """Filled history ``series_id (String), ds (naive UTC Datetime us), y (Float64 >= 0)`` and how to
    give ``ds`` back its input dtype."""
    missing = {"series_id", "ds", "y"} - set(history.columns)
    if missing:
        raise ValueError(f"history lacks columns {sorted(missing)}")
    ds_dtype = history.schema["ds"]
    restore = {"dtype": ds_dtype, "id_dtype": history.schema["series_id"]}
    ds = pl.col("ds")
    if ds_dtype == pl.Date:
        ds = ds.cast(pl.Datetime("us"))
    elif isinstance(ds_dtype, pl.Datetime):
        if ds_dtype.time_zone is not None:
            ds = ds.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        ds = ds.cast(pl.Datetime("us"))
    else:
        raise ValueError(f"ds must be a date or datetime, got {ds_dtype}")
    h = (
        history.lazy()
        .select(
            pl.col("series_id").cast(pl.String),
            ds.dt.truncate(freq).alias("ds"),
            pl.col("y").cast(pl.Float64).fill_null(0.0).fill_nan(0.0).clip(lower_bound=0.0),
        )
        .drop_nulls(["series_id", "ds"])
        .group_by("series_id", "ds")
        .agg(pl.col("y").sum())
        .collect()
    )
    if h.height == 0:
        return pl.DataFrame(schema={"series_id": pl.String, "ds": pl.Datetime("us"), "y": pl.Float64}), restore
    end = h["ds"].max()
    grid = (
        h.group_by("series_id")
        .agg(pl.col("ds").min().alias("start"))
        .with_columns(pl.datetime_ranges("start", pl.lit(end), interval=freq, time_unit="us").alias("ds"))
        .drop("start")
        .explode("ds")
    )
    filled = (
        grid.join(h, on=["series_id", "ds"], how="left")
        .with_columns(pl.col("y").fill_null(0.0))
        .sort("series_id", "ds")
    )
    return filled, restore


def _restore(out: pl.DataFrame, restore: dict) -> pl.DataFrame:
    dtype = restore["dtype"]
    ds = pl.col("ds")
    if dtype == pl.Date:
        ds = ds.cast(pl.Date)
    elif dtype.time_zone is not None:
        ds = ds.dt.replace_time_zone("UTC").dt.convert_time_zone(dtype.time_zone).cast(dtype)
    else:
        ds = ds.cast(dtype)
    sid = pl.col("series_id")
    if restore["id_dtype"] != pl.String:
        sid = sid.cast(restore["id_dtype"])
    return out.with_columns(ds, sid)


def _profile(filled: pl.DataFrame, season: int) -> pl.DataFrame:
    """Per series: size, level, spread, sparsity, in-sample seasonal-naive RMSE (scaled), and the route."""
    y = pl.col("y")
    prof = filled.group_by("series_id", maintain_order=True).agg(
        pl.len().alias("n"),
        y.mean().alias("mean"),
        y.std().fill_null(0.0).alias("sd"),
        (y == 0).mean().alias("zero_share"),
        (y.max() == y.min()).alias("is_constant"),
        y.tail(season).mean().alias("recent_mean"),
        y.tail(season).std().fill_null(0.0).alias("recent_sd"),
        y.tail(season).len().alias("recent_n"),
        (y - y.shift(season)).pow(2).mean().sqrt().alias("sn_rmse"),
        pl.col("ds").max().alias("last"),
    )
    route = (
        pl.when(pl.col("mean") == 0)
        .then(pl.lit(FALLBACK_ZEROS))
        .when(pl.col("n") <= NEW_SERIES_MAX_POINTS)
        .then(pl.lit(FALLBACK_NEW))
        .when(pl.col("is_constant"))
        .then(pl.lit(FALLBACK_CONSTANT))
        .when(pl.col("n") < 2 * season)
        .then(pl.lit(FALLBACK_SHORT))
        .otherwise(pl.lit("model"))
    )
    scale = pl.when(pl.col("mean") > 0).then(pl.col("mean")).otherwise(1.0)
    # RMSSE denominator, in units of the (mean-)scaled series; a perfectly periodic series has none: use its level
    sn = pl.col("sn_rmse") / scale
    return prof.with_columns(
        route.alias("route"),
        scale.alias("scale"),
        (pl.col("zero_share") >= INTERMITTENT_ZERO_SHARE).alias("intermittent"),
        pl.when(sn > 1e-9).then(sn).otherwise(1.0).alias("rmsse_scale"),
    )


def _scaled(filled: pl.DataFrame, prof: pl.DataFrame, ids: pl.Series) -> pl.DataFrame:
    """The StatsForecast input for ``ids``: ``unique_id, ds, y / scale``."""
    return (
        filled.filter(pl.col("series_id").is_in(ids.implode()))
        .join(prof.select("series_id", "scale"), on="series_id")
        .select(pl.col("series_id").alias("unique_id"), "ds", (pl.col("y") / pl.col("scale")).alias("y"))
    )


# --------------------------------------------------------------------------------------------- models


def _model(name: str, season: int):
    from statsforecast.models import MSTL, AutoTheta, CrostonOptimized, SeasonalNaive

    if name == "MSTL":
        return MSTL(season_length=season)
    if name == "AutoTheta":
        # additive decomposition: the mean-scaled series may hold zeros, which multiplicative cannot take
        return AutoTheta(season_length=season, decomposition_type="additive")
    if name == "SeasonalNaive":
        return SeasonalNaive(season_length=season)
    if name == "CrostonOptimized":
        return CrostonOptimized()
    raise ValueError(f"unknown model {name!r}")


def _n_jobs(n_series: int) -> int:
    """One process unless BILLING_AI_FORECAST_JOBS says otherwise.

    StatsForecast parallelises by forking worker processes, and a fork taken while Polars' (or
    DuckDB's, or the sandbox server's) threads hold a lock deadlocks the child: it happened in a
    nightly run. Inside the pipeline, forecasting stays in-process; a standalone caller with no
    such threads may set the variable to use more cores.
    """
    jobs = int(os.environ.get("BILLING_AI_FORECAST_JOBS", "1"))
    return 1 if n_series < 200 else max(1, min(jobs, os.cpu_count() or 1))


def _statsforecast(models: list, freq: str, n_series: int):
    from statsforecast import StatsForecast
    from statsforecast.models import SeasonalNaive

    season = SEASON[freq]
    # a model that fails on one series (optimiser trouble) must not fail the batch: SeasonalNaive stands in
    return StatsForecast(
        models=models, freq=freq, n_jobs=_n_jobs(n_series), fallback_model=SeasonalNaive(season_length=season)
    )


def _cv_min_points(horizon: int, season: int, n_windows: int) -> int:
    return n_windows * horizon + 2 * season


# --------------------------------------------------------------------------------------------- calibration


def _conformal_windows(horizon: int) -> int:
    """Calibration windows: at least 3, and enough for ~30 pooled scores when the horizon is short."""
    return max(CONFORMAL_WINDOWS, math.ceil(CONFORMAL_MIN_SCORES / horizon))


def _cv_errors(cv: pl.DataFrame, prof: pl.DataFrame, name: str, horizon: int) -> pl.DataFrame:
    """``series_id, calibration_horizon, calibration_errors`` from a StatsForecast cross-validation frame:
    ``|y - max(yhat, 0)|`` of model ``name`` in the series' own units (the scaled errors times the scale),
    window by window (oldest cutoff first), ``horizon`` steps each; a NaN forecast gives a null error."""
    e = ((pl.col("y") - pl.col(name).clip(lower_bound=0.0)).abs() * pl.col("scale")).fill_nan(None)
    return (
        cv.join(prof.select(pl.col("series_id").alias("unique_id"), "scale"), on="unique_id")
        .sort("unique_id", "cutoff", "ds")
        .group_by("unique_id", maintain_order=True)
        .agg(e.alias("calibration_errors"))
        .select(
            pl.col("unique_id").alias("series_id"),
            pl.lit(horizon, pl.Int32).alias("calibration_horizon"),
            pl.col("calibration_errors").cast(pl.List(pl.Float64)),
        )
    )


def _calibrate(filled: pl.DataFrame, prof: pl.DataFrame, chosen: pl.DataFrame, horizon: int, freq: str) -> pl.DataFrame:
    """Conformal calibration errors of each series' chosen model (``chosen``: ``series_id, model``):
    rolling-origin cross-validation over :func:`_conformal_windows` windows of ``horizon`` steps (step =
    horizon), one StatsForecast call per model (two where both refit modes occur). Same frame as
    :func:`_cv_errors`.

    Where the history before the oldest window holds at least :data:`CARRY_MIN_SEASONS` seasons, the
    model is fitted once, there, and carried forward to the later windows with its parameters kept
    (StatsForecast ``refit=False``: the later windows only re-run the filter / decomposition on the
    longer history): a third of the optimiser runs, for the same intervals (bench series of 180 days,
    31-day windows, 80% level: coverage of 31 held-out days 0.813 / 0.815 carried forward against
    0.811 / 0.817 refitted, the same mean width). Parameters from a shorter history, carried over the
    windows, widen the intervals (+5% at 120 days, 27 days before the oldest window; +1% at 150), so
    such series are refitted at every window, as is Croston, which has no ``forward``."""
    season = SEASON[freq]
    k = _conformal_windows(horizon)
    long_fit = pl.col("n") >= k * horizon + CARRY_MIN_SEASONS * season
    chosen = chosen.join(prof.select("series_id", "n"), on="series_id")
    out = [pl.DataFrame(schema={"series_id": pl.String, **_CALIBRATION})]
    for name in MODELS:
        model = _model(name, season)
        carry = hasattr(type(model), "forward")
        for refit in (False, True):
            g = chosen.filter((pl.col("model") == name) & ((long_fit & carry) != refit))
            if g.height == 0:
                continue
            sf = _statsforecast([model], freq, g.height)
            df = _scaled(filled, prof, g["series_id"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # the optimisers' overflow/divide on flat series
                try:
                    cv = sf.cross_validation(df=df, h=horizon, n_windows=k, step_size=horizon, refit=refit)
                except Exception:  # noqa: BLE001 -- a failing forward is not caught per series: refit the batch
                    if refit:
                        raise
                    cv = sf.cross_validation(df=df, h=horizon, n_windows=k, step_size=horizon, refit=True)
            out.append(_cv_errors(cv, prof, name, horizon))
    return pl.concat(out, how="vertical_relaxed")


def _half_widths(cal: pl.DataFrame, horizon: int, level: float) -> pl.DataFrame:
    """Split-conformal half-width per series, in the series' own units, from its calibration errors.

    ``cal``: ``series_id, calibration_horizon, calibration_errors`` with ``calibration_horizon >= horizon``.
    Of each of the ``k = len / calibration_horizon`` windows the first ``m = max(horizon, ceil(30 / k))``
    steps (at most all of them) are pooled -- the steps a forecast of ``horizon`` has, or enough for ~30
    scores -- and of those ``n = k * m`` scores the ``ceil((n + 1) * level)``-th smallest (capped at n) is
    the half-width: the finite-sample conformal quantile. A null error (a failed fit) still counts in n
    but is not a score; the rank is then capped at the scores there are. Errors computed fresh for the
    forecast's own horizon (``calibration_horizon == horizon``) pool every step, as they always did.
    """
    if cal.height == 0:
        return pl.DataFrame(schema={"series_id": pl.String, "q": pl.Float64})
    ch = pl.col("calibration_horizon")
    k = (pl.col("calibration_errors").list.len() // ch).alias("k")
    m = pl.min_horizontal(
        ch, pl.max_horizontal(pl.lit(horizon), (CONFORMAL_MIN_SCORES / pl.col("k")).ceil().cast(pl.Int64))
    ).alias("m")
    n = pl.col("k") * pl.col("m")
    rank = pl.min_horizontal(n, ((n + 1) * level / 100).ceil().cast(pl.Int64))
    e = pl.col("e").drop_nulls().sort()
    return (
        cal.filter(pl.col("calibration_errors").list.len() >= ch)
        .with_columns(k)
        .with_columns(m)
        .with_columns(pl.int_ranges(0, pl.col("calibration_errors").list.len()).alias("i"))
        .explode("calibration_errors", "i")
        .rename({"calibration_errors": "e"})
        .filter(pl.col("i") % ch < pl.col("m"))
        .group_by("series_id")
        .agg(e.get(pl.min_horizontal(rank.first(), e.len()) - 1, null_on_oob=True).alias("q"))
        .select(pl.col("series_id").cast(pl.String), pl.col("q").cast(pl.Float64))
    )


# --------------------------------------------------------------------------------------------- selection


def _select(
    filled: pl.DataFrame,
    prof: pl.DataFrame,
    horizon: int,
    freq: str,
    n_windows: int,
    calibration_horizon: int | None = None,
) -> pl.DataFrame:
    """``series_id, model, backtest_error, calibration_horizon, calibration_errors`` for every series
    (fallbacks: their name, nulls). With a ``calibration_horizon``, the chosen model's calibration errors
    (:func:`_calibrate`: one more cross-validation, of the chosen model only) for the series long enough
    for its windows; without one, null."""
    season = SEASON[freq]
    nulls = [pl.lit(None, pl.Float64).alias("backtest_error")]
    model_rows = prof.filter(pl.col("route") == "model")
    cv_ok = model_rows.filter(pl.col("n") >= _cv_min_points(horizon, season, n_windows))
    # too short for CV (2 seasons <= n < CV minimum): the floor, or Croston for intermittent series
    no_cv = model_rows.filter(~pl.col("series_id").is_in(cv_ok["series_id"].implode())).select(
        "series_id",
        pl.when(pl.col("intermittent"))
        .then(pl.lit("CrostonOptimized"))
        .otherwise(pl.lit("SeasonalNaive"))
        .alias("model"),
        *nulls,
    )
    rules = prof.filter(pl.col("route") != "model").select("series_id", pl.col("route").alias("model"), *nulls)
    parts = [rules, no_cv]
    if cv_ok.height:
        df = _scaled(filled, prof, cv_ok["series_id"])
        sf = _statsforecast([_model(m, season) for m in MODELS], freq, cv_ok.height)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the optimisers' overflow/divide on flat series
            cv = sf.cross_validation(df=df, h=horizon, n_windows=n_windows, step_size=horizon)
        errs = (
            cv.unpivot(index=["unique_id", "y"], on=list(MODELS), variable_name="model", value_name="yhat")
            .group_by("unique_id", "model")
            .agg(((pl.col("y") - pl.col("yhat").clip(lower_bound=0.0)).pow(2).mean().sqrt()).alias("rmse"))
            .join(cv_ok.select(pl.col("series_id").alias("unique_id"), "rmsse_scale", "intermittent"), on="unique_id")
            # Croston is only a candidate for intermittent series; a failed (NaN) fit is never chosen
            .filter((pl.col("model") != "CrostonOptimized") | pl.col("intermittent"))
            .filter(pl.col("rmse").is_finite())
            .with_columns(
                (pl.col("rmse") / pl.col("rmsse_scale")).alias("backtest_error"),
                pl.col("model")
                .replace_strict({m: i for i, m in enumerate(MODELS)}, return_dtype=pl.Int32)
                .alias("rank"),
            )
        )
        best = (
            errs.sort("unique_id", pl.col("backtest_error").round(9), "rank")
            .group_by("unique_id", maintain_order=True)
            .first()
            .select(pl.col("unique_id").alias("series_id"), "model", "backtest_error")
        )
        lost = cv_ok.filter(~pl.col("series_id").is_in(best["series_id"].implode())).select(
            "series_id", pl.lit("SeasonalNaive").alias("model"), *nulls
        )
        parts += [best, lost]
    sel = pl.concat(parts, how="vertical_relaxed")

    # calibration for the conformal intervals, where the history has room for its windows
    cals = [pl.DataFrame(schema={"series_id": pl.String, **_CALIBRATION})]
    if calibration_horizon:
        cal_h = calibration_horizon
        long_enough = prof.filter(pl.col("n") >= _conformal_windows(cal_h) * cal_h + 2 * season)["series_id"]
        todo = sel.filter(pl.col("model").is_in(MODELS) & pl.col("series_id").is_in(long_enough.implode()))
        if todo.height:
            cals.append(_calibrate(filled, prof, todo, cal_h, freq))
    return sel.join(pl.concat(cals, how="vertical_relaxed"), on="series_id", how="left")


def select_models(
    history: pl.DataFrame,
    horizon: int,
    freq: str = "1d",
    *,
    n_windows: int = CV_WINDOWS,
    calibration_horizon: int | None = None,
) -> pl.DataFrame:
    """Choose a model per series by rolling-origin cross-validation (weekly refresh).

    Returns ``series_id, model, backtest_error, chosen_at, calibration_horizon, calibration_errors`` --
    one row per series: ``model`` one of :data:`MODELS` (or the fallback rule's name for series the
    models do not get), ``backtest_error`` the RMSSE of the chosen model over ``n_windows`` windows of
    ``horizon`` steps (null where no CV ran), ``chosen_at`` now (UTC); and, when ``calibration_horizon``
    is given (the longest horizon this selection will be used to forecast), the chosen model's conformal
    calibration errors for it: ``calibration_errors`` the absolute errors in the series' own units over
    :func:`_conformal_windows` rolling-origin windows of ``calibration_horizon`` steps
    (``calibration_horizon``), window by window, oldest first; null for fallbacks, series too short for
    the windows, or without ``calibration_horizon``. Pass the frame to :func:`forecast_usage` as
    ``selection=``: it then fits only the chosen model and takes the interval from these errors instead
    of cross-validating again (an extra cross-validation of one model here, once a week, instead of
    every night).
    """
    if horizon < 1:
        raise ValueError("horizon must be >= 1")
    if calibration_horizon is not None and calibration_horizon < 1:
        raise ValueError("calibration_horizon must be >= 1")
    freq = _freq(freq)
    filled, restore = _prepare(history, freq)
    now = datetime.now(UTC)
    if filled.height == 0:
        return pl.DataFrame(schema={**SELECTION_SCHEMA, "series_id": restore["id_dtype"]})
    prof = _profile(filled, SEASON[freq])
    sel = _select(filled, prof, horizon, freq, n_windows, calibration_horizon)
    sel = sel.with_columns(pl.lit(now).cast(pl.Datetime("us", "UTC")).alias("chosen_at")).sort("series_id")
    if restore["id_dtype"] != pl.String:
        sel = sel.with_columns(pl.col("series_id").cast(restore["id_dtype"]))
    return sel.select([pl.col(c).cast(t) if c != "series_id" else pl.col(c) for c, t in SELECTION_SCHEMA.items()])


# --------------------------------------------------------------------------------------------- forecasting


def _rule_forecasts(prof: pl.DataFrame, horizon: int, freq: str, z: float) -> pl.DataFrame:
    """Forecasts of the fallback rules (see the module docstring), in original units."""
    p = prof.filter(pl.col("route") != "model")
    if p.height == 0:
        return pl.DataFrame()
    route = pl.col("route")
    yhat = (
        pl.when(route == FALLBACK_ZEROS)
        .then(0.0)
        .when(route == FALLBACK_NEW)
        .then(pl.col("mean"))
        .when(route == FALLBACK_CONSTANT)
        .then(pl.col("mean"))
        .otherwise(pl.col("recent_mean"))
    )
    # spread of a mean-of-k forecast for a new value: sd * sqrt(1 + 1/k). One to three points cannot
    # estimate a spread: a new customer's usage is taken to vary by its own level (sd >= mean).
    half = (
        pl.when(route.is_in([FALLBACK_ZEROS, FALLBACK_CONSTANT]))
        .then(0.0)
        .when(route == FALLBACK_NEW)
        .then(z * pl.max_horizontal("sd", "mean") * (1 + 1 / pl.col("n")).sqrt())
        .otherwise(z * pl.col("recent_sd") * (1 + 1 / pl.col("recent_n")).sqrt())
    )
    step = pl.duration(**{_STEP[freq]: pl.col("k")})
    return (
        p.select("series_id", "last", yhat.alias("yhat"), half.alias("half"), route.alias("model"))
        .with_columns(pl.int_ranges(1, horizon + 1).alias("k"))
        .explode("k")
        .select(
            "series_id",
            (pl.col("last") + step).alias("ds"),
            "yhat",
            (pl.col("yhat") - pl.col("half")).alias("yhat_lo"),
            (pl.col("yhat") + pl.col("half")).alias("yhat_hi"),
            "model",
            pl.lit(None, pl.Float64).alias("backtest_error"),
            pl.lit("rule").alias("interval_method"),
        )
    )


def _model_forecasts(
    filled: pl.DataFrame, prof: pl.DataFrame, chosen: pl.DataFrame, horizon: int, freq: str, level: int, z: float
) -> list[pl.DataFrame]:
    """One StatsForecast forecast per (model, interval method); results rescaled to original units.

    Conformal half-widths come from the chosen model's calibration errors: those ``chosen`` carries (a
    cached selection's) when their windows cover ``horizon``, else computed here by cross-validation."""
    season = SEASON[freq]
    conformal_min = _conformal_windows(horizon) * horizon + 2 * season
    usable = (pl.col("calibration_horizon") >= horizon) & (
        pl.col("calibration_errors").list.len() >= pl.col("calibration_horizon")
    )
    chosen = chosen.join(prof.select("series_id", "n", "scale", "sd"), on="series_id").with_columns(
        usable.fill_null(False).alias("cached")
    )
    out = []
    for name in MODELS:
        group = chosen.filter(pl.col("model") == name)
        for conformal in (True, False):
            g = group.filter((pl.col("cached") | (pl.col("n") >= conformal_min)) == conformal)
            if g.height == 0:
                continue
            sf = _statsforecast([_model(name, season)], freq, g.height)
            df = _scaled(filled, prof, g["series_id"])
            if conformal:
                kw, method = {}, "conformal"
            elif name != "CrostonOptimized":
                kw, method = {"level": [level]}, "model"
            else:
                kw, method = {}, "empirical"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # the optimisers' overflow/divide on flat series
                fc = sf.forecast(df=df, h=horizon, **kw)
            fc = fc.rename({"unique_id": "series_id", name: "yhat"}).join(
                g.select("series_id", "scale", "sd", "backtest_error"), on="series_id"
            )
            yhat = pl.col("yhat") * pl.col("scale")
            if method == "conformal":
                cal = [g.filter(pl.col("cached")).select("series_id", *_CALIBRATION)]
                fresh = g.filter(~pl.col("cached"))
                if fresh.height:  # no cached errors (older table, series new or grown since): compute them
                    cal.append(_calibrate(filled, prof, fresh.select("series_id", "model"), horizon, freq))
                q = _half_widths(pl.concat(cal, how="vertical_relaxed"), horizon, level)
                fc = fc.join(q, on="series_id", how="left")
                lo, hi = yhat - pl.col("q"), yhat + pl.col("q")
            elif method == "empirical":
                lo, hi = yhat - z * pl.col("sd"), yhat + z * pl.col("sd")
            else:
                lo, hi = pl.col(f"{name}-lo-{level}") * pl.col("scale"), pl.col(f"{name}-hi-{level}") * pl.col("scale")
            out.append(
                fc.select(
                    "series_id",
                    pl.col("ds").cast(pl.Datetime("us")),
                    yhat.alias("yhat"),
                    lo.alias("yhat_lo"),
                    hi.alias("yhat_hi"),
                    pl.lit(name).alias("model"),
                    "backtest_error",
                    pl.lit(method).alias("interval_method"),
                )
            )
    return out


def forecast_usage(
    history: pl.DataFrame, horizon: int, freq: str = "1d", *, level: int = 80, selection: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Forecast every series ``horizon`` periods past the last period of ``history``.

    ``history``: ``series_id, ds, y``. ``selection``: a frame from :func:`select_models` (``series_id,
    model[, backtest_error, chosen_at, calibration_horizon, calibration_errors]``); series it names with
    one of :data:`MODELS` are refitted with that model only (no selection CV), and their conformal
    intervals come from the cached calibration errors when ``calibration_horizon >= horizon`` (else
    they are calibrated here, by one cross-validation of that model); series it lacks (or names with a
    fallback that no longer applies) are selected here by CV. Without ``selection`` every eligible
    series is selected by CV first.

    Returns one row per series and future period: ``series_id, ds, yhat, yhat_lo, yhat_hi`` (Float64,
    ``>= 0``, ``yhat_lo <= yhat <= yhat_hi``, bounds at ``level``%), ``model`` (what produced it: a
    model name or ``fallback:*``), ``backtest_error`` (RMSSE of the chosen model in CV; null for
    fallbacks and series too short for CV) and ``interval_method`` (``conformal | model | empirical |
    rule``). ``ds`` keeps the input's dtype (date, naive or tz-aware datetime).
    """
    if horizon < 1:
        raise ValueError("horizon must be >= 1")
    if not 0 < level < 100:
        raise ValueError("level must be in (0, 100)")
    freq = _freq(freq)
    season = SEASON[freq]
    z = NormalDist().inv_cdf(0.5 + level / 200)
    filled, restore = _prepare(history, freq)
    if filled.height == 0:
        return _restore(
            pl.DataFrame(
                schema={
                    "series_id": pl.String,
                    "ds": pl.Datetime("us"),
                    "yhat": pl.Float64,
                    "yhat_lo": pl.Float64,
                    "yhat_hi": pl.Float64,
                    "model": pl.String,
                    "backtest_error": pl.Float64,
                    "interval_method": pl.String,
                }
            ),
            restore,
        )
    prof = _profile(filled, season)
    model_ids = prof.filter(pl.col("route") == "model").select("series_id")

    chosen = pl.DataFrame(
        schema={"series_id": pl.String, "model": pl.String, "backtest_error": pl.Float64, **_CALIBRATION}
    )
    if selection is not None and selection.height:
        # older selections lack backtest_error or the calibration columns: nulls (calibrated here)
        sel = selection.select(
            pl.col("series_id").cast(pl.String),
            pl.col("model").cast(pl.String),
            *[
                pl.col(c).cast(t) if c in selection.columns else pl.lit(None, t).alias(c)
                for c, t in {"backtest_error": pl.Float64, **_CALIBRATION}.items()
            ],
        )
        chosen = model_ids.join(
            sel.filter(pl.col("model").is_in(MODELS)).unique("series_id", keep="last"), on="series_id"
        )
    todo = model_ids.filter(~pl.col("series_id").is_in(chosen["series_id"].implode()))
    if todo.height:
        # not in the cached selection (new, or grown past the fallbacks): select now, by CV where possible
        fresh = _select(
            filled.filter(pl.col("series_id").is_in(todo["series_id"].implode())),
            prof.filter(pl.col("series_id").is_in(todo["series_id"].implode())),
            horizon,
            freq,
            CV_WINDOWS,
            calibration_horizon=horizon,
        )
        chosen = pl.concat([chosen, fresh.filter(pl.col("model").is_in(MODELS))], how="vertical_relaxed")

    parts = _model_forecasts(filled, prof, chosen, horizon, freq, level, z)
    rules = _rule_forecasts(prof, horizon, freq, z)
    if rules.height:
        parts.append(rules)
    out = pl.concat(parts, how="vertical_relaxed")
    yhat = pl.col("yhat").fill_nan(None).fill_null(0.0).clip(lower_bound=0.0)
    lo = pl.col("yhat_lo").fill_nan(None).fill_null(pl.col("yhat")).clip(lower_bound=0.0)
    hi = pl.col("yhat_hi").fill_nan(None).fill_null(pl.col("yhat")).clip(lower_bound=0.0)
    out = (
        out.with_columns(yhat.alias("yhat"), lo.alias("yhat_lo"), hi.alias("yhat_hi"))
        .with_columns(
            pl.min_horizontal("yhat_lo", "yhat").alias("yhat_lo"), pl.max_horizontal("yhat_hi", "yhat").alias("yhat_hi")
        )
        .select(list(OUTPUT_COLUMNS))
        .sort("series_id", "ds")
    )
    return _restore(out, restore)
