"""Reading the records of usage files, per format, as SQL over DuckDB's readers: NDJSON (one parse per
line), CSV (the reader's rejected rows kept apart, to be quarantined) and Parquet (typed values read
typed). The landing judges what these return; the build reads landed records back through :func:`records`
(from raw for text files, from the kept file for Parquet)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import duckdb

from billing_ai import warehouse as wh
from billing_ai.ingestion.usage_files.fields import EVENT_TS, FIELDS, TEXT_FIELDS, TS_SAFE, TS_TEXT, ident, quote
from billing_ai.ingestion.usage_files.files import UsageFile

# JSON types a field may have in an NDJSON record (json_type names); NULL/absent is judged later
JSON_TYPES = {
    "event_id": ("VARCHAR",),
    "customer_id": ("VARCHAR",),
    "subscription_id": ("VARCHAR",),
    "meter_name": ("VARCHAR",),
    "quantity": ("VARCHAR", "UBIGINT", "BIGINT", "DOUBLE"),
    "timestamp": ("VARCHAR",),
    "metadata": ("OBJECT",),
    "received_at": ("VARCHAR",),
}


# read_csv options that keep a bad line (bad encoding, wrong column count) out of the result and in a
# rejects table, so it can be quarantined with its reason instead of failing the whole file
REJECTS = "store_rejects=true, rejects_table='_csv_rejects', rejects_scan='_csv_rejects_scan'"


TEMP_TABLES = (
    "_batch",
    "_lines",
    "_line_gaps",
    "_checked",
    "_verdicts",
    "_csv_rejects",
    "_csv_rejects_scan",
    "_rejected_lines",
)


# NDJSON files landed together: their lines are held in memory meanwhile
NDJSON_BATCH_BYTES = 512 << 20


# Parquet quantity types read typed (as DECIMAL(38, 9)): their text is the value with a fixed number of
# decimals (DOUBLE's shortest round-trip text, or a decimal of more than 9 decimals, is read as text)
_EXACT_INTEGERS = (
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "HUGEINT",
    "UTINYINT",
    "USMALLINT",
    "UINTEGER",
    "UBIGINT",
    "UHUGEINT",
)


_DECIMAL = re.compile(r"DECIMAL\(\d+,(\d+)\)")


def describe(con: duckdb.DuckDBPyConnection, f: UsageFile) -> tuple[tuple[str, str], ...]:
    """The file's columns (name, type) as the landing reads it."""
    p = quote(f.path)
    src = (
        f"read_csv('{p}', all_varchar=true, header=true, auto_detect=true, {REJECTS})"
        if f.fmt == "csv"
        else f"read_parquet('{p}')"
    )
    return tuple((r[0], r[1]) for r in wh.run(con, f"DESCRIBE SELECT * FROM {src}"))


def _stage_lines(con: duckdb.DuckDBPyConnection, files: list[UsageFile]) -> None:
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
        ((n,),) = wh.run(
            con,
            f"""
            INSERT INTO _lines SELECT {i}, line
            FROM read_csv('{quote(f.path)}', columns={{'line': 'VARCHAR'}}, header=false, delim='\x1f', quote='',
                          escape='', auto_detect=false, {REJECTS})""",
        )
        before += n
    _line_gaps(con, header_rows=0)


