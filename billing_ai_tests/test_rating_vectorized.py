"""The SQL rating agrees with the pure engine, to the minor unit and per tier.

Property tests: random plans (per unit, package, graduated, volume; unit prices
with up to 12 places; flat tier fees) and random quantities (0, tier bounds
exactly and either side of them, decimals with up to 3 places, up to 1e10) are
rated by ``vectorized.rate_relation`` in a throwaway in-memory DuckDB holding
``core.prices``/``core.price_tiers`` (docs/contract.md) and by ``engine.rate``;
many quantities go through one DuckDB call per example.
"""

from __future__ import annotations

from decimal import Decimal as D

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing_ai.money import round_minor
from billing_ai.rating import PricePlan, Tier, load_plans, rate
from billing_ai.rating.vectorized import rate_relation, register_plans, tier_breakdown_relation
from billing_ai_tests.conftest import CORE_PRICES_DDL as PRICES_DDL


def _f(d: D | None) -> str | None:
    return None if d is None else format(d, "f")


def warehouse(plans: list[PricePlan], raw_prices: list[tuple] = (), raw_tiers: list[tuple] = (), con=None):
    """A throwaway in-memory DuckDB with core.prices/core.price_tiers holding ``plans``.

    Pass ``con`` (made by this function) to empty and refill its tables instead.
    """
    if con is None:
        con = duckdb.connect()
        con.execute(PRICES_DDL)
    else:
        con.execute("DELETE FROM core.prices; DELETE FROM core.price_tiers")
    prices = [
        (
            p.price_id,
            p.currency,
            p.usage_type,
            p.billing_scheme,
            p.tiers_mode,
            _f(p.unit_amount_decimal),
            p.package_size,
            p.package_rounding,
        )
        for p in plans
    ] + list(raw_prices)
    tiers = [
        (p.price_id, i, _f(t.up_to), _f(t.unit_amount_decimal), t.flat_amount)
        for p in plans
        for i, t in enumerate(p.tiers)
    ] + list(raw_tiers)
    if prices:
        con.executemany(
            "INSERT INTO core.prices (price_id, platform, currency, usage_type, billing_scheme, tiers_mode, "
            "unit_amount_decimal, package_size, package_rounding, active) "
            "VALUES (?, 'stripe', ?, ?, ?, ?, CAST(? AS DECIMAL(38, 12)), ?, ?, true)",
            prices,
        )
    if tiers:
        con.executemany(
            "INSERT INTO core.price_tiers VALUES (?, 'stripe', ?, CAST(? AS DECIMAL(38, 9)), "
            "CAST(? AS DECIMAL(38, 12)), ?)",
            tiers,
        )
    return con


def usage_table(con, rows: list[tuple[int, str, D]], name: str = "usage") -> str:
    """Register (row_id, price_id, quantity DECIMAL(38,9)) rows as ``name`` (exact: Arrow decimals)."""
    table = pa.table(
        {
            "row_id": pa.array([r[0] for r in rows], pa.int64()),
            "price_id": pa.array([r[1] for r in rows], pa.string()),
            "quantity": pa.array([r[2] for r in rows], pa.decimal128(38, 9)),
        }
    )
    con.register(name, table)
    return name


def assert_sql_agrees(con, plans: dict[str, PricePlan], rows: list[tuple[int, str, D]], rule="half_up"):
    name = usage_table(con, rows)
    got = {r[0]: r for r in rate_relation(con, name, rule=rule).fetchall()}
    tiers: dict[int, list[tuple]] = {}
    for r in tier_breakdown_relation(con, name).fetchall():
        tiers.setdefault(r[0], []).append(r[1:])
    assert set(got) == {r[0] for r in rows}
    for row_id, price_id, q in rows:
        want = rate(plans[price_id], q, rule=rule)
        _, sql_price, sql_currency, sql_q, sql_amount, sql_exact = got[row_id]
        assert (sql_price, sql_currency, sql_q) == (price_id, want.currency, q)
        assert sql_exact == want.exact, (price_id, q)
        assert sql_amount == want.amount, (price_id, q, want.exact)
        want_tiers = [(t.tier_index, t.units, t.unit_amount_decimal, t.flat_amount, t.exact) for t in want.tiers]
        assert tiers.get(row_id, []) == want_tiers, (price_id, q)


