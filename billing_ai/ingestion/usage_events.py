"""raw.usage_events -> core.usage_events for a range of event days.

Validation, in order (the first failing rule is the record's reason):
``missing_field``, ``bad_quantity`` (not a finite number), ``negative_quantity``,
``huge_quantity`` (over 1e12 units), ``unknown_meter``, ``unknown_customer``,
``unknown_subscription`` (absent, or another customer's), ``duplicate_of``
(same ``(source, event_id)`` landed earlier: the first landed copy wins, across
all partitions). Accepted rows carry ``is_late``: the event's billing period was
already invoiced (finalized) before the event reached us: its ``received_at``
when the record has one, else the time its file was landed.

A range is replaced inside one transaction, so a replay gives the same rows
and a crash leaves the previous contents.

Built for tens of millions of events: the few special rows are found first, each by one pass over
raw that keeps only them in a small temp table (``_copies``: the later copies of repeated event
ids; ``_rejects``: the range's rows that fail validation, with their quarantine record; ``_late``:
the range's late events), then the accepted rows are written straight from raw, in no particular
order, by one ``INSERT`` that excludes the rejects and flags the late ones.
"""

from __future__ import annotations

from datetime import date, datetime

import duckdb

from billing_ai import warehouse as wh
from billing_ai.ingestion.usage_files import TS_TEXT, blank

SOURCE = "usage_events"
MAX_QUANTITY = 10**12

DDL = """
CREATE TABLE IF NOT EXISTS core.usage_events (
    event_id VARCHAR NOT NULL, source VARCHAR NOT NULL, customer_id VARCHAR NOT NULL, subscription_id VARCHAR,
    meter_name VARCHAR NOT NULL, quantity DECIMAL(38, 9) NOT NULL, event_ts TIMESTAMPTZ NOT NULL,
    event_date DATE NOT NULL, project VARCHAR, department VARCHAR, endpoint VARCHAR, region VARCHAR,
    metadata JSON, source_file VARCHAR, source_row BIGINT, landed_at TIMESTAMPTZ, is_late BOOLEAN NOT NULL)
"""

# the raw rows whose UTC event day is in the range ({start}/{end}: ISO dates), as a range of event_ts
# itself: the same rows, and zone maps skip the row groups of other days
IN_RANGE = ("event_ts >= CAST(DATE '{start}' AS TIMESTAMP) AT TIME ZONE 'UTC' "
            "AND event_ts < CAST(DATE '{end}' + 1 AS TIMESTAMP) AT TIME ZONE 'UTC'")
# the UTC day of event_ts, by arithmetic on the instant (no time zone conversion; the range holds no
# infinite timestamp, the one case where it differs from CAST(event_ts AT TIME ZONE 'UTC' AS DATE))
EVENT_DATE = "CAST(make_timestamp(epoch_us(event_ts)) AS DATE)"
# raw keeps a typed timestamp without its text, and a received_at either as text or typed
TIMESTAMP_TEXT = f"coalesce(\"timestamp\", strftime(event_ts, '{TS_TEXT}'))"
RECEIVED_AT_TEXT = f"coalesce(received_at, strftime(received_ts, '{TS_TEXT}'))"
RECEIVED = "coalesce(TRY_CAST(received_at AS TIMESTAMPTZ), received_ts, landed_at)"
# ... and a quantity either as text or typed, with its number of decimals
QUANTITY_TEXT = ("coalesce(quantity, CASE quantity_scale " +
                 " ".join(f"WHEN {s} THEN CAST(CAST(quantity_dec AS DECIMAL(38, {s})) AS VARCHAR)" for s in range(10)) +
                 " END)")
# the quantity's value as DECIMAL(38, 9), and as DOUBLE: TRY_CAST of its text. The DOUBLE only decides
# the sign and "over MAX_QUANTITY"; a typed value's own conversion can be an ulp off the text's, which
# only matters next to MAX_QUANTITY, where the text is parsed
QUANTITY = "coalesce(quantity_dec, TRY_CAST(quantity AS DECIMAL(38, 9)))"
QUANTITY_DOUBLE = (f"CASE WHEN quantity_dec IS NULL THEN TRY_CAST(quantity AS DOUBLE) "
                   f"WHEN quantity_dec BETWEEN {MAX_QUANTITY} - 1 AND {MAX_QUANTITY} + 1 "
                   f"THEN TRY_CAST({QUANTITY_TEXT} AS DOUBLE) ELSE CAST(quantity_dec AS DOUBLE) END")

# Every copy of an event_id but the first landed (landed_at, source_file, source_row), across all
# partitions, with the first copy's key. Ranking all 10M rows by event_id is what is expensive, and
# ~0.1% of them repeat: only the rows whose event_id *hash* occurs more than once are ranked (by the
# event_id itself, so a hash collision only adds a candidate). A NULL event_id is one partition,
# like in a window, so later NULL-id rows carry the first one as their detail.
COPIES = """
CREATE OR REPLACE TEMP TABLE _copies AS
SELECT rid, first_copy FROM (
    SELECT rowid AS rid,
        row_number() OVER w AS copy_no,
        first_value(source_file || ':' || source_row) OVER w AS first_copy
    FROM raw.usage_events
    WHERE hash(event_id) IN (SELECT hash(event_id) FROM raw.usage_events GROUP BY 1 HAVING count(*) > 1)
    WINDOW w AS (PARTITION BY event_id ORDER BY landed_at, source_file, source_row))
WHERE copy_no > 1
"""

