"""Product usage event files -> raw.usage_events, with a ledger of landed files.

Files (NDJSON, CSV or Parquet) are landed whole, once: the ledger
``raw.usage_files`` keys them by content hash, so a re-run lands only new
files and a replayed file is never counted twice. Every record of a file is
either landed in ``raw.usage_events`` or quarantined with its reason
(unreadable line, no parseable timestamp, timestamp outside the window the
pipeline covers); a file that cannot be read at all is recorded as failed and
the others go on.

How files are landed, built for millions of records (see ``land_inbox``): new files are landed in
batches (Parquet files of one schema; NDJSON files up to NDJSON_BATCH_BYTES; CSV files), one
transaction per batch, the ledger exact per file; if a batch fails, its files are landed one by one
so that only the unreadable one fails. Per batch:

1. one ``INSERT INTO raw.usage_events`` straight from the files, the checks inline, of the records
   that pass: the data is read once and written once, never staged whole in a temp table (NDJSON
   lines excepted, see ``_land``), and one large append is much cheaper for DuckDB than one per
   file (it reads the files in parallel, and leaves no partial row groups for the checkpoint to
   merge and rewrite);
2. one ``INSERT`` of the records the first statement did not land (an anti join on the row number
   against what it just landed): only those few are parsed and checked again, and get their
   quarantine ``record``.

Raw keeps every field as the text the record carried, except what a typed source (Parquet) makes
cheap to keep typed (see DDL): the build sees exactly the values, and the texts, it would have seen
had everything been stored as text.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import date, datetime
from functools import partial
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
TEMP_TABLES = ("_batch", "_lines", "_rejects", "_rejects_scan", "_rejected_lines", "_quarantined")
# how a typed timestamp is written as text (in the quarantine record, and as the build sees it)
TS_TEXT = "%Y-%m-%dT%H:%M:%S.%fZ"
# typed timestamps in this range survive strftime(TS_TEXT) -> TRY_CAST(... AS TIMESTAMPTZ) unchanged,
# so they can be stored typed; anything else keeps its text, exactly as before
TS_SAFE = "BETWEEN TIMESTAMPTZ '1000-01-01 00:00:00+00' AND TIMESTAMPTZ '9999-12-31 23:59:59.999999+00'"
# NDJSON files landed together: their lines are held in memory meanwhile
NDJSON_BATCH_BYTES = 512 << 20
# Parquet quantity types kept typed (as DECIMAL(38, 9)): their text is the value with a fixed number of
# decimals (DOUBLE's shortest round-trip text, or a decimal of more than 9 decimals, is kept as text)
_EXACT_INTEGERS = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                   "UBIGINT", "UHUGEINT")
_DECIMAL = re.compile(r"DECIMAL\(\d+,(\d+)\)")
_DAY_IN_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})")

DDL = """
CREATE TABLE IF NOT EXISTS raw.usage_files (
    file_name VARCHAR, sha256 VARCHAR PRIMARY KEY, bytes BIGINT, format VARCHAR, file_day DATE,
    records BIGINT, landed BIGINT, quarantined BIGINT, status VARCHAR, error VARCHAR, landed_at TIMESTAMPTZ);
-- Fields a typed source (Parquet) holds typed are kept typed, without their text (no semicolons here):
--   "timestamp" is NULL when event_ts holds it (its text is then strftime(event_ts, TS_TEXT)),
--   received_ts holds a typed received_at (received_at is then NULL),
--   quantity_dec holds a decimal or integer quantity (quantity is then NULL), whose text is its
--   value with quantity_scale decimals.
CREATE TABLE IF NOT EXISTS raw.usage_events (
    event_id VARCHAR, customer_id VARCHAR, subscription_id VARCHAR, meter_name VARCHAR, quantity VARCHAR,
    "timestamp" VARCHAR, metadata VARCHAR, received_at VARCHAR, event_ts TIMESTAMPTZ, source_file VARCHAR,
    source_sha256 VARCHAR,
    source_row BIGINT, file_day DATE, landed_at TIMESTAMPTZ, received_ts TIMESTAMPTZ, quantity_dec DECIMAL(38, 9),
    quantity_scale UTINYINT);
