"""Deterministic synthetic world: customers, plans, subscriptions, usage, invoices.

Everything is drawn from one ``numpy`` generator seeded by ``WorldConfig.seed``
in a fixed order, so the same config always writes byte-identical tables.

Usage is simulated per customer x meter x hour as a Poisson number of events
whose rate carries weekly and hour-of-day seasonality, per-customer growth and
noise; each event's quantity is drawn around the customer's event size.
Injected faults have fixed magnitudes and are recorded in ``truth/``:

* ``spike``: the rate times 3-10 for 1-6 hours, mostly on one endpoint+region (adding >= 10
  expected events)
* ``drop``: the rate times at most 0.2 for 6-48 hours (over >= 30 expected events)
* ``duplicate``: 0.5% of events re-sent with the same payload and a new id
* ``usage_after_cancel``: events keep coming after a cancellation
* ``zero_usage``: an active account that goes silent
* late events: 0.3% land 1-10 days after they happened

The platform side (meter event summaries, invoices, payments) is computed by
:mod:`billing_ai.sandbox.invoicing`, the sandbox's own rating code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from billing_ai.sandbox import catalog as cat
from billing_ai.sandbox.world import WorldConfig, WorldPaths, add_months, make_id, ts

SEGMENTS = ("self_serve", "mid_market", "enterprise")
REGIONS = ("na", "eu", "apac")
CLOUD_REGIONS = {"na": "us-east-1", "eu": "eu-west-1", "apac": "ap-northeast-1"}
ALL_CLOUD_REGIONS = ("us-east-1", "us-west-2", "eu-west-1", "ap-northeast-1")
ENDPOINTS = ("/v1/search", "/v1/ingest", "/v1/query", "/v1/export", "/v1/auth")
DEPARTMENTS = ("engineering", "data", "marketing", "support", "finance")
CSMS = ("csm_ana", "csm_bo", "csm_chen", "csm_dara", "csm_eli", "csm_fumi")
_WORDS_A = (
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Vandelay",
    "Stark",
    "Wayne",
    "Tyrell",
    "Cyberdyne",
    "Soylent",
    "Wonka",
    "Aperture",
    "Black Mesa",
    "Oscorp",
    "Massive",
)
_WORDS_B = ("Labs", "Systems", "Analytics", "Cloud", "Works", "Dynamics", "Data", "Logistics")
FIRST_NAMES = ("Alex", "Sam", "Jordan", "Taylor", "Morgan", "Riley", "Casey", "Jamie", "Avery", "Quinn")

EVENT_RATE = {"api_calls": 1.6, "storage_gb_hours": 1.0, "compute_seconds": 0.6}  # events / hour
MONTHLY_VOLUME = {  # typical monthly units by segment (median of a lognormal)
    "api_calls": {"self_serve": 120_000, "mid_market": 1_500_000, "enterprise": 9_000_000},
    "storage_gb_hours": {"self_serve": 150 * 730, "mid_market": 1_500 * 730, "enterprise": 15_000 * 730},
    "compute_seconds": {"self_serve": 20_000, "mid_market": 300_000, "enterprise": 2_500_000},
}
DOW = np.array([1.0, 1.06, 1.06, 1.02, 0.95, 0.55, 0.5])  # Monday first
REGION_UTC_OFFSET = {"na": -5, "eu": 1, "apac": 9}
MILLI = 1000  # quantities are simulated in integer thousandths of a unit
# Spikes and drops are injected only where the data can show them (see _simulate_usage): on a series
# with one event every few hours a 6-hour "drop" removes two events, which no detector can tell from
# chance, and ground truth that nobody could see would measure the generator, not the detector.
MIN_SPIKE_SURPLUS_EVENTS = 10.0
MIN_DROP_EVENTS = 30.0


@dataclass
class World:
    config: WorldConfig
    tables: dict[str, pl.DataFrame]  # platform-neutral entities
    truth: dict[str, pl.DataFrame]
    events: pl.DataFrame  # every simulated event (inbox + late + future)


def _hod_profile(offset: int) -> np.ndarray:
    """Hour-of-day factor (UTC hours) for a business-hours workload, mean 1."""
    local = (np.arange(24) + offset) % 24
    f = 0.3 + np.exp(-0.5 * ((local - 14) / 3.5) ** 2)
    return f / f.mean()


def generate_world(config: WorldConfig, progress: Callable[[str], None] | None = None) -> World:
    say = progress or (lambda _msg: None)
    rng = np.random.default_rng(config.seed)
    seed = config.seed
    start = config.start_dt()
    as_of = config.as_of_dt()
    end = start + timedelta(days=config.days + config.future_days)
    n = config.customers

    # ---- customers -------------------------------------------------------
    say(f"customers ({n})")
    seg_idx = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
    reg_idx = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    jpy_draw = rng.random(n)
    coupon_draw = rng.random(n)
    balance_draw = rng.random(n)
    optout_draw = rng.random(n)
    customers, projects = [], []
    platforms = list(config.platforms)
    weights = np.array([config.platforms[p] for p in platforms], dtype=float)
    plat_idx = rng.choice(len(platforms), size=n, p=weights / weights.sum())
    for i in range(n):
        seg, reg = SEGMENTS[seg_idx[i]], REGIONS[reg_idx[i]]
        cur = {"na": "usd", "eu": "eur"}.get(reg) or ("jpy" if jpy_draw[i] < 0.7 else "usd")
        company = f"{_WORDS_A[i % len(_WORDS_A)]} {_WORDS_B[(i // len(_WORDS_A)) % len(_WORDS_B)]} {i}"
        contact = FIRST_NAMES[int(rng.integers(len(FIRST_NAMES)))]
        cid = make_id("cus", seed, i)
        customers.append(
            {
                "customer_id": cid,
                "name": company,
                "email": f"{contact.lower()}.billing@{company.split()[0].lower()}{i}.example",
                "segment": seg,
                "region": reg,
                "currency": cur,
                "success_manager": CSMS[int(rng.integers(len(CSMS)))],
                "coupon_percent_off": 20 if coupon_draw[i] < 0.04 else (10 if coupon_draw[i] < 0.10 else 0),
                "starting_credit": -5000 if balance_draw[i] < 0.05 else 0,  # customer balance (credit)
                "email_opt_out": bool(optout_draw[i] < 0.05),
                "platform": platforms[plat_idx[i]],
                "invoice_prefix": make_id("pfx", seed, i)[4:12].upper(),
            }
        )
        for p in range(int(rng.integers(1, 5))):
            dept = DEPARTMENTS[int(rng.integers(len(DEPARTMENTS)))]
            projects.append(
                {
                    "customer_id": cid,
                    "project": f"proj-{i:04d}-{p}",
                    "department": dept,
                    "tagged": bool(rng.random() > 0.2),  # untagged projects hide their department
                }
            )

    # ---- catalog: products, meters, prices ---------------------------------
    say("catalog")
    created0 = ts(start - timedelta(days=400))
    products = [
        {
            "product_id": make_id("prod", seed, comp),
            "component": comp,
            "name": comp.replace("_", " ").title(),
            "created": created0,
        }
        for comp in (*cat.LICENSED, *cat.METERED)
    ]
    prod_by_comp = {p["component"]: p["product_id"] for p in products}
    meters = [
        {
            "meter_id": make_id("mtr", seed, m),
            "meter_name": m,
            "display_name": v[0],
            "event_name": v[1],
            "aggregation": v[2],
            "created": created0,
        }
        for m, v in cat.METERS.items()
    ]
    meter_by_name = {m["meter_name"]: m["meter_id"] for m in meters}
    prices = []
    price_index: dict[tuple[str, str, str], dict] = {}
    for (plan, cur), specs in cat.catalog().items():
        for k, spec in enumerate(specs):
            row = {
                "price_id": make_id("price", seed, plan, cur, spec.component),
                "product_id": prod_by_comp[spec.component],
                "plan": plan,
                "currency": cur,
                "component": spec.component,
                "usage_type": spec.usage_type,
                "billing_scheme": spec.billing_scheme,
                "unit_amount_decimal": spec.unit_amount_decimal,
                "tiers_mode": spec.tiers_mode,
                "tiers_json": json.dumps(
                    [
                        {"up_to": t.up_to, "unit_amount_decimal": t.unit_amount_decimal, "flat_amount": t.flat_amount}
                        for t in spec.tiers
                    ]
                )
                if spec.tiers
                else None,
                "divide_by": spec.divide_by,
                "round": spec.round,
                "meter_id": meter_by_name.get(spec.meter) if spec.meter else None,
                "meter_name": spec.meter,
                "lookup_key": f"{plan}_{spec.component}_{cur}",
                "created": created0 + k,
            }
            prices.append(row)
            price_index[(plan, cur, spec.component)] = row

    # ---- subscriptions, items, lifecycle changes ---------------------------
    say("subscriptions")
    plan_by_seg = {"self_serve": ([0, 1], [0.8, 0.2]), "mid_market": ([1, 2], [0.7, 0.3]), "enterprise": ([2], [1.0])}
    seats_by_plan = {0: (1, 6), 1: (5, 31), 2: (20, 201)}
    subs, items, changes = [], [], []
    for i, c in enumerate(customers):
        choices, probs = plan_by_seg[c["segment"]]
        plan_i = int(rng.choice(choices, p=probs))
        if rng.random() < 0.85:
            sub_start = start + timedelta(days=int(rng.integers(0, 28)), hours=int(rng.integers(0, 24)))
        else:
            sub_start = start + timedelta(
                days=int(rng.integers(30, max(31, config.days - 10))), hours=int(rng.integers(0, 24))
            )
        seats = int(rng.integers(*seats_by_plan[plan_i]))
        sid = make_id("sub", seed, i)
        event_draw = rng.random()
        change_at = sub_start + timedelta(days=float(rng.uniform(5, 60)))
        kind = None
        if event_draw < config.upgrade_rate and plan_i < 2:
            kind = "upgrade"
        elif event_draw < config.upgrade_rate + config.downgrade_rate and plan_i > 0:
            kind = "downgrade"
        elif event_draw < config.upgrade_rate + config.downgrade_rate + config.cancel_rate:
            kind = "cancel"
        if kind and not (sub_start + timedelta(days=3) < change_at < as_of - timedelta(days=1)):
            kind = None
        change_at = change_at.replace(microsecond=0)
        commitment = cat.MIN_COMMITMENT[c["currency"]] if (c["segment"] == "enterprise" and plan_i == 2) else None
        sub = {
            "subscription_id": sid,
            "customer_id": c["customer_id"],
            "currency": c["currency"],
            "created": ts(sub_start),
            "start": ts(sub_start),
            "anchor": ts(sub_start),
            "canceled_at": ts(change_at) if kind == "cancel" else None,
            "minimum_commitment": commitment,
            "plan": cat.PLANS[
                plan_i if kind not in ("upgrade", "downgrade") else plan_i + (1 if kind == "upgrade" else -1)
            ],
        }
        subs.append(sub)
        segments = [(plan_i, ts(sub_start), ts(change_at) if kind else None)]
        if kind in ("upgrade", "downgrade"):
            new_plan = plan_i + (1 if kind == "upgrade" else -1)
            segments.append((new_plan, ts(change_at), None))
            changes.append(
                {
                    "subscription_id": sid,
                    "kind": kind,
                    "at": ts(change_at),
                    "from_plan": cat.PLANS[plan_i],
                    "to_plan": cat.PLANS[new_plan],
                }
            )
        elif kind == "cancel":
            changes.append(
                {
                    "subscription_id": sid,
                    "kind": "cancel",
                    "at": ts(change_at),
                    "from_plan": cat.PLANS[plan_i],
                    "to_plan": None,
                }
            )
        for seg_no, (p_i, s_from, s_to) in enumerate(segments):
            for comp in (*cat.LICENSED, *cat.METERED):
                price = price_index[(cat.PLANS[p_i], c["currency"], comp)]
                qty = 1 if comp == "platform" else (seats if comp == "seats" else None)
                items.append(
                    {
                        "subscription_item_id": make_id("si", seed, i, seg_no, comp),
                        "subscription_id": sid,
                        "customer_id": c["customer_id"],
                        "price_id": price["price_id"],
                        "component": comp,
                        "meter_name": price["meter_name"],
                        "quantity": qty,
                        "valid_from": s_from,
                        "valid_to": s_to,
                        "created": s_from,
                    }
                )

    # ---- usage ---------------------------------------------------------------
    say("usage simulation")
    events, faults = _simulate_usage(config, rng, customers, subs, projects, start, as_of, end)

    truth_faults = pl.DataFrame(
        faults,
        schema={
            "kind": pl.String,
            "customer_id": pl.String,
            "subscription_id": pl.String,
            "meter_name": pl.String,
            "start": pl.Int64,
            "end": pl.Int64,
            "magnitude": pl.Float64,
            "event_id": pl.String,
            "original_event_id": pl.String,
        },
    )

    tables = {
        "customers": pl.DataFrame(customers),
        "products": pl.DataFrame(products),
        "meters": pl.DataFrame(meters),
        "prices": pl.DataFrame(prices, infer_schema_length=None),
        "subscriptions": pl.DataFrame(subs, infer_schema_length=None),
        "subscription_items": pl.DataFrame(items, infer_schema_length=None),
    }
    truth = {
        "faults": truth_faults,
        "projects": pl.DataFrame(projects),
        "subscription_changes": pl.DataFrame(
            changes,
            schema={
                "subscription_id": pl.String,
                "kind": pl.String,
                "at": pl.Int64,
                "from_plan": pl.String,
                "to_plan": pl.String,
            },
        ),
    }

    say("platform invoices and payments")
    from billing_ai.sandbox.invoicing import bill_world

    billing = bill_world(config, tables, events, rng)
    tables.update(billing.tables)
    truth.update(billing.truth)
    return World(config=config, tables=tables, truth=truth, events=events)


def _simulate_usage(config, rng, customers, subs, projects, start, as_of, end):
    hours = int((end - start).total_seconds() // 3600)
    t0 = ts(start)
    hour_ts = t0 + 3600 * np.arange(hours)
    hour_of_day = (np.arange(hours) + start.hour) % 24
    dow = (np.arange(hours) // 24 + start.weekday()) % 7
    day_idx = np.arange(hours) // 24
    as_of_ts = ts(as_of)

    sub_by_cust = {s["customer_id"]: s for s in subs}
    proj_by_cust: dict[str, list[dict]] = {}
    for p in projects:
        proj_by_cust.setdefault(p["customer_id"], []).append(p)

    faults: list[dict] = []
    series_meta = []  # (customer, sub, meter, region)
    rates = []  # per-series hourly event rate vectors
    sizes = []
    spike_masks = []
    for c in customers:
        sub = sub_by_cust[c["customer_id"]]
        active_from = sub["start"]
        active_to = sub["canceled_at"] or 2**62
        if sub["canceled_at"] and rng.random() < config.usage_after_cancel_rate:
            stop_after = sub["canceled_at"] + int(rng.integers(2, 15)) * 86400
            faults.append(
                {
                    "kind": "usage_after_cancel",
                    "customer_id": c["customer_id"],
                    "subscription_id": sub["subscription_id"],
                    "meter_name": None,
                    "start": sub["canceled_at"],
                    "end": stop_after,
                    "magnitude": None,
                    "event_id": None,
                    "original_event_id": None,
                }
            )
            active_to = stop_after
        silent_from = None
        if rng.random() < config.zero_usage_rate and not sub["canceled_at"]:
            silent_from = (as_of_ts - int(rng.integers(10, 30)) * 86400) // 86400 * 86400
            faults.append(
                {
                    "kind": "zero_usage",
                    "customer_id": c["customer_id"],
                    "subscription_id": sub["subscription_id"],
                    "meter_name": None,
                    "start": silent_from,
                    "end": None,
                    "magnitude": None,
                    "event_id": None,
                    "original_event_id": None,
                }
            )
        active = (hour_ts >= active_from - 3599) & (hour_ts < active_to)
        if silent_from is not None:
            active &= hour_ts < silent_from
        growth = float(rng.normal(0.003, 0.004))
        hod = _hod_profile(REGION_UTC_OFFSET[c["region"]])
        for meter in cat.METERED:
            vol = MONTHLY_VOLUME[meter][c["segment"]] * float(rng.lognormal(0, 0.5))
            ev_rate = EVENT_RATE[meter] * config.events_scale
            size = vol / (EVENT_RATE[meter] * 730)
            season = np.ones(hours) if meter == "storage_gb_hours" else DOW[dow] * hod[hour_of_day]
            lam = ev_rate * season * np.exp(growth * day_idx) * active
            spike = np.zeros(hours, dtype=bool)
            lo = 14 * 24
            hi = int((as_of_ts - t0) // 3600) - 6
            if rng.random() < config.spike_rate and hi > lo:
                h0 = int(rng.integers(lo, hi))
                dur = int(rng.integers(1, 7))
                mag = float(rng.uniform(3, 10))
                # injected only where it is observable: the surplus must be a handful of events, not
                # one (a 3x "spike" on 0.3 expected events is indistinguishable from noise by any method)
                if active[h0 : h0 + dur].all() and (mag - 1) * lam[h0 : h0 + dur].sum() >= MIN_SPIKE_SURPLUS_EVENTS:
                    lam[h0 : h0 + dur] *= mag
                    spike[h0 : h0 + dur] = True
                    faults.append(
                        {
                            "kind": "spike",
                            "customer_id": c["customer_id"],
                            "subscription_id": sub["subscription_id"],
                            "meter_name": meter,
                            "start": int(hour_ts[h0]),
                            "end": int(hour_ts[h0] + dur * 3600),
                            "magnitude": mag,
                            "event_id": None,
                            "original_event_id": None,
                        }
                    )
            if rng.random() < config.drop_rate and hi > lo:
                h0 = int(rng.integers(lo, hi))
                dur = int(rng.integers(6, 49))
                mag = float(rng.uniform(0.0, 0.2))
                # ... and a drop must remove enough events to be seen (longer, up to 48 h, if need be)
                while dur < 48 and lam[h0 : h0 + dur].sum() < MIN_DROP_EVENTS:
                    dur += 1
                if (
                    active[h0 : h0 + dur].all()
                    and not spike[h0 : h0 + dur].any()
                    and lam[h0 : h0 + dur].sum() >= MIN_DROP_EVENTS
                ):
                    lam[h0 : h0 + dur] *= mag
                    faults.append(
                        {
                            "kind": "drop",
                            "customer_id": c["customer_id"],
                            "subscription_id": sub["subscription_id"],
                            "meter_name": meter,
                            "start": int(hour_ts[h0]),
                            "end": int(hour_ts[h0] + dur * 3600),
                            "magnitude": mag,
                            "event_id": None,
                            "original_event_id": None,
                        }
                    )
            series_meta.append((c["customer_id"], sub["subscription_id"], meter, c["region"]))
            rates.append(lam)
            sizes.append(size)
            spike_masks.append(spike)

    lam = np.stack(rates)  # series x hours
    counts = rng.poisson(lam)
    s_idx, h_idx = np.nonzero(counts)
    reps = counts[s_idx, h_idx]
    ev_s = np.repeat(s_idx, reps)
    ev_h = np.repeat(h_idx, reps)
    n_ev = ev_s.size
    size_arr = np.array(sizes)
    q = size_arr[ev_s] * rng.lognormal(0, 0.35, n_ev)
    meter_of = np.array([m[2] for m in series_meta])
    ev_meter = meter_of[ev_s]
    qty_milli = np.where(
        ev_meter == "storage_gb_hours", np.maximum(1, np.round(q * MILLI)), np.maximum(1, np.round(q)) * MILLI
    ).astype(np.int64)
    ev_ts = hour_ts[ev_h] + rng.integers(0, 3600, n_ev)

    # metadata: project (weighted), endpoint, region; spikes concentrate on one endpoint+region
    cust_of = np.array([m[0] for m in series_meta])
    ev_cust = cust_of[ev_s]
    proj_choice = rng.random(n_ev)
    endpoint = np.array(ENDPOINTS)[rng.choice(len(ENDPOINTS), n_ev, p=[0.35, 0.25, 0.2, 0.1, 0.1])]
    home_region = np.array([CLOUD_REGIONS[m[3]] for m in series_meta])[ev_s]
    other_region = np.array(ALL_CLOUD_REGIONS)[rng.integers(0, len(ALL_CLOUD_REGIONS), n_ev)]
    region = np.where(rng.random(n_ev) < 0.8, home_region, other_region)
    spike_ev = np.stack(spike_masks)[ev_s, ev_h]
    if spike_ev.any():
        # the surplus of a spike comes from one endpoint in one region: a root cause to find
        take = spike_ev & (rng.random(n_ev) < 0.8)
        endpoint = np.where(take, "/v1/export", endpoint)
        region = np.where(take, "us-west-2", region)

    project = np.empty(n_ev, dtype=object)
    department = np.empty(n_ev, dtype=object)
    cust_codes, cust_inv = np.unique(ev_cust, return_inverse=True)
    for k, cid in enumerate(cust_codes):
        plist = proj_by_cust[cid]
        sel = cust_inv == k
        pick = np.minimum((proj_choice[sel] * len(plist)).astype(int), len(plist) - 1)
        project[sel] = np.array([p["project"] for p in plist], dtype=object)[pick]
        department[sel] = np.array([p["department"] if p["tagged"] else None for p in plist], dtype=object)[pick]

    order = np.lexsort((ev_s, ev_ts))
    seed = config.seed
    ev = pl.DataFrame(
        {
            "customer_id": ev_cust[order],
            "subscription_id": np.array([m[1] for m in series_meta])[ev_s][order],
            "meter_name": ev_meter[order],
            "quantity_milli": qty_milli[order],
            "ts": ev_ts[order],
            "project": pl.Series(project[order].tolist(), dtype=pl.String),
            "department": pl.Series(department[order].tolist(), dtype=pl.String),
            "endpoint": endpoint[order],
            "region": region[order],
        }
    )
    ev = ev.with_row_index("n").with_columns(
        (pl.lit(f"evt_{seed:04x}_") + pl.col("n").cast(pl.String).str.zfill(9)).alias("event_id"),
        pl.lit(None, dtype=pl.String).alias("duplicate_of"),
    )

    # duplicates: same payload (timestamp included), new id, landing in the same file
    dup_mask = rng.random(ev.height) < config.duplicate_rate
    dups = ev.filter(pl.Series(dup_mask)).with_columns(
        pl.col("event_id").alias("duplicate_of"),
        (pl.col("event_id") + "_r").alias("event_id"),
    )
    for row in dups.select("customer_id", "subscription_id", "meter_name", "ts", "event_id", "duplicate_of").iter_rows(
        named=True
    ):
        faults.append(
            {
                "kind": "duplicate",
                "customer_id": row["customer_id"],
                "subscription_id": row["subscription_id"],
                "meter_name": row["meter_name"],
                "start": row["ts"],
                "end": row["ts"],
                "magnitude": None,
                "event_id": row["event_id"],
                "original_event_id": row["duplicate_of"],
            }
        )
    ev = pl.concat([ev, dups]).drop("n")

    # landing: a few minutes after the event, or 1-10 days late for a few
    delay = rng.integers(5, 1800, ev.height)
    late = rng.random(ev.height) < config.late_rate
    delay = np.where(late, rng.integers(1, 11, ev.height) * 86400 + delay, delay)
    ev = ev.with_columns(
        (pl.col("ts") + pl.Series(delay)).alias("landed_at"),
        pl.Series("is_late", late),
    ).sort("landed_at", "event_id")
    return ev, faults


def write_world(world: World, paths: WorldPaths, progress: Callable[[str], None] | None = None) -> dict:
    """Write the world: platform tables, truth, and the inbox usage files."""
    say = progress or (lambda _msg: None)
    cfg = world.config
    as_of_ts = ts(cfg.as_of_dt())
    paths.platform.mkdir(parents=True, exist_ok=True)
    paths.truth.mkdir(parents=True, exist_ok=True)
    for name, df in world.tables.items():
        df.write_parquet(paths.platform / f"{name}.parquet")
    for name, df in world.truth.items():
        df.write_parquet(paths.truth / f"{name}.parquet")

    ev = world.events
    # after as_of: kept only as ground truth, aggregated daily for forecast evaluation
    future = ev.filter(pl.col("ts") >= as_of_ts)
    future_daily = (
        future.with_columns(pl.from_epoch("ts").dt.date().alias("day"))
        .group_by("customer_id", "subscription_id", "meter_name", "day")
        .agg(pl.col("quantity_milli").sum(), pl.len().alias("events"))
        .sort("customer_id", "meter_name", "day")
    )
    future_daily.write_parquet(paths.truth / "future_usage_daily.parquet")
    # events that happened before as_of but land after it are not in the inbox yet
    ev.filter((pl.col("ts") < as_of_ts) & (pl.col("landed_at") >= as_of_ts)).write_parquet(
        paths.truth / "pending_late_events.parquet"
    )
    ev.filter(pl.col("ts") < as_of_ts).select("event_id", "is_late", "landed_at").write_parquet(
        paths.truth / "event_landing.parquet"
    )

    inbox = ev.filter((pl.col("ts") < as_of_ts) & (pl.col("landed_at") < as_of_ts))
    counts = write_inbox(inbox, paths.inbox_dir, say)
    manifest = {**cfg.to_json(), "events_in_inbox": inbox.height, "inbox_files": counts, "written_at_as_of": cfg.as_of}
    paths.manifest.write_text(json.dumps(manifest, indent=2))
    return manifest


def usage_file_frame(ev: pl.DataFrame) -> pl.DataFrame:
    """The product's usage log record shape, as written to the inbox."""
    meta = pl.struct(
        pl.col("project"),
        pl.col("department"),
        pl.col("endpoint"),
        pl.col("region"),
    )
    return ev.select(
        "event_id",
        "customer_id",
        "subscription_id",
        "meter_name",
        (pl.col("quantity_milli").cast(pl.Decimal(38, 3)) / 1000).cast(pl.Decimal(38, 3)).alias("quantity"),
        pl.from_epoch("ts").dt.replace_time_zone("UTC").alias("timestamp"),
        meta.alias("metadata"),
        pl.from_epoch("landed_at").dt.replace_time_zone("UTC").alias("received_at"),
    )


