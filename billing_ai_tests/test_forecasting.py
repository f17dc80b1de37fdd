"""Usage forecasting library: fallbacks with hand-checked numbers, model selection, intervals, scales, gaps,
cached selections and hourly data. Fast: a few small StatsForecast runs, shared through module fixtures."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from statistics import NormalDist

import numpy as np
import polars as pl
import pytest

from billing_ai.forecasting import MODELS, OUTPUT_COLUMNS, forecast_usage, select_models

D0 = date(2026, 1, 1)
DAYS = 120
H = 14
WEEK = np.array([1.0, 1.1, 1.2, 1.1, 1.0, 0.4, 0.3])  # a working-week usage profile
Z80 = NormalDist().inv_cdf(0.9)


def frame(
    series: dict[str, list[float] | np.ndarray], start_offsets: dict[str, int] | None = None, days: int = DAYS
) -> pl.DataFrame:
    """Daily history; a series starts at ``start_offsets[sid]`` days so that all end on the same last day."""
    rows = []
    for sid, ys in series.items():
        start = (start_offsets or {}).get(sid, days - len(ys))
        rows += [(sid, D0 + timedelta(days=start + i), float(v)) for i, v in enumerate(ys)]
    return pl.DataFrame(rows, schema={"series_id": pl.String, "ds": pl.Date, "y": pl.Float64}, orient="row")


def poisson_weekly(level: float, days: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.poisson(level * WEEK[np.arange(days) % 7]).astype(float)


def by_series(fc: pl.DataFrame, sid: str) -> pl.DataFrame:
    return fc.filter(pl.col("series_id") == sid).sort("ds")


PATTERN = [10.0, 20.0, 30.0, 40.0, 50.0, 5.0, 1.0]
RNG = np.random.default_rng(7)
SPARSE = RNG.poisson(6, DAYS) * (RNG.random(DAYS) < 0.12)
MIXED = {
    "weekly": np.tile(PATTERN, DAYS // 7 + 1)[:DAYS],
    "constant": [7.5] * DAYS,
    "zeros": [0.0] * DAYS,
    "new3": [3.0, 5.0, 7.0],
    "new1": [4.0],
    "short": [8.0, 12.0, 10.0, 9.0, 11.0, 30.0, 10.0, 10.0, 12.0, 8.0],
    "sparse": SPARSE.astype(float),
    "trend": 100 + 3.0 * np.arange(DAYS) + np.random.default_rng(3).normal(0, 4, DAYS),
    "seasonal": poisson_weekly(200, DAYS, 11),
}


@pytest.fixture(scope="module")
def mixed():
    history = frame(MIXED)
    sel = select_models(history, H, "1d")
    fc = forecast_usage(history, H, "1d", level=80, selection=sel)
    return history, sel, fc


def test_output_shape_and_invariants(mixed):
    history, sel, fc = mixed
    assert tuple(fc.columns) == OUTPUT_COLUMNS
    assert fc.height == len(MIXED) * H
    assert fc.schema["ds"] == pl.Date and fc.schema["yhat"] == pl.Float64
    last = history["ds"].max()
    for sid in MIXED:
        f = by_series(fc, sid)
        assert f["ds"].to_list() == [last + timedelta(days=k) for k in range(1, H + 1)]  # common origin
        assert f["model"].n_unique() == 1
    assert fc.filter(pl.col("yhat_lo") < 0).height == 0
    assert fc.filter((pl.col("yhat_lo") > pl.col("yhat")) | (pl.col("yhat") > pl.col("yhat_hi"))).height == 0
    assert sel.columns[:4] == ["series_id", "model", "backtest_error", "chosen_at"]  # the stable columns first
    assert sel.columns[4:] == ["calibration_horizon", "calibration_errors"]
    assert sel.height == len(MIXED)


def test_weekly_periodic_series_forecasts_its_own_pattern(mixed):
    _, sel, fc = mixed
    f = by_series(fc, "weekly")
    # day DAYS is the next after the history; its position in the 7-day cycle is DAYS % 7
    expected = [PATTERN[(DAYS + k) % 7] for k in range(H)]
    assert f["yhat"].to_list() == pytest.approx(expected, abs=1e-6)
    assert f["model"][0] == "SeasonalNaive"  # zero CV error, and the simplest on a tie
    assert sel.filter(pl.col("series_id") == "weekly")["backtest_error"][0] == pytest.approx(0.0, abs=1e-9)


def test_constant_zero_and_new_series_fallbacks(mixed):
    _, _, fc = mixed
    c = by_series(fc, "constant")
    assert c["yhat"].to_list() == pytest.approx([7.5] * H)
    assert (c["yhat_hi"] - c["yhat_lo"]).max() == pytest.approx(0.0)
    assert c["model"][0] == "fallback:constant"

    zero = by_series(fc, "zeros")
    assert zero["yhat"].sum() == 0 and zero["yhat_hi"].sum() == 0 and zero["model"][0] == "fallback:zeros"

    new3 = by_series(fc, "new3")  # mean of what exists: (3+5+7)/3 = 5; spread max(sd=2, mean=5) = 5
    assert new3["model"][0] == "fallback:new_series"
    assert new3["yhat"].to_list() == pytest.approx([5.0] * H)
    assert new3["yhat_hi"][0] == pytest.approx(5 + Z80 * 5 * math.sqrt(1 + 1 / 3))
    assert new3["yhat_lo"][0] == 0.0  # 5 - 7.4 clipped: usage is never negative
    new1 = by_series(fc, "new1")
    assert new1["yhat"][0] == pytest.approx(4.0) and new1["yhat_hi"][0] == pytest.approx(4 + Z80 * 4 * math.sqrt(2))


def test_short_history_fallback(mixed):
    _, _, fc = mixed
    f = by_series(fc, "short")
    last7 = MIXED["short"][-7:]  # mean of the last season (7 days), spread from those 7 days
    assert f["model"][0] == "fallback:short_history"
    assert f["yhat"][0] == pytest.approx(float(np.mean(last7)))
    half = Z80 * float(np.std(last7, ddof=1)) * math.sqrt(1 + 1 / 7)
    assert f["yhat_hi"][0] == pytest.approx(np.mean(last7) + half)
    assert f["yhat_lo"][0] == pytest.approx(np.mean(last7) - half)


def test_select_models_seasonal_and_intermittent(mixed):
    _, sel, fc = mixed
    model = dict(sel.select("series_id", "model").rows())
    assert model["seasonal"] in {"MSTL", "AutoTheta", "SeasonalNaive"}
    assert model["sparse"] == "CrostonOptimized"
    assert model["constant"] == "fallback:constant" and model["new3"] == "fallback:new_series"
    err = dict(sel.select("series_id", "backtest_error").rows())
    assert err["seasonal"] is not None and 0 <= err["seasonal"] < 1.5
    # the seasonal forecast keeps the weekly shape: the "weekend" (profile 0.4, 0.3) well below the rest
    f = by_series(fc, "seasonal").with_columns(((pl.col("ds") - D0).dt.total_days() % 7).alias("pos"))
    busy, quiet = f.filter(pl.col("pos") < 5)["yhat"].mean(), f.filter(pl.col("pos") >= 5)["yhat"].mean()
    assert quiet < 0.5 * busy


def test_select_models_prefers_a_seasonal_model_on_noisy_seasonal_series():
    history = frame({f"s{i}": poisson_weekly(100, DAYS, 100 + i) for i in range(4)})
    sel = select_models(history, H, "1d")
    assert set(sel["model"]) <= {"MSTL", "AutoTheta"}  # beats last-week-again on noisy data
    assert (sel["backtest_error"] < 1).all()


def test_trending_series_forecast_increases(mixed):
    _, _, fc = mixed
    f = by_series(fc, "trend")
    assert f["yhat"][-1] > f["yhat"][0]
    assert f["yhat"].mean() > float(np.mean(MIXED["trend"][-14:]))


def test_selection_reuse_gives_the_same_models_without_cv(mixed, monkeypatch):
    history, sel, fc = mixed
    import billing_ai.forecasting.forecast as fmod

    def no_cv(*a, **k):
        raise AssertionError("cross-validation ran despite a cached selection")

    monkeypatch.setattr(fmod, "_select", no_cv)
    again = forecast_usage(history, H, "1d", selection=sel.drop("chosen_at"))
    assert (
        again.select("series_id", "model")
        .unique()
        .sort("series_id")
        .equals(fc.select("series_id", "model").unique().sort("series_id"))
    )
    assert again["yhat"].to_list() == pytest.approx(fc["yhat"].to_list())
    # a selection forcing a model is obeyed (the nightly run refits the cached choice only)
    forced = sel.with_columns(
        pl.when(pl.col("series_id") == "seasonal")
        .then(pl.lit("SeasonalNaive"))
        .otherwise(pl.col("model"))
        .alias("model")
    )
    f2 = forecast_usage(history, H, "1d", selection=forced)
    assert by_series(f2, "seasonal")["model"][0] == "SeasonalNaive"


def test_without_selection_matches_with(mixed):
    history, sel, fc = mixed
    plain = forecast_usage(history, H, "1d")
    assert (
        plain.select("series_id", "model")
        .unique()
        .sort("series_id")
        .equals(fc.select("series_id", "model").unique().sort("series_id"))
    )


def test_gaps_are_zero_usage():
    ys = poisson_weekly(50, DAYS, 5)
    history = frame({"gappy": ys}).filter(pl.col("y") > 0)  # unreported days dropped from the input
    history = history.filter(~pl.col("ds").is_between(D0 + timedelta(days=40), D0 + timedelta(days=50)))
    sel = select_models(history, H, "1d")
    fc = forecast_usage(history, H, "1d", selection=sel)
    assert fc.height == H and fc["ds"][0] == D0 + timedelta(days=DAYS)
    assert fc["yhat"].is_finite().all()
    # a series that stops reporting: the missing tail is zeros, the forecast starts after the frame's last day
    stopped = pl.concat([frame({"a": poisson_weekly(50, DAYS, 6)}), frame({"b": [5.0] * 60}, start_offsets={"b": 0})])
    fc2 = forecast_usage(stopped, 7, "1d")
    b = by_series(fc2, "b")
    assert b["ds"][0] == D0 + timedelta(days=DAYS)
    assert b["model"][0] != "fallback:constant"  # 60 fives then 60 zeros is not constant
    assert b["yhat"].max() < 2.5  # the last two months were zero


def test_huge_and_tiny_scales_scale_alike():
    base = poisson_weekly(80, DAYS, 21)
    history = frame({"unit": base, "huge": base * 3e6, "tiny": base * 1e-5})
    sel = select_models(history, H, "1d")
    assert sel["model"].n_unique() == 1  # the same shape at any scale: the same choice
    fc = forecast_usage(history, H, "1d", selection=sel)
    unit, huge, tiny = (by_series(fc, s) for s in ("unit", "huge", "tiny"))
    for col in ("yhat", "yhat_lo", "yhat_hi"):
        assert (huge[col] / 3e6).to_list() == pytest.approx(unit[col].to_list(), rel=1e-3, abs=1e-6)
        assert (tiny[col] / 1e-5).to_list() == pytest.approx(unit[col].to_list(), rel=1e-3, abs=1e-6)
    assert huge["yhat"].min() > 1e6 and 0 < tiny["yhat"].max() < 1e-2


def test_interval_coverage_on_poisson_seasonal_data():
    """Hold out the last H days of 24 Poisson weekly series: the 80% intervals cover ~80% of 336 points."""
    full = {f"p{i}": poisson_weekly(float(lvl), DAYS, 300 + i) for i, lvl in enumerate(np.geomspace(5, 500, 24))}
    history = frame({k: v[:-H] for k, v in full.items()}, days=DAYS - H)
    fc = forecast_usage(history, H, "1d", level=80)
    assert set(fc["model"]) <= set(MODELS) and set(fc["interval_method"]) == {"conformal"}
    truth = frame(full).filter(pl.col("ds") >= D0 + timedelta(days=DAYS - H))
    j = fc.join(truth, on=["series_id", "ds"])
    assert j.height == 24 * H
    coverage = j.select(((pl.col("y") >= pl.col("yhat_lo")) & (pl.col("y") <= pl.col("yhat_hi"))).mean()).item()
    assert 0.6 <= coverage <= 0.97, coverage


def test_hourly_frequency_and_tz_aware_timestamps():
    hours = 24 * 21
    rng = np.random.default_rng(4)
    hod = 0.3 + np.sin(np.pi * (np.arange(hours) % 24) / 24) ** 2
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    history = pl.DataFrame(
        {
            "series_id": ["h1"] * hours + ["h2"] * hours,
            "ds": [t0 + timedelta(hours=i) for i in range(hours)] * 2,
            "y": np.concatenate([rng.poisson(40 * hod), rng.poisson(4 * hod)]).astype(float),
        }
    ).with_columns(pl.col("ds").dt.convert_time_zone("Europe/Berlin"))
    sel = select_models(history, 24, "1h")
    assert set(sel["model"]) <= set(MODELS)
    fc = forecast_usage(history, 48, "1h", selection=sel)
    assert fc.height == 96 and fc.schema["ds"] == pl.Datetime("us", "Europe/Berlin")
    h1 = by_series(fc, "h1")
    assert h1["ds"][0] == t0 + timedelta(hours=hours)
    # the daily cycle: the forecast for mid-day (sin^2 peak, 12:00 UTC) beats the one for midnight UTC
    utc_hour = h1.with_columns(pl.col("ds").dt.convert_time_zone("UTC").dt.hour().alias("hr"))
    assert utc_hour.filter(pl.col("hr") == 12)["yhat"].mean() > 2 * utc_hour.filter(pl.col("hr") == 0)["yhat"].mean()


def test_inputs_validated_and_empty_history():
    with pytest.raises(ValueError):
        forecast_usage(frame({"a": [1.0] * 20}), 7, "1w")
    with pytest.raises(ValueError):
        forecast_usage(frame({"a": [1.0] * 20}), 0)
    empty = pl.DataFrame(schema={"series_id": pl.String, "ds": pl.Date, "y": pl.Float64})
    assert forecast_usage(empty, 7).height == 0 and select_models(empty, 7).height == 0


# ------------------------------------------------------------------ cached conformal calibration (weekly -> nightly)


def cal_frame(rows: dict[str, tuple[int, list]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "series_id": list(rows),
            "calibration_horizon": [h for h, _ in rows.values()],
            "calibration_errors": [e for _, e in rows.values()],
        },
        schema={"series_id": pl.String, "calibration_horizon": pl.Int32, "calibration_errors": pl.List(pl.Float64)},
    )


def test_half_widths_hand_checked():
    from billing_ai.forecasting.forecast import _half_widths

    # 10 windows of 4 steps; window w holds errors [w+1, 100+w, 200+w, 1000]
    errs = [v for w in range(10) for v in (w + 1, 100 + w, 200 + w, 1000)]
    with_null = [None] + errs[1:]  # the 1 of window 0 lost (a failed fit)
    cal = cal_frame({"a": (4, errs), "nulls": (4, with_null), "short": (4, [1.0, 2.0])})
    q = dict(_half_widths(cal, 2, 80).rows())
    # horizon 2: of each window the first max(2, ceil(30 / 10)) = 3 steps, n = 30 scores: 1..10, 100..109,
    # 200..209; rank ceil(31 * 0.8) = 25 -> 204
    assert q["a"] == 204
    # the null still counts in n = 30 (rank 25), but only 29 scores remain: 2..10, 100..109, 200.. -> 205
    assert q["nulls"] == 205
    assert "short" not in q  # fewer errors than one window: no interval from it
    # horizon 4 = the windows' own: every step, n = 40, rank ceil(41 * 0.8) = 33 -> the 1000s
    assert dict(_half_widths(cal, 4, 80).rows())["a"] == 1000
    # level 50 at horizon 2: rank ceil(31 * 0.5) = 16 -> 105 (1..10 are ranks 1-10, 100 is the 11th)
    assert dict(_half_widths(cal, 2, 50).rows())["a"] == 105
    # 3 windows of 31 pooled whole at horizon 31: n = 93, rank ceil(94 * 0.8) = 76 -> the 76th smallest
    big = cal_frame({"b": (31, [float(i) for i in range(93, 0, -1)])})
    assert dict(_half_widths(big, 31, 80).rows())["b"] == 76
    # ... and at horizon 20: the first 20 steps of each window (93..74, 62..43, 31..12), n = 60, rank
    # ceil(61 * 0.8) = 49: past the 20 + 20 of 12..31 and 43..62, the 9th of 74..93
    firsts = sorted([float(v) for w in range(3) for v in range(93 - 31 * w, 73 - 31 * w, -1)])
    assert dict(_half_widths(big, 20, 80).rows())["b"] == firsts[48] == 82


def step_series() -> np.ndarray:
    """PATTERN every week; from day 100 on, 10 more every day."""
    y = np.tile(PATTERN, DAYS // 7 + 1)[:DAYS].copy()
    y[100:] += 10
    return y


def test_calibration_errors_hand_checked():
    """SeasonalNaive (last week again) over 3 windows of 14 days, cutoffs after days 78, 92 and 106 (0-based)."""
    import billing_ai.forecasting.forecast as fmod

    filled, _ = fmod._prepare(frame({"step": step_series()}), "1d")
    prof = fmod._profile(filled, 7)
    cal = fmod._calibrate(filled, prof, pl.DataFrame({"series_id": ["step"], "model": ["SeasonalNaive"]}), H, "1d")
    # window 1 (days 78-91): before the step, exact. Window 2 (92-105): days 100-105 are 10 above last week.
    # window 3 (106-119) repeats days 99-105: day 99 (before the step) misses days 106 and 113 by 10.
    expected = [0.0] * 14 + [0.0] * 8 + [10.0] * 6 + [10.0] + [0.0] * 6 + [10.0] + [0.0] * 6
    assert cal["calibration_horizon"].to_list() == [H]
    assert cal["calibration_errors"][0].to_list() == pytest.approx(expected, abs=1e-9)
    # 34 zeros and 8 tens; n = 42, rank ceil(43 * 0.8) = 35: the first ten -> a +-10 interval
    forced = pl.DataFrame({"series_id": ["step"], "model": ["SeasonalNaive"]})
    fc = forecast_usage(frame({"step": step_series()}), H, "1d", selection=forced)
    assert fc["interval_method"].unique().to_list() == ["conformal"]
    assert (fc["yhat_hi"] - fc["yhat"]).to_list() == pytest.approx([10.0] * H)
    assert (fc["yhat"] - fc["yhat_lo"]).to_list() == pytest.approx([10.0] * H)


@pytest.fixture(scope="module")
def calibrated():
    # "young": 70 days, 28 of them before the oldest of the 3 calibration windows of 14 (< 8 weeks)
    history = frame(
        {k: MIXED[k] for k in ("seasonal", "trend", "sparse", "weekly", "short", "zeros")}
        | {"step": step_series(), "young": poisson_weekly(120, 70, 12)}
    )
    return history, select_models(history, H, "1d", calibration_horizon=H)


def test_calibration_carries_one_fit_forward_only_over_a_long_history(calibrated, monkeypatch):
    from statsforecast import StatsForecast

    import billing_ai.forecasting.forecast as fmod

    history, sel = calibrated
    calls = []
    original = StatsForecast.cross_validation

    def spy(self, *, df, refit=True, **kw):
        calls.append((self.models[0].__class__.__name__, df["unique_id"].n_unique(), refit))
        return original(self, df=df, refit=refit, **kw)

    monkeypatch.setattr(StatsForecast, "cross_validation", spy)
    filled, _ = fmod._prepare(history, "1d")
    prof = fmod._profile(filled, 7)
    chosen = pl.DataFrame(
        {
            "series_id": ["seasonal", "trend", "young", "sparse"],
            "model": ["AutoTheta", "AutoTheta", "AutoTheta", "CrostonOptimized"],
        }
    )
    fmod._calibrate(filled, prof, chosen, H, "1d")
    # 120 days (78 before the oldest window): one fit carried forward; 70 days (28): refitted per window;
    # Croston cannot be carried
    assert sorted(calls) == [("AutoTheta", 1, True), ("AutoTheta", 2, False), ("CrostonOptimized", 1, True)]


def test_cached_calibration_gives_the_fresh_half_widths(calibrated, monkeypatch):
    import billing_ai.forecasting.forecast as fmod

    history, sel = calibrated
    cal = dict(sel.select("series_id", "calibration_horizon").rows())
    assert all(cal[s] == H for s in ("seasonal", "trend", "sparse", "weekly", "step", "young"))
    assert cal["short"] is None and cal["zeros"] is None  # fallbacks: no model, no calibration
    fresh = forecast_usage(history, H, "1d", selection=sel.drop("calibration_horizon", "calibration_errors"))

    def no_cv(*a, **k):
        raise AssertionError("calibrated again despite cached calibration errors")

    monkeypatch.setattr(fmod, "_calibrate", no_cv)
    monkeypatch.setattr(fmod, "_select", no_cv)
    cached = forecast_usage(history, H, "1d", selection=sel)
    assert cached.select("series_id", "ds", "model", "interval_method").equals(
        fresh.select("series_id", "ds", "model", "interval_method")
    )
    for col in ("yhat", "yhat_lo", "yhat_hi"):
        assert cached[col].to_list() == pytest.approx(fresh[col].to_list(), rel=1e-12, abs=1e-9)
    # the half-width is the conformal quantile of the cached errors: 42 of them, the 35th smallest
    errs = sorted(sel.filter(pl.col("series_id") == "seasonal")["calibration_errors"][0].to_list())
    s = by_series(cached, "seasonal")
    assert (s["yhat_hi"] - s["yhat"]).to_list() == pytest.approx([errs[34]] * H)


def test_cached_calibration_for_a_longer_horizon_or_none(calibrated, monkeypatch):
    import billing_ai.forecasting.forecast as fmod

    history, sel = calibrated
    # a cached calibration shorter than the horizon is not stretched: the run calibrates for its own
    longer = forecast_usage(history, H + 7, "1d", selection=sel)
    plain = forecast_usage(history, H + 7, "1d", selection=sel.drop("calibration_horizon", "calibration_errors"))
    assert longer["yhat_hi"].to_list() == pytest.approx(plain["yhat_hi"].to_list())
    # one longer than the horizon serves it, from the first steps of each cached window
    monkeypatch.setattr(fmod, "_calibrate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("CV ran")))
    short = forecast_usage(history, 7, "1d", selection=sel)
    errs = sel.filter(pl.col("series_id") == "seasonal")["calibration_errors"][0].to_list()
    # 3 windows of 14: the first max(7, ceil(30 / 3)) = 10 steps of each, n = 30, rank ceil(31 * 0.8) = 25
    first10 = sorted(errs[w * H + i] for w in range(3) for i in range(10))
    s = by_series(short, "seasonal")
    assert (s["yhat_hi"] - s["yhat"]).to_list() == pytest.approx([first10[24]] * 7)
