"""Anomaly detectors (pure logic on hand-built series), evaluation arithmetic, proposals, and the assets."""

from __future__ import annotations

import json
import math
import shutil
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from billing_ai.anomalies import detect_anomalies, episodes
from billing_ai.anomalies.detect import _poisson_lower, _poisson_upper
from billing_ai.evaluation.anomalies import naive_rule, score_kinds

T0 = datetime(2026, 9, 1, tzinfo=UTC)


def events(
    rate_per_hour: float,
    hours: int,
    seed: int = 0,
    customer: str = "cus_a",
    meter: str = "api_calls",
    size: float = 100.0,
    extra: dict[int, int] | None = None,
    endpoint_of_extra: str = "/v1/export",
    zero: range | None = None,
) -> pl.DataFrame:
    """Poisson events with an hour-of-day profile; ``extra`` adds events at given hours (on one endpoint)."""
    rng = np.random.default_rng(seed)
    rows = []
    for h in range(hours):
        lam = rate_per_hour * (0.5 + math.sin(math.pi * (h % 24) / 24) ** 2)
        n = 0 if zero and h in zero else rng.poisson(lam)
        for _ in range(n):
            rows.append(
                (
                    customer,
                    meter,
                    T0 + timedelta(hours=h, seconds=int(rng.integers(0, 3600))),
                    size * float(rng.lognormal(0, 0.3)),
                    "/v1/query",
                    "us-east-1",
                )
            )
        for _ in range((extra or {}).get(h, 0)):
            rows.append(
                (
                    customer,
                    meter,
                    T0 + timedelta(hours=h, seconds=int(rng.integers(0, 3600))),
                    size * float(rng.lognormal(0, 0.3)),
                    endpoint_of_extra,
                    "us-west-2",
                )
            )
    return pl.DataFrame(
        rows, schema=["customer_id", "meter_name", "ts", "quantity", "endpoint", "region"], orient="row"
    )


def flagged(out: pl.DataFrame, kind: str) -> pl.DataFrame:
    return out.filter((pl.col("kind") == kind) & pl.col("is_anomaly"))


def test_poisson_tails_hand_checked():
    # P(X >= 2 | 1) = 1 - e^-1 (1 + 1) = 0.264241; P(X <= 0 | 3) = e^-3 = 0.049787; P(X >= 0) = 1
    assert _poisson_upper(np.array([2.0]), np.array([1.0]))[0] == pytest.approx(0.264241, abs=1e-6)
    assert _poisson_lower(np.array([0.0]), np.array([3.0]))[0] == pytest.approx(0.049787, abs=1e-6)
    assert _poisson_upper(np.array([0.0]), np.array([5.0]))[0] == 1.0


def test_a_spike_is_flagged_with_its_root_cause():
    usage = events(8, 24 * 21, extra={24 * 18 + 14: 60})
    out = detect_anomalies(usage, "1h")
    spikes = flagged(out, "spike")
    assert spikes.height >= 1
    top = spikes.sort("score", descending=True).row(0, named=True)
    assert top["ts"] == T0 + timedelta(hours=24 * 18 + 14)
    assert top["observed"] > 4 * top["expected"] and top["confidence"] > 0.9
    assert "endpoint=/v1/export region=us-west-2" in top["root_cause"]
    assert flagged(out, "drop").height == 0 and flagged(out, "duplicate").height == 0


def test_a_drop_is_flagged_and_normal_weeks_are_quiet():
    gap_start, gap_end = T0 + timedelta(hours=24 * 15 + 6), T0 + timedelta(hours=24 * 16 + 6)
    usage = events(8, 24 * 21, zero=range(24 * 15 + 6, 24 * 16 + 6))  # 24 h without events
    out = detect_anomalies(usage, "1h")
    drops = episodes(flagged(out, "drop")).sort("buckets", descending=True)
    assert drops["start"][0] <= gap_start + timedelta(hours=6) and drops["end"][0] >= gap_end - timedelta(hours=6)
    # quiet night hours next to the gap may join it, nothing far away does
    assert drops["start"].min() >= gap_start - timedelta(hours=12) and drops["end"].max() <= gap_end + timedelta(
        hours=12
    )
    assert flagged(out, "spike").height == 0
    assert flagged(detect_anomalies(events(8, 24 * 21, seed=3), "1h"), "spike").height == 0  # no false alarm