# The range's records that fail validation, with their reason and quarantine record (few): the
# accepted rows are then written straight from raw, without this table of rejects.
REJECTS = f"""
CREATE OR REPLACE TEMP TABLE _rejects AS
SELECT rid, event_id, source_file, source_row, {EVENT_DATE} AS event_date, reason, detail,
       CAST(to_json(struct_pack(event_id, customer_id, subscription_id, meter_name, quantity := {QUANTITY_TEXT},
                                "timestamp" := {TIMESTAMP_TEXT}, metadata,
                                received_at := {RECEIVED_AT_TEXT})) AS VARCHAR) AS record
FROM (
    SELECT t.*,
        CASE
            WHEN {blank("t.event_id")} OR {blank("t.customer_id")} OR {blank("t.meter_name")}
                 OR (t.quantity IS NULL AND t.quantity_dec IS NULL) THEN 'missing_field'
            WHEN t.qd IS NULL OR isnan(t.qd) OR isinf(t.qd) THEN 'bad_quantity'
            WHEN t.qd < 0 THEN 'negative_quantity'
            WHEN t.qd > {MAX_QUANTITY} THEN 'huge_quantity'
            WHEN t.q IS NULL THEN 'bad_quantity'
            WHEN t.meter_name NOT IN (SELECT meter_name FROM core.meters) THEN 'unknown_meter'
            WHEN t.customer_id NOT IN (SELECT customer_id FROM core.customers) THEN 'unknown_customer'
            WHEN nullif(t.subscription_id, '') IS NOT NULL AND NOT EXISTS (
                 SELECT 1 FROM core.subscriptions s
                 WHERE s.subscription_id = t.subscription_id AND s.customer_id = t.customer_id)
                 THEN 'unknown_subscription'
            WHEN c.rid IS NOT NULL THEN 'duplicate_of'
        END AS reason,
        c.first_copy AS detail
    FROM (SELECT *, rowid AS rid, {QUANTITY} AS q, {QUANTITY_DOUBLE} AS qd
          FROM raw.usage_events WHERE {{in_range}}) t
    LEFT JOIN _copies c ON c.rid = t.rid)
WHERE reason IS NOT NULL
"""

# The range's events received (received_at, else landed) once their billing period had been
# invoiced: a plain join against the (small) invoices table, instead of an EXISTS per event.
LATE = f"""
CREATE OR REPLACE TEMP TABLE _late AS
SELECT DISTINCT r.rid
FROM (SELECT rowid AS rid, subscription_id, event_ts, {RECEIVED} AS received
      FROM raw.usage_events WHERE {{in_range}}) r
JOIN core.invoices i ON i.subscription_id = r.subscription_id
WHERE i.billing_reason <> 'subscription_create'
  AND r.event_ts >= i.period_start AND r.event_ts < i.period_end AND r.received >= i.finalized_at
"""

# Accepted = the range's raw rows that are not rejects; metadata is parsed once for its four keys
# (after the anti join: a rejected row's metadata is never parsed).
INSERT_ACCEPTED = f"""
INSERT INTO core.usage_events
SELECT event_id, 'inbox', customer_id, nullif(subscription_id, ''), meter_name, {QUANTITY},
       event_ts, {EVENT_DATE}, m[1], m[2], m[3], m[4], CAST(metadata AS JSON),
       source_file, source_row, {RECEIVED}, rid IN (SELECT rid FROM _late)
FROM (SELECT a.*, json_extract_string(a.metadata, ['project', 'department', 'endpoint', 'region']) AS m
      FROM (SELECT *, rowid AS rid FROM raw.usage_events WHERE {{in_range}}) a
      ANTI JOIN _rejects x ON x.rid = a.rid)
"""


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    wh.run(con, DDL)
    # raw.usage_events of a warehouse landed before raw kept typed values (see usage_files.DDL)
    for column in ("received_ts TIMESTAMPTZ", "quantity_dec DECIMAL(38, 9)", "quantity_scale UTINYINT"):
        wh.run(con, f"ALTER TABLE IF EXISTS raw.usage_events ADD COLUMN IF NOT EXISTS {column}")


def build_usage_events(con: duckdb.DuckDBPyConnection, start: date, end: date, now: datetime) -> dict[str, int]:
    """Replace core.usage_events (and its quarantine rows) for event days [start, end]."""
    ensure_tables(con)
    params = {"start": start, "end": end}
    in_range = IN_RANGE.format(start=start.isoformat(), end=end.isoformat())
    with wh.transaction(con):
        wh.run(con, COPIES)
        wh.run(con, REJECTS.format(in_range=in_range))
        wh.run(con, LATE.format(in_range=in_range))
        wh.run(con, "DELETE FROM core.usage_events WHERE event_date BETWEEN $start AND $end", params)
        wh.run(con, "DELETE FROM core.quarantine WHERE source = ? AND partition_date BETWEEN ? AND ?",
               [SOURCE, start, end])
        (accepted,), = wh.run(con, INSERT_ACCEPTED.format(in_range=in_range))
        (quarantined,), = wh.run(con, """
            INSERT INTO core.quarantine
            SELECT ?, coalesce(event_id, source_file || ':' || source_row), event_date, reason, detail, record,
                   ?::TIMESTAMPTZ
            FROM _rejects""", [SOURCE, now])
        (late,), = wh.run(con, "SELECT count(*) FROM _late WHERE rid NOT IN (SELECT rid FROM _rejects)")
        for t in ("_copies", "_rejects", "_late"):
            wh.run(con, f"DROP TABLE {t}")
    return {"records": accepted + quarantined, "accepted": accepted, "quarantined": quarantined, "late": late}
