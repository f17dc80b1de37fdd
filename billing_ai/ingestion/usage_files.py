"""Product usage event files -> raw.usage_files (the ledger, with its index) and raw.usage_events.

Files (NDJSON, CSV or Parquet) are landed whole, once: the ledger ``raw.usage_files`` keys them by
content hash, so a re-run lands only new files and a replayed file is never counted twice. Every
record of a file is either landed or quarantined with its reason (unreadable line, no parseable
timestamp, timestamp outside the window the pipeline covers, oversized metadata); a file that cannot
be read at all is recorded as failed and the others go on.

Raw keeps each file once. The file is kept beside the warehouse (``<warehouse>.usage_files/<sha256>
<suffix>``: the ledger's ``stored_path``). The landing indexes every file (INDEX_DDL): its landed
records per UTC event day (``raw.usage_file_days``: which files a partition reads, and how many
records it must account for) and the records it quarantined (``raw.usage_landing_rejects``). A text
file's (NDJSON, CSV) landed records are also rows of ``raw.usage_events``: its file (``file_id``: what
is the same for all its records is in the ledger), its row in that file (``source_row``, from 1: the
physical line of an NDJSON file, blank and rejected lines counted; the data row of a CSV file, rejected
rows counted), its
``event_id``, ``event_ts`` and its other fields, as parsed, once: parsing the file again would cost
more than keeping them. A Parquet file's records are read from the kept file (typed and columnar,
reading it again costs little; its row is the ``source_row``), less the ones its landing quarantined.
The ledger's ``fields_in_raw`` says which: true for text files, and for every file landed before raw
was narrowed (see _migrate_wide_raw; files landed before the index are indexed by _index_landed). A
kept Parquet file is a read-only copy (the build reads it again, so it must not change if the inbox
file is rewritten in place); a text file, which is never read again, is a hard link where the file
system allows. The build (``usage_events``) reads the records with :func:`records`; every row of core
or of the quarantine leads back to the record as received (file and row).

How files are landed, built for millions of records (see ``land_inbox``): new files are landed in
batches (Parquet files of one schema; NDJSON files up to NDJSON_BATCH_BYTES; CSV files), one
transaction per batch, the ledger exact per file; if a batch fails, its files are landed one by one
so that only the unreadable one fails. Per batch, every record is read and judged once, the checks
inline (see _land): a text file's verdicts go to a temp table that splits into one append to
raw.usage_events (one large append is much cheaper for DuckDB than one per file: it reads the files
in parallel, and leaves no partial row groups for the checkpoint to merge and rewrite), the index and
the quarantine; a Parquet file's are counted per day in one grouped pass that keeps only the failing
records. An NDJSON line is parsed once (json_transform), its JSON types checked again only where a
value looks like it may not be a string.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path

import duckdb

from billing_ai import warehouse as wh
from billing_ai.ingestion.quarantine import QUARANTINE_DDL

FORMATS = {".ndjson": "ndjson", ".jsonl": "ndjson", ".json": "ndjson", ".csv": "csv", ".parquet": "parquet"}
# `received_at` (optional) is when the product emitted the event to billing and to this log; an
# event whose billing period was invoiced before it was received is late
FIELDS = ("event_id", "customer_id", "subscription_id", "meter_name", "quantity", "timestamp", "metadata",
          "received_at")
# the fields raw keeps for a record of a text file (event_id is kept for every record)
TEXT_FIELDS = ("customer_id", "subscription_id", "meter_name", "quantity", "timestamp", "metadata", "received_at")
SOURCE = "usage_file"
MAX_METADATA_BYTES = 8192  # larger metadata is quarantined, not truncated
# JSON types a field may have in an NDJSON record (json_type names); NULL/absent is judged later
JSON_TYPES = {"event_id": ("VARCHAR",), "customer_id": ("VARCHAR",), "subscription_id": ("VARCHAR",),
              "meter_name": ("VARCHAR",), "quantity": ("VARCHAR", "UBIGINT", "BIGINT", "DOUBLE"),
              "timestamp": ("VARCHAR",), "metadata": ("OBJECT",), "received_at": ("VARCHAR",)}
# read_csv options that keep a bad line (bad encoding, wrong column count) out of the result and in a
# rejects table, so it can be quarantined with its reason instead of failing the whole file
REJECTS = "store_rejects=true, rejects_table='_csv_rejects', rejects_scan='_csv_rejects_scan'"
TEMP_TABLES = ("_batch", "_lines", "_line_gaps", "_checked", "_verdicts", "_csv_rejects", "_csv_rejects_scan", "_rejected_lines")
# how a typed timestamp is written as text (in the quarantine record, and as the build sees it)
TS_TEXT = "%Y-%m-%dT%H:%M:%S.%fZ"
# typed timestamps in this range survive strftime(TS_TEXT) -> TRY_CAST(... AS TIMESTAMPTZ) unchanged,
# so they can be read typed; anything else is read as that text
TS_SAFE = "BETWEEN TIMESTAMPTZ '1000-01-01 00:00:00+00' AND TIMESTAMPTZ '9999-12-31 23:59:59.999999+00'"
# NDJSON files landed together: their lines are held in memory meanwhile
NDJSON_BATCH_BYTES = 512 << 20
# Parquet quantity types read typed (as DECIMAL(38, 9)): their text is the value with a fixed number of
# decimals (DOUBLE's shortest round-trip text, or a decimal of more than 9 decimals, is read as text)
_EXACT_INTEGERS = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                   "UBIGINT", "UHUGEINT")
_DECIMAL = re.compile(r"DECIMAL\(\d+,(\d+)\)")
_DAY_IN_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})")

# The landing's index of every landed file, whatever its format: its landed records per UTC event
# day (which files a partition reads, and how many records it must account for), and the records it
# quarantined (few; a Parquet file's records are read from the kept file, and these are skipped).
INDEX_DDL = """
CREATE TABLE IF NOT EXISTS raw.usage_file_days (file_id INTEGER, event_date DATE, events BIGINT);
CREATE TABLE IF NOT EXISTS raw.usage_landing_rejects (file_id INTEGER, source_row BIGINT, reason VARCHAR);
"""

DDL = """
CREATE TABLE IF NOT EXISTS raw.usage_files (
    file_name VARCHAR, sha256 VARCHAR PRIMARY KEY, bytes BIGINT, format VARCHAR, file_day DATE,
    records BIGINT, landed BIGINT, quarantined BIGINT, status VARCHAR, error VARCHAR, landed_at TIMESTAMPTZ,
    file_id INTEGER, stored_path VARCHAR, fields_in_raw BOOLEAN);