def test_scale_free_and_pre_aggregated_buckets():
    # the same series in hourly buckets, in units and in thousandths: the same buckets are flagged
    usage = events(8, 24 * 21, extra={24 * 18 + 14: 60})
    buckets = (
        usage.with_columns(pl.col("ts").dt.truncate("1h"))
        .group_by("customer_id", "meter_name", "ts")
        .agg(pl.col("quantity").sum())
    )
    a = flagged(detect_anomalies(buckets, "1h", rows="buckets"), "spike")
    b = flagged(detect_anomalies(buckets.with_columns(pl.col("quantity") * 1000), "1h", rows="buckets"), "spike")
    assert a.height >= 1 and a["ts"].to_list() == b["ts"].to_list()
    assert T0 + timedelta(hours=24 * 18 + 14) in a["ts"].to_list()


def test_flat_series_short_history_and_gaps():
    hours = [T0 + timedelta(hours=h) for h in range(24 * 10)]
    flat = pl.DataFrame({"customer_id": "c", "meter_name": "m", "ts": hours, "quantity": 50.0})
    assert detect_anomalies(flat, "1h", rows="buckets").filter(pl.col("is_anomaly")).height == 0
    jump = flat.with_columns(
        pl.when(pl.col("ts") == hours[200]).then(150.0).otherwise(pl.col("quantity")).alias("quantity")
    )
    assert hours[200] in flagged(detect_anomalies(jump, "1h", rows="buckets"), "spike")["ts"].to_list()
    short = events(5, 30, seed=1)  # a day and a bit: no baseline to speak of, nothing confident
    assert (
        detect_anomalies(short, "1h").filter(pl.col("is_anomaly") & (pl.col("detector") == "statistical")).height == 0
    )
    gappy = events(8, 24 * 14, seed=2).filter(pl.col("ts").dt.hour() != 3)  # an hour that never reports
    out = detect_anomalies(gappy, "1h")
    assert flagged(out, "spike").height == 0  # missing buckets are zeros, learned as the hour's profile
    daily = detect_anomalies(events(8, 24 * 28, extra={24 * 20 + h: 40 for h in range(10)}), "1d")
    assert T0 + timedelta(days=20) in flagged(daily, "spike")["ts"].to_list()


def test_input_validation():
    with pytest.raises(ValueError, match="missing columns"):
        detect_anomalies(pl.DataFrame({"customer_id": ["c"], "ts": [T0], "quantity": [1.0]}))
    with pytest.raises(ValueError, match="NaN"):
        detect_anomalies(
            pl.DataFrame({"customer_id": ["c"], "meter_name": ["m"], "ts": [T0], "quantity": [float("nan")]})
        )
    with pytest.raises(ValueError, match="grain"):
        detect_anomalies(events(1, 5), "5m")
    assert detect_anomalies(events(1, 5).head(0)).height == 0