ALTER TABLE raw.usage_events ADD COLUMN IF NOT EXISTS received_ts TIMESTAMPTZ;
ALTER TABLE raw.usage_events ADD COLUMN IF NOT EXISTS quantity_dec DECIMAL(38, 9);
ALTER TABLE raw.usage_events ADD COLUMN IF NOT EXISTS quantity_scale UTINYINT;
CREATE TABLE IF NOT EXISTS core.quarantine (
    source VARCHAR, record_key VARCHAR, partition_date DATE, reason VARCHAR, detail VARCHAR, record VARCHAR,
    quarantined_at TIMESTAMPTZ);
"""


def blank(col: str) -> str:
    """SQL: ``col IS NULL OR trim(col) = ''`` (empty, or only space separators). trim() decodes the whole
    string, so a value starting with a printable ASCII character (not blank) skips it -- with CASE:
    DuckDB evaluates both sides of an OR/AND, but only the chosen branch of a CASE."""
    return f"CASE WHEN {col} IS NULL THEN true WHEN {col} >= '!' AND {col} < '~' THEN false ELSE trim({col}) = '' END"


# The first failing check is the record's reason (columns: unreadable, ts (text), event_ts, metadata):
# unreadable, missing_timestamp, bad_timestamp (NULL event_ts), timestamp_too_old (before the window),
# timestamp_in_future, oversized_metadata. (A record inside the window is told apart first: the
# planner inlines event_ts, so each test of it parses the text again.)
REASON = f"""CASE
    WHEN unreadable IS NOT NULL THEN unreadable
    WHEN {blank("ts")} THEN 'missing_timestamp'
    WHEN event_ts BETWEEN CAST($window_start AS DATE) AND $now::TIMESTAMPTZ + to_days($max_future_days)
        THEN CASE WHEN strlen(metadata) > $max_metadata THEN 'oversized_metadata' END
    WHEN event_ts IS NULL THEN 'bad_timestamp'
    WHEN event_ts < CAST($window_start AS DATE) THEN 'timestamp_too_old'
    ELSE 'timestamp_in_future'
END"""
# the quarantine record of a record that is not a line of text: its fields as text, as JSON
RECORD = ("CAST(to_json(struct_pack(event_id, customer_id, subscription_id, meter_name, quantity, "
          '"timestamp" := ts, metadata, received_at)) AS VARCHAR)')


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


@dataclass(frozen=True)
class _File:
    path: Path
    sha: str
    fmt: str
    file_day: str | None
    size: int


def _quote(path: Path | str) -> str:
    return str(path).replace("'", "''")


def _describe(con: duckdb.DuckDBPyConnection, f: _File) -> tuple[tuple[str, str], ...]:
    """The file's columns (name, type) as the landing reads it."""
    p = _quote(f.path)
    src = (f"read_csv('{p}', all_varchar=true, header=true, auto_detect=true, {REJECTS})" if f.fmt == "csv"
           else f"read_parquet('{p}')")
    return tuple((r[0], r[1]) for r in wh.run(con, f"DESCRIBE SELECT * FROM {src}"))


# --- what a landing reads: one row per record, with its file's `path` and its `source_row`

def _ndjson_rows() -> str:
    """The non-blank lines of the batch's NDJSON files, from ``_lines`` (see :func:`_land`). A line's
    number is its position among its file's rows of the table: rowids are consecutive in insertion
    order (from a base that is not 0 inside a transaction), the files one after the other."""
    return ("SELECT b.path, l.rowid - f.first_rowid + 1 AS source_row, l.line FROM _lines l "
            "JOIN (SELECT file_index, min(rowid) AS first_rowid FROM _lines GROUP BY 1) f USING (file_index) "
            "JOIN _batch b ON b.idx = l.file_index "
            "WHERE CASE WHEN l.line IS NULL THEN false WHEN starts_with(l.line, '{') THEN true "
            "ELSE trim(l.line) <> '' END")


