"""Rating many rows at once in DuckDB SQL: the same rules as :mod:`billing_ai.rating.engine`.

:func:`rate_relation` takes rows ``(row_id, price_id, quantity)`` (a table name,
a SQL query or a DuckDB relation), joins ``core.prices`` / ``core.price_tiers``
and returns one row per input row::

    row_id, price_id, currency, quantity DECIMAL(38,9),
    amount BIGINT         -- minor units, rounded once per row
    exact DECIMAL(38,21)  -- minor units, unrounded

:func:`tier_breakdown_relation` returns, for the tiered rows, one row per tier
charged (the same tiers, in the same order, as ``RatedLine.tiers``)::

    row_id, tier_index, units DECIMAL(38,9), unit_amount_decimal DECIMAL(38,12),
    flat_amount BIGINT, exact DECIMAL(38,21)

There is no Python loop per row: it is one SQL statement. It must agree with
``engine.rate`` to the minor unit and per tier (``test_rating_vectorized``
checks it on random plans and quantities).

Exactness (why no value is ever silently rounded):

* Quantities are cast to DECIMAL(38,9) -- the type of ``core.price_tiers.up_to``
  -- and a quantity that would lose digits in that cast is an error, not a
  rounding. Unit prices are DECIMAL(38,12) (Stripe allows 12 places).
* A product ``quantity x unit price`` has at most 9 + 12 = 21 decimal places,
  so DECIMAL(38,21) holds it *exactly* whenever its magnitude is below
  10^17 minor units (38 - 21 = 17 integer digits): e.g. any quantity up to 1e12
  at any unit price below 10^5 minor units per unit with up to 12 places, or
  1e10 units at any unit price below 10^7. 10^17 minor units is 10^15
  dollars, beyond any invoice line. DuckDB's DECIMAL(38) arithmetic checks overflow (multiplication, +,
  SUM raise "Out of Range"), so past that bound the query fails; it never
  wraps or falls back to DOUBLE. Every branch is cast to DECIMAL(38,21)
  explicitly, because DuckDB's implicit type for a CASE or UNION of
  DECIMAL(38,21) and DECIMAL(38,12) is DECIMAL(38,12): it would silently drop
  nine places. (DECIMAL / integer is DOUBLE in DuckDB: never divide.)
* Package counts are integer arithmetic on HUGEINT: ``ceil(q/size)`` is
  ``(ceil(q) + size - 1) // size`` and ``floor(q/size)`` is
  ``floor(q) // size`` (identities for a positive integer ``size``), because
  DuckDB's DECIMAL / integer division returns DOUBLE. ``packages x unit`` is
  DECIMAL(38,12).
* Rounding happens once per row, at the end, with the rule of
  :func:`billing_ai.money.round_minor`: ``half_up`` is half away from zero
  (``sign(x) * floor(|x| + 0.5)``, which is Python's ``ROUND_HALF_UP``),
  ``half_even`` is banker's rounding. It MUST agree with ``money.round_minor``;
  the tests compare the two on ties in both directions.

Invalid input fails closed with an error raised by the query: a NULL, negative
or over-precise quantity, a duplicated ``row_id``, an unknown ``price_id``, a
currency :mod:`billing_ai.money` does not know, an unknown billing scheme,
tiers that do not ascend or a quantity beyond the last (bounded) tier.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from decimal import Decimal

import duckdb

from billing_ai.money import MINOR_UNITS, RoundingRule
from billing_ai.rating.plans import PricePlan

__all__ = ["rate_relation", "rating_sql", "register_plans", "tier_breakdown_relation", "tier_breakdown_sql"]

# The rating, as SQL. {usage} is the input rows, {prices}/{tiers} the price
# tables, {currencies} the VALUES list of known currencies (from money.MINOR_UNITS)
# and {final} the closing SELECT (per row, or more CTEs and the per-tier SELECT).
RATING_SQL = """
WITH
-- 1. The rows to rate. Quantities become DECIMAL(38,9): exact, or an error.
usage AS (
    SELECT
        u.row_id,
        u.price_id,
        CASE
            WHEN u.quantity IS NULL
                THEN error('rating: NULL quantity for row ' || CAST(u.row_id AS VARCHAR))
            WHEN u.quantity < 0
                THEN error('rating: negative quantity for row ' || CAST(u.row_id AS VARCHAR))
            WHEN CAST(u.quantity AS DECIMAL(38, 9)) <> u.quantity
                THEN error('rating: quantity has more than 9 decimal places, row ' || CAST(u.row_id AS VARCHAR))
            WHEN count(*) OVER (PARTITION BY u.row_id) > 1
                THEN error('rating: duplicate row_id ' || CAST(u.row_id AS VARCHAR))
            ELSE CAST(u.quantity AS DECIMAL(38, 9))
        END AS quantity
    FROM ({usage}) AS u
),