def test_logical_detectors():
    usage = events(4, 24 * 20, seed=4)
    dup = usage.slice(100, 3).with_columns(pl.lit("x").alias("tag"))  # the same payloads again
    both = pl.concat([usage, dup.drop("tag")]).with_columns(
        pl.format("evt_{}", pl.int_range(pl.len())).alias("event_id")
    )
    cancel = T0 + timedelta(days=12)
    subs = pl.DataFrame({"customer_id": ["cus_a"], "started_at": [T0 + timedelta(days=1)], "canceled_at": [cancel]})
    out = detect_anomalies(both, "1h", subscriptions=subs, now=T0 + timedelta(days=20))
    d = flagged(out, "duplicate")
    assert int(d["evidence"].str.json_path_match("$.duplicate_events").cast(pl.Int64).sum()) == 3
    after = flagged(out, "usage_after_cancel")
    assert after["ts"].min() >= cancel and after["ts"].min() < cancel + timedelta(hours=3)
    assert flagged(out, "out_of_period")["ts"].max() < T0 + timedelta(days=1)  # before the start
    # an active account silent for the last 9 days; the drop into it is reported once, as zero_usage
    quiet = events(6, 24 * 30, seed=5).filter(pl.col("ts") < T0 + timedelta(days=21))
    subs = pl.DataFrame(
        {"customer_id": ["cus_a"], "started_at": [T0], "canceled_at": [None]},
        schema_overrides={"canceled_at": pl.Datetime("us", "UTC")},
    )
    out = detect_anomalies(quiet, "1h", subscriptions=subs, now=T0 + timedelta(days=30))
    assert flagged(out, "zero_usage").height == 1 and flagged(out, "drop").height == 0


def test_scoring_arithmetic_and_the_naive_rule():
    faults = pl.DataFrame(
        {
            "kind": ["spike", "spike", "drop", "duplicate", "zero_usage"],
            "customer_id": ["a", "b", "a", "a", "c"],
            "subscription_id": None,
            "meter_name": ["m", "m", "m", "m", None],
            "start": [int((T0 + timedelta(hours=h)).timestamp()) for h in (10, 50, 100, 5, 0)],
            "end": [int((T0 + timedelta(hours=h)).timestamp()) for h in (12, 51, 110, 5, 0)],
            "magnitude": None,
            "event_id": None,
            "original_event_id": None,
        }
    )
    pred = pl.DataFrame(
        {
            "customer_id": ["a", "a", "x", "a", "c"],
            "meter_name": ["m", "m", "m", "m", "*"],
            "ts": [T0 + timedelta(hours=h) for h in (11, 12, 30, 5, 300)],
            "kind": ["spike", "spike", "spike", "duplicate", "zero_usage"],
            "is_anomaly": True,
            "score": 9.0,
            "confidence": 0.95,
            "observed": 1.0,
            "expected": 1.0,
            "root_cause": "",
            "evidence": "",
        }
    )
    r = score_kinds(pred, faults, T0 + timedelta(days=30))
    # spikes: predicted episodes {a 11-13h (hits), x 30h (miss)} -> precision 1/2; truth {a, b} found 1 -> recall 1/2
    assert (r["spike"]["precision"], r["spike"]["recall"], r["spike"]["f1"]) == (0.5, 0.5, 0.5)
    assert (r["drop"]["precision"], r["drop"]["recall"]) == (0.0, 0.0)
    assert r["duplicate"]["f1"] == 1.0 and r["zero_usage"]["f1"] == 1.0 and r["usage_after_cancel"]["f1"] == 1.0
    assert r["overall"]["f1"] == pytest.approx((0.5 + 0 + 1 + 1 + 1) / 5)
    daily = pl.DataFrame(
        {
            "customer_id": "a",
            "meter_name": "m",
            "day": [(T0 + timedelta(days=d)).date() for d in range(7)],
            "quantity": [10, 11, 9, 10, 56, 10, 49],
        }
    )  # median 10: only 56 is over 5x
    assert naive_rule(daily)["ts"].to_list() == [T0 + timedelta(days=4)]