def _line_gaps(con: duckdb.DuckDBPyConnection, header_rows: int) -> bool:
    """``_line_gaps`` from the rows the reader rejected in the batch's files (NDJSON lines, CSV rows; the
    reader's ``line`` counts ``header_rows`` first): per rejected row of a file, in order, the rows it
    kept before it and how many it rejected up to it. A kept row's number is its position among the
    kept rows plus the rejected rows before it (see _ndjson_read, renumber_csv). Whether there are any."""
    if not wh.run(con, "SELECT 1 FROM duckdb_tables() WHERE table_name = '_csv_rejects' AND temporary"):
        return False
    # (a row can be rejected for more than one error: counted once; adjacent rejected rows have as many
    # kept rows before them: the last one's count holds)
    wh.run(
        con,
        f"""
        CREATE OR REPLACE TEMP TABLE _line_gaps AS
        SELECT file_index, line - shift AS kept_before, max(shift) AS shift FROM (
            SELECT b.idx AS file_index, r.line - {header_rows} AS line,
                   row_number() OVER (PARTITION BY b.idx ORDER BY r.line) AS shift
            FROM (SELECT DISTINCT scan_id, file_id, line FROM _csv_rejects) r
            JOIN _csv_rejects_scan s USING (scan_id, file_id) JOIN _batch b ON b.path = s.file_path)
        GROUP BY ALL""",
    )
    if not wh.run(con, "SELECT 1 FROM _line_gaps LIMIT 1"):
        wh.run(con, "DROP TABLE _line_gaps")
        return False
    return True


def renumber_csv(con: duckdb.DuckDBPyConnection) -> None:
    """A CSV file's rows are numbered in the scan among the rows the reader kept; where it rejected rows
    (bad encoding, wrong column count: quarantined on their own), the rows below them move down to
    their own data row in ``_checked`` (rare: only then is it rewritten)."""
    if _line_gaps(con, header_rows=1):
        wh.run(
            con,
            """
            CREATE OR REPLACE TEMP TABLE _checked AS
            SELECT c.* EXCLUDE (idx) REPLACE (c.source_row + coalesce(g.shift, 0) AS source_row)
            FROM (SELECT c.*, b.idx FROM _checked c JOIN _batch b USING (file_id)) c
            ASOF LEFT JOIN _line_gaps g ON g.file_index = c.idx AND c.source_row > g.kept_before""",
        )


def _ndjson_read(gaps: bool = False) -> str:
    """SQL: the staged lines (see _stage_lines), numbered and parsed: file_id, source_row, line,
    unreadable (why a line is no record) and the fields. ``gaps``: some line was rejected (``_line_gaps``)."""
    kept = "SELECT row_number() OVER () AS n, file_index, line FROM _lines"
    if gaps:  # the nearest rejected line above: the last one with fewer kept lines before it than k
        numbered = (
            f"SELECT l.file_index, l.k + coalesce(g.shift, 0) AS source_row, l.line FROM ("
            f"SELECT l.file_index, l.n - b.lines_before AS k, l.line FROM ({kept}) l "
            f"JOIN _batch b ON b.idx = l.file_index) l "
            f"ASOF LEFT JOIN _line_gaps g ON g.file_index = l.file_index AND l.k > g.kept_before"
        )
    else:
        numbered = (
            f"SELECT l.file_index, l.n - b.lines_before AS source_row, l.line FROM ({kept}) l "
            f"JOIN _batch b ON b.idx = l.file_index"
        )
    parsed = (
        "SELECT b.file_id, l.source_row, l.line, "
        f"TRY(json_transform(l.line, '{_NDJSON_STRUCTURE}')) AS j "
        f"FROM ({numbered}) l JOIN _batch b ON b.idx = l.file_index"
    )
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
    f"THEN json_extract_string({_Q}, '$') ELSE CAST({_Q} AS VARCHAR)[2:-2] END AS quantity"
    if f == "quantity"
    # JSON null reads as the text 'null' (as CAST(line->'metadata' AS VARCHAR)); the parse gives NULL
    # for null and absent alike, so an absent key is told apart only then
    else "CASE WHEN j['metadata'] IS NOT NULL THEN j['metadata'] "
    "WHEN j IS NULL OR NOT contains(line, '\"metadata\"') THEN NULL "
    "WHEN json_type(line, 'metadata') = 'NULL' THEN CAST('null' AS JSON) END AS metadata"
    if f == "metadata"
    else f"j['{f}'] AS \"{f}\""
    for f in FIELDS
)