-- 2. Each row with its price. price_id is re-derived through the checks, and
--    every later step joins on it, so no output can skip them: the price must
--    exist, and its currency must be one billing_ai.money knows (fail closed).
priced AS (
    SELECT
        us.row_id,
        CASE
            WHEN p.price_id IS NULL
                THEN error('rating: unknown price_id ' || coalesce(us.price_id, 'NULL'))
            WHEN known.currency IS NULL
                THEN error('rating: unknown currency ' || coalesce(p.currency, 'NULL') || ' on ' || p.price_id)
            WHEN p.billing_scheme NOT IN ('per_unit', 'tiered')
                  OR (p.billing_scheme = 'tiered' AND coalesce(p.tiers_mode, '') NOT IN ('graduated', 'volume'))
                THEN error('rating: unknown billing scheme on ' || p.price_id)
            WHEN p.billing_scheme = 'per_unit' AND p.unit_amount_decimal IS NULL
                THEN error('rating: per_unit price without unit_amount_decimal: ' || p.price_id)
            WHEN p.package_size IS NOT NULL
                  AND (p.package_size <= 0 OR coalesce(p.package_rounding, '') NOT IN ('up', 'down'))
                THEN error('rating: bad package on ' || p.price_id)
            ELSE p.price_id
        END AS price_id,
        p.currency,
        us.quantity,
        p.billing_scheme,
        p.tiers_mode,
        CAST(p.unit_amount_decimal AS DECIMAL(38, 12)) AS unit_amount_decimal,
        CAST(p.package_size AS HUGEINT) AS package_size,
        p.package_rounding
    FROM usage AS us
    LEFT JOIN {prices} AS p ON p.price_id = us.price_id
    LEFT JOIN (VALUES {currencies}) AS known(currency) ON known.currency = p.currency
),

-- 3. Tiers with their lower bound: tier i covers (lower_bound, up_to], where
--    lower_bound is the previous tier's up_to (0 for the first) and a NULL
--    up_to is infinity. Bounds must ascend; only the last tier may be open.
tiers AS (
    SELECT
        price_id,
        tier_index,
        CAST(up_to AS DECIMAL(38, 9)) AS up_to,
        CAST(unit_amount_decimal AS DECIMAL(38, 12)) AS unit_amount_decimal,
        CAST(coalesce(flat_amount, 0) AS BIGINT) AS flat_amount,
        CASE
            WHEN row_number() OVER w > 1 AND lag(up_to) OVER w IS NULL
                THEN error('rating: a tier follows an open-ended tier on ' || price_id)
            WHEN up_to <= coalesce(lag(up_to) OVER w, 0)
                THEN error('rating: tier bounds do not ascend on ' || price_id)
            ELSE CAST(coalesce(lag(up_to) OVER w, 0) AS DECIMAL(38, 9))
        END AS lower_bound
    FROM {tiers}
    WINDOW w AS (PARTITION BY price_id ORDER BY tier_index)
),

-- Per tiered price: is the last tier open-ended, and if not, how far do tiers go?
tier_reach AS (
    SELECT price_id, bool_or(up_to IS NULL) AS open_ended, max(up_to) AS max_up_to
    FROM tiers
    GROUP BY price_id
),

-- 4. Tiered rows, with their coverage checked: a quantity no tier covers is an error.
tiered AS (
    SELECT
        pr.row_id,
        CASE
            WHEN r.price_id IS NULL
                THEN error('rating: tiered price without tiers: ' || pr.price_id)
            WHEN NOT r.open_ended AND pr.quantity > r.max_up_to
                THEN error('rating: quantity beyond the last tier of ' || pr.price_id)
            ELSE pr.price_id
        END AS price_id,
        pr.tiers_mode,
        pr.quantity
    FROM priced AS pr
    LEFT JOIN tier_reach AS r ON r.price_id = pr.price_id
    WHERE pr.billing_scheme = 'tiered'
),