def test_confident_anomalies_become_reviewable_proposals():
    from billing_ai.actions.policy import Policy
    from billing_ai.actions.proposers import ANOMALY_TAG, proposals_from_anomalies
    from billing_ai.writeback.kinds import schema_violations

    ep = pl.DataFrame(
        [
            {
                "customer_id": "cus_a",
                "meter_name": "api_calls",
                "kind": "spike",
                "start": T0,
                "end": T0 + timedelta(hours=2),
                "score": 25.0,
                "confidence": 0.97,
                "observed": 5000.0,
                "expected": 800.0,
                "buckets": 2,
                "root_cause": "endpoint=/v1/export region=us-west-2 carries 85% of the bucket's events",
                "evidence": "{}",
            },
            {
                "customer_id": "cus_a",
                "meter_name": "api_calls",
                "kind": "duplicate",
                "start": T0,
                "end": T0 + timedelta(hours=1),
                "score": 10.0,
                "confidence": 0.99,
                "observed": 300.0,
                "expected": 0.0,
                "buckets": 1,
                "root_cause": "3 event(s) repeat",
                "evidence": "{}",
            },
            {
                "customer_id": "cus_b",
                "meter_name": "api_calls",
                "kind": "spike",
                "start": T0,
                "end": T0,
                "score": 8.0,
                "confidence": 0.5,
                "observed": 1.0,
                "expected": 1.0,
                "buckets": 1,
                "root_cause": "",
                "evidence": "{}",
            },
        ]
    )
    customers = pl.DataFrame(
        {
            "customer_id": ["cus_a", "cus_b"],
            "success_manager": ["Dana Whitfield", None],
            "platform": ["recurly", "stripe"],
        }
    )
    ps = proposals_from_anomalies(ep, customers, Policy.load(), T0)
    assert {p.platform for p in ps} == {"recurly"}  # the customer's own platform carries the action
    # the spike: case, manager message, heads-up; the duplicates: one internal case; cus_b is not confident
    assert [p.kind for p in ps] == ["support_case", "chat_message", "customer_email", "support_case"]
    case = ps[0]
    assert case.params["tags"] == [ANOMALY_TAG] and case.params["priority"] == "high"
    assert "5,000 observed vs 800 expected" in case.params["body"] and "/v1/export" in case.params["body"]
    assert ps[1].params["recipient"] == "Dana Whitfield"
    assert ps[2].params["template"] == "usage_anomaly_heads_up"
    assert all(not schema_violations(p) for p in ps)
    assert ps[0].evidence["query"].startswith("SELECT * FROM marts.usage_anomalies")


