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

The landed records are read with ``usage_files.records``: a text file's fields are in raw (and those
of every file landed before raw was narrowed), a Parquet file's in the file raw keeps (see
usage_files); core is the one table that holds a copy of every accepted event. Which files hold
records of the range, and how many, is the landing's index (raw.usage_file_days). Built for tens of
millions of events: the later copies of repeated event ids are found first, by one pass over the
event ids of every landed record that keeps only them (``_copies``); then, per batch of files (one
format, one Parquet schema), the range's landed records are read three times, never staged whole:
twice for the few special ones, keyed by (file_id, source_row) (``_rejects``: the records that fail
validation, with their quarantine record; ``_late``: the late events), and once for the accepted
rows, written by one ``INSERT`` that excludes the rejects and flags the late ones.
"""

from __future__ import annotations

from datetime import date, datetime

import duckdb

from billing_ai import warehouse as wh
from billing_ai.ingestion import usage_files
from billing_ai.ingestion.usage_files import EVENT_DATE, EVENT_TS, QUANTITY_TEXT, Records, blank, record_json

SOURCE = "usage_events"
MAX_QUANTITY = 10**12
# the metadata keys core.usage_events keeps as columns of their own
METADATA_COLUMNS = ("project", "department", "endpoint", "region")

DDL = """
CREATE TABLE IF NOT EXISTS core.usage_events (
    event_id VARCHAR NOT NULL, source VARCHAR NOT NULL, customer_id VARCHAR NOT NULL, subscription_id VARCHAR,
    meter_name VARCHAR NOT NULL, quantity DECIMAL(38, 9) NOT NULL, event_ts TIMESTAMPTZ NOT NULL,
    event_date DATE NOT NULL, project VARCHAR, department VARCHAR, endpoint VARCHAR, region VARCHAR,
    metadata JSON, source_file VARCHAR, source_row BIGINT, landed_at TIMESTAMPTZ, is_late BOOLEAN NOT NULL)
"""

# the raw rows whose UTC event day is in the range ({start}/{end}: ISO dates), as a range of event_ts
# itself: the same rows, and zone maps skip the row groups of other days
IN_RANGE = (
    "event_ts >= CAST(DATE '{start}' AS TIMESTAMP) AT TIME ZONE 'UTC' "
    "AND event_ts < CAST(DATE '{end}' + 1 AS TIMESTAMP) AT TIME ZONE 'UTC'"
)
# when the event reached us: its received_at (text or typed, see usage_files.records), else its file's landing
RECEIVED = "coalesce(TRY_CAST(received_at AS TIMESTAMPTZ), received_ts, landed_at)"
# the quantity's value as DECIMAL(38, 9), and as DOUBLE: TRY_CAST of its text. The DOUBLE only decides
# the sign and "over MAX_QUANTITY"; a typed value's own conversion can be an ulp off the text's, which
# only matters next to MAX_QUANTITY, where the text is parsed
QUANTITY = "coalesce(quantity_dec, TRY_CAST(quantity AS DECIMAL(38, 9)))"
QUANTITY_DOUBLE = (
    f"CASE WHEN quantity_dec IS NULL THEN TRY_CAST(quantity AS DOUBLE) "
    f"WHEN quantity_dec BETWEEN {MAX_QUANTITY} - 1 AND {MAX_QUANTITY} + 1 "
    f"THEN TRY_CAST({QUANTITY_TEXT} AS DOUBLE) ELSE CAST(quantity_dec AS DOUBLE) END"
)

# Every copy of an event_id of the range but the first landed (landed_at, file name, row; file_id, the
# landing order, only tells apart two files of one name landed at the same clock time), across all
# partitions, with the first copy's key. {ids}: (file_id, source_row, event_id) of every
# landed record (see landed_ids). Ranking every record by event_id is what is expensive, and ~0.1% of
# them repeat: only the records whose event_id *hash* occurs more than once (``repeated``) are ranked (by
# the event_id itself, so a hash collision only adds a candidate). A NULL event_id is one partition,
# like in a window, so later NULL-id rows carry the first one as their detail.
COPIES = """
CREATE OR REPLACE TEMP TABLE _copies AS
WITH {ctes}
SELECT file_id, source_row, first_copy FROM (
    SELECT r.file_id, r.source_row,
        row_number() OVER w AS copy_no,
        first_value(f.file_name || ':' || r.source_row) OVER w AS first_copy
    FROM {ids} r JOIN raw.usage_files f USING (file_id)
    WHERE hash(r.event_id) IN (SELECT h FROM repeated)
    WINDOW w AS (PARTITION BY r.event_id ORDER BY f.landed_at, f.file_name, f.file_id, r.source_row))