-- 5. The tiers each row is charged for.
tier_charges AS (
    -- graduated: every tier the quantity reaches into (quantity > lower_bound),
    -- with the units between the tier's lower bound and min(quantity, up_to),
    -- and the tier's flat fee (a zero-priced first tier is an included allowance)
    SELECT
        td.row_id,
        t.tier_index,
        CASE WHEN t.up_to IS NULL OR td.quantity < t.up_to THEN td.quantity ELSE t.up_to END
            - t.lower_bound AS units,
        t.unit_amount_decimal,
        t.flat_amount
    FROM tiered AS td
    JOIN tiers AS t ON t.price_id = td.price_id AND td.quantity > t.lower_bound
    WHERE td.tiers_mode = 'graduated'

    UNION ALL

    -- volume: the one tier the quantity falls in (lower_bound < quantity <= up_to),
    -- all units at its price plus its flat fee; a zero quantity falls in none
    SELECT
        td.row_id,
        t.tier_index,
        td.quantity AS units,
        t.unit_amount_decimal,
        t.flat_amount
    FROM tiered AS td
    JOIN tiers AS t
      ON t.price_id = td.price_id
     AND td.quantity > t.lower_bound
     AND (t.up_to IS NULL OR td.quantity <= t.up_to)
    WHERE td.tiers_mode = 'volume'
),

-- units DECIMAL(38,9) x price DECIMAL(38,12) = DECIMAL(38,21): exact (see the module docstring)
tier_exact AS (
    SELECT
        row_id,
        tier_index,
        CAST(units AS DECIMAL(38, 9)) AS units,
        unit_amount_decimal,
        flat_amount,
        CAST(CAST(units * unit_amount_decimal AS DECIMAL(38, 21)) + flat_amount AS DECIMAL(38, 21)) AS exact
    FROM tier_charges
),