# ---- assets ---------------------------------------------------------------------------------------------
def test_nightly_asset_and_an_hourly_spike_flagged_within_one_run(tiny_warehouse, tiny_world, tmp_path):
    import dagster as dg

    from billing_ai import warehouse as wh
    from billing_ai.anomalies.assets import HOURLY_ANOMALY_ASSETS, usage_anomalies
    from billing_ai.clock import parse_instant
    from billing_ai.ingestion.usage_assets import raw_usage_events
    from billing_ai.pipeline import ANALYTICS_ASSETS, PLATFORM_ASSETS, USAGE_ASSETS
    from billing_ai.resources import PipelineSettings
    from billing_ai_tests.conftest import TEST_PII_KEY, pipeline_resources

    path = tmp_path / "w.duckdb"
    shutil.copy(tiny_warehouse, path)
    res = pipeline_resources("http://127.0.0.1:9", path, tiny_world)
    assert dg.materialize([*ANALYTICS_ASSETS], resources=res, selection=[usage_anomalies]).success
    con = wh.connect(path)
    assert wh.count(con, "marts.usage_anomalies") > 0
    con.close()

    # a burst lands in a new inbox file for the hour after as_of; the clock moves one hour on
    as_of = parse_instant(tiny_world.config.as_of)
    hour = as_of.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    con = wh.connect(path)
    cust, sub = con.execute(
        "SELECT customer_id, subscription_id FROM core.usage_events GROUP BY ALL ORDER BY count(*) DESC LIMIT 1"
    ).fetchone()
    con.close()
    inbox = tmp_path / "inbox"
    shutil.copytree(tiny_world.paths.inbox_dir, inbox)
    stamp = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731 -- a one-line local helper reads best inline
    burst = [
        {
            "event_id": f"burst_{i}",
            "customer_id": cust,
            "subscription_id": sub,
            "meter_name": "api_calls",
            "quantity": "250",
            "timestamp": stamp(hour + timedelta(seconds=30 * i)),
            "metadata": {"endpoint": "/v1/export", "region": "us-west-2"},
            "received_at": stamp(hour + timedelta(minutes=50)),
        }
        for i in range(80)
    ]
    (inbox / f"usage-{hour:%Y-%m-%d}-burst.ndjson").write_text("\n".join(json.dumps(e) for e in burst) + "\n")
    later = dict(
        res,
        settings=PipelineSettings(
            as_of=(hour + timedelta(hours=1, minutes=5)).isoformat(), inbox_dir=str(inbox), pii_key=TEST_PII_KEY
        ),
    )
    day = hour.date().isoformat()
    intraday = dg.materialize(
        [*PLATFORM_ASSETS, *USAGE_ASSETS],
        resources=later,
        partition_key=day,
        selection=[raw_usage_events, *USAGE_ASSETS],
    )
    assert intraday.success
    hourly = dg.materialize([*HOURLY_ANOMALY_ASSETS], resources=later, partition_key=f"{hour:%Y-%m-%d-%H:%M}")
    assert hourly.success
    flags = wh.connect(path).sql("SELECT * FROM marts.usage_anomalies_hourly WHERE is_anomaly").pl()
    spike = flags.filter((pl.col("customer_id") == cust) & (pl.col("kind") == "spike"))
    assert spike.height >= 1 and spike["ts"].max() == hour
    assert "us-west-2" in spike.sort("score")["root_cause"][-1]
    ledger = res["actions"].ledger()
    kinds = {
        a["kind"] for a in ledger.actions() if a["target_id"] == cust and a["proposer"] == "analytics:usage_anomalies"
    }
    assert {"support_case", "customer_email"} <= kinds  # proposed, not sent: a person reviews first
    assert not any(a["status"] == "succeeded" for a in ledger.actions())


def test_batching_by_customer_changes_nothing(monkeypatch):
    import billing_ai.anomalies.detect as d

    usage = pl.concat([events(8, 24 * 21, seed=s, customer=f"cus_{s}", extra={24 * 18 + s: 60}) for s in range(4)])
    whole = detect_anomalies(usage, "1h", multivariate_features=False)
    monkeypatch.setattr(d, "ROWS_PER_BATCH", 5000)  # several batches
    batched = detect_anomalies(usage, "1h", multivariate_features=False)
    key = ["customer_id", "meter_name", "ts", "kind"]
    assert (
        whole.filter(pl.col("is_anomaly"))
        .select(key)
        .sort(key)
        .equals(batched.filter(pl.col("is_anomaly")).select(key).sort(key))
    )


def test_the_multivariate_detector_scores_the_same_events_the_same_in_any_order():
    """The seeded forest is fitted on account-days in a fixed order: the same events, read back from the
    warehouse in another order (a parallel scan), give the same unusual-mix flags and scores."""
    from billing_ai.anomalies.detect import DetectorConfig, multivariate

    # more account-days than the forest's subsample (256): which ones it draws depends on the order
    usage = pl.concat(
        [events(2, 24 * 21, seed=s, customer=f"cus_{s}", extra={24 * 15 + s: 60}) for s in range(16)]
    ).with_columns(pl.lit(None, pl.String).alias("project"))
    a = multivariate(usage, DetectorConfig())
    b = multivariate(usage.sample(fraction=1.0, shuffle=True, seed=7), DetectorConfig())
    assert a.height > 0  # some account-day stands out
    key = ["customer_id", "ts"]
    assert a.sort(key).select(*key, "score", "root_cause").equals(b.sort(key).select(*key, "score", "root_cause"))