def _maybe_not_text(v: str) -> str:
    """SQL: whether a value read as VARCHAR could be a number's, a boolean's, an object's or an array's
    text (by its first character: { [ t f, or a digit - + . i I n N and a number's text, which has no ':')."""
    c = f"ascii({v})"
    return (
        f"CASE WHEN {v} IS NULL THEN false WHEN {c} IN (123, 91) THEN true "
        f"WHEN {c} IN (116, 102) THEN {v} IN ('true', 'false') "
        f"WHEN {c} BETWEEN 48 AND 57 OR {c} IN (45, 43, 46, 105, 73, 110, 78) "
        f"THEN CASE WHEN contains({v}, ':') THEN false ELSE TRY_CAST({v} AS DOUBLE) IS NOT NULL END ELSE false END"
    )


_NDJSON_SUSPECT = " OR ".join(
    f"coalesce(left({_Q}, 1) IN ('{{', '[', 't', 'f'), false)"
    if f == "quantity"
    else "coalesce(NOT starts_with(j['metadata'], '{'), false)"
    if f == "metadata"
    else _maybe_not_text(f"j['{f}']")
    for f in FIELDS
)


_NDJSON_UNREADABLE = (
    "CASE WHEN CASE WHEN j IS NOT NULL THEN false ELSE NOT json_valid(line) END THEN 'invalid_json' "
    "WHEN CASE WHEN starts_with(line, '{') THEN false ELSE json_type(line) IS DISTINCT FROM 'OBJECT' END "
    "THEN 'not_an_object' WHEN "
    + " OR ".join(
        f"coalesce(t[{i}] NOT IN ('NULL', {', '.join(map(repr, JSON_TYPES[f]))}), false)"
        for i, f in enumerate(FIELDS, 1)
    )
    + " THEN 'wrong_type' END"
)


def _ndjson_rows(gaps: bool = False) -> str:
    """The records of the batch's NDJSON files: their non-blank lines."""
    return (
        f"SELECT * FROM ({_ndjson_read(gaps)}) "
        "WHERE CASE WHEN line IS NULL THEN false WHEN starts_with(line, '{') THEN true ELSE trim(line) <> '' END"
    )


def _csv_rows(con: duckdb.DuckDBPyConnection, files: list[UsageFile]) -> str:
    """The rows of CSV files, every field as text (NULL when the file has no such column)."""
    selects = []
    for f in files:
        cols = {c for c, _ in describe(con, f)}
        fields = ", ".join(
            (f'CAST("{c}" AS VARCHAR)' if c in cols else "CAST(NULL AS VARCHAR)") + f' AS "{c}"' for c in FIELDS
        )
        selects.append(
            f"SELECT {f.file_id} AS file_id, row_number() OVER () AS source_row, {fields}, "
            "CAST(NULL AS VARCHAR) AS unreadable "
            f"FROM read_csv('{quote(f.path)}', all_varchar=true, header=true, auto_detect=true, {REJECTS})"
        )
    return " UNION ALL ".join(selects)


def _parquet_rows(files: list[UsageFile], schema: tuple[tuple[str, str], ...], fields: tuple[str, ...] = FIELDS) -> str:
    """The rows of Parquet files of one schema (their ``fields`` it has), read by one multi-file scan
    (the reader numbers the rows)."""
    present = [c for c in fields if c in {name for name, _ in schema}]
    cols = "".join(f', "{c}"' for c in present)
    if {"filename", "file_row_number"}.isdisjoint(name.lower() for name, _ in schema):  # (names are case-blind)
        paths = ", ".join(f"'{quote(f.path)}'" for f in files)
        ids = ", ".join(f"('{quote(f.path)}', {f.file_id})" for f in files)
        return (
            f"SELECT b.file_id, file_row_number + 1 AS source_row{cols} "
            f"FROM read_parquet([{paths}], filename=true, file_row_number=true) "
            f"JOIN (VALUES {ids}) b(path, file_id) ON b.path = filename"
        )
    return " UNION ALL ".join(  # the files have columns of those names: number the rows ourselves
        f"SELECT {f.file_id} AS file_id, row_number() OVER () AS source_row{cols} FROM read_parquet('{quote(f.path)}')"
        for f in files
    )