# -- strategies ----------------------------------------------------------------------

CURRENCIES = st.sampled_from(["usd", "eur", "jpy", "kwd"])


@st.composite
def unit_prices(draw, max_integer_digits: int = 4) -> D:
    """Non-negative unit prices with 0..12 decimal places (often 12), up to 10^max_integer_digits."""
    places = draw(st.one_of(st.just(12), st.integers(0, 12)))
    n = draw(st.one_of(st.integers(0, 10 ** (places + max_integer_digits)), st.integers(0, 10**places)))
    return D(n).scaleb(-places)


@st.composite
def bounds(draw) -> list[D]:
    """Strictly ascending tier bounds: integers (as Stripe has) or up to 3 places, up to 1e10."""
    n = draw(st.integers(0, 4))
    milli = draw(
        st.lists(
            st.one_of(st.integers(1, 10**13), st.integers(1, 10**6).map(lambda i: i * 1000)),
            min_size=n,
            max_size=n,
            unique=True,
        )
    )
    return [D(m).scaleb(-3).normalize() for m in sorted(milli)]


FLAT = st.one_of(st.just(0), st.integers(0, 10**6))


@st.composite
def plans(draw, price_id: str) -> PricePlan:
    currency = draw(CURRENCIES)
    kind = draw(st.sampled_from(["per_unit", "package", "graduated", "volume"]))
    if kind == "per_unit":
        return PricePlan.per_unit(price_id, currency, draw(unit_prices()))
    if kind == "package":
        return PricePlan.package(
            price_id, currency, draw(unit_prices(6)), draw(st.integers(1, 10**6)), draw(st.sampled_from(["up", "down"]))
        )
    ups = draw(bounds()) + [None]
    tiers = [Tier(u, draw(unit_prices()), draw(FLAT)) for u in ups]
    if draw(st.booleans()):  # an included allowance
        tiers[0] = Tier(tiers[0].up_to, D(0), 0)
    return PricePlan(price_id, currency, "metered", "tiered", tiers_mode=kind, tiers=tuple(tiers))


MILLI = D("0.001")


@st.composite
def quantities(draw, plan: PricePlan) -> list[D]:
    """0, every tier bound exactly and 0.001 / 1 either side, package multiples, random decimals."""
    qs = {D(0)}
    edges = [t.up_to for t in plan.tiers if t.up_to is not None]
    if plan.package_size:
        edges += [D(plan.package_size) * k for k in (1, 2, 1000)]
    for e in edges:
        qs.update({e, e + MILLI, e + 1, max(e - MILLI, D(0)), max(e - 1, D(0))})
    randoms = draw(
        st.lists(
            st.one_of(
                st.integers(0, 10**13).map(lambda m: D(m) * MILLI),  # up to 1e10, 3 places
                st.integers(0, 10**10).map(D),
                st.integers(0, 10**6).map(lambda m: D(m) * MILLI),
            ),
            max_size=12,
        )
    )
    qs.update(randoms)
    return sorted(qs)


@st.composite
def catalogs(draw):
    ps = [draw(plans(f"price_{i}")) for i in range(draw(st.integers(1, 4)))]
    rows = []
    for p in ps:
        for q in draw(quantities(p)):
            rows.append((len(rows) + 1, p.price_id, q))
    return ps, rows


# -- properties ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_con():
    """One in-memory warehouse for all examples of a property (its tables are refilled per example)."""
    con = warehouse([])
    yield con
    con.close()


@pytest.mark.slow  # 200 generated catalogs rated in SQL and by the engine
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(catalog=catalogs(), rule=st.sampled_from(["half_up", "half_even"]))
def test_sql_rating_equals_the_engine(shared_con, catalog, rule):
    ps, rows = catalog
    con = warehouse(ps, con=shared_con)
    assert_sql_agrees(con, {p.price_id: p for p in ps}, rows, rule=rule)


