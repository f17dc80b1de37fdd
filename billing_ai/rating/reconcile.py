"""Re-rate usage per billing period, place every item in its tiers, and reconcile invoices.

Three marts, rebuilt together in one transaction:

``marts.rated_usage``
    per subscription item (metered) and monthly billing period: the usage
    window, quantity (total, received before the invoice, late), event count,
    the amount we compute and its per-tier breakdown.
``marts.tier_positions``
    per current metered item, now: tier, units used, units to the next tier
    threshold, amount so far this period.
``marts.invoice_reconciliation``
    every platform invoice line beside our recomputation, plus the lines we
    expected and did not find, and usage no line could bill. ``finding``:

    ``match``            billed = expected
    ``rounding``         off by at most ``rounding_tolerance`` minor units
    ``underbilled``      billed < expected
    ``overbilled``       billed > expected (a duplicated line is overbilled by itself)
    ``missing_line``     usage we would bill, no line on the invoice
    ``unbilled_usage``   usage in an invoiced period that no subscription item covers
                         (e.g. after a cancellation): no line could bill it
    ``late_usage``       billed = expected for what arrived in time, but units
                         arrived after the invoice was finalized: they belong
                         in the next period's adjustment

Expected amounts: metered lines are usage received before the invoice was
finalized, rated with :mod:`billing_ai.rating.vectorized`; licensed lines are
the item's quantity at its price; prorations follow Stripe (licensed fees
prorated by seconds left in the period, a credit for the old price, a charge
for the new); a minimum-commitment invoice item is the commitment less the
period's expected usage amounts. Amounts compare before discounts.

The usage behind a row is ``core.usage_events`` of the row's subscription and
meter with ``event_ts`` in ``[usage_from, usage_to)`` (the view
``marts.reconciliation_events`` lists them with their event ids).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import duckdb

from billing_ai import warehouse as wh
from billing_ai.rating.engine import minimum_commitment_true_up, prorate, rate
from billing_ai.rating.plans import load_plans
from billing_ai.rating.vectorized import rate_relation, tier_breakdown_relation

FINDINGS = ("match", "rounding", "underbilled", "overbilled", "missing_line", "unbilled_usage", "late_usage")

# Periods up to now. k only runs to the number of 28-day spans between the anchor and now (a month is at least
# 28 days; 600 stays the hard cap), so no subscription expands 600 candidate months through the (slow) time
# zone arithmetic only to filter them out.
PERIODS = """
CREATE OR REPLACE TEMP TABLE _periods AS
SELECT s.subscription_id, s.customer_id, s.currency, CAST(k AS INTEGER) AS k,
       s.billing_cycle_anchor + to_months(CAST(k AS INTEGER))     AS period_start,
       s.billing_cycle_anchor + to_months(CAST(k + 1 AS INTEGER)) AS period_end