def _csv_rows(con: duckdb.DuckDBPyConnection, files: list[_File], rejects: str) -> str:
    """The rows of CSV files, every field as text (NULL when the file has no such column)."""
    selects = []
    for f in files:
        cols = {c for c, _ in _describe(con, f)}
        fields = ", ".join((f'CAST("{c}" AS VARCHAR)' if c in cols else "CAST(NULL AS VARCHAR)") +
                           f" AS {'ts' if c == 'timestamp' else c}" for c in FIELDS)
        selects.append(f"SELECT '{_quote(f.path)}' AS path, row_number() OVER () AS source_row, {fields} "
                       f"FROM read_csv('{_quote(f.path)}', all_varchar=true, header=true, auto_detect=true, {rejects})")
    return " UNION ALL ".join(selects)


def _parquet_rows(files: list[_File], schema: tuple[tuple[str, str], ...]) -> str:
    """The rows of Parquet files of one schema, read by one multi-file scan (the reader numbers the rows)."""
    present = [c for c in FIELDS if c in {name for name, _ in schema}]
    cols = "".join(f', "{c}"' for c in present)
    if {"filename", "file_row_number"}.isdisjoint(name for name, _ in schema):
        paths = ", ".join(f"'{_quote(f.path)}'" for f in files)
        return (f"SELECT filename AS path, file_row_number + 1 AS source_row{cols} "
                f"FROM read_parquet([{paths}], filename=true, file_row_number=true)")
    return " UNION ALL ".join(  # the files have columns of those names: number the rows ourselves
        f"SELECT '{_quote(f.path)}' AS path, row_number() OVER () AS source_row{cols} "
        f"FROM read_parquet('{_quote(f.path)}')"
        for f in files)


# --- the two statements of a landing: the records that pass (to raw), the others (to quarantine)

def _ndjson_sql(rows: str) -> tuple[str, str]:
    """Each line is parsed twice, whatever its number of fields: once for every field's text
    (``json_extract_string``, i.e. ``line->>'f'``), once for every field's JSON type (``json_type``)."""
    paths = "[" + ", ".join(f"'{f}'" for f in FIELDS) + "]"
    parsed = (f"SELECT path, source_row, line, valid, "
              f"CASE WHEN valid THEN json_extract_string(line, {paths}) END AS s, "
              f"CASE WHEN valid THEN json_type(line, {paths}) END AS t "
              f"FROM (SELECT *, json_valid(line) AS valid FROM ({rows}))")

    def text(i: int, f: str) -> str:
        if f == "metadata":  # the object's JSON text, as CAST(line->'metadata' AS VARCHAR) ('null' for null)
            return f"CASE WHEN t[{i}] = 'NULL' THEN 'null' ELSE s[{i}] END AS metadata"
        return f"s[{i}] AS {'ts' if f == 'timestamp' else f}"

    fields = ", ".join(text(i, f) for i, f in enumerate(FIELDS, 1))
    # (the types of a record with every field present as usual settle it at once)
    usual = "[" + ", ".join(repr(JSON_TYPES[f][0]) for f in FIELDS) + "]"
    wrong = f"CASE WHEN t = {usual} THEN false ELSE " + " OR ".join(
        f"coalesce(t[{i}] NOT IN ('NULL', {', '.join(map(repr, JSON_TYPES[f]))}), false)"
        for i, f in enumerate(FIELDS, 1)) + " END"
    records = (f"SELECT *, TRY_CAST(ts AS TIMESTAMPTZ) AS event_ts FROM ("
               f"SELECT path, source_row, line, {fields}, "
               f"CASE WHEN NOT valid THEN 'invalid_json' "
               f"WHEN CASE WHEN starts_with(line, '{{') THEN false ELSE json_type(line) <> 'OBJECT' END "
               f"THEN 'not_an_object' "
               f"WHEN {wrong} THEN 'wrong_type' END AS unreadable FROM ({parsed}))")
    landed = (f"SELECT path, event_id, customer_id, subscription_id, meter_name, quantity, NULL AS quantity_dec, "
              f"NULL AS quantity_scale, ts, metadata, received_at, "
              f"event_ts, NULL AS received_ts, source_row FROM ({records}) WHERE ({REASON}) IS NULL")
    quarantined = f"SELECT path, source_row, {REASON} AS reason, line AS record FROM ({records})"
    return landed, quarantined