@settings(max_examples=50, deadline=None)
@given(ps=st.lists(plans("p"), min_size=1, max_size=3))
def test_load_plans_round_trips_through_core(shared_con, ps):
    ps = [
        PricePlan(
            f"p{i}",
            p.currency,
            p.usage_type,
            p.billing_scheme,
            p.tiers_mode,
            p.unit_amount_decimal,
            p.package_size,
            p.package_rounding,
            p.tiers,
        )
        for i, p in enumerate(ps)
    ]
    con = warehouse(ps, con=shared_con)
    assert load_plans(con) == {p.price_id: p for p in ps}


# -- hand-picked cases -----------------------------------------------------------------

WORLD_PLANS = [
    PricePlan.package("starter_api", "usd", "50", 1000, "up"),
    PricePlan.graduated("growth_api", "usd", [Tier(100_000, "0"), Tier(1_000_000, "0.05"), Tier(None, "0.03")]),
    PricePlan.volume(
        "scale_api", "usd", [Tier(1_000_000, "0.04", 2500), Tier(10_000_000, "0.025"), Tier(None, "0.015")]
    ),
    PricePlan.per_unit("scale_storage", "usd", "0.018333333333"),
    PricePlan.per_unit("growth_platform", "usd", "49900", usage_type="licensed"),
    PricePlan.graduated("growth_api_jpy", "jpy", [Tier(100_000, "0"), Tier(1_000_000, "0.075"), Tier(None, "0.045")]),
    PricePlan.per_unit("half", "usd", "0.5"),
    PricePlan.per_unit("pico", "kwd", "0.000000000001"),
]


def test_hand_computed_cases_in_sql():
    con = warehouse(WORLD_PLANS)
    rows = [
        (1, "growth_api", D(230_375)),
        (2, "scale_api", D(1_000_000)),
        (3, "scale_api", D(1_000_001)),
        (4, "starter_api", D(1000)),
        (5, "starter_api", D(1001)),
        (6, "scale_storage", D(600)),
        (7, "growth_platform", D(1)),
        (8, "growth_api_jpy", D(230_375)),
        (9, "scale_api", D(0)),
    ]
    name = usage_table(con, rows)
    amounts = {r[0]: r[4] for r in rate_relation(con, name).fetchall()}
    assert amounts == {1: 6519, 2: 42_500, 3: 25_000, 4: 50, 5: 100, 6: 11, 7: 49_900, 8: 9_778, 9: 0}
    assert_sql_agrees(con, {p.price_id: p for p in WORLD_PLANS}, rows)


@pytest.mark.parametrize("rule", ["half_up", "half_even"])
def test_sql_ties_round_like_money_round_minor(rule):
    con = warehouse(WORLD_PLANS)
    # 0.5 per unit: exact k/2 for k = 0..11 (ties at every odd k); 1e-12 fils x 5e11 = 0.5 exactly
    rows = [(k, "half", D(k)) for k in range(12)] + [
        (100, "pico", D(500_000_000_000)),
        (101, "pico", D(499_999_999_999)),
        (102, "pico", D(1_500_000_000_000)),
    ]
    name = usage_table(con, rows)
    for row_id, _, _, _, amount, exact in rate_relation(con, name, rule=rule).fetchall():
        assert amount == round_minor(exact, rule), (row_id, exact)
    assert_sql_agrees(con, {p.price_id: p for p in WORLD_PLANS}, rows, rule=rule)


def test_documented_precision_bound_is_exact():
    # quantity up to 1e12 with 9 places x a 12-place unit price below 1e5 minor units: < 1e17, exact
    plan = PricePlan.per_unit("edge", "usd", "99999.999999999999")
    con = warehouse([plan])
    rows = [(1, "edge", D("999999999999.999999999")), (2, "edge", D("1000000000000"))]
    assert_sql_agrees(con, {"edge": plan}, rows)
    # beyond it DuckDB refuses instead of rounding: 1e12 x 1e6 minor units
    con = warehouse([PricePlan.per_unit("huge", "usd", "1000000")])
    with pytest.raises(duckdb.OutOfRangeException):
        rate_relation(con, usage_table(con, [(1, "huge", D(10**12))])).fetchall()