-- 6. The exact amount of every row, unrounded, in minor units.
rated AS (
    SELECT
        pr.row_id,
        -- a tiered row's price_id comes through its coverage checks in `tiered`
        CASE WHEN pr.billing_scheme = 'tiered' THEN td.price_id ELSE pr.price_id END AS price_id,
        pr.currency,
        pr.quantity,
        CASE
            -- per unit: quantity x unit price
            WHEN pr.billing_scheme = 'per_unit' AND pr.package_size IS NULL
                THEN CAST(pr.quantity * pr.unit_amount_decimal AS DECIMAL(38, 21))
            -- package: whole packages (rounded up or down) x price per package, in integers
            WHEN pr.billing_scheme = 'per_unit' AND pr.package_rounding = 'up'
                THEN CAST(((CAST(ceil(pr.quantity) AS HUGEINT) + pr.package_size - 1) // pr.package_size)
                          * pr.unit_amount_decimal AS DECIMAL(38, 21))
            WHEN pr.billing_scheme = 'per_unit'
                THEN CAST((CAST(floor(pr.quantity) AS HUGEINT) // pr.package_size)
                          * pr.unit_amount_decimal AS DECIMAL(38, 21))
            -- tiered: the sum of the tiers charged (none: 0)
            ELSE CAST(coalesce(tc.exact, 0) AS DECIMAL(38, 21))
        END AS exact
    FROM priced AS pr
    LEFT JOIN tiered AS td ON td.row_id = pr.row_id
    LEFT JOIN (SELECT row_id, sum(exact) AS exact FROM tier_exact GROUP BY row_id) AS tc
           ON tc.row_id = pr.row_id
),

-- 7. Round once per row (ROUND_SQL below; must agree with money.round_minor).
rounded AS (
    SELECT row_id, price_id, currency, quantity, exact, floor(exact) AS floor_exact
    FROM rated
){final}
"""

_FINAL_ROWS = """
SELECT
    row_id,
    price_id,
    currency,
    quantity,
    CAST({round_expr} AS BIGINT) AS amount,
    exact
FROM rounded
ORDER BY row_id
"""

_FINAL_TIERS = """,
-- every input row passes the checks of steps 1-4, even one with no tiers charged
checks AS (
    SELECT count(pr.price_id) + count(td.price_id) AS n
    FROM priced AS pr
    LEFT JOIN tiered AS td ON td.row_id = pr.row_id
)
SELECT te.row_id, te.tier_index, te.units, te.unit_amount_decimal, te.flat_amount, te.exact
FROM tier_exact AS te, checks
WHERE checks.n >= 0
ORDER BY te.row_id, te.tier_index
"""

# Rounding of an exact DECIMAL(38,21) ``exact`` (with ``floor_exact`` = floor(exact))
# to an integer, one expression per money.RoundingRule. These MUST agree with
# billing_ai.money.round_minor (ROUND_HALF_UP is half away from zero in Python's
# decimal module; ROUND_HALF_EVEN is banker's rounding).
ROUND_SQL: dict[str, str] = {
    # half away from zero
    "half_up": "CASE WHEN exact >= 0 THEN floor(exact + 0.5) ELSE -floor(0.5 - exact) END",
    # half to even: below .5 down, above .5 up, exactly .5 to the even neighbour
    "half_even": """CASE
        WHEN exact - floor_exact < 0.5 THEN floor_exact
        WHEN exact - floor_exact > 0.5 THEN floor_exact + 1
        WHEN CAST(floor_exact AS HUGEINT) % 2 = 0 THEN floor_exact
        ELSE floor_exact + 1
    END""",
}

_QUANTITY_TYPES = {
    "tinyint",
    "smallint",
    "integer",
    "bigint",
    "hugeint",
    "utinyint",
    "usmallint",
    "uinteger",
    "ubigint",
    "uhugeint",
    "decimal",
}
_view_ids = itertools.count()
_QUERY_START = re.compile(r"\s*(\(|(select|with|values|from|table)\b)", re.IGNORECASE)


def _currencies_sql() -> str:
    return ", ".join(f"('{c}')" for c in sorted(MINOR_UNITS))


def _usage_sql(con: duckdb.DuckDBPyConnection, quantities: str | duckdb.DuckDBPyRelation) -> str:
    """The input rows as SQL text; refuses a float (or text) quantity column."""
    if isinstance(quantities, duckdb.DuckDBPyRelation):
        name = f"rating_input_{next(_view_ids)}"
        quantities.to_view(name, replace=True)
        usage = f"SELECT * FROM {name}"
    elif isinstance(quantities, str):
        text = quantities.strip().rstrip(";")
        is_query = bool(_QUERY_START.match(text))
        usage = text if is_query else f"SELECT * FROM {text}"
    else:
        raise TypeError("quantities must be a table name, a SQL query or a DuckDB relation")
    rel = con.sql(f"SELECT row_id, price_id, quantity FROM ({usage}) LIMIT 0")
    qtype = rel.types[2]
    if qtype.id not in _QUANTITY_TYPES:
        raise TypeError(
            f"quantity must be an integer or DECIMAL column, got {qtype} (floats never reach the money path)"
        )
    return usage


def rating_sql(
    usage_sql: str,
    rule: RoundingRule = "half_up",
    prices_table: str = "core.prices",
    tiers_table: str = "core.price_tiers",
) -> str:
    """The SQL text of the per-row rating of ``usage_sql`` (a SELECT of row_id, price_id, quantity)."""
    return _render(usage_sql, _FINAL_ROWS.format(round_expr=_round_expr(rule)), prices_table, tiers_table)


def tier_breakdown_sql(usage_sql: str, prices_table: str = "core.prices", tiers_table: str = "core.price_tiers") -> str:
    """The SQL text of the per-tier breakdown of ``usage_sql``."""
    return _render(usage_sql, _FINAL_TIERS, prices_table, tiers_table)


def _round_expr(rule: str) -> str:
    try:
        return ROUND_SQL[rule]
    except KeyError:
        raise ValueError(f"unknown rounding rule {rule!r}") from None


def _render(usage_sql: str, final: str, prices_table: str, tiers_table: str) -> str:
    return RATING_SQL.format(
        usage=usage_sql, prices=prices_table, tiers=tiers_table, currencies=_currencies_sql(), final=final
    )


def rate_relation(
    con: duckdb.DuckDBPyConnection,
    quantities_sql_or_table: str | duckdb.DuckDBPyRelation,
    rule: RoundingRule = "half_up",
    prices_table: str = "core.prices",
    tiers_table: str = "core.price_tiers",
) -> duckdb.DuckDBPyRelation:
    """Rate every row ``(row_id, price_id, quantity)`` at once; a lazy DuckDB relation.

    ``quantities_sql_or_table`` is a table/view name, a SQL query, or a relation
    on ``con``. ``row_id`` must be unique; ``quantity`` an integer or DECIMAL
    with at most 9 places. Columns: row_id, price_id, currency, quantity,
    amount (BIGINT, rounded once under ``rule``), exact (DECIMAL(38,21)).
    Fetch with ``.fetchall()``, ``.pl()``, or store with ``.create(name)``.
    """
    round_expr = _round_expr(rule)  # validate before touching the database
    usage = _usage_sql(con, quantities_sql_or_table)
    return con.sql(_render(usage, _FINAL_ROWS.format(round_expr=round_expr), prices_table, tiers_table))


def tier_breakdown_relation(
    con: duckdb.DuckDBPyConnection,
    quantities_sql_or_table: str | duckdb.DuckDBPyRelation,
    prices_table: str = "core.prices",
    tiers_table: str = "core.price_tiers",
) -> duckdb.DuckDBPyRelation:
    """Per-tier breakdown of the tiered rows: row_id, tier_index, units, unit_amount_decimal,
    flat_amount, exact -- the tiers ``engine.rate`` lists in ``RatedLine.tiers``."""
    usage = _usage_sql(con, quantities_sql_or_table)
    return con.sql(tier_breakdown_sql(usage, prices_table, tiers_table))


# -- plans that do not exist yet ------------------------------------------------------


def _dec(d: Decimal | None) -> str | None:
    return None if d is None else format(d, "f")


def register_plans(
    con: duckdb.DuckDBPyConnection,
    plans: Iterable[PricePlan],
    prices_table: str = "rating_sim_prices",
    tiers_table: str = "rating_sim_price_tiers",
) -> tuple[str, str]:
    """Write (hypothetical) plans into price tables shaped like core.prices/core.price_tiers.

    Returns ``(prices_table, tiers_table)`` to pass to :func:`rate_relation`, so
    a simulation rates usage under plans no platform has yet, in SQL.
    Tables are replaced. Values go in as exact decimal text.
    """
    plans = list(plans)
    con.sql(f"""
        CREATE OR REPLACE TABLE {prices_table} (
            price_id VARCHAR PRIMARY KEY, platform VARCHAR, currency VARCHAR, usage_type VARCHAR,
            billing_scheme VARCHAR, tiers_mode VARCHAR, unit_amount_decimal DECIMAL(38, 12),
            package_size BIGINT, package_rounding VARCHAR)""")
    con.sql(f"""
        CREATE OR REPLACE TABLE {tiers_table} (
            price_id VARCHAR, platform VARCHAR, tier_index INTEGER, up_to DECIMAL(38, 9),
            unit_amount_decimal DECIMAL(38, 12), flat_amount BIGINT)""")
    price_rows = [
        (
            p.price_id,
            "simulation",
            p.currency,
            p.usage_type,
            p.billing_scheme,
            p.tiers_mode,
            _dec(p.unit_amount_decimal),
            p.package_size,
            p.package_rounding,
        )
        for p in plans
    ]
    tier_rows = [
        (p.price_id, "simulation", i, _dec(t.up_to), _dec(t.unit_amount_decimal), t.flat_amount)
        for p in plans
        for i, t in enumerate(p.tiers)
    ]
    if price_rows:
        con.executemany(
            f"INSERT INTO {prices_table} VALUES (?, ?, ?, ?, ?, ?, CAST(? AS DECIMAL(38, 12)), ?, ?)", price_rows
        )
    if tier_rows:
        con.executemany(
            f"INSERT INTO {tiers_table} VALUES (?, ?, ?, CAST(? AS DECIMAL(38, 9)), CAST(? AS DECIMAL(38, 12)), ?)",
            tier_rows,
        )
    return prices_table, tiers_table