def _csv_sql(rows: str) -> tuple[str, str]:
    records = f"SELECT *, TRY_CAST(ts AS TIMESTAMPTZ) AS event_ts, CAST(NULL AS VARCHAR) AS unreadable FROM ({rows})"
    landed = (f"SELECT path, event_id, customer_id, subscription_id, meter_name, quantity, NULL AS quantity_dec, "
              f"NULL AS quantity_scale, ts, metadata, received_at, "
              f"event_ts, NULL AS received_ts, source_row FROM ({records}) WHERE ({REASON}) IS NULL")
    quarantined = f"SELECT path, source_row, {REASON} AS reason, {RECORD} AS record FROM ({records})"
    return landed, quarantined


def _parquet_sql(rows: str, schema: tuple[tuple[str, str], ...]) -> tuple[str, str]:
    """Typed values are judged as the text they were always written as (``CAST(x AS VARCHAR)``,
    metadata as JSON, a timestamp as ``strftime(CAST(x AS TIMESTAMPTZ), TS_TEXT)``, its value that text
    cast back), but landed typed where that text can be rebuilt from the value:

    * a timestamp inside the landing window skips the round trip (it gives back the same instant,
      and passes the timestamp checks): event_ts alone holds it; the text rules run for the others;
    * a received_at whose round trip is exact (TS_SAFE) is kept in received_ts;
    * an integer or decimal quantity (up to 9 decimals) is kept in quantity_dec, with its decimals.
    """
    types = dict(schema)
    q_type = types.get("quantity", "")
    scale = 0 if q_type in _EXACT_INTEGERS else int(m.group(1)) if (m := _DECIMAL.fullmatch(q_type)) else None
    typed_quantity = scale is not None and scale <= 9

    def value(f: str, landing: bool) -> str:
        if f in ("timestamp", "received_at"):
            name = "ts_typed" if f == "timestamp" else "recv_typed"
            return f'CAST("{f}" AS TIMESTAMPTZ) AS {name}' if f in types else f"CAST(NULL AS TIMESTAMPTZ) AS {name}"
        if f not in types:
            return f"CAST(NULL AS VARCHAR) AS {f}"
        if f == "metadata":
            return "CAST(to_json(metadata) AS VARCHAR) AS metadata"
        if f == "quantity" and landing and typed_quantity:
            return 'TRY_CAST(quantity AS DECIMAL(38, 9)) AS quantity_dec, quantity AS quantity_typed'
        return f'CAST("{f}" AS VARCHAR) AS {f}'

    def values(landing: bool) -> str:
        return f"SELECT path, source_row, {', '.join(value(f, landing) for f in FIELDS)} FROM ({rows})"

    if typed_quantity:  # as text only when too large for DECIMAL(38, 9)
        quantity = ("CASE WHEN quantity_dec IS NULL THEN CAST(quantity_typed AS VARCHAR) END AS quantity, "
                    f"quantity_dec, CASE WHEN quantity_dec IS NOT NULL THEN {scale} END AS quantity_scale")
    else:
        quantity = "quantity, CAST(NULL AS DECIMAL(38, 9)) AS quantity_dec, CAST(NULL AS UTINYINT) AS quantity_scale"
    checked = (f"SELECT *, CASE WHEN in_window THEN ts_typed ELSE TRY_CAST(ts AS TIMESTAMPTZ) END AS event_ts FROM ("
               f"SELECT *, CASE WHEN NOT in_window THEN strftime(ts_typed, '{TS_TEXT}') END AS ts, "
               f"CAST(NULL AS VARCHAR) AS unreadable FROM ("
               f"SELECT *, coalesce(ts_typed >= CAST($window_start AS DATE) AND "
               f"ts_typed <= $now::TIMESTAMPTZ + to_days($max_future_days), false) AS in_window "
               f"FROM ({values(landing=True)})))")
    landed = (f"SELECT path, event_id, customer_id, subscription_id, meter_name, {quantity}, ts, metadata, "
              f"CASE WHEN NOT coalesce(recv_typed {TS_SAFE}, true) THEN strftime(recv_typed, '{TS_TEXT}') END "
              f"AS received_at, event_ts, CASE WHEN recv_typed {TS_SAFE} THEN recv_typed END AS received_ts, "
              f"source_row FROM ({checked}) "
              f"WHERE (CASE WHEN in_window THEN "
              f"CASE WHEN strlen(metadata) > $max_metadata THEN 'oversized_metadata' END ELSE {REASON} END) IS NULL")
    # quarantined: every field as text, every check, as for a text source
    as_text = (f"SELECT *, TRY_CAST(ts AS TIMESTAMPTZ) AS event_ts FROM ("
               f"SELECT *, strftime(ts_typed, '{TS_TEXT}') AS ts, strftime(recv_typed, '{TS_TEXT}') AS received_at, "
               f"CAST(NULL AS VARCHAR) AS unreadable FROM ({values(landing=False)}))")
    quarantined = f"SELECT path, source_row, {REASON} AS reason, {RECORD} AS record FROM ({as_text})"
    return landed, quarantined