# -- fail closed -----------------------------------------------------------------------


def _fails(con, sql: str, match: str):
    with pytest.raises((duckdb.Error, TypeError), match=match):
        rate_relation(con, sql).fetchall()


def test_sql_fails_closed():
    con = warehouse(
        WORLD_PLANS,
        raw_prices=[
            ("bad_currency", "xts", "metered", "per_unit", None, "1", None, None),
            ("bounded", "usd", "metered", "tiered", "volume", None, None, None),
            ("no_tiers", "usd", "metered", "tiered", "graduated", None, None, None),
        ],
        raw_tiers=[("bounded", 0, "10", "1", 0)],
    )
    _fails(con, "SELECT 1 AS row_id, 'bad_currency' AS price_id, 1 AS quantity", "unknown currency xts")
    _fails(con, "SELECT 1 AS row_id, 'nope' AS price_id, 1 AS quantity", "unknown price_id nope")
    _fails(con, "SELECT 1 AS row_id, 'half' AS price_id, -1 AS quantity", "negative quantity")
    _fails(con, "SELECT 1 AS row_id, 'half' AS price_id, CAST(NULL AS DECIMAL(38, 9)) AS quantity", "NULL quantity")
    _fails(
        con,
        "SELECT 1 AS row_id, 'half' AS price_id, CAST('0.0000000001' AS DECIMAL(38, 12)) AS quantity",
        "more than 9 decimal places",
    )
    _fails(con, "SELECT 1 AS row_id, 'half' AS price_id, 1.5::DOUBLE AS quantity", "DOUBLE")
    _fails(
        con, "SELECT * FROM (VALUES (1, 'half', 1), (1, 'half', 2)) t(row_id, price_id, quantity)", "duplicate row_id"
    )
    _fails(con, "SELECT 1 AS row_id, 'bounded' AS price_id, 11 AS quantity", "beyond the last tier")
    _fails(con, "SELECT 1 AS row_id, 'no_tiers' AS price_id, 5 AS quantity", "without tiers")
    # the per-tier breakdown runs the same checks, even for rows with no tiers charged
    with pytest.raises(duckdb.Error, match="unknown currency"):
        tier_breakdown_relation(con, "SELECT 1 AS row_id, 'bad_currency' AS price_id, 1 AS quantity").fetchall()
    with pytest.raises(ValueError, match="rounding rule"):
        rate_relation(con, "SELECT 1 AS row_id, 'half' AS price_id, 1 AS quantity", rule="half_down")


def test_sql_refuses_tiers_that_do_not_ascend():
    con = warehouse(
        [],
        raw_prices=[("t", "usd", "metered", "tiered", "graduated", None, None, None)],
        raw_tiers=[("t", 0, "10", "1", 0), ("t", 1, "5", "1", 0), ("t", 2, None, "1", 0)],
    )
    _fails(con, "SELECT 1 AS row_id, 't' AS price_id, 1 AS quantity", "do not ascend")


# -- plans that do not exist yet ---------------------------------------------------------


def test_hypothetical_plans_are_rated_in_sql():
    con = duckdb.connect()
    new_api = PricePlan.graduated("sim_api", "usd", [Tier(250_000, "0"), Tier(None, "0.04", 1000)])
    prices, tiers = register_plans(con, [new_api, *WORLD_PLANS])
    con.execute(
        "CREATE TABLE u AS SELECT * FROM (VALUES (1, 'sim_api', 230375), (2, 'sim_api', 260000)) "
        "t(row_id, price_id, quantity)"
    )
    got = rate_relation(con, "u", prices_table=prices, tiers_table=tiers).fetchall()
    # 230,375 within the allowance: 0; 260,000: 10,000 x 0.04 + 1,000 = 1,400
    assert [r[4] for r in got] == [0, 1_400]
    assert load_plans(con, prices, tiers)["sim_api"] == new_api
    # a relation works as input too
    rel = con.sql("SELECT row_id, price_id, quantity FROM u WHERE row_id = 2")
    assert rate_relation(con, rel, prices_table=prices, tiers_table=tiers).fetchall()[0][4] == 1_400