def parquet_ids(con: duckdb.DuckDBPyConnection, files: list[UsageFile], with_ts: bool = False) -> str:
    """SQL: (file_id, source_row, event_id[, event_ts]) of every record of landed Parquet files of one
    schema (see :func:`batches`), read from the kept files: only the columns the dedup needs, read as
    the landing read them (:func:`parquet_values`, EVENT_TS)."""
    schema = describe(con, files[0])
    needed = ("event_id", "timestamp") if with_ts else ("event_id",)
    values = parquet_values(_parquet_rows(files, schema, needed), tuple(c for c in schema if c[0] in needed))
    return f"SELECT file_id, source_row, event_id{f', {EVENT_TS} AS event_ts' if with_ts else ''} FROM ({values})"


NO_TYPED = (
    "CAST(NULL AS DECIMAL(38, 9)) AS quantity_dec, CAST(NULL AS UTINYINT) AS quantity_scale, "
    "CAST(NULL AS TIMESTAMPTZ) AS ts_typed, CAST(NULL AS TIMESTAMPTZ) AS received_ts"
)


def _text_values(rows: str) -> str:
    """NDJSON and CSV: every field is text."""
    return f"SELECT *, {NO_TYPED} FROM ({rows})"


def parquet_values(rows: str, schema: tuple[tuple[str, str], ...]) -> str:
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
        quantity = (
            f"CASE WHEN {dec} IS NULL THEN CAST(quantity AS VARCHAR) END AS quantity, {dec} AS quantity_dec, "
            f"CAST(CASE WHEN {dec} IS NOT NULL THEN {scale} END AS UTINYINT) AS quantity_scale"
        )
    else:
        quantity = (
            f"{text('quantity')} AS quantity, CAST(NULL AS DECIMAL(38, 9)) AS quantity_dec, "
            "CAST(NULL AS UTINYINT) AS quantity_scale"
        )
    if typed_time("timestamp"):
        ts = 'CAST(NULL AS VARCHAR) AS "timestamp", CAST("timestamp" AS TIMESTAMPTZ) AS ts_typed'
    else:
        ts = f'{text("timestamp")} AS "timestamp", CAST(NULL AS TIMESTAMPTZ) AS ts_typed'
    if typed_time("received_at"):
        recv = "CAST(received_at AS TIMESTAMPTZ)"
        received = (
            f"CASE WHEN NOT coalesce({recv} {TS_SAFE}, true) THEN strftime({recv}, '{TS_TEXT}') END "
            f"AS received_at, CASE WHEN {recv} {TS_SAFE} THEN {recv} END AS received_ts"
        )
    else:
        received = f"{text('received_at')} AS received_at, CAST(NULL AS TIMESTAMPTZ) AS received_ts"
    metadata = "metadata" if "metadata" in types else "CAST(NULL AS VARCHAR) AS metadata"
    return (
        f"SELECT file_id, source_row, CAST(NULL AS VARCHAR) AS unreadable, "
        f"{', '.join(f'{text(f)} AS {f}' for f in FIELDS[:4])}, {quantity}, {ts}, {metadata}, {received} "
        f"FROM ({rows})"
    )


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
        return "", [
            "CAST(NULL AS VARCHAR)"
            if k not in types
            else f"metadata.{ident(k)}"
            if types[k] == "VARCHAR"
            else f"json_extract_string({self.metadata_json}, {[k]!r})[1]"
            for k in keys
        ]

    def metadata_over(self, limit: str) -> str:
        """SQL: whether the metadata's JSON text is longer than ``limit``. A STRUCT of texts is not when
        even every character escaped (6 bytes) would fit, so its JSON text is written only otherwise."""
        exact = f"strlen({self.metadata_json}) > {limit}"
        if self.struct is None or any(t != "VARCHAR" for _, t in self.struct):
            return exact
        bound = " + ".join(
            f"{len(json.dumps(k)) + 2} + coalesce(2 + 6 * strlen(metadata.{ident(k)}), 4)" for k, _ in self.struct
        )
        return f"CASE WHEN 2 + {bound} <= {limit} THEN false ELSE {exact} END"