def _insert(con: duckdb.DuckDBPyConnection, files: list[_File], checks: dict) -> dict[str, int]:
    """Land the records of files of one format that pass (raw.usage_events), and keep the others in
    ``_quarantined``: those are read again after the first statement, by an anti join on the row
    number before any parsing, so only they are checked twice. Returns the records landed per file."""
    fmt = files[0].fmt
    if fmt == "ndjson":
        rows = _ndjson_rows()
        to_sql = _ndjson_sql
    elif fmt == "csv":
        rows = _csv_rows(con, files, REJECTS)
        to_sql = _csv_sql
    else:
        schema = _describe(con, files[0])
        rows = _parquet_rows(files, schema)
        to_sql = partial(_parquet_sql, schema=schema)
    landed_sql, _ = to_sql(rows)
    wh.run(con, f"""
        INSERT INTO raw.usage_events (event_id, customer_id, subscription_id, meter_name, quantity, quantity_dec,
                                      quantity_scale, "timestamp", metadata, received_at, event_ts, received_ts,
                                      source_row, source_file, source_sha256, file_day, landed_at)
        SELECT l.* EXCLUDE (path), b.name, b.sha, b.file_day, $now::TIMESTAMPTZ
        FROM ({landed_sql}) l JOIN _batch b USING (path)""", checks)
    shas = ", ".join(f"'{f.sha}'" for f in files)
    landed_rows = (f"SELECT b.path, r.source_row, r.\"timestamp\" FROM raw.usage_events r JOIN _batch b "
                   f"ON r.source_sha256 = b.sha AND r.source_file = b.name AND r.landed_at = $now::TIMESTAMPTZ "
                   f"WHERE r.source_sha256 IN ({shas})")
    tally = wh.run(con, f'SELECT path, count(*), count("timestamp") FROM ({landed_rows}) GROUP BY 1',
                   {"now": checks["now"]})
    landed = {path: n for path, n, _ in tally}
    # the CSV files are read again with their bad lines skipped (as the first read did), but not stored twice
    again = _csv_rows(con, files, "ignore_errors=true") if fmt == "csv" else rows
    not_landed = (f"SELECT * FROM ({again}) "
                  f"ANTI JOIN (SELECT path, source_row FROM ({landed_rows})) USING (path, source_row)")
    if fmt == "parquet" and "timestamp" in {c for c, _ in schema} and not any(text for _, _, text in tally):
        # Inside the window only oversized metadata (rare) is rejected, and telling it apart means
        # converting every row's metadata to JSON again. None of the rows outside the window landed
        # (a landed one would have kept its timestamp text): when they are as many as the records
        # not landed, they are exactly those, and the only rows read again.
        outside = ('NOT coalesce(CAST("timestamp" AS TIMESTAMPTZ) >= CAST($window_start AS DATE) AND '
                   'CAST("timestamp" AS TIMESTAMPTZ) <= $now::TIMESTAMPTZ + to_days($max_future_days), false)')
        counts = wh.run(con, f"SELECT path, count(*), count(*) FILTER (WHERE {outside}) FROM ({rows}) GROUP BY 1",
                        {k: checks[k] for k in ("window_start", "now", "max_future_days")})
        if all(n - landed.get(path, 0) == out for path, n, out in counts):
            not_landed = f"SELECT * FROM ({rows}) WHERE {outside}"
    _, quarantined_sql = to_sql(not_landed)
    wh.run(con, f"INSERT INTO _quarantined {quarantined_sql}", checks)
    return landed


