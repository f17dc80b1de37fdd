"""Product usage event files -> raw.usage_events, with a ledger of landed files.

Files (NDJSON, CSV or Parquet) are landed whole, once: the ledger
``raw.usage_files`` keys them by content hash, so a re-run lands only new
files and a replayed file is never counted twice. Every record of a file is
either landed in ``raw.usage_events`` or quarantined with its reason
(unreadable line, no parseable timestamp, timestamp outside the window the
pipeline covers); a file that cannot be read at all is recorded as failed and
the others go on.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import duckdb

from billing_ai import warehouse as wh

FORMATS = {".ndjson": "ndjson", ".jsonl": "ndjson", ".json": "ndjson", ".csv": "csv", ".parquet": "parquet"}
# `received_at` (optional) is when the product emitted the event to billing and to this log; an
# event whose billing period was invoiced before it was received is late
FIELDS = ("event_id", "customer_id", "subscription_id", "meter_name", "quantity", "timestamp", "metadata",
          "received_at")
SOURCE = "usage_file"
MAX_METADATA_BYTES = 8192  # larger metadata is quarantined, not truncated
# JSON types a field may have in an NDJSON record (json_type names); NULL/absent is judged later
JSON_TYPES = {"event_id": ("VARCHAR",), "customer_id": ("VARCHAR",), "subscription_id": ("VARCHAR",),
              "meter_name": ("VARCHAR",), "quantity": ("VARCHAR", "UBIGINT", "BIGINT", "DOUBLE"),
              "timestamp": ("VARCHAR",), "metadata": ("OBJECT",), "received_at": ("VARCHAR",)}
# read_csv options that keep a bad line (bad encoding, wrong column count) out of the result and in a
# rejects table, so it can be quarantined with its reason instead of failing the whole file
REJECTS = "store_rejects=true, rejects_table='_rejects', rejects_scan='_rejects_scan'"
_DAY_IN_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})")

DDL = """
CREATE TABLE IF NOT EXISTS raw.usage_files (
    file_name VARCHAR, sha256 VARCHAR PRIMARY KEY, bytes BIGINT, format VARCHAR, file_day DATE,
    records BIGINT, landed BIGINT, quarantined BIGINT, status VARCHAR, error VARCHAR, landed_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS raw.usage_events (
    event_id VARCHAR, customer_id VARCHAR, subscription_id VARCHAR, meter_name VARCHAR, quantity VARCHAR,
    "timestamp" VARCHAR, metadata VARCHAR, received_at VARCHAR, event_ts TIMESTAMPTZ, source_file VARCHAR,
    source_sha256 VARCHAR,
    source_row BIGINT, file_day DATE, landed_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS core.quarantine (
    source VARCHAR, record_key VARCHAR, partition_date DATE, reason VARCHAR, detail VARCHAR, record VARCHAR,
    quarantined_at TIMESTAMPTZ);
"""


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    for stmt in DDL.split(";"):
        if stmt.strip():
            wh.run(con, stmt)


@dataclass(frozen=True)
class FileResult:
    file_name: str
    records: int
    landed: int
    quarantined: int
    status: str
    error: str | None = None


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def discover(inbox: Path) -> list[Path]:
    if not inbox.exists():
        return []
    return sorted(p for p in inbox.iterdir() if p.is_file() and p.suffix.lower() in FORMATS)


def _records_sql(path: Path, fmt: str, con: duckdb.DuckDBPyConnection) -> str:
    """A SELECT giving one row per record: the seven fields as text, ``source_row``, ``record``."""
    p = str(path).replace("'", "''")
    if fmt == "ndjson":
        lines = (f"SELECT line, row_number() OVER () AS source_row FROM read_csv('{p}', columns={{'line': 'VARCHAR'}}, "
                 f"header=false, delim='\x1f', quote='', escape='', auto_detect=false, {REJECTS})")
        fields = ", ".join(
            f"CASE WHEN json_valid(line) THEN TRY_CAST(line AS JSON)->>'{f}' END AS {f}" if f != "metadata" else
            "CASE WHEN json_valid(line) THEN CAST(TRY_CAST(line AS JSON)->'metadata' AS VARCHAR) END AS metadata"
            for f in FIELDS)
        wrong_type = " OR ".join(
            f"coalesce(json_type(TRY_CAST(line AS JSON)->'{f}') NOT IN ('NULL', {', '.join(repr(t) for t in ok)}), false)"
            for f, ok in JSON_TYPES.items())
        return (f"SELECT {fields}, source_row, line AS record, "
                f"CASE WHEN NOT json_valid(line) THEN 'invalid_json' "
                f"WHEN json_type(TRY_CAST(line AS JSON)) <> 'OBJECT' THEN 'not_an_object' "
                f"WHEN {wrong_type} THEN 'wrong_type' END AS unreadable "
                f"FROM ({lines}) WHERE line IS NOT NULL AND trim(line) <> ''")
    if fmt == "csv":
        src = f"read_csv('{p}', all_varchar=true, header=true, auto_detect=true, {REJECTS})"
    else:
        src = f"read_parquet('{p}')"
    cols = {r[0] for r in wh.run(con, f"DESCRIBE SELECT * FROM {src}")}
    exprs = []
    for f in FIELDS:
        if f not in cols:
            exprs.append(f"CAST(NULL AS VARCHAR) AS {f}")
        elif f == "metadata" and fmt == "parquet":
            exprs.append("CAST(to_json(metadata) AS VARCHAR) AS metadata")
        elif f in ("timestamp", "received_at") and fmt == "parquet":
            exprs.append(f"strftime(CAST(\"{f}\" AS TIMESTAMPTZ), '%Y-%m-%dT%H:%M:%S.%fZ') AS \"{f}\"")
        else:
            exprs.append(f"CAST(\"{f}\" AS VARCHAR) AS {f}")
    inner = f"SELECT {', '.join(exprs)} FROM {src}"
    return (f"SELECT *, row_number() OVER () AS source_row, "
            f"CAST(to_json(struct_pack({', '.join(FIELDS)})) AS VARCHAR) AS record, "
            f"CAST(NULL AS VARCHAR) AS unreadable FROM ({inner})")


def land_file(con: duckdb.DuckDBPyConnection, path: Path, sha: str, now: datetime, window_start: date,
              max_future_days: int = 1) -> FileResult:
    """Land one file inside one transaction: records in = landed + quarantined."""
    fmt = FORMATS[path.suffix.lower()]
    m = _DAY_IN_NAME.search(path.name)
    file_day = m.group(1) if m else None
    size = path.stat().st_size
    try:
        with wh.transaction(con):
            wh.run(con, "DROP TABLE IF EXISTS _rejects")
            wh.run(con, "DROP TABLE IF EXISTS _rejects_scan")
            wh.run(con, f"CREATE OR REPLACE TEMP TABLE _records AS {_records_sql(path, fmt, con)}")
            rejected = _quarantine_rejected_lines(con, path.name, now) if fmt != "parquet" else 0
            wh.run(con, """
                CREATE OR REPLACE TEMP TABLE _classified AS
                SELECT *, TRY_CAST("timestamp" AS TIMESTAMPTZ) AS event_ts,
                    CASE
                        WHEN unreadable IS NOT NULL THEN unreadable
                        WHEN "timestamp" IS NULL OR trim("timestamp") = '' THEN 'missing_timestamp'
                        WHEN TRY_CAST("timestamp" AS TIMESTAMPTZ) IS NULL THEN 'bad_timestamp'
                        WHEN TRY_CAST("timestamp" AS TIMESTAMPTZ) < CAST(? AS DATE) THEN 'timestamp_too_old'
                        WHEN TRY_CAST("timestamp" AS TIMESTAMPTZ) > ?::TIMESTAMPTZ + to_days(?) THEN 'timestamp_in_future'
                        WHEN strlen(metadata) > ? THEN 'oversized_metadata'
                    END AS reason
                FROM _records""", [window_start, now, max_future_days, MAX_METADATA_BYTES])
            wh.run(con, """
                INSERT INTO raw.usage_events
                SELECT event_id, customer_id, subscription_id, meter_name, quantity, "timestamp", metadata, received_at,
                       event_ts,
                       ?, ?, source_row, CAST(? AS DATE), ?::TIMESTAMPTZ
                FROM _classified WHERE reason IS NULL""", [path.name, sha, file_day, now])
            wh.run(con, """
                INSERT INTO core.quarantine
                SELECT ?, ? || ':' || source_row, NULL, reason, NULL, record, ?::TIMESTAMPTZ
                FROM _classified WHERE reason IS NOT NULL""", [SOURCE, path.name, now])
            records, quarantined = wh.run(
                con, "SELECT count(*), count(*) FILTER (WHERE reason IS NOT NULL) FROM _classified")[0]
            records, quarantined = records + rejected, quarantined + rejected
            wh.run(con, "INSERT INTO raw.usage_files VALUES (?,?,?,?,CAST(? AS DATE),?,?,?,'landed',NULL,?::TIMESTAMPTZ)",
                   [path.name, sha, size, fmt, file_day, records, records - quarantined, quarantined, now])
        return FileResult(path.name, records, records - quarantined, quarantined, "landed")
    except duckdb.Error as e:
        # the whole file is unreadable: record it (not its rows) and go on with the others
        msg = str(e).splitlines()[0][:500]
        with wh.transaction(con):
            wh.run(con, "INSERT INTO raw.usage_files VALUES (?,?,?,?,CAST(? AS DATE),NULL,0,NULL,'failed',?,?::TIMESTAMPTZ)",
                   [path.name, sha, size, fmt, file_day, msg, now])
            wh.run(con, "INSERT INTO core.quarantine VALUES (?, ?, NULL, 'unreadable_file', ?, NULL, ?::TIMESTAMPTZ)",
                   [SOURCE, path.name, msg, now])
        return FileResult(path.name, 0, 0, 0, "failed", msg)
    finally:
        for t in ("_records", "_classified", "_rejects", "_rejects_scan"):
            wh.run(con, f"DROP TABLE IF EXISTS {t}")


def _quarantine_rejected_lines(con: duckdb.DuckDBPyConnection, file_name: str, now: datetime) -> int:
    """Lines the CSV reader rejected (bad encoding, wrong column count) become quarantine rows."""
    if not wh.run(con, "SELECT 1 FROM duckdb_tables() WHERE table_name = '_rejects'"):
        return 0
    wh.run(con, """
        INSERT INTO core.quarantine
        SELECT ?, ? || ':L' || line, NULL,
               CASE error_type WHEN 'INVALID ENCODING' THEN 'invalid_encoding' ELSE 'malformed_line' END,
               split_part(error_message, chr(10), 1), csv_line, ?::TIMESTAMPTZ
        FROM _rejects""", [SOURCE, file_name, now])
    return wh.run(con, "SELECT count(*) FROM _rejects")[0][0]


def land_inbox(con: duckdb.DuckDBPyConnection, inbox: Path, now: datetime, window_start: date) -> list[FileResult]:
    """Land every file of the inbox that the ledger has not seen (by content hash)."""
    ensure_tables(con)
    seen = {r[0] for r in wh.run(con, "SELECT sha256 FROM raw.usage_files")}
    results = []
    for path in discover(inbox):
        sha = sha256_of(path)
        if sha in seen:
            continue
        results.append(land_file(con, path, sha, now, window_start))
        seen.add(sha)
    return results