FROM core.subscriptions s,
     range(0, least(600, (epoch_us($now) - epoch_us(s.billing_cycle_anchor)) // (28 * 86400000000) + 1)) r(k)
WHERE s.billing_cycle_anchor + to_months(CAST(k AS INTEGER)) <= $now
  AND (s.ended_at IS NULL OR s.billing_cycle_anchor + to_months(CAST(k AS INTEGER)) < s.ended_at)
"""

# usage windows: the part of each period a metered item priced, and the invoice that closed it
WINDOWS = """
CREATE OR REPLACE TEMP TABLE _windows AS
SELECT row_number() OVER (ORDER BY i.subscription_item_id, p.period_start) AS w, p.k,
       i.subscription_item_id, i.subscription_id, i.customer_id, i.price_id, i.meter_name, p.currency,
       p.period_start, p.period_end,
       greatest(p.period_start, i.valid_from)                              AS usage_from,
       least(p.period_end, coalesce(i.valid_to, p.period_end))             AS usage_to,
       inv.invoice_id, inv.finalized_at,
       (p.period_start <= $now AND $now < p.period_end)                    AS is_current_period
FROM _periods p
JOIN core.subscription_items i ON i.subscription_id = p.subscription_id AND i.usage_type = 'metered'
LEFT JOIN core.invoices inv ON inv.subscription_id = p.subscription_id AND inv.period_start = p.period_start
                           AND inv.billing_reason <> 'subscription_create'
WHERE greatest(p.period_start, i.valid_from) < least(p.period_end, coalesce(i.valid_to, p.period_end))
"""

# -- the one pass over the events ---------------------------------------------------------------------------
#
# Which window an event counts in, whether it arrived on time, and (for the reconciliation) its phase and
# billing period all depend only on where its event_ts falls among a few instants of its subscription ("cuts":
# the window edges, period starts, started_at and ended_at), and on its landed_at against the finalized_at of
# the windows there. Between two consecutive cuts ("a piece") all of a subscription's events of one meter are
# alike, so they are summed once per (piece, meter) into _usage -- with the on-time part already split off, as
# every window covering a piece has the same finalized_at -- and the rules (the range join to the windows,
# phase, the ASOF period) run on those few rows, each standing for its events through its first event_ts.
#
# An event finds its piece by equality joins, not a range join: a range join on (subscription, meter) meets
# every event with every window of its meter -- one per period of the whole history -- and a second one would
# be needed for the usage no window covers. Here an event meets one slot: _slots has one row per subscription
# and UTC day, with the piece the day starts in and the (at most two) cuts inside the day, the next pieces
# being the next numbers. So the pass is two equality joins on small tables, two comparisons per event and a
# hash aggregate on (piece, meter), whatever the length of the history. A day with more cuts inside, or one
# touching a piece whose windows disagree on finalized_at (a period with two invoices), is "exact": its (few)
# events are summed per event_ts and landed_at by EXACT_USAGE instead, and the rules see them as they are.

PIECES = """
CREATE OR REPLACE TEMP TABLE _pieces AS
WITH subs AS (SELECT DISTINCT subscription_id FROM core.subscriptions WHERE subscription_id IS NOT NULL),
cuts AS (
    SELECT subscription_id, usage_from AS t FROM _windows
    UNION SELECT subscription_id, usage_to FROM _windows
    UNION SELECT subscription_id, period_start FROM _periods
    UNION SELECT subscription_id, started_at FROM core.subscriptions WHERE started_at IS NOT NULL
    UNION SELECT subscription_id, ended_at FROM core.subscriptions WHERE ended_at IS NOT NULL
),
spans AS (  -- a NULL piece_from / piece_to is unbounded; a subscription without cuts is one piece
    SELECT subscription_id, t AS piece_from, lead(t) OVER (PARTITION BY subscription_id ORDER BY t) AS piece_to
    FROM cuts
    UNION ALL
    SELECT s.subscription_id, NULL, min(c.t) FROM subs s LEFT JOIN cuts c USING (subscription_id) GROUP BY 1
),
fins AS (   -- the finalized_at of the windows covering each piece; exact when they differ
    SELECT p.subscription_id, p.piece_from, p.piece_to, max(w.finalized_at) AS finalized_at,
           count(DISTINCT w.finalized_at) + CAST(bool_or(w.w IS NOT NULL AND w.finalized_at IS NULL) AS INTEGER) > 1
               AS exact
    FROM spans p
    LEFT JOIN _windows w ON w.subscription_id = p.subscription_id
                        AND w.usage_from <= p.piece_from AND p.piece_to <= w.usage_to
    GROUP BY ALL
)
-- numbered in time order within a subscription: the piece after piece n is n + 1
SELECT row_number() OVER (ORDER BY subscription_id, piece_from NULLS FIRST) AS piece, *
FROM fins
"""

# Days: epoch_us // 86400000000 (truncating, but monotone: all that matters, as events and slots use the same).
# $lo..$hi are the days of all cuts and one more each side; an event's day is clamped into them (all of a
# subscription's days before its first cut are in its first piece, all after its last cut in its last).
# A slot's number is its subscription's base + day - $lo.
SLOT_SUBS = """
CREATE OR REPLACE TEMP TABLE _slot_subs AS
SELECT subscription_id, CAST(row_number() OVER (ORDER BY subscription_id) - 1 AS BIGINT) * ($hi - $lo + 1) AS base
FROM (SELECT DISTINCT subscription_id FROM _pieces)
"""

# Per slot: piece (NULL on an exact day), cut1 and cut2 (infinity when fewer cuts), and late0..late2: when events
# of the slot's first, second and third piece start to be late (the piece's finalized_at; infinity when it has no
# invoice: then the on-time sum is never used). An event's piece is the first of piece, piece + 1, piece + 2 whose
# cut it is before, and it is late if it landed at or after that piece's late instant: two comparisons and a pick
# per event, which cost less than arithmetic on every event (the previous form: piece + (event_ts >= cut1) + ...).
SLOTS = """
CREATE OR REPLACE TEMP TABLE _slots AS
WITH days AS (
    SELECT subscription_id, piece, exact, unnest(range(
        coalesce(epoch_us(piece_from) // 86400000000, $lo),
        coalesce(epoch_us(piece_to - INTERVAL 1 MICROSECOND) // 86400000000, $hi) + 1)) AS day
    FROM _pieces
),
per_day AS (
    SELECT subscription_id, day, min(piece) AS first, count(*) AS n, bool_or(exact) AS exact
    FROM days GROUP BY ALL
),
until AS (SELECT piece, piece_from, coalesce(finalized_at, TIMESTAMPTZ 'infinity') AS late_from FROM _pieces)
SELECT s.base + d.day - $lo AS slot,
       CASE WHEN d.n <= 3 AND NOT d.exact THEN d.first END AS piece,
       coalesce(p1.piece_from, 'infinity') AS cut1, coalesce(p2.piece_from, 'infinity') AS cut2,
       p0.late_from AS late0, p1.late_from AS late1, p2.late_from AS late2
FROM per_day d
JOIN _slot_subs s USING (subscription_id)
JOIN until p0 ON p0.piece = d.first
LEFT JOIN until p1 ON p1.piece = d.first + 1 AND d.n >= 2
LEFT JOIN until p2 ON p2.piece = d.first + 2 AND d.n >= 3
"""

EVENTS_IN_SLOTS = """core.usage_events u
JOIN _slot_subs s ON s.subscription_id = u.subscription_id
JOIN _slots sl ON sl.slot = s.base + least(greatest(epoch_us(u.event_ts) // 86400000000, $lo), $hi) - $lo"""

# _usage: subscription_id, meter_name, event_ts (the first), last_ts, quantity, event_count, and either
# quantity_on_time (a piece's row) or landed_at (an exact row: one event_ts and landed_at). The pass groups by
# piece, meter and whether the event is late (a NULL landed_at is never on time, as in EXACT_USAGE and COVERED),
# so it needs one sum of the quantity, not a second filtered one; the few late rows fold in afterwards.
USAGE = f"""
CREATE OR REPLACE TEMP TABLE _usage AS
WITH summed AS MATERIALIZED (  -- else a filter derived from the join to _pieces runs on every event
    SELECT CASE WHEN u.event_ts < sl.cut1 THEN sl.piece WHEN u.event_ts < sl.cut2 THEN sl.piece + 1
                ELSE sl.piece + 2 END AS piece,
           u.meter_name,
           u.landed_at >= CASE WHEN u.event_ts < sl.cut1 THEN sl.late0 WHEN u.event_ts < sl.cut2 THEN sl.late1
                               ELSE sl.late2 END AS late,
           min(u.event_ts) AS event_ts, max(u.event_ts) AS last_ts, sum(u.quantity) AS quantity,
           count(*) AS event_count
    FROM {EVENTS_IN_SLOTS}
    GROUP BY ALL
)
SELECT p.subscription_id, u.meter_name, min(u.event_ts) AS event_ts, max(u.last_ts) AS last_ts,
       CAST(sum(u.quantity) AS DECIMAL(38, 9)) AS quantity,
       CAST(coalesce(sum(u.quantity) FILTER (WHERE NOT u.late), 0) AS DECIMAL(38, 9)) AS quantity_on_time,
       CAST(NULL AS TIMESTAMPTZ) AS landed_at, CAST(sum(u.event_count) AS BIGINT) AS event_count
FROM summed u JOIN _pieces p USING (piece)  -- exact days' events (no piece) drop out here
GROUP BY p.subscription_id, u.piece, u.meter_name
"""

EXACT_USAGE = f"""
INSERT INTO _usage
SELECT u.subscription_id, u.meter_name, u.event_ts, u.event_ts, CAST(sum(u.quantity) AS DECIMAL(38, 9)), NULL,
       u.landed_at, count(*)
FROM {EVENTS_IN_SLOTS}
WHERE sl.piece IS NULL
GROUP BY u.subscription_id, u.meter_name, u.event_ts, u.landed_at
"""

# The rating's quantities per window, from the _usage rows in it
COVERED = """
CREATE OR REPLACE TEMP TABLE _covered AS
SELECT w.w,
       CAST(sum(u.quantity) AS DECIMAL(38, 9)) AS quantity,
       CAST(coalesce(sum(CASE WHEN w.finalized_at IS NULL THEN u.quantity
                              WHEN u.quantity_on_time IS NOT NULL THEN u.quantity_on_time
                              WHEN u.landed_at < w.finalized_at THEN u.quantity END), 0)
            AS DECIMAL(38, 9)) AS quantity_on_time,
       CAST(sum(u.event_count) AS BIGINT) AS event_count
FROM _usage u
JOIN _windows w ON w.subscription_id = u.subscription_id AND w.meter_name = u.meter_name
               AND u.event_ts >= w.usage_from AND u.event_ts < w.usage_to
GROUP BY w.w
"""

# The reconciliation also needs the events no window covers, with their phase (before the start, during,
# after the end) and billing period (an ASOF join on the small periods table).
UNCOVERED = """
CREATE OR REPLACE TEMP TABLE _usage_agg AS
WITH uncovered AS (
    SELECT u.subscription_id, u.meter_name, u.event_ts, u.last_ts, u.quantity, u.event_count,
           CASE WHEN u.event_ts < s.started_at THEN 'before'
                WHEN s.ended_at IS NOT NULL AND u.event_ts >= s.ended_at THEN 'after' ELSE 'during' END AS phase
    FROM _usage u
    JOIN core.subscriptions s ON s.subscription_id = u.subscription_id
    LEFT JOIN _windows w ON w.subscription_id = u.subscription_id AND w.meter_name = u.meter_name
                        AND u.event_ts >= w.usage_from AND u.event_ts < w.usage_to
    WHERE w.w IS NULL
)
SELECT u.subscription_id, u.meter_name, NULL AS w, u.phase, p.k,
       CAST(sum(u.quantity) AS DECIMAL(38, 9)) AS quantity, CAST(sum(u.event_count) AS BIGINT) AS event_count,
       min(u.event_ts) AS first_ts, max(u.last_ts) AS last_ts
FROM uncovered u ASOF LEFT JOIN _periods p ON p.subscription_id = u.subscription_id AND u.event_ts >= p.period_start
GROUP BY u.subscription_id, u.meter_name, u.phase, p.k
"""

QUANTITIES = """
CREATE OR REPLACE TEMP TABLE _quantities AS
SELECT w.w,
       CAST(coalesce(sum(a.quantity), 0) AS DECIMAL(38, 9))          AS quantity,
       CAST(coalesce(sum(a.quantity_on_time), 0) AS DECIMAL(38, 9))  AS quantity_on_time,
       coalesce(sum(a.event_count), 0)                               AS event_count
FROM _windows w LEFT JOIN _covered a USING (w)
GROUP BY w.w
"""

RATED_USAGE_DDL = """
CREATE OR REPLACE TABLE marts.rated_usage AS
SELECT w.subscription_item_id, w.subscription_id, w.customer_id, w.price_id, w.meter_name, w.currency,
       w.period_start, w.period_end, w.usage_from, w.usage_to, w.invoice_id, w.is_current_period,
       q.quantity, q.quantity_on_time, CAST(q.quantity - q.quantity_on_time AS DECIMAL(38, 9)) AS late_quantity,
       q.event_count,
       r_all.amount AS amount, r_on.amount AS amount_on_time,
       coalesce((SELECT to_json(list({'tier_index': t.tier_index, 'units': t.units,
                                       'unit_amount_decimal': t.unit_amount_decimal,
                                       'flat_amount': t.flat_amount, 'amount_exact': t.exact}
                                      ORDER BY t.tier_index))
                 FROM _tiers t WHERE t.row_id = 2 * w.w), to_json([])) AS tiers
FROM _windows w
JOIN _quantities q USING (w)
JOIN _rated r_all ON r_all.row_id = 2 * w.w
JOIN _rated r_on ON r_on.row_id = 2 * w.w + 1
"""

TIER_POSITIONS_DDL = """
CREATE OR REPLACE TABLE marts.tier_positions AS
WITH cur AS (
    SELECT r.*, p.billing_scheme, p.tiers_mode
    FROM marts.rated_usage r JOIN core.prices p USING (price_id)
    WHERE r.is_current_period
),
placed AS (
    SELECT c.subscription_item_id,
           (SELECT min(t.tier_index) FROM core.price_tiers t
             WHERE t.price_id = c.price_id AND (t.up_to IS NULL OR c.quantity <= t.up_to)) AS current_tier
    FROM cur c
)
SELECT c.subscription_item_id, c.subscription_id, c.customer_id, c.price_id, c.meter_name, c.currency,
       c.period_start, c.period_end, CAST($now AS TIMESTAMPTZ) AS as_of,
       c.billing_scheme, c.tiers_mode,
       pl.current_tier,
       (SELECT count(*) FROM core.price_tiers t WHERE t.price_id = c.price_id) AS tier_count,
       c.quantity AS units_used,
       t.up_to AS current_tier_up_to,
       CAST(t.up_to - c.quantity AS DECIMAL(38, 9)) AS units_to_next_tier,
       c.amount AS amount_so_far
FROM cur c
JOIN placed pl USING (subscription_item_id)
LEFT JOIN core.price_tiers t ON t.price_id = c.price_id AND t.tier_index = pl.current_tier
"""

LINES = """
CREATE OR REPLACE TEMP TABLE _lines AS
SELECT l.line_id, l.invoice_id, l.subscription_id, l.subscription_item_id, l.price_id, l.line_type, l.description,
       l.quantity AS quantity_billed, l.amount AS billed_amount, l.currency, l.period_start, l.period_end,
       l.is_proration, i.period_start AS invoice_period_start, i.billing_reason,
       p.usage_type, p.meter_name, si.quantity AS item_quantity, si.valid_from, si.valid_to,
       s.minimum_commitment,
       row_number() OVER (PARTITION BY l.invoice_id, l.subscription_item_id, l.is_proration, l.period_start
                          ORDER BY l.line_id) AS copy_no
FROM core.invoice_lines l
JOIN core.invoices i USING (invoice_id)
LEFT JOIN core.prices p USING (price_id)
LEFT JOIN core.subscription_items si USING (subscription_item_id)
LEFT JOIN core.subscriptions s ON s.subscription_id = i.subscription_id
"""


@dataclass(frozen=True)
class ReconcileSettings:
    rounding_tolerance: int = 1  # minor units a line may differ by and count as a rounding difference


# -- a targeted refresh: the same SQL over some subscriptions only ----------------------------------------------
#
# Every row of the three marts belongs to one subscription and depends only on that subscription's periods,
# items, invoices, lines and usage (the catalog is shared and read whole). So refreshing some subscriptions
# (an invoice webhook names one) runs the very same statements with the per-subscription inputs narrowed to
# temp copies and the outputs written to temp tables, then swaps those subscriptions' rows in the marts.
SCOPED_INPUTS = (
    "core.subscriptions",
    "core.subscription_items",
    "core.invoices",
    "core.invoice_lines",
    "core.usage_events",
)
MARTS = ("marts.rated_usage", "marts.tier_positions", "marts.invoice_reconciliation")


class _Scoped:
    """A connection whose statements read ``_in_*`` for the scoped inputs and write ``_out_*`` for the marts."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self._con = con
        names = {t: f"_in_{t.split('.')[1]}" for t in SCOPED_INPUTS}
        names |= {t: f"_out_{t.split('.')[1]}" for t in MARTS}
        self._names = names
        self._pattern = re.compile(r"\b(" + "|".join(re.escape(t) for t in names) + r")\b")

    def rename(self, sql: str) -> str:
        sql = self._pattern.sub(lambda m: self._names[m.group(1)], sql)
        return sql.replace("CREATE OR REPLACE TABLE _out_", "CREATE OR REPLACE TEMP TABLE _out_")

    def execute(self, sql, *args):
        return self._con.execute(self.rename(sql), *args)

    def sql(self, sql, *args, **kwargs):
        return self._con.sql(self.rename(sql), *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._con, name)


def refresh_rating_marts(
    con: duckdb.DuckDBPyConnection,
    now: datetime,
    subscription_ids: list[str],
    settings: ReconcileSettings = ReconcileSettings(),
) -> dict[str, int]:
    """Recompute the three marts' rows of ``subscription_ids`` only (same statements, same results as a full
    build for those subscriptions), swapped in within one transaction. Returns the rows written per mart."""
    ids = sorted(set(subscription_ids))
    scoped = _Scoped(con)
    with wh.transaction(con):
        wh.run(con, "CREATE OR REPLACE TEMP TABLE _scope AS SELECT unnest(?::VARCHAR[]) AS subscription_id", [ids])
        for t in SCOPED_INPUTS:
            key = "subscription_id"
            where = f"{key} IN (SELECT subscription_id FROM _scope)"
            if t == "core.invoice_lines":  # a line's subscription may be NULL: take the lines of scoped invoices
                where = "invoice_id IN (SELECT invoice_id FROM _in_invoices)"
            wh.run(con, f"CREATE OR REPLACE TEMP TABLE {scoped.rename(t)} AS SELECT * FROM {t} WHERE {where}")
        _build(scoped, now, settings)
        written = {}
        for t in MARTS:
            wh.run(con, f"DELETE FROM {t} WHERE subscription_id IN (SELECT subscription_id FROM _scope)")
            wh.run(con, f"INSERT INTO {t} BY NAME SELECT * FROM {scoped.rename(t)}")
            written[t.split(".")[1]] = wh.count(con, scoped.rename(t))
        for t in (*SCOPED_INPUTS, *MARTS):
            wh.run(con, f"DROP TABLE IF EXISTS {scoped.rename(t)}")
        wh.run(con, "DROP TABLE _scope")
    return written


def _build(con, now: datetime, settings: ReconcileSettings) -> None:
    rate_periods(con, now)
    wh.run(con, UNCOVERED)
    _build_reconciliation(con, settings)
    for t in (
        "_periods",
        "_windows",
        "_pieces",
        "_slot_subs",
        "_slots",
        "_usage",
        "_covered",
        "_usage_agg",
        "_quantities",
        "_to_rate",
        "_rated",
        "_tiers",
        "_lines",
        "_expected",
    ):
        wh.run(con, f"DROP TABLE IF EXISTS {t}")


def build_rating_marts(
    con: duckdb.DuckDBPyConnection, now: datetime, settings: ReconcileSettings = ReconcileSettings()
) -> dict[str, int]:
    """Rebuild marts.rated_usage, marts.tier_positions and marts.invoice_reconciliation, in one transaction."""
    with wh.transaction(con):
        _build(con, now, settings)
        wh.run(con, RECONCILIATION_EVENTS_VIEW)
    return {t: wh.count(con, f"marts.{t}") for t in ("rated_usage", "tier_positions", "invoice_reconciliation")}


def rate_periods(con: duckdb.DuckDBPyConnection, now: datetime) -> None:
    """The rating itself: marts.rated_usage and marts.tier_positions (the caller holds the transaction)."""
    params = {"now": now}
    wh.run(con, PERIODS, params)
    wh.run(con, WINDOWS, params)
    _sum_usage(con)
    wh.run(con, COVERED)
    wh.run(con, QUANTITIES)
    # two rows per window: the whole quantity (even rows) and what arrived before the invoice (odd rows)
    wh.run(
        con,
        """CREATE OR REPLACE TEMP TABLE _to_rate AS
                   SELECT 2 * w AS row_id, price_id, quantity FROM _windows JOIN _quantities USING (w)
                   UNION ALL
                   SELECT 2 * w + 1, price_id, quantity_on_time FROM _windows JOIN _quantities USING (w)""",
    )
    rate_relation(con, "_to_rate").create("_rated")
    tier_breakdown_relation(con, "SELECT * FROM _to_rate WHERE row_id % 2 = 0").create("_tiers")
    wh.run(con, RATED_USAGE_DDL)
    wh.run(con, TIER_POSITIONS_DDL, params)


def _sum_usage(con: duckdb.DuckDBPyConnection) -> None:
    """_usage: the events summed per piece of their subscription's time line (see PIECES), in one pass."""
    wh.run(con, PIECES)
    ((lo, hi),) = wh.run(
        con,
        """
        SELECT coalesce(min(d), 0) - 1, coalesce(max(d), 0) + 1
        FROM (SELECT epoch_us(piece_from) // 86400000000 AS d FROM _pieces
              UNION ALL SELECT epoch_us(piece_to) // 86400000000 FROM _pieces)""",
    )
    days = {"lo": lo, "hi": hi}
    wh.run(con, SLOT_SUBS, days)
    wh.run(con, SLOTS, days)
    wh.run(con, USAGE, days)
    if wh.run(con, "SELECT count(*) FROM _slots WHERE piece IS NULL")[0][0]:  # exact days: rare
        wh.run(con, EXACT_USAGE, days)


def _build_reconciliation(con: duckdb.DuckDBPyConnection, settings: ReconcileSettings) -> None:
    wh.run(con, LINES)
    # licensed, non-proration lines: the item's quantity at the item's price
    wh.run(
        con,
        """CREATE OR REPLACE TEMP TABLE _licensed_in AS
                   SELECT row_number() OVER (ORDER BY line_id) AS row_id, line_id, price_id,
                          CAST(item_quantity AS DECIMAL(38, 9)) AS quantity
                   FROM _lines WHERE usage_type = 'licensed' AND NOT is_proration AND item_quantity IS NOT NULL""",
    )
    rate_relation(con, "_licensed_in").create("_licensed_rated")
    expected: dict[str, int] = dict(
        wh.run(
            con,
            """SELECT i.line_id, r.amount FROM _licensed_in i
                                                   JOIN _licensed_rated r USING (row_id)""",
        )
    )
    # prorations (few): Stripe's rule, computed by the engine line by line
    plans = load_plans(con)
    for line_id, price_id, qty, start, end, inv_start, _valid_from, valid_to in wh.run(
        con,
        """
            SELECT line_id, price_id, item_quantity, period_start, period_end, invoice_period_start,
                   valid_from, valid_to FROM _lines WHERE is_proration AND item_quantity IS NOT NULL""",
    ):
        full = rate(plans[price_id], qty).exact
        amount = prorate(full, start, inv_start, end)
        expected[line_id] = -amount if valid_to is not None and valid_to == start else amount
    wh.run(con, "DROP TABLE IF EXISTS _licensed_in")
    wh.run(con, "DROP TABLE IF EXISTS _licensed_rated")
    # metered lines: the first copy of a line for an item and period expects the usage; a copy expects 0
    for line_id, amount in wh.run(
        con,
        """
            SELECT l.line_id, CASE WHEN l.copy_no = 1 THEN r.amount_on_time ELSE 0 END
            FROM _lines l JOIN marts.rated_usage r
              ON r.subscription_item_id = l.subscription_item_id AND r.invoice_id = l.invoice_id
            WHERE l.usage_type = 'metered' AND NOT l.is_proration""",
    ):
        expected[line_id] = amount
    # minimum commitment true-ups: the commitment less the period's expected usage amounts
    usage_by_invoice = dict(
        wh.run(
            con,
            """SELECT invoice_id, sum(amount_on_time) FROM marts.rated_usage
                                           WHERE invoice_id IS NOT NULL GROUP BY 1""",
        )
    )
    for line_id, invoice_id, commitment in wh.run(
        con,
        """
            SELECT line_id, invoice_id, minimum_commitment FROM _lines
            WHERE line_type = 'invoice_item' AND minimum_commitment IS NOT NULL""",
    ):
        expected[line_id] = minimum_commitment_true_up(int(usage_by_invoice.get(invoice_id) or 0), commitment)
    # a second copy of a line for the same item, period and kind expects nothing: it is billed twice
    for (line_id,) in wh.run(con, "SELECT line_id FROM _lines WHERE copy_no > 1"):
        expected[line_id] = 0
    # two list parameters, not a DataFrame: a few thousand pairs, and no Polars / pyarrow import and conversion
    # (in a fresh process that alone took longer than the rest of the reconciliation)
    wh.run(
        con,
        """CREATE OR REPLACE TEMP TABLE _expected AS
                   SELECT unnest(CAST($ids AS VARCHAR[])) AS line_id,
                          unnest(CAST($amounts AS BIGINT[])) AS expected_amount""",
        {"ids": list(expected), "amounts": list(expected.values())},
    )
    wh.run(con, RECONCILIATION_DDL, {"tol": settings.rounding_tolerance})


RECONCILIATION_DDL = """
CREATE OR REPLACE TABLE marts.invoice_reconciliation AS
WITH line_rows AS (
    SELECT l.invoice_id, l.line_id, l.subscription_id, l.subscription_item_id, l.price_id, l.meter_name,
           l.line_type, l.description, l.currency, l.period_start, l.period_end, l.is_proration,
           l.quantity_billed,
           CASE WHEN l.usage_type = 'metered' AND NOT l.is_proration THEN r.quantity_on_time
                ELSE l.item_quantity END                                   AS quantity_expected,
           e.expected_amount, l.billed_amount,
           CASE WHEN l.usage_type = 'metered' AND NOT l.is_proration THEN r.late_quantity END AS late_quantity,
           r.amount - r.amount_on_time                                     AS late_amount,
           r.usage_from, r.usage_to, r.event_count, l.copy_no
    FROM _lines l
    LEFT JOIN _expected e USING (line_id)
    LEFT JOIN marts.rated_usage r ON r.subscription_item_id = l.subscription_item_id AND r.invoice_id = l.invoice_id
                                 AND l.usage_type = 'metered' AND NOT l.is_proration
),
missing AS (
    SELECT r.invoice_id, NULL AS line_id, r.subscription_id, r.subscription_item_id, r.price_id, r.meter_name,
           'subscription' AS line_type, 'expected usage line not on the invoice' AS description, r.currency,
           r.usage_from AS period_start, r.usage_to AS period_end, false AS is_proration,
           NULL AS quantity_billed, r.quantity_on_time AS quantity_expected,
           r.amount_on_time AS expected_amount, 0 AS billed_amount, r.late_quantity,
           r.amount - r.amount_on_time AS late_amount, r.usage_from, r.usage_to, r.event_count, 1 AS copy_no
    FROM marts.rated_usage r
    WHERE r.invoice_id IS NOT NULL AND r.amount_on_time > 0
      AND NOT EXISTS (SELECT 1 FROM _lines l WHERE l.invoice_id = r.invoice_id
                        AND l.subscription_item_id = r.subscription_item_id AND NOT l.is_proration)
),
unbilled AS (
    -- usage in invoiced periods of a subscription that no known item of its meter covered. Inside the
    -- subscription's life that is an item a plan change replaced whose line is missing too (Stripe shows
    -- replaced items only on invoice lines), so its line is missing; before the start it is unbilled.
    SELECT inv.invoice_id, NULL AS line_id, a.subscription_id, NULL AS subscription_item_id, NULL AS price_id,
           a.meter_name,
           CASE a.phase WHEN 'during' THEN 'missing_usage' ELSE 'usage' END AS line_type,
           CASE a.phase WHEN 'during'
                THEN 'usage of a replaced item no invoice line billed (its price is not known): ' || a.meter_name
                ELSE 'usage before the subscription started: ' || a.meter_name END AS description,
           p.currency, min(a.first_ts) AS period_start, max(a.last_ts) AS period_end, false AS is_proration,
           NULL AS quantity_billed, CAST(sum(a.quantity) AS DECIMAL(38, 9)) AS quantity_expected,
           NULL AS expected_amount, 0 AS billed_amount, NULL AS late_quantity, NULL AS late_amount,
           min(a.first_ts) AS usage_from, max(a.last_ts) + INTERVAL 1 SECOND AS usage_to,
           sum(a.event_count) AS event_count, 1 AS copy_no
    FROM _usage_agg a
    JOIN _periods p ON p.subscription_id = a.subscription_id AND p.k = a.k
    LEFT JOIN core.invoices inv ON inv.subscription_id = p.subscription_id AND inv.period_start = p.period_start
                               AND inv.billing_reason <> 'subscription_create'
    WHERE a.w IS NULL AND a.phase <> 'after'
      AND NOT p.period_end > (SELECT max(created_at) FROM core.invoices)  -- closed periods only
    GROUP BY inv.invoice_id, a.subscription_id, a.meter_name, p.currency, p.period_start, a.phase
),
unbilled_after_end AS (
    -- usage after a subscription ended: no period, no invoice will ever bill it
    SELECT NULL AS invoice_id, NULL AS line_id, a.subscription_id, NULL AS subscription_item_id, NULL AS price_id,
           a.meter_name, 'usage' AS line_type, 'usage after the subscription ended: ' || a.meter_name AS description,
           s.currency, min(a.first_ts) AS period_start, max(a.last_ts) AS period_end, false AS is_proration,
           NULL AS quantity_billed, CAST(sum(a.quantity) AS DECIMAL(38, 9)) AS quantity_expected,
           NULL AS expected_amount, 0 AS billed_amount, NULL AS late_quantity, NULL AS late_amount,
           min(a.first_ts) AS usage_from, max(a.last_ts) + INTERVAL 1 SECOND AS usage_to,
           sum(a.event_count) AS event_count, 1 AS copy_no  -- named: UNION ALL BY NAME drops unnamed columns
    FROM _usage_agg a JOIN core.subscriptions s USING (subscription_id)
    WHERE a.w IS NULL AND a.phase = 'after'
    GROUP BY a.subscription_id, a.meter_name, s.currency
),
all_rows AS (
    SELECT * FROM line_rows UNION ALL BY NAME SELECT * FROM missing
    UNION ALL BY NAME SELECT * FROM unbilled UNION ALL BY NAME SELECT * FROM unbilled_after_end
)
SELECT invoice_id, line_id, subscription_id, subscription_item_id, price_id, meter_name,
       CASE WHEN line_type IN ('usage', 'missing_usage') THEN 'usage' ELSE line_type END AS line_type,
       description, currency,
       period_start, period_end, is_proration, quantity_billed, quantity_expected,
       expected_amount, billed_amount, billed_amount - expected_amount AS difference,
       CASE
           WHEN line_type = 'usage' THEN 'unbilled_usage'
           WHEN line_id IS NULL THEN 'missing_line'
           WHEN expected_amount IS NULL THEN 'unbilled_usage'
           WHEN billed_amount = expected_amount AND coalesce(late_quantity, 0) > 0 THEN 'late_usage'
           WHEN billed_amount = expected_amount THEN 'match'
           WHEN abs(billed_amount - expected_amount) <= $tol AND copy_no = 1 THEN 'rounding'
           WHEN billed_amount < expected_amount THEN 'underbilled'
           ELSE 'overbilled'
       END AS finding,
       CASE WHEN copy_no > 1 THEN 'duplicate of another line for the same item and period' END AS detail,
       late_quantity, late_amount, usage_from, usage_to, event_count
FROM all_rows
"""

RECONCILIATION_EVENTS_VIEW = """
CREATE OR REPLACE VIEW marts.reconciliation_events AS
SELECT r.invoice_id, r.line_id, r.finding, u.event_id, u.event_ts, u.quantity, u.is_late, u.source_file
FROM marts.invoice_reconciliation r
JOIN core.subscription_items i ON i.subscription_item_id = r.subscription_item_id
JOIN core.usage_events u ON u.subscription_id = r.subscription_id AND u.meter_name = i.meter_name
                        AND u.event_ts >= r.usage_from AND u.event_ts < r.usage_to
"""