WHERE copy_no > 1
"""
# The repeated hashes: of every landed record (the ids are one CTE, which DuckDB may keep rather than
# read twice: as large as the history), or, for a range holding less than RANGE_DEDUP_BELOW of the
# landed records (a nightly day), of the range's records only ({range_ids}: those of the range's
# files): what is held in memory then grows with the range, not the history, and every landed event
# id is read twice, streaming, to find their earlier copies. Both give the same copies of the range's
# events, which are all the build uses.
REPEATED_ALL = "ids AS ({ids}), repeated AS (SELECT hash(event_id) AS h FROM ids GROUP BY 1 HAVING count(*) > 1)"
REPEATED_OF_RANGE = """in_range AS (SELECT DISTINCT hash(event_id) AS h FROM ({range_ids}) WHERE {in_range}),
repeated AS (
    SELECT hash(event_id) AS h FROM ({ids})
    WHERE hash(event_id) IN (SELECT h FROM in_range) GROUP BY 1 HAVING count(*) > 1)"""
RANGE_DEDUP_BELOW = 0.5


def copies_sql(con: duckdb.DuckDBPyConnection, files: list, in_range: str, range_records: int) -> str:
    """The COPIES statement for a build of ``range_records`` landed records in ``files``."""
    ids = landed_ids(con)
    ((landed,),) = wh.run(con, "SELECT coalesce(sum(events), 0) FROM raw.usage_file_days")
    if range_records < RANGE_DEDUP_BELOW * landed:
        range_ids = landed_ids(con, f"file_id IN ({', '.join(str(f.file_id) for f in files) or 'NULL'})", with_ts=True)
        return COPIES.format(
            ctes=REPEATED_OF_RANGE.format(range_ids=range_ids, in_range=in_range, ids=ids), ids=f"({ids})"
        )
    return COPIES.format(ctes=REPEATED_ALL.format(ids=ids), ids="ids")


def landed_ids(con: duckdb.DuckDBPyConnection, where: str = "true", with_ts: bool = False) -> str:
    """SQL: (file_id, source_row, event_id[, event_ts]) of every landed record of the ledger's files
    ``where`` says: a text file's from raw, a Parquet file's from the kept file (those columns only),
    less the records its landing quarantined. Parquet files of one schema are read by one scan."""
    cols = "file_id, source_row, event_id" + (", event_ts" if with_ts else "")
    parts = [
        f"SELECT {cols} FROM raw.usage_events"
        + ("" if where == "true" else f" WHERE file_id IN (SELECT file_id FROM raw.usage_files WHERE {where})")
    ]
    kept = usage_files.kept_files(con, f"NOT coalesce(fields_in_raw, format <> 'parquet') AND ({where})")
    for batch in usage_files.batches(con, kept):
        parts.append(f"""SELECT {cols} FROM ({usage_files.parquet_ids(con, batch, with_ts)})
                         ANTI JOIN raw.usage_landing_rejects x USING (file_id, source_row)""")
    return "\nUNION ALL\n".join(parts)


def landed(records: Records, in_range: str) -> str:
    """SQL: a batch's landed records of the range, with their file's name and landing time: a text
    file's from raw itself; a Parquet file's read from the kept file, with event_ts as the landing read
    it (EVENT_TS), less the few records its landing quarantined."""
    if records.in_raw:
        rows = f"SELECT * FROM ({records.sql}) WHERE {in_range}"
    else:
        rows = f"""SELECT v.* FROM (SELECT v.*, {EVENT_TS} AS event_ts FROM ({records.sql}) v) v
                   ANTI JOIN raw.usage_landing_rejects x USING (file_id, source_row) WHERE {in_range}"""
    return f"""
SELECT v.*, f.file_name AS source_file, f.landed_at
FROM ({rows}) v JOIN raw.usage_files f USING (file_id)"""


def find_rejects(records: Records, landed: str) -> str:
    """The records that fail validation, with their reason, event id and day, and quarantine record
    (few): the accepted rows are then written without them."""
    return f"""
INSERT INTO _rejects
SELECT file_id, source_row, coalesce(event_id, source_file || ':' || source_row), {EVENT_DATE}, reason, detail,
       {record_json(records.metadata_json)} AS record
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
            WHEN c.first_copy IS NOT NULL THEN 'duplicate_of'
        END AS reason,
        c.first_copy AS detail
    FROM (SELECT *, {QUANTITY} AS q, {QUANTITY_DOUBLE} AS qd FROM ({landed})) t
    LEFT JOIN _copies c USING (file_id, source_row))
