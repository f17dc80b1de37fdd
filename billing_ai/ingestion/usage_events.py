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
"""

from __future__ import annotations

from datetime import date, datetime

import duckdb

from billing_ai import warehouse as wh

SOURCE = "usage_events"
MAX_QUANTITY = 10**12

DDL = """
CREATE TABLE IF NOT EXISTS core.usage_events (
    event_id VARCHAR NOT NULL, source VARCHAR NOT NULL, customer_id VARCHAR NOT NULL, subscription_id VARCHAR,
    meter_name VARCHAR NOT NULL, quantity DECIMAL(38, 9) NOT NULL, event_ts TIMESTAMPTZ NOT NULL,
    event_date DATE NOT NULL, project VARCHAR, department VARCHAR, endpoint VARCHAR, region VARCHAR,
    metadata JSON, source_file VARCHAR, source_row BIGINT, landed_at TIMESTAMPTZ, is_late BOOLEAN NOT NULL)
"""

CLASSIFY = f"""
WITH ranked AS (
    SELECT r.*,
        row_number() OVER (PARTITION BY r.event_id ORDER BY r.landed_at, r.source_file, r.source_row) AS copy_no,
        first_value(r.source_file || ':' || r.source_row)
            OVER (PARTITION BY r.event_id ORDER BY r.landed_at, r.source_file, r.source_row) AS first_copy
    FROM raw.usage_events r
    WHERE r.event_id IN (SELECT event_id FROM raw.usage_events
                         WHERE CAST(event_ts AT TIME ZONE 'UTC' AS DATE) BETWEEN $start AND $end)
       OR r.event_id IS NULL
),
typed AS (
    SELECT *, TRY_CAST(quantity AS DECIMAL(38, 9)) AS q, TRY_CAST(quantity AS DOUBLE) AS qd,
           CAST(event_ts AT TIME ZONE 'UTC' AS DATE) AS event_date
    FROM ranked
    WHERE CAST(event_ts AT TIME ZONE 'UTC' AS DATE) BETWEEN $start AND $end
)
SELECT t.*,
    CASE
        WHEN nullif(trim(t.event_id), '') IS NULL OR nullif(trim(t.customer_id), '') IS NULL
             OR nullif(trim(t.meter_name), '') IS NULL OR t.quantity IS NULL THEN 'missing_field'
        WHEN t.qd IS NULL OR isnan(t.qd) OR isinf(t.qd) THEN 'bad_quantity'
        WHEN t.qd < 0 THEN 'negative_quantity'
        WHEN t.qd > {MAX_QUANTITY} THEN 'huge_quantity'
        WHEN t.q IS NULL THEN 'bad_quantity'
        WHEN t.meter_name NOT IN (SELECT meter_name FROM core.meters) THEN 'unknown_meter'
        WHEN t.customer_id NOT IN (SELECT customer_id FROM core.customers) THEN 'unknown_customer'
        WHEN nullif(t.subscription_id, '') IS NOT NULL AND NOT EXISTS (
             SELECT 1 FROM core.subscriptions s
             WHERE s.subscription_id = t.subscription_id AND s.customer_id = t.customer_id) THEN 'unknown_subscription'
        WHEN t.copy_no > 1 THEN 'duplicate_of'
    END AS reason,
    CASE WHEN t.copy_no > 1 THEN t.first_copy END AS detail
FROM typed t
"""


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    wh.run(con, DDL)


def build_usage_events(con: duckdb.DuckDBPyConnection, start: date, end: date, now: datetime) -> dict[str, int]:
    """Replace core.usage_events (and its quarantine rows) for event days [start, end]."""
    ensure_tables(con)
    params = {"start": start, "end": end}
    with wh.transaction(con):
        wh.run(con, f"CREATE OR REPLACE TEMP TABLE _usage AS {CLASSIFY}", params)
        wh.run(con, "DELETE FROM core.usage_events WHERE event_date BETWEEN $start AND $end", params)
        wh.run(con, "DELETE FROM core.quarantine WHERE source = ? AND partition_date BETWEEN ? AND ?",
               [SOURCE, start, end])
        wh.run(con, """
            INSERT INTO core.usage_events
            SELECT u.event_id, 'inbox', u.customer_id, nullif(u.subscription_id, ''), u.meter_name, u.q, u.event_ts,
                   u.event_date,
                   CAST(u.metadata AS JSON)->>'project', CAST(u.metadata AS JSON)->>'department',
                   CAST(u.metadata AS JSON)->>'endpoint', CAST(u.metadata AS JSON)->>'region',
                   CAST(u.metadata AS JSON), u.source_file, u.source_row,
                   coalesce(TRY_CAST(u.received_at AS TIMESTAMPTZ), u.landed_at),
                   EXISTS (SELECT 1 FROM core.invoices i
                           WHERE i.subscription_id = u.subscription_id AND i.billing_reason <> 'subscription_create'
                             AND u.event_ts >= i.period_start AND u.event_ts < i.period_end
                             AND coalesce(TRY_CAST(u.received_at AS TIMESTAMPTZ), u.landed_at) >= i.finalized_at)
                       AS is_late
            FROM _usage u WHERE u.reason IS NULL
            ORDER BY u.event_ts""")
        wh.run(con, """
            INSERT INTO core.quarantine
            SELECT ?, coalesce(u.event_id, u.source_file || ':' || u.source_row), u.event_date, u.reason, u.detail,
                   CAST(to_json(struct_pack(u.event_id, u.customer_id, u.subscription_id, u.meter_name, u.quantity,
                                            u."timestamp", u.metadata, u.received_at)) AS VARCHAR), ?::TIMESTAMPTZ
            FROM _usage u WHERE u.reason IS NOT NULL""", [SOURCE, now])
        (records, accepted, late), = wh.run(
            con, "SELECT count(*), count(*) FILTER (WHERE reason IS NULL), "
                 "(SELECT count(*) FROM core.usage_events WHERE event_date BETWEEN $start AND $end AND is_late) "
                 "FROM _usage", params)
        wh.run(con, "DROP TABLE _usage")
    return {"records": records, "accepted": accepted, "quarantined": records - accepted, "late": late}