def write_inbox(ev: pl.DataFrame, inbox_dir: Path, say: Callable[[str], None]) -> int:
    """One file per landing day, rotating Parquet, NDJSON and CSV."""
    inbox_dir.mkdir(parents=True, exist_ok=True)
    ev = ev.with_columns(pl.from_epoch("landed_at").dt.date().alias("landed_day"))
    days = ev["landed_day"].unique().sort().to_list()
    for k, day in enumerate(days):
        part = usage_file_frame(ev.filter(pl.col("landed_day") == day))
        fmt = ("parquet", "ndjson", "csv")[k % 3]
        out = inbox_dir / f"usage-{day.isoformat()}.{fmt}"
        if fmt == "parquet":
            part.write_parquet(out)
        elif fmt == "ndjson":
            part.with_columns(
                pl.col("quantity").cast(pl.String), pl.col("timestamp", "received_at").dt.strftime("%Y-%m-%dT%H:%M:%SZ")
            ).write_ndjson(out)
        else:
            part.with_columns(
                pl.col("quantity").cast(pl.String),
                pl.col("timestamp", "received_at").dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
                pl.col("metadata").struct.json_encode(),
            ).write_csv(out)
        if k % 20 == 0:
            say(f"inbox file {k + 1}/{len(days)}")
    return len(days)


def period_bounds(anchor: int, at: int) -> tuple[int, int]:
    """Monthly billing period [start, end) containing ``at`` for an anchor."""
    a = datetime.fromtimestamp(anchor, UTC)
    k = 0
    while ts(add_months(a, k + 1, a.day)) <= at:
        k += 1
    return ts(add_months(a, k, a.day)), ts(add_months(a, k + 1, a.day))