WHERE reason IS NOT NULL"""


def find_late(landed: str) -> str:
    """The events received (received_at, else landed) once their billing period had been invoiced: a
    plain join against the (small) invoices table, instead of an EXISTS per event."""
    return f"""
INSERT INTO _late
SELECT DISTINCT r.file_id, r.source_row
FROM (SELECT file_id, source_row, subscription_id, event_ts, {RECEIVED} AS received FROM ({landed})) r
JOIN core.invoices i ON i.subscription_id = r.subscription_id
WHERE i.billing_reason <> 'subscription_create'
  AND r.event_ts >= i.period_start AND r.event_ts < i.period_end AND r.received >= i.finalized_at"""


def insert_accepted(landed: str, records: Records) -> str:
    """Accepted = the batch's landed records of the range that are not rejects; their metadata is
    written (and its keys read) after the anti join: a rejected row's never is. is_late is a join to
    the few late events (a tuple IN (subquery) per row costs ~15% of the insert)."""
    extra, values = records.metadata_values(METADATA_COLUMNS)
    return f"""
INSERT INTO core.usage_events
SELECT a.event_id, 'inbox', a.customer_id, nullif(a.subscription_id, ''), a.meter_name, {QUANTITY},
       a.event_ts, {EVENT_DATE}, {", ".join(values)}, CAST(metadata_json AS JSON),
       a.source_file, a.source_row, {RECEIVED}, l.file_id IS NOT NULL
FROM (SELECT a.*, {records.metadata_json} AS metadata_json{extra}
      FROM ({landed}) a ANTI JOIN _rejects x USING (file_id, source_row)) a
LEFT JOIN _late l USING (file_id, source_row)"""


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    usage_files.ensure_tables(con)
    if usage_files.wide_raw(con):
        raise RuntimeError(
            "raw.usage_events still holds a copy of every record: land the inbox first "
            "(the raw/usage_events asset), which keeps the files instead"
        )
    wh.run(con, DDL)


def build_usage_events(con: duckdb.DuckDBPyConnection, start: date, end: date, now: datetime) -> dict[str, int]:
    """Replace core.usage_events (and its quarantine rows) for event days [start, end]."""
    ensure_tables(con)
    params = {"start": start, "end": end}
    in_range = IN_RANGE.format(start=start.isoformat(), end=end.isoformat())
    with wh.transaction(con):
        ((in_raw,),) = wh.run(
            con,
            "SELECT coalesce(sum(events), 0) FROM raw.usage_file_days WHERE event_date BETWEEN $start AND $end",
            params,
        )
        files = usage_files.kept_files(
            con,
            "file_id IN (SELECT file_id FROM raw.usage_file_days "
            f"WHERE event_date BETWEEN DATE '{start}' AND DATE '{end}')",
        )
        wh.run(con, copies_sql(con, files, in_range, in_raw))
        wh.run(
            con,
            "CREATE OR REPLACE TEMP TABLE _rejects (file_id INTEGER, source_row BIGINT, record_key VARCHAR, "
            "event_date DATE, reason VARCHAR, detail VARCHAR, record VARCHAR)",
        )
        wh.run(con, "CREATE OR REPLACE TEMP TABLE _late (file_id INTEGER, source_row BIGINT)")
        wh.run(con, "DELETE FROM core.usage_events WHERE event_date BETWEEN $start AND $end", params)
        wh.run(
            con, "DELETE FROM core.quarantine WHERE source = ? AND partition_date BETWEEN ? AND ?", [SOURCE, start, end]
        )
        accepted = 0
        for batch in usage_files.batches(con, files, read_back=True):
            with usage_files.records(con, batch) as records:
                rows = landed(records, in_range)
                wh.run(con, find_rejects(records, rows))
                wh.run(con, find_late(rows))
                ((n,),) = wh.run(con, insert_accepted(rows, records))
            accepted += n
        ((quarantined,),) = wh.run(
            con,
            """
            INSERT INTO core.quarantine
            SELECT ?, record_key, event_date, reason, detail, record, ?::TIMESTAMPTZ FROM _rejects""",
            [SOURCE, now],
        )
        if accepted + quarantined != in_raw:  # every landed record of the range read back, once
            raise RuntimeError(
                f"{in_raw} landed records in {start}..{end}, but {accepted + quarantined} "
                "read back from raw and the kept files"
            )
        ((late,),) = wh.run(con, "SELECT count(*) FROM _late ANTI JOIN _rejects USING (file_id, source_row)")
        for t in ("_copies", "_rejects", "_late"):
            wh.run(con, f"DROP TABLE {t}")
    return {"records": accepted + quarantined, "accepted": accepted, "quarantined": quarantined, "late": late}