ALTER TABLE raw.usage_files ADD COLUMN IF NOT EXISTS file_id INTEGER;
ALTER TABLE raw.usage_files ADD COLUMN IF NOT EXISTS stored_path VARCHAR;
ALTER TABLE raw.usage_files ADD COLUMN IF NOT EXISTS fields_in_raw BOOLEAN;
-- one row per landed record: its file and row, event_id, event_ts, and where the ledger says
-- fields_in_raw (a text file) its other fields as text (NULL for a Parquet file: the kept file holds them, typed)
CREATE TABLE IF NOT EXISTS raw.usage_events (
    file_id INTEGER, source_row BIGINT, event_id VARCHAR, event_ts TIMESTAMPTZ, customer_id VARCHAR,
    subscription_id VARCHAR, meter_name VARCHAR, quantity VARCHAR, "timestamp" VARCHAR, metadata VARCHAR,
    received_at VARCHAR);
""" + INDEX_DDL + QUARANTINE_DDL


def blank(col: str) -> str:
    """SQL: ``col IS NULL OR trim(col) = ''`` (empty, or only space separators). trim() decodes the whole
    string, so a value starting with a printable ASCII character (not blank) skips it -- with CASE:
    DuckDB evaluates both sides of an OR/AND, but only the chosen branch of a CASE."""
    return f"CASE WHEN {col} IS NULL THEN true WHEN {col} >= '!' AND {col} < '~' THEN false ELSE trim({col}) = '' END"


# A record's fields as text, as received (see records(): a typed value as the text it was always
# written as): what every check judges, and what a quarantine record shows
QUANTITY_TEXT = ("coalesce(quantity, CASE quantity_scale " +
                 " ".join(f"WHEN {s} THEN CAST(CAST(quantity_dec AS DECIMAL(38, {s})) AS VARCHAR)" for s in range(10)) +
                 " END)")
TIMESTAMP_TEXT = f"coalesce(\"timestamp\", strftime(ts_typed, '{TS_TEXT}'))"
RECEIVED_AT_TEXT = f"coalesce(received_at, strftime(received_ts, '{TS_TEXT}'))"
# A landed record's event_ts, from its fields: what the landing computed (see _checked: a typed
# timestamp inside the landing window is itself, a text one is parsed), for every landed record
EVENT_TS = 'coalesce(ts_typed, TRY_CAST("timestamp" AS TIMESTAMPTZ))'
# the UTC day of event_ts, by arithmetic on the instant (no time zone conversion; a landed record holds
# no infinite timestamp, the one case where it differs from CAST(event_ts AT TIME ZONE 'UTC' AS DATE))
EVENT_DATE = "CAST(make_timestamp(epoch_us(event_ts)) AS DATE)"


def record_json(metadata_json: str = "metadata") -> str:
    """SQL: the quarantine record of a record that is not a line of text: its fields as text, as JSON
    (``metadata_json``: its metadata's JSON text, see Records)."""
    return (f"CAST(to_json(struct_pack(event_id, customer_id, subscription_id, meter_name, quantity := {QUANTITY_TEXT}, "
            f'"timestamp" := {TIMESTAMP_TEXT}, metadata := CAST({metadata_json} AS VARCHAR), '
            f"received_at := {RECEIVED_AT_TEXT})) AS VARCHAR)")


# The first failing check is the record's reason (columns: unreadable, ts (text), event_ts; ``oversized``:
# SQL, whether the metadata is over MAX_METADATA_BYTES): unreadable, missing_timestamp, bad_timestamp
# (NULL event_ts), timestamp_too_old (before the window), timestamp_in_future, oversized_metadata. (A
# record inside the window is told apart first: the planner inlines event_ts, so each test of it
# parses the text again.)
def _reason(oversized: str) -> str:
    return f"""CASE
    WHEN unreadable IS NOT NULL THEN unreadable
    WHEN {blank("ts")} THEN 'missing_timestamp'
    WHEN event_ts BETWEEN CAST($window_start AS DATE) AND $now::TIMESTAMPTZ + to_days($max_future_days)
        THEN CASE WHEN {oversized} THEN 'oversized_metadata' END
    WHEN event_ts IS NULL THEN 'bad_timestamp'
    WHEN event_ts < CAST($window_start AS DATE) THEN 'timestamp_too_old'
    ELSE 'timestamp_in_future'
END"""


def ensure_tables(con: duckdb.DuckDBPyConnection, index: bool = True) -> None:
    """The tables; a warehouse landed before the index (see INDEX_DDL) is indexed (``index``) once."""
    unindexed = wh.table_exists(con, "raw.usage_files") and not wh.table_exists(con, "raw.usage_file_days")
    if index and unindexed and not wide_raw(con):
        with wh.transaction(con):  # the index tables exist only once filled
            _run_ddl(con)
            _index_landed(con)
    else:
        _run_ddl(con)


def _run_ddl(con: duckdb.DuckDBPyConnection) -> None:
    for stmt in DDL.split(";"):
        if stmt.strip():
            wh.run(con, stmt)


def _index_landed(con: duckdb.DuckDBPyConnection) -> None:
    """Index the files landed before the index existed, when raw held a narrow row per landed record
    of every file (inside the caller's transaction): their days from those rows. A Parquet file's rows
    then leave raw (its records are read from the kept file), and the records its landing quarantined
    are the kept file's rows that had none (their reason from the quarantine). A text file's records
    stay in raw; the ones its landing quarantined are not indexed (nothing reads them back)."""
    wh.run(con, f"INSERT INTO raw.usage_file_days SELECT file_id, {EVENT_DATE}, count(*) FROM raw.usage_events "
                "GROUP BY ALL")
    for batch in batches(con, kept_files(con, "NOT coalesce(fields_in_raw, format <> 'parquet')")):
        wh.run(con, f"""
            INSERT INTO raw.usage_landing_rejects
            SELECT v.file_id, v.source_row, coalesce((
                SELECT any_value(q.reason) FROM core.quarantine q
                WHERE q.source = '{SOURCE}' AND q.record_key = f.file_name || ':' || v.source_row), 'quarantined')
            FROM ({parquet_ids(con, batch)}) v JOIN raw.usage_files f USING (file_id)
            ANTI JOIN raw.usage_events r USING (file_id, source_row)""")
        wh.run(con, f"DELETE FROM raw.usage_events WHERE file_id IN ({', '.join(str(f.file_id) for f in batch)})")


def wide_raw(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether raw.usage_events is still the former full copy of every record (see _migrate_wide_raw)."""
    return bool(wh.run(con, "SELECT 1 FROM duckdb_columns() WHERE schema_name = 'raw' "
                            "AND table_name = 'usage_events' AND column_name = 'source_sha256'"))


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
    path: Path  # where it is read from: once landed, the copy raw keeps
    name: str  # its name in the inbox (the ledger's file_name, core's source_file)
    sha: str
    fmt: str
    file_day: str | None
    size: int
    file_id: int | None = None
    records: int = 0  # landed records (known once landed)
    in_raw: bool | None = None  # its records' fields are in raw (default: a text file's are)

    @property
    def fields_in_raw(self) -> bool:
        return self.fmt != "parquet" if self.in_raw is None else self.in_raw


def _quote(path: Path | str) -> str:
    return str(path).replace("'", "''")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _describe(con: duckdb.DuckDBPyConnection, f: _File) -> tuple[tuple[str, str], ...]:
    """The file's columns (name, type) as the landing reads it."""
    p = _quote(f.path)
    src = (f"read_csv('{p}', all_varchar=true, header=true, auto_detect=true, {REJECTS})" if f.fmt == "csv"
           else f"read_parquet('{p}')")
    return tuple((r[0], r[1]) for r in wh.run(con, f"DESCRIBE SELECT * FROM {src}"))


def kept_dir(warehouse_path: str | Path) -> Path:
    """Where the usage files of the warehouse at ``warehouse_path`` are kept (see the module doc)."""
    return Path(f"{warehouse_path}.usage_files")


def _kept_dir_of(con: duckdb.DuckDBPyConnection) -> Path | None:
    """Where the warehouse ``con`` is on keeps its files (None: in memory, it keeps none)."""
    (db,), = wh.run(con, "SELECT path FROM duckdb_databases() WHERE database_name = current_database()")
    return kept_dir(db) if db else None


def _kept_name(sha: str, name: str) -> str:
    """A kept file's name: its content hash and its format's suffix."""
    return f"{sha}{Path(name).suffix.lower()}"


def _keep(con: duckdb.DuckDBPyConnection, f: _File) -> _File:
    """The file as raw keeps it, by content hash beside the warehouse, written whole or not at all
    (a temp name, then os.replace). A file whose records are read from it again (Parquet) is a
    read-only copy: a hard link would be the inbox file itself, and a producer rewriting that in place
    would change (or truncate) records already landed. A text file, never read again, is a hard link
    where the file system allows. (An in-memory warehouse keeps nothing beyond the session: it reads
    the inbox file.)"""
    home = _kept_dir_of(con)
    if home is None:
        return f
    kept = home / _kept_name(f.sha, f.path.name)
    if not kept.exists():
        kept.parent.mkdir(parents=True, exist_ok=True)
        tmp = kept.with_name(f"{kept.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        if f.fields_in_raw:
            try:
                os.link(f.path, tmp)
            except OSError:
                shutil.copyfile(f.path, tmp)
        else:
            shutil.copyfile(f.path, tmp)
            os.chmod(tmp, 0o444)
        os.replace(tmp, kept)
    return replace(f, path=kept.resolve())


# --- what the landing reads (and the build, from a kept Parquet file): one row per record, with its
# file_id and source_row

def _stage_lines(con: duckdb.DuckDBPyConnection, files: list[_File]) -> None:
    """The lines of a batch's NDJSON files, in the temp table ``_lines``, one file after the other,
    each by a statement of its own: a single-file read keeps the file's order (and reads it in
    parallel), so a line's position among its file's lines in the table (``k``) is its position in
    the table (row_number() OVER (), which DuckDB computes in the scan, in parallel) less the lines of
    the files before it (_batch.lines_before). (One read of all the files would have to carry each line's
    number along, WITH ORDINALITY, which makes the read single-threaded.)

    The reader keeps blank lines (as NULL) but not the lines it rejects (invalid UTF-8, the separator
    inside a line): those are quarantined on their own (``<file>:L<line>``, see _land), and each one
    would move the lines after it up by one. ``_line_gaps`` (only when some line was rejected) holds,
    per rejected line of a file in order, the lines kept before it and how many were rejected up to
    it: a line's number (source_row) is k plus the rejected lines before it (see _ndjson_read)."""
    wh.run(con, "CREATE TEMP TABLE _lines (file_index INTEGER, line VARCHAR)")
    before = 0
    for i, f in enumerate(files):
        wh.run(con, "UPDATE _batch SET lines_before = ? WHERE idx = ?", [before, i])
        (n,), = wh.run(con, f"""
            INSERT INTO _lines SELECT {i}, line
            FROM read_csv('{_quote(f.path)}', columns={{'line': 'VARCHAR'}}, header=false, delim='\x1f', quote='',
                          escape='', auto_detect=false, {REJECTS})""")
        before += n
    _line_gaps(con, header_rows=0)


def _line_gaps(con: duckdb.DuckDBPyConnection, header_rows: int) -> bool:
    """``_line_gaps`` from the rows the reader rejected in the batch's files (NDJSON lines, CSV rows; the
    reader's ``line`` counts ``header_rows`` first): per rejected row of a file, in order, the rows it
    kept before it and how many it rejected up to it. A kept row's number is its position among the
    kept rows plus the rejected rows before it (see _ndjson_read, _renumber_csv). Whether there are any."""
    if not wh.run(con, "SELECT 1 FROM duckdb_tables() WHERE table_name = '_csv_rejects' AND temporary"):
        return False
    # (a row can be rejected for more than one error: counted once; adjacent rejected rows have as many
    # kept rows before them: the last one's count holds)
    wh.run(con, f"""
        CREATE OR REPLACE TEMP TABLE _line_gaps AS
        SELECT file_index, line - shift AS kept_before, max(shift) AS shift FROM (
            SELECT b.idx AS file_index, r.line - {header_rows} AS line,
                   row_number() OVER (PARTITION BY b.idx ORDER BY r.line) AS shift
            FROM (SELECT DISTINCT scan_id, file_id, line FROM _csv_rejects) r
            JOIN _csv_rejects_scan s USING (scan_id, file_id) JOIN _batch b ON b.path = s.file_path)
        GROUP BY ALL""")
    if not wh.run(con, "SELECT 1 FROM _line_gaps LIMIT 1"):
        wh.run(con, "DROP TABLE _line_gaps")
        return False
    return True


def _renumber_csv(con: duckdb.DuckDBPyConnection) -> None:
    """A CSV file's rows are numbered in the scan among the rows the reader kept; where it rejected rows
    (bad encoding, wrong column count: quarantined on their own), the rows below them move down to
    their own data row in ``_checked`` (rare: only then is it rewritten)."""
    if _line_gaps(con, header_rows=1):
        wh.run(con, """
            CREATE OR REPLACE TEMP TABLE _checked AS
            SELECT c.* EXCLUDE (idx) REPLACE (c.source_row + coalesce(g.shift, 0) AS source_row)
            FROM (SELECT c.*, b.idx FROM _checked c JOIN _batch b USING (file_id)) c
            ASOF LEFT JOIN _line_gaps g ON g.file_index = c.idx AND c.source_row > g.kept_before""")


def _ndjson_read(gaps: bool = False) -> str:
    """SQL: the staged lines (see _stage_lines), numbered and parsed: file_id, source_row, line,
    unreadable (why a line is no record) and the fields. ``gaps``: some line was rejected (``_line_gaps``)."""
    kept = "SELECT row_number() OVER () AS n, file_index, line FROM _lines"
    if gaps:  # the nearest rejected line above: the last one with fewer kept lines before it than k
        numbered = (f"SELECT l.file_index, l.k + coalesce(g.shift, 0) AS source_row, l.line FROM ("
                    f"SELECT l.file_index, l.n - b.lines_before AS k, l.line FROM ({kept}) l "
                    f"JOIN _batch b ON b.idx = l.file_index) l "
                    f"ASOF LEFT JOIN _line_gaps g ON g.file_index = l.file_index AND l.k > g.kept_before")
    else:
        numbered = (f"SELECT l.file_index, l.n - b.lines_before AS source_row, l.line FROM ({kept}) l "
                    f"JOIN _batch b ON b.idx = l.file_index")
    parsed = ("SELECT b.file_id, l.source_row, l.line, "
              f"TRY(json_transform(l.line, '{_NDJSON_STRUCTURE}')) AS j "
              f"FROM ({numbered}) l JOIN _batch b ON b.idx = l.file_index")
    # the JSON types of the fields, read again (json_type) only where a text is suspect
    typed = f"SELECT *, CASE WHEN {_NDJSON_SUSPECT} THEN json_type(line, {_FIELD_PATHS}) END AS t FROM ({parsed})"
    return f"SELECT file_id, source_row, line, {_NDJSON_UNREADABLE} AS unreadable, {_NDJSON_FIELDS} FROM ({typed})"


# One parse per line (json_transform): the text fields as their value (a string's unescaped value;
# another JSON value, which is a wrong type, as its JSON text), quantity and metadata as JSON text
# (a number's text as json_extract_string writes it; a string's unescaped). JSON types are checked
# exactly (json_type on the line, a second parse) only where a text could be a non-string's.
_NDJSON_STRUCTURE = json.dumps({f: "JSON" if f in ("quantity", "metadata") else "VARCHAR" for f in FIELDS})
_FIELD_PATHS = "[" + ", ".join(f"'{f}'" for f in FIELDS) + "]"
_Q = "j['quantity']"
_NDJSON_FIELDS = ", ".join(
    f"CASE WHEN NOT starts_with({_Q}, '\"') THEN CAST({_Q} AS VARCHAR) WHEN contains({_Q}, '\\') "
    f"THEN json_extract_string({_Q}, '$') ELSE CAST({_Q} AS VARCHAR)[2:-2] END AS quantity" if f == "quantity"
    # JSON null reads as the text 'null' (as CAST(line->'metadata' AS VARCHAR)); the parse gives NULL
    # for null and absent alike, so an absent key is told apart only then
    else "CASE WHEN j['metadata'] IS NOT NULL THEN j['metadata'] "
         "WHEN j IS NULL OR NOT contains(line, '\"metadata\"') THEN NULL "
         "WHEN json_type(line, 'metadata') = 'NULL' THEN CAST('null' AS JSON) END AS metadata" if f == "metadata"
    else f"j['{f}'] AS \"{f}\"" for f in FIELDS)


def _maybe_not_text(v: str) -> str:
    """SQL: whether a value read as VARCHAR could be a number's, a boolean's, an object's or an array's
    text (by its first character: { [ t f, or a digit - + . i I n N and a number's text, which has no ':')."""
    c = f"ascii({v})"
    return (f"CASE WHEN {v} IS NULL THEN false WHEN {c} IN (123, 91) THEN true "
            f"WHEN {c} IN (116, 102) THEN {v} IN ('true', 'false') "
            f"WHEN {c} BETWEEN 48 AND 57 OR {c} IN (45, 43, 46, 105, 73, 110, 78) "
            f"THEN CASE WHEN contains({v}, ':') THEN false ELSE TRY_CAST({v} AS DOUBLE) IS NOT NULL END ELSE false END")


_NDJSON_SUSPECT = " OR ".join(
    f"coalesce(left({_Q}, 1) IN ('{{', '[', 't', 'f'), false)" if f == "quantity"
    else "coalesce(NOT starts_with(j['metadata'], '{'), false)" if f == "metadata" else _maybe_not_text(f"j['{f}']")
    for f in FIELDS)
_NDJSON_UNREADABLE = (
    "CASE WHEN CASE WHEN j IS NOT NULL THEN false ELSE NOT json_valid(line) END THEN 'invalid_json' "
    "WHEN CASE WHEN starts_with(line, '{') THEN false ELSE json_type(line) IS DISTINCT FROM 'OBJECT' END "
    "THEN 'not_an_object' WHEN " +
    " OR ".join(f"coalesce(t[{i}] NOT IN ('NULL', {', '.join(map(repr, JSON_TYPES[f]))}), false)"
                for i, f in enumerate(FIELDS, 1)) + " THEN 'wrong_type' END")


def _ndjson_rows(gaps: bool = False) -> str:
    """The records of the batch's NDJSON files: their non-blank lines."""
    return (f"SELECT * FROM ({_ndjson_read(gaps)}) "
            "WHERE CASE WHEN line IS NULL THEN false WHEN starts_with(line, '{') THEN true ELSE trim(line) <> '' END")


def _csv_rows(con: duckdb.DuckDBPyConnection, files: list[_File]) -> str:
    """The rows of CSV files, every field as text (NULL when the file has no such column)."""
    selects = []
    for f in files:
        cols = {c for c, _ in _describe(con, f)}
        fields = ", ".join((f'CAST("{c}" AS VARCHAR)' if c in cols else "CAST(NULL AS VARCHAR)") + f' AS "{c}"'
                           for c in FIELDS)
        selects.append(f"SELECT {f.file_id} AS file_id, row_number() OVER () AS source_row, {fields}, "
                       "CAST(NULL AS VARCHAR) AS unreadable "
                       f"FROM read_csv('{_quote(f.path)}', all_varchar=true, header=true, auto_detect=true, {REJECTS})")
    return " UNION ALL ".join(selects)


def _parquet_rows(files: list[_File], schema: tuple[tuple[str, str], ...], fields: tuple[str, ...] = FIELDS) -> str:
    """The rows of Parquet files of one schema (their ``fields`` it has), read by one multi-file scan
    (the reader numbers the rows)."""
    present = [c for c in fields if c in {name for name, _ in schema}]
    cols = "".join(f', "{c}"' for c in present)
    if {"filename", "file_row_number"}.isdisjoint(name.lower() for name, _ in schema):  # (names are case-blind)
        paths = ", ".join(f"'{_quote(f.path)}'" for f in files)
        ids = ", ".join(f"('{_quote(f.path)}', {f.file_id})" for f in files)
        return (f"SELECT b.file_id, file_row_number + 1 AS source_row{cols} "
                f"FROM read_parquet([{paths}], filename=true, file_row_number=true) "
                f"JOIN (VALUES {ids}) b(path, file_id) ON b.path = filename")
    return " UNION ALL ".join(  # the files have columns of those names: number the rows ourselves
        f"SELECT {f.file_id} AS file_id, row_number() OVER () AS source_row{cols} FROM read_parquet('{_quote(f.path)}')"
        for f in files)


def parquet_ids(con: duckdb.DuckDBPyConnection, files: list[_File], with_ts: bool = False) -> str:
    """SQL: (file_id, source_row, event_id[, event_ts]) of every record of landed Parquet files of one
    schema (see :func:`batches`), read from the kept files: only the columns the dedup needs, read as
    the landing read them (:func:`_parquet_values`, EVENT_TS)."""
    schema = _describe(con, files[0])
    needed = ("event_id", "timestamp") if with_ts else ("event_id",)
    values = _parquet_values(_parquet_rows(files, schema, needed), tuple(c for c in schema if c[0] in needed))
    return f"SELECT file_id, source_row, event_id{f', {EVENT_TS} AS event_ts' if with_ts else ''} FROM ({values})"


# --- the fields of those rows: file_id, source_row, event_id, customer_id, subscription_id, meter_name,
# quantity (text) or quantity_dec + quantity_scale, "timestamp" (text) or ts_typed, metadata (JSON
# text, or a typed source's own value: see Records), received_at (text) or received_ts; and, read by
# the landing from NDJSON, line and unreadable (why a line is no record). What a typed source (Parquet)
# holds typed is read typed; QUANTITY_TEXT, TIMESTAMP_TEXT and RECEIVED_AT_TEXT give its text.

_NO_TYPED = ("CAST(NULL AS DECIMAL(38, 9)) AS quantity_dec, CAST(NULL AS UTINYINT) AS quantity_scale, "
             "CAST(NULL AS TIMESTAMPTZ) AS ts_typed, CAST(NULL AS TIMESTAMPTZ) AS received_ts")


def _text_values(rows: str) -> str:
    """NDJSON and CSV: every field is text."""
    return f"SELECT *, {_NO_TYPED} FROM ({rows})"


def _parquet_values(rows: str, schema: tuple[tuple[str, str], ...]) -> str:
    """Typed values are read typed where their text (the one they were always judged and shown as:
    ``CAST(x AS VARCHAR)``, a timestamp as ``strftime(CAST(x AS TIMESTAMPTZ), TS_TEXT)``) can be rebuilt
    from the value: a timestamp (ts_typed; see the landing for how it is judged), a received_at whose
    round trip is exact (TS_SAFE), an integer or decimal quantity up to 9 decimals. Metadata stays the
    file's value (see Records)."""
    types = dict(schema)
    q_type = types.get("quantity", "")
    scale = 0 if q_type in _EXACT_INTEGERS else int(m.group(1)) if (m := _DECIMAL.fullmatch(q_type)) else None

    def typed_time(f: str) -> bool:
        return types.get(f, "").startswith(("TIMESTAMP", "DATE"))

    def text(f: str) -> str:
        return f'CAST("{f}" AS VARCHAR)' if f in types else "CAST(NULL AS VARCHAR)"

    if scale is not None and scale <= 9:  # as text only when too large for DECIMAL(38, 9)
        dec = "TRY_CAST(quantity AS DECIMAL(38, 9))"
        quantity = (f"CASE WHEN {dec} IS NULL THEN CAST(quantity AS VARCHAR) END AS quantity, {dec} AS quantity_dec, "
                    f"CAST(CASE WHEN {dec} IS NOT NULL THEN {scale} END AS UTINYINT) AS quantity_scale")
    else:
        quantity = (f"{text('quantity')} AS quantity, CAST(NULL AS DECIMAL(38, 9)) AS quantity_dec, "
                    "CAST(NULL AS UTINYINT) AS quantity_scale")
    if typed_time("timestamp"):
        ts = 'CAST(NULL AS VARCHAR) AS "timestamp", CAST("timestamp" AS TIMESTAMPTZ) AS ts_typed'
    else:
        ts = f'{text("timestamp")} AS "timestamp", CAST(NULL AS TIMESTAMPTZ) AS ts_typed'
    if typed_time("received_at"):
        recv = "CAST(received_at AS TIMESTAMPTZ)"
        received = (f"CASE WHEN NOT coalesce({recv} {TS_SAFE}, true) THEN strftime({recv}, '{TS_TEXT}') END "
                    f"AS received_at, CASE WHEN {recv} {TS_SAFE} THEN {recv} END AS received_ts")
    else:
        received = f"{text('received_at')} AS received_at, CAST(NULL AS TIMESTAMPTZ) AS received_ts"
    metadata = "metadata" if "metadata" in types else "CAST(NULL AS VARCHAR) AS metadata"
    return (f"SELECT file_id, source_row, CAST(NULL AS VARCHAR) AS unreadable, "
            f"{', '.join(f'{text(f)} AS {f}' for f in FIELDS[:4])}, {quantity}, {ts}, {metadata}, {received} "
            f"FROM ({rows})")


@dataclass(frozen=True)
class Records:
    """How to read the records of a batch of landed files (one format; Parquet: one schema): ``sql``,
    one row per record (see above), and SQL over its rows for the metadata, which a typed source holds
    as a value (a Parquet STRUCT): ``metadata_json``, its JSON text (converted where it is used, so
    only for the rows that need it), and :meth:`metadata_values` of some of its keys."""
    sql: str
    metadata_json: str = "metadata"
    struct: tuple[tuple[str, str], ...] | None = None  # the STRUCT's fields (name, type)
    in_raw: bool = False  # read from raw.usage_events (a text file's records), with their event_ts

    def metadata_values(self, keys: tuple[str, ...]) -> tuple[str, list[str]]:
        """SQL for the values of these metadata keys, as text (metadata->>key): ``(extra, values)``, where
        ``extra`` is a column to add to the rows (``, <expr> AS m``, or "") and ``values`` one expression
        per key over the rows with it. JSON text is parsed once for all keys (into the list ``m``); a
        STRUCT's text fields are read as they are (a list per row would cost more than the fields)."""
        if self.struct is None:
            extra = f", json_extract_string({self.metadata_json}, {list(keys)!r}) AS m"
            return extra, [f"m[{i}]" for i in range(1, len(keys) + 1)]
        types = dict(self.struct)
        return "", ["CAST(NULL AS VARCHAR)" if k not in types else f"metadata.{_ident(k)}" if types[k] == "VARCHAR"
                    else f"json_extract_string({self.metadata_json}, {[k]!r})[1]" for k in keys]

    def metadata_over(self, limit: str) -> str:
        """SQL: whether the metadata's JSON text is longer than ``limit``. A STRUCT of texts is not when
        even every character escaped (6 bytes) would fit, so its JSON text is written only otherwise."""
        exact = f"strlen({self.metadata_json}) > {limit}"
        if self.struct is None or any(t != "VARCHAR" for _, t in self.struct):
            return exact
        bound = " + ".join(f"{len(json.dumps(k)) + 2} + coalesce(2 + 6 * strlen(metadata.{_ident(k)}), 4)"
                           for k, _ in self.struct)
        return f"CASE WHEN 2 + {bound} <= {limit} THEN false ELSE {exact} END"


def _records(con: duckdb.DuckDBPyConnection, files: list[_File]) -> Records:
    """The records of ``files`` (one format; for Parquet one schema), read from the files, with the
    landing's reasons to quarantine an NDJSON line (``unreadable``) and its text (``line``). Needs
    ``_batch``."""
    fmt = files[0].fmt
    if fmt == "ndjson":
        gaps = bool(wh.run(con, "SELECT 1 FROM duckdb_tables() WHERE table_name = '_line_gaps' AND temporary"))
        return Records(_text_values(_ndjson_rows(gaps)))
    if fmt == "csv":
        return Records(_text_values(_csv_rows(con, files)))
    schema = _describe(con, files[0])
    records = Records(_parquet_values(_parquet_rows(files, schema), schema))
    metadata_type = dict(schema).get("metadata")
    if metadata_type is None:
        return records
    struct = None  # a STRUCT's fields; anything else (a MAP, a text) is converted whole
    if metadata_type.startswith("STRUCT("):
        p = _quote(files[0].path)
        struct = tuple((r[0], r[1]) for r in wh.run(con, f"DESCRIBE SELECT metadata.* FROM read_parquet('{p}')"))
    return replace(records, metadata_json="to_json(metadata)", struct=struct)


def _stage_batch(con: duckdb.DuckDBPyConnection, files: list[_File]) -> None:
    """The batch's files (``_batch``), and for NDJSON files their lines (``_lines``)."""
    _drop_staged(con)
    wh.run(con, "CREATE TEMP TABLE _batch (idx INTEGER, path VARCHAR, name VARCHAR, sha VARCHAR, file_day DATE, "
                "file_id INTEGER, lines_before BIGINT)")
    wh.run(con, "INSERT INTO _batch VALUES " + ", ".join(["(?, ?, ?, ?, CAST(? AS DATE), ?, 0)"] * len(files)),
           [v for i, f in enumerate(files) for v in (i, str(f.path), f.name, f.sha, f.file_day, f.file_id)])
    if files[0].fmt == "ndjson":
        _stage_lines(con, files)


def _drop_staged(con: duckdb.DuckDBPyConnection) -> None:
    for t in TEMP_TABLES:
        wh.run(con, f"DROP TABLE IF EXISTS {t}")


@contextmanager
def records(con: duckdb.DuckDBPyConnection, files: list[_File]) -> Iterator[Records]:
    """The landed records of a batch of :func:`batches` (``read_back``), as the landing read them: from
    raw where the ledger says fields_in_raw (text files, and files landed before raw was narrowed), a
    Parquet file's from the file raw keeps (the same rows, the same numbers). Valid inside the block."""
    if files[0].fields_in_raw:
        fields = ", ".join(f'"{f}"' for f in TEXT_FIELDS)
        yield Records(f"SELECT file_id, source_row, event_id, {fields}, {_NO_TYPED}, event_ts FROM raw.usage_events "
                      f"WHERE file_id IN ({', '.join(str(f.file_id) for f in files)})", in_raw=True)
        return
    _stage_batch(con, files)
    try:
        yield _records(con, files)
    finally:
        _drop_staged(con)


def kept_files(con: duckdb.DuckDBPyConnection, where: str) -> list[_File]:
    """Landed files of the ledger (``where`` on raw.usage_files), as raw keeps them: beside the
    warehouse where it is now (a warehouse moved or restored with its folder of kept files reads them
    there, whatever the ledger's ``stored_path`` says), else at ``stored_path``. Fails if a file whose
    records are read from it (a Parquet file landed narrow) is gone or changed size."""
    rows = wh.run(con, f"""
        SELECT stored_path, file_name, sha256, format, CAST(file_day AS VARCHAR), bytes, file_id, landed,
               coalesce(fields_in_raw, format <> 'parquet')
        FROM raw.usage_files WHERE status = 'landed' AND ({where}) ORDER BY file_id""")

    home = _kept_dir_of(con)

    def where_kept(stored: str | None, sha: str, name: str) -> Path:
        here = home / _kept_name(sha, name) if home is not None else None
        return here.resolve() if here is not None and here.is_file() else Path(stored or "")

    files = [_File(where_kept(p, sha, name), name, sha, fmt, day, size, file_id, landed, in_raw)
             for p, name, sha, fmt, day, size, file_id, landed, in_raw in rows]
    gone = [f.name for f in files
            if not f.fields_in_raw and not (f.path.is_file() and f.path.stat().st_size == f.size)]
    if gone:
        raise FileNotFoundError(f"raw keeps no intact copy of landed usage files {gone[:5]} (expected beside "
                                "the warehouse, see usage_files): their records cannot be read")
    return files


def batches(con: duckdb.DuckDBPyConnection, files: list[_File], read_back: bool = False) -> list[list[_File]]:
    """Files read together: one format, and for Parquet one schema (their rows are read by one
    statement; a file whose columns cannot even be read goes alone, and fails alone); NDJSON files
    up to NDJSON_BATCH_BYTES (their lines are parsed into memory meanwhile). ``read_back`` (landed
    files, see :func:`records`): the files whose fields are in raw go together, whatever their format."""
    groups: dict[tuple, list[_File]] = {}
    ndjson_batch, ndjson_bytes = 0, 0
    for f in files:
        key: tuple = (f.fmt,)
        if read_back and f.fields_in_raw:
            key = ("raw",)
        elif f.fmt == "ndjson":
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


# --- landing

def _checked(records: Records) -> str:
    """The landing's verdict on each record: its event_ts, and the reason it is not landed (NULL: it
    is). Every timestamp is judged as its text; a typed one inside the landing window skips the round
    trip (it gives back the same instant, and passes the timestamp checks)."""
    in_window = ("coalesce(ts_typed >= CAST($window_start AS DATE) AND "
                 "ts_typed <= $now::TIMESTAMPTZ + to_days($max_future_days), false)")
    oversized = records.metadata_over("$max_metadata")
    return (f"SELECT *, CASE WHEN in_window THEN CASE WHEN {oversized} THEN 'oversized_metadata' END "
            f"ELSE {_reason(oversized)} END AS reason FROM ("
            f"SELECT *, CASE WHEN in_window THEN ts_typed ELSE TRY_CAST(ts AS TIMESTAMPTZ) END AS event_ts FROM ("
            f"SELECT *, CASE WHEN NOT in_window THEN {TIMESTAMP_TEXT} END AS ts FROM ("
            f"SELECT *, {in_window} AS in_window FROM ({records.sql}))))")


def _land(con: duckdb.DuckDBPyConnection, files: list[_File], now: datetime, window_start: date,
          max_future_days: int) -> dict[int, tuple[int, int]]:
    """Land a batch of files of one format (inside the caller's transaction): (landed, quarantined) per
    file_id. Every record is read and judged once. A text file's verdicts go to ``_checked`` (a temp
    table, with the fields raw keeps -- reading is parsing: once -- and the quarantine record of those
    that fail), which then splits into raw and quarantine. A Parquet file's records stay in the kept
    file: one grouped pass counts the landed ones per event day (the index) and keeps each failing one
    (few) as a group of its own, with its quarantine record."""
    checks = {"window_start": window_start, "now": now, "max_future_days": max_future_days,
              "max_metadata": MAX_METADATA_BYTES}
    _stage_batch(con, files)
    records = _records(con, files)
    if files[0].fmt != "parquet":
        kept = "file_id, source_row, event_id, event_ts" + "".join(f', "{f}"' for f in TEXT_FIELDS)
        record = "line" if files[0].fmt == "ndjson" else record_json(records.metadata_json)
        wh.run(con, f"""
            CREATE TEMP TABLE _checked AS
            SELECT {kept}, reason, CASE WHEN reason IS NOT NULL THEN {record} END AS record
            FROM ({_checked(records)})""", checks)
        if files[0].fmt == "csv":
            _renumber_csv(con)
        wh.run(con, f"INSERT INTO raw.usage_events ({kept}) SELECT {kept} FROM _checked WHERE reason IS NULL")
        wh.run(con, f"""INSERT INTO raw.usage_file_days SELECT file_id, {EVENT_DATE}, count(*) FROM _checked
                        WHERE reason IS NULL GROUP BY ALL""")
    else:
        failing = ", ".join(f"CASE WHEN reason IS NOT NULL THEN {e} END AS {c}" for c, e in (
            ("source_row", "source_row"), ("event_id", "event_id"), ("event_ts", "event_ts"),
            ("record", record_json(records.metadata_json))))
        wh.run(con, f"""
            CREATE TEMP TABLE _verdicts AS
            SELECT file_id, CASE WHEN reason IS NULL THEN {EVENT_DATE} END AS event_date, reason,
                   {failing}, count(*) AS n
            FROM ({_checked(records)}) GROUP BY ALL""", checks)
        wh.run(con, "INSERT INTO raw.usage_file_days SELECT file_id, event_date, n FROM _verdicts WHERE reason IS NULL")
        wh.run(con, "CREATE TEMP TABLE _checked AS SELECT file_id, source_row, event_id, event_ts, reason, record "
                    "FROM _verdicts WHERE reason IS NOT NULL")
    wh.run(con, "INSERT INTO raw.usage_landing_rejects SELECT file_id, source_row, reason FROM _checked "
                "WHERE reason IS NOT NULL")
    ids = ", ".join(str(f.file_id) for f in files)
    counts = {f.file_id: [0, 0] for f in files}
    for file_id, landed in wh.run(con, f"SELECT file_id, sum(events) FROM raw.usage_file_days "
                                       f"WHERE file_id IN ({ids}) GROUP BY 1"):
        counts[file_id][0] = int(landed)
    for file_id, quarantined in wh.run(con, "SELECT file_id, count(*) FROM _checked WHERE reason IS NOT NULL GROUP BY 1"):
        counts[file_id][1] = quarantined
    wh.run(con, """
        INSERT INTO core.quarantine
        SELECT ?, b.name || ':' || c.source_row, NULL, c.reason, NULL, c.record, ?::TIMESTAMPTZ
        FROM _checked c JOIN _batch b USING (file_id) WHERE c.reason IS NOT NULL""", [SOURCE, now])
    if files[0].fmt != "parquet" and wh.run(con, "SELECT 1 FROM duckdb_tables() WHERE table_name = '_csv_rejects'"):
        # lines the CSV reader rejected (bad encoding, wrong column count)
        wh.run(con, """
            CREATE TEMP TABLE _rejected_lines AS
            SELECT b.file_id, b.name || ':L' || r.line AS record_key,
                   CASE WHEN bool_or(r.error_type = 'INVALID ENCODING') THEN 'invalid_encoding' ELSE 'malformed_line'
                   END AS reason,
                   string_agg(DISTINCT split_part(r.error_message, chr(10), 1), '; ') AS detail,
                   any_value(r.csv_line) AS record
            FROM _csv_rejects r JOIN _csv_rejects_scan s USING (scan_id, file_id) JOIN _batch b ON b.path = s.file_path
            GROUP BY b.file_id, b.name, r.line  -- one record per rejected line, however many errors the reader saw""")
        wh.run(con, """INSERT INTO core.quarantine SELECT ?, record_key, NULL, reason, detail, record, ?::TIMESTAMPTZ
                       FROM _rejected_lines""", [SOURCE, now])
        for file_id, n in wh.run(con, "SELECT file_id, count(*) FROM _rejected_lines GROUP BY 1"):
            counts[file_id][1] += n
    return {file_id: (landed, quarantined) for file_id, (landed, quarantined) in counts.items()}


def _land_batch(con: duckdb.DuckDBPyConnection, files: list[_File], now: datetime, window_start: date,
                max_future_days: int = 1) -> list[FileResult]:
    """Land a batch of files inside one transaction, each with its ledger row: records in = landed +
    quarantined. If the batch fails, its files are landed one by one, so that the one that cannot be
    read is recorded as failed and the others land."""
    ledger = ("INSERT INTO raw.usage_files (file_name, sha256, bytes, format, file_day, records, landed, quarantined, "
              "status, error, landed_at, file_id, stored_path, fields_in_raw) "
              "VALUES (?, ?, ?, ?, CAST(? AS DATE), ?, ?, ?, ?, ?, ?::TIMESTAMPTZ, ?, ?, ?)")
    try:
        with wh.transaction(con):
            (last_id,), = wh.run(con, "SELECT coalesce(max(file_id), 0) FROM raw.usage_files")
            files = [replace(f, file_id=last_id + i) for i, f in enumerate(files, 1)]
            counts = _land(con, files, now, window_start, max_future_days)
            results = []
            for f in files:
                landed, quarantined = counts[f.file_id]
                records = landed + quarantined
                wh.run(con, ledger, [f.name, f.sha, f.size, f.fmt, f.file_day, records, landed, quarantined,
                                     "landed", None, now, f.file_id, str(f.path), f.fields_in_raw])
                results.append(FileResult(f.name, records, landed, quarantined, "landed"))
        return results
    except duckdb.Error as e:
        if len(files) > 1:
            return [r for f in files for r in _land_batch(con, [f], now, window_start, max_future_days)]
        # the whole file is unreadable: record it (not its rows) and go on with the others
        f = files[0]
        msg = str(e).splitlines()[0].replace(str(f.path), f.name)[:500]  # (named as in the inbox)
        with wh.transaction(con):
            (last_id,), = wh.run(con, "SELECT coalesce(max(file_id), 0) FROM raw.usage_files")
            wh.run(con, ledger, [f.name, f.sha, f.size, f.fmt, f.file_day, None, 0, None, "failed", msg, now,
                                 last_id + 1, str(f.path), f.fields_in_raw])
            wh.run(con, "INSERT INTO core.quarantine VALUES (?, ?, NULL, 'unreadable_file', ?, NULL, ?::TIMESTAMPTZ)",
                   [SOURCE, f.name, msg, now])
        return [FileResult(f.name, 0, 0, 0, "failed", msg)]
    finally:
        _drop_staged(con)


def _file(path: Path, sha: str) -> _File:
    m = _DAY_IN_NAME.search(path.name)
    return _File(path, path.name, sha, FORMATS[path.suffix.lower()], m.group(1) if m else None, path.stat().st_size)


def land_file(con: duckdb.DuckDBPyConnection, path: Path, sha: str, now: datetime, window_start: date,
              max_future_days: int = 1) -> FileResult:
    """Land one file inside one transaction: records in = landed + quarantined."""
    ensure_tables(con)
    if wide_raw(con):
        _migrate_wide_raw(con, {})
    return _land_batch(con, [_keep(con, _file(path, sha))], now, window_start, max_future_days)[0]


def _hashes(con: duckdb.DuckDBPyConnection, paths: list[Path]) -> list[str]:
    """The files' sha256, as many at a time as the warehouse has threads (hashlib releases the GIL)."""
    (threads,), = wh.run(con, "SELECT current_setting('threads')")
    with ThreadPoolExecutor(max(1, min(int(threads), len(paths)))) as pool:
        return list(pool.map(sha256_of, paths))


# the wide raw's columns of typed values (Parquet), as its last version had them
_WIDE_TYPED = ("received_ts TIMESTAMPTZ", "quantity_dec DECIMAL(38, 9)", "quantity_scale UTINYINT")


def _migrate_wide_raw(con: duckdb.DuckDBPyConnection, inbox: dict[str, Path]) -> None:
    """A warehouse landed before raw was narrowed holds a full copy of every record in raw.usage_events
    (by source_file/source_sha256, with Parquet values typed). It is narrowed in one transaction
    without reading any file: every ledger file gets a file_id (landed ones in landing order, the
    order the dedup keeps), and its records keep their fields in raw (fields_in_raw), as the text the
    build has always judged them as (a typed value as QUANTITY_TEXT, TIMESTAMP_TEXT, RECEIVED_AT_TEXT
    write it). The inbox need not hold the files any more; those it still holds are kept beside the
    warehouse as well (stored_path), for reference only. Their source_row stays as landed."""
    files = wh.run(con, "SELECT sha256 FROM raw.usage_files "
                        "ORDER BY status <> 'landed', landed_at, file_name, sha256")
    text = {"quantity": QUANTITY_TEXT, "timestamp": f"coalesce(\"timestamp\", strftime(event_ts, '{TS_TEXT}'))",
            "received_at": RECEIVED_AT_TEXT}
    fields = ", ".join(f'{text.get(c, _ident(c))} AS "{c}"' for c in TEXT_FIELDS)
    with wh.transaction(con):
        for i, (sha,) in enumerate(files, 1):
            kept = _keep(con, replace(_file(inbox[sha], sha), in_raw=True)) if sha in inbox else None
            wh.run(con, "UPDATE raw.usage_files SET file_id = ?, stored_path = ?, fields_in_raw = true "
                        "WHERE sha256 = ?", [i, kept and str(kept.path), sha])
        for column in _WIDE_TYPED:
            wh.run(con, f"ALTER TABLE raw.usage_events ADD COLUMN IF NOT EXISTS {column}")
        wh.run(con, "ALTER TABLE raw.usage_events RENAME TO usage_events_wide")
        ensure_tables(con, index=False)
        (wide,), = wh.run(con, "SELECT count(*) FROM raw.usage_events_wide")
        columns = ", ".join(f'"{c}"' for c in TEXT_FIELDS)
        (narrow,), = wh.run(con, f"""
            INSERT INTO raw.usage_events (file_id, source_row, event_id, event_ts, {columns})
            SELECT f.file_id, w.source_row, w.event_id, w.event_ts, {fields}
            FROM raw.usage_events_wide w JOIN raw.usage_files f ON f.sha256 = w.source_sha256""")
        if narrow != wide:
            raise RuntimeError(f"raw.usage_events: {wide} records, {narrow} of them in files of the ledger: "
                               "not narrowed")
        wh.run(con, "DROP TABLE raw.usage_events_wide")
        # every file's records are now in raw (fields_in_raw): the index is their days
        wh.run(con, "DELETE FROM raw.usage_file_days")
        _index_landed(con)


def land_inbox(con: duckdb.DuckDBPyConnection, inbox: Path, now: datetime, window_start: date) -> list[FileResult]:
    """Land every file of the inbox that the ledger has not seen (by content hash), in batches."""
    paths = discover(inbox)
    shas = _hashes(con, paths) if paths else []
    ensure_tables(con)
    if wide_raw(con):
        _migrate_wide_raw(con, dict(zip(shas, paths)))
    seen = {r[0] for r in wh.run(con, "SELECT sha256 FROM raw.usage_files")}
    new = []
    for path, sha in zip(paths, shas):
        if sha in seen:
            continue
        new.append(_keep(con, _file(path, sha)))
        seen.add(sha)
    results = {}
    for batch in batches(con, new):
        for f, r in zip(batch, _land_batch(con, batch, now, window_start)):
            results[f.sha] = r
    return [results[f.sha] for f in new]