def _land(con: duckdb.DuckDBPyConnection, files: list[_File], now: datetime, window_start: date,
          max_future_days: int) -> dict[Path, tuple[int, int]]:
    """Land a batch of files of one format (inside the caller's transaction): (landed, quarantined) per file."""
    checks = {"window_start": window_start, "now": now, "max_future_days": max_future_days,
              "max_metadata": MAX_METADATA_BYTES}
    for t in TEMP_TABLES:
        wh.run(con, f"DROP TABLE IF EXISTS {t}")
    wh.run(con, "CREATE TEMP TABLE _batch (idx INTEGER, path VARCHAR, name VARCHAR, sha VARCHAR, file_day DATE)")
    wh.run(con, "INSERT INTO _batch VALUES " + ", ".join(["(?, ?, ?, ?, CAST(? AS DATE))"] * len(files)),
           [v for i, f in enumerate(files) for v in (i, str(f.path), f.path.name, f.sha, f.file_day)])
    wh.run(con, "CREATE TEMP TABLE _quarantined (path VARCHAR, source_row BIGINT, reason VARCHAR, record VARCHAR)")
    if files[0].fmt == "ndjson":
        # Line numbers come from the order the CSV reader returns the lines in. Numbering them with a
        # window while parsing would make the whole statement, writes included, single-threaded; a
        # temp table of the lines numbers them by rowid, and is then parsed in parallel.
        paths = ", ".join(f"'{_quote(f.path)}'" for f in files)
        wh.run(con, f"""
            CREATE TEMP TABLE _lines AS
            SELECT file_index, line FROM read_csv([{paths}], columns={{'line': 'VARCHAR'}}, header=false,
                                                  delim='\x1f', quote='', escape='', auto_detect=false, {REJECTS})""")
    landed = _insert(con, files, checks)
    counts = {str(f.path): [landed.get(str(f.path), 0), 0] for f in files}
    if files[0].fmt != "parquet" and wh.run(con, "SELECT 1 FROM duckdb_tables() WHERE table_name = '_rejects'"):
        # lines the CSV reader rejected (bad encoding, wrong column count)
        wh.run(con, """
            CREATE TEMP TABLE _rejected_lines AS
            SELECT b.path, b.name || ':L' || r.line AS record_key,
                   CASE r.error_type WHEN 'INVALID ENCODING' THEN 'invalid_encoding' ELSE 'malformed_line' END
                       AS reason,
                   split_part(r.error_message, chr(10), 1) AS detail, r.csv_line AS record
            FROM _rejects r JOIN _rejects_scan s USING (scan_id, file_id) JOIN _batch b ON b.path = s.file_path""")
        wh.run(con, """INSERT INTO core.quarantine SELECT ?, record_key, NULL, reason, detail, record, ?::TIMESTAMPTZ
                       FROM _rejected_lines""", [SOURCE, now])
        for path, n in wh.run(con, "SELECT path, count(*) FROM _rejected_lines GROUP BY 1"):
            counts[path][1] += n
    wh.run(con, """
        INSERT INTO core.quarantine
        SELECT ?, b.name || ':' || q.source_row, NULL, q.reason, NULL, q.record, ?::TIMESTAMPTZ
        FROM _quarantined q JOIN _batch b USING (path)""", [SOURCE, now])
    for path, n in wh.run(con, "SELECT path, count(*) FROM _quarantined GROUP BY 1"):
        counts[path][1] += n
    return {Path(p): (landed, quarantined) for p, (landed, quarantined) in counts.items()}