def read_records(con: duckdb.DuckDBPyConnection, files: list[UsageFile]) -> Records:
    """The records of ``files`` (one format; for Parquet one schema), read from the files, with the
    landing's reasons to quarantine an NDJSON line (``unreadable``) and its text (``line``). Needs
    ``_batch``."""
    fmt = files[0].fmt
    if fmt == "ndjson":
        gaps = bool(wh.run(con, "SELECT 1 FROM duckdb_tables() WHERE table_name = '_line_gaps' AND temporary"))
        return Records(_text_values(_ndjson_rows(gaps)))
    if fmt == "csv":
        return Records(_text_values(_csv_rows(con, files)))
    schema = describe(con, files[0])
    records = Records(parquet_values(_parquet_rows(files, schema), schema))
    metadata_type = dict(schema).get("metadata")
    if metadata_type is None:
        return records
    struct = None  # a STRUCT's fields; anything else (a MAP, a text) is converted whole
    if metadata_type.startswith("STRUCT("):
        p = quote(files[0].path)
        struct = tuple((r[0], r[1]) for r in wh.run(con, f"DESCRIBE SELECT metadata.* FROM read_parquet('{p}')"))
    return replace(records, metadata_json="to_json(metadata)", struct=struct)


def stage_batch(con: duckdb.DuckDBPyConnection, files: list[UsageFile]) -> None:
    """The batch's files (``_batch``), and for NDJSON files their lines (``_lines``)."""
    drop_staged(con)
    wh.run(
        con,
        "CREATE TEMP TABLE _batch (idx INTEGER, path VARCHAR, name VARCHAR, sha VARCHAR, file_day DATE, "
        "file_id INTEGER, lines_before BIGINT)",
    )
    wh.run(
        con,
        "INSERT INTO _batch VALUES " + ", ".join(["(?, ?, ?, ?, CAST(? AS DATE), ?, 0)"] * len(files)),
        [v for i, f in enumerate(files) for v in (i, str(f.path), f.name, f.sha, f.file_day, f.file_id)],
    )
    if files[0].fmt == "ndjson":
        _stage_lines(con, files)


def drop_staged(con: duckdb.DuckDBPyConnection) -> None:
    for t in TEMP_TABLES:
        wh.run(con, f"DROP TABLE IF EXISTS {t}")


@contextmanager
def records(con: duckdb.DuckDBPyConnection, files: list[UsageFile]) -> Iterator[Records]:
    """The landed records of a batch of :func:`batches` (``read_back``), as the landing read them: from
    raw where the ledger says fields_in_raw (text files, and files landed before raw was narrowed), a
    Parquet file's from the file raw keeps (the same rows, the same numbers). Valid inside the block."""
    if files[0].fields_in_raw:
        fields = ", ".join(f'"{f}"' for f in TEXT_FIELDS)
        yield Records(
            f"SELECT file_id, source_row, event_id, {fields}, {NO_TYPED}, event_ts FROM raw.usage_events "
            f"WHERE file_id IN ({', '.join(str(f.file_id) for f in files)})",
            in_raw=True,
        )
        return
    stage_batch(con, files)
    try:
        yield read_records(con, files)
    finally:
        drop_staged(con)


def batches(con: duckdb.DuckDBPyConnection, files: list[UsageFile], read_back: bool = False) -> list[list[UsageFile]]:
    """Files read together: one format, and for Parquet one schema (their rows are read by one
    statement; a file whose columns cannot even be read goes alone, and fails alone); NDJSON files
    up to NDJSON_BATCH_BYTES (their lines are parsed into memory meanwhile). ``read_back`` (landed
    files, see :func:`records`): the files whose fields are in raw go together, whatever their format."""
    groups: dict[tuple, list[UsageFile]] = {}
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
                key = (f.fmt, describe(con, f))
            except duckdb.Error:
                key = (f.fmt, str(f.path))
        groups.setdefault(key, []).append(f)
    return list(groups.values())