def _land_batch(con: duckdb.DuckDBPyConnection, files: list[_File], now: datetime, window_start: date,
                max_future_days: int = 1) -> list[FileResult]:
    """Land a batch of files inside one transaction, each with its ledger row: records in = landed +
    quarantined. If the batch fails, its files are landed one by one, so that the one that cannot be
    read is recorded as failed and the others land."""
    try:
        with wh.transaction(con):
            counts = _land(con, files, now, window_start, max_future_days)
            results = []
            for f in files:
                landed, quarantined = counts[f.path]
                records = landed + quarantined
                wh.run(con, "INSERT INTO raw.usage_files VALUES (?,?,?,?,CAST(? AS DATE),?,?,?,'landed',NULL,?::TIMESTAMPTZ)",
                       [f.path.name, f.sha, f.size, f.fmt, f.file_day, records, landed, quarantined, now])
                results.append(FileResult(f.path.name, records, landed, quarantined, "landed"))
        return results
    except duckdb.Error as e:
        if len(files) > 1:
            return [r for f in files for r in _land_batch(con, [f], now, window_start, max_future_days)]
        # the whole file is unreadable: record it (not its rows) and go on with the others
        f = files[0]
        msg = str(e).splitlines()[0][:500]
        with wh.transaction(con):
            wh.run(con, "INSERT INTO raw.usage_files VALUES (?,?,?,?,CAST(? AS DATE),NULL,0,NULL,'failed',?,?::TIMESTAMPTZ)",
                   [f.path.name, f.sha, f.size, f.fmt, f.file_day, msg, now])
            wh.run(con, "INSERT INTO core.quarantine VALUES (?, ?, NULL, 'unreadable_file', ?, NULL, ?::TIMESTAMPTZ)",
                   [SOURCE, f.path.name, msg, now])
        return [FileResult(f.path.name, 0, 0, 0, "failed", msg)]
    finally:
        for t in TEMP_TABLES:
            wh.run(con, f"DROP TABLE IF EXISTS {t}")


def _file(path: Path, sha: str) -> _File:
    m = _DAY_IN_NAME.search(path.name)
    return _File(path, sha, FORMATS[path.suffix.lower()], m.group(1) if m else None, path.stat().st_size)


def land_file(con: duckdb.DuckDBPyConnection, path: Path, sha: str, now: datetime, window_start: date,
              max_future_days: int = 1) -> FileResult:
    """Land one file inside one transaction: records in = landed + quarantined."""
    return _land_batch(con, [_file(path, sha)], now, window_start, max_future_days)[0]


def _batches(con: duckdb.DuckDBPyConnection, files: list[_File]) -> list[list[_File]]:
    """Files landed together: one format, and for Parquet one schema (their rows are read by one
    statement); a file whose columns cannot even be read goes alone (and fails alone)."""
    groups: dict[tuple, list[_File]] = {}
    ndjson_batch, ndjson_bytes = 0, 0
    for f in files:
        key: tuple = (f.fmt,)
        if f.fmt == "ndjson":  # their lines are staged in a temp table (see _land): a bounded batch
            if ndjson_bytes + f.size > NDJSON_BATCH_BYTES:
                ndjson_batch, ndjson_bytes = ndjson_batch + 1, 0
            ndjson_bytes += f.size
            key = (f.fmt, ndjson_batch)
        elif f.fmt == "parquet":
            try:
                key = (f.fmt, _describe(con, f))
            except duckdb.Error:
                key = (f.fmt, str(f.path))
        groups.setdefault(key, []).append(f)
    return list(groups.values())


def land_inbox(con: duckdb.DuckDBPyConnection, inbox: Path, now: datetime, window_start: date) -> list[FileResult]:
    """Land every file of the inbox that the ledger has not seen (by content hash), in batches."""
    ensure_tables(con)
    seen = {r[0] for r in wh.run(con, "SELECT sha256 FROM raw.usage_files")}
    new = []
    for path in discover(inbox):
        sha = sha256_of(path)
        if sha in seen:
            continue
        new.append(_file(path, sha))
        seen.add(sha)
    results = {}
    for batch in _batches(con, new):
        for f, r in zip(batch, _land_batch(con, batch, now, window_start)):
            results[f.path] = r
    return [results[f.path] for f in new]
