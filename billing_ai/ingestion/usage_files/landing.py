"""Landing: every new inbox file once, in batches, each batch in one transaction; every record landed
or quarantined with its reason, the ledger exact per file (records in = landed + quarantined). A file
that cannot be read at all is recorded as failed and the others go on."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path

import duckdb

from billing_ai import warehouse as wh
from billing_ai.ingestion.usage_files.fields import EVENT_DATE, TEXT_FIELDS, TIMESTAMP_TEXT, blank, record_json
from billing_ai.ingestion.usage_files.files import SOURCE, FileResult, UsageFile, discover, keep, sha256_of, usage_file
from billing_ai.ingestion.usage_files.migrations import ensure_tables, narrow_wide_raw, wide_raw
from billing_ai.ingestion.usage_files.readers import (
    Records,
    batches,
    drop_staged,
    read_records,
    renumber_csv,
    stage_batch,
)

MAX_METADATA_BYTES = 8192  # larger metadata is quarantined, not truncated


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


def _checked(records: Records) -> str:
    """The landing's verdict on each record: its event_ts, and the reason it is not landed (NULL: it
    is). Every timestamp is judged as its text; a typed one inside the landing window skips the round
    trip (it gives back the same instant, and passes the timestamp checks)."""
    in_window = (
        "coalesce(ts_typed >= CAST($window_start AS DATE) AND "
        "ts_typed <= $now::TIMESTAMPTZ + to_days($max_future_days), false)"
    )
    oversized = records.metadata_over("$max_metadata")
    return (
        f"SELECT *, CASE WHEN in_window THEN CASE WHEN {oversized} THEN 'oversized_metadata' END "
        f"ELSE {_reason(oversized)} END AS reason FROM ("
        f"SELECT *, CASE WHEN in_window THEN ts_typed ELSE TRY_CAST(ts AS TIMESTAMPTZ) END AS event_ts FROM ("
        f"SELECT *, CASE WHEN NOT in_window THEN {TIMESTAMP_TEXT} END AS ts FROM ("
        f"SELECT *, {in_window} AS in_window FROM ({records.sql}))))"
    )


def _land(
    con: duckdb.DuckDBPyConnection, files: list[UsageFile], now: datetime, window_start: date, max_future_days: int
) -> dict[int, tuple[int, int]]:
    """Land a batch of files of one format (inside the caller's transaction): (landed, quarantined) per
    file_id. Every record is read and judged once. A text file's verdicts go to ``_checked`` (a temp
    table, with the fields raw keeps -- reading is parsing: once -- and the quarantine record of those
    that fail), which then splits into raw and quarantine. A Parquet file's records stay in the kept
    file: one grouped pass counts the landed ones per event day (the index) and keeps each failing one
    (few) as a group of its own, with its quarantine record."""
    checks = {
        "window_start": window_start,
        "now": now,
        "max_future_days": max_future_days,
        "max_metadata": MAX_METADATA_BYTES,
    }
    stage_batch(con, files)
    records = read_records(con, files)
    if files[0].fmt != "parquet":
        kept = "file_id, source_row, event_id, event_ts" + "".join(f', "{f}"' for f in TEXT_FIELDS)
        record = "line" if files[0].fmt == "ndjson" else record_json(records.metadata_json)
        wh.run(
            con,
            f"""
            CREATE TEMP TABLE _checked AS
            SELECT {kept}, reason, CASE WHEN reason IS NOT NULL THEN {record} END AS record
            FROM ({_checked(records)})""",
            checks,
        )
        if files[0].fmt == "csv":
            renumber_csv(con)
        wh.run(con, f"INSERT INTO raw.usage_events ({kept}) SELECT {kept} FROM _checked WHERE reason IS NULL")
        wh.run(
            con,
            f"""INSERT INTO raw.usage_file_days SELECT file_id, {EVENT_DATE}, count(*) FROM _checked
                        WHERE reason IS NULL GROUP BY ALL""",
        )
    else:
        failing = ", ".join(
            f"CASE WHEN reason IS NOT NULL THEN {e} END AS {c}"
            for c, e in (
                ("source_row", "source_row"),
                ("event_id", "event_id"),
                ("event_ts", "event_ts"),
                ("record", record_json(records.metadata_json)),
            )
        )
        wh.run(
            con,
            f"""
            CREATE TEMP TABLE _verdicts AS
            SELECT file_id, CASE WHEN reason IS NULL THEN {EVENT_DATE} END AS event_date, reason,
                   {failing}, count(*) AS n
            FROM ({_checked(records)}) GROUP BY ALL""",
            checks,
        )
        wh.run(con, "INSERT INTO raw.usage_file_days SELECT file_id, event_date, n FROM _verdicts WHERE reason IS NULL")
        wh.run(
            con,
            "CREATE TEMP TABLE _checked AS SELECT file_id, source_row, event_id, event_ts, reason, record "
            "FROM _verdicts WHERE reason IS NOT NULL",
        )
    wh.run(
        con,
        "INSERT INTO raw.usage_landing_rejects SELECT file_id, source_row, reason FROM _checked "
        "WHERE reason IS NOT NULL",
    )
    ids = ", ".join(str(f.file_id) for f in files)
    counts = {f.file_id: [0, 0] for f in files}
    for file_id, landed in wh.run(
        con, f"SELECT file_id, sum(events) FROM raw.usage_file_days WHERE file_id IN ({ids}) GROUP BY 1"
    ):
        counts[file_id][0] = int(landed)
    for file_id, quarantined in wh.run(
        con, "SELECT file_id, count(*) FROM _checked WHERE reason IS NOT NULL GROUP BY 1"
    ):
        counts[file_id][1] = quarantined
    wh.run(
        con,
        """
        INSERT INTO core.quarantine
        SELECT ?, b.name || ':' || c.source_row, NULL, c.reason, NULL, c.record, ?::TIMESTAMPTZ
        FROM _checked c JOIN _batch b USING (file_id) WHERE c.reason IS NOT NULL""",
        [SOURCE, now],
    )
    if files[0].fmt != "parquet" and wh.run(con, "SELECT 1 FROM duckdb_tables() WHERE table_name = '_csv_rejects'"):
        # lines the CSV reader rejected (bad encoding, wrong column count)
        wh.run(
            con,
            """
            CREATE TEMP TABLE _rejected_lines AS
            SELECT b.file_id, b.name || ':L' || r.line AS record_key,
                   CASE WHEN bool_or(r.error_type = 'INVALID ENCODING') THEN 'invalid_encoding' ELSE 'malformed_line'
                   END AS reason,
                   string_agg(DISTINCT split_part(r.error_message, chr(10), 1), '; ') AS detail,
                   any_value(r.csv_line) AS record
            FROM _csv_rejects r JOIN _csv_rejects_scan s USING (scan_id, file_id) JOIN _batch b ON b.path = s.file_path
            GROUP BY b.file_id, b.name, r.line  -- one record per rejected line, however many errors the reader saw""",
        )
        wh.run(
            con,
            """INSERT INTO core.quarantine SELECT ?, record_key, NULL, reason, detail, record, ?::TIMESTAMPTZ
                       FROM _rejected_lines""",
            [SOURCE, now],
        )
        for file_id, n in wh.run(con, "SELECT file_id, count(*) FROM _rejected_lines GROUP BY 1"):
            counts[file_id][1] += n
    return {file_id: (landed, quarantined) for file_id, (landed, quarantined) in counts.items()}


def _land_batch(
    con: duckdb.DuckDBPyConnection, files: list[UsageFile], now: datetime, window_start: date, max_future_days: int = 1
) -> list[FileResult]:
    """Land a batch of files inside one transaction, each with its ledger row: records in = landed +
    quarantined. If the batch fails, its files are landed one by one, so that the one that cannot be
    read is recorded as failed and the others land."""
    ledger = (
        "INSERT INTO raw.usage_files (file_name, sha256, bytes, format, file_day, records, landed, quarantined, "
        "status, error, landed_at, file_id, stored_path, fields_in_raw) "
        "VALUES (?, ?, ?, ?, CAST(? AS DATE), ?, ?, ?, ?, ?, ?::TIMESTAMPTZ, ?, ?, ?)"
    )
    try:
        with wh.transaction(con):
            ((last_id,),) = wh.run(con, "SELECT coalesce(max(file_id), 0) FROM raw.usage_files")
            files = [replace(f, file_id=last_id + i) for i, f in enumerate(files, 1)]
            counts = _land(con, files, now, window_start, max_future_days)
            results = []
            for f in files:
                landed, quarantined = counts[f.file_id]
                records = landed + quarantined
                wh.run(
                    con,
                    ledger,
                    [
                        f.name,
                        f.sha,
                        f.size,
                        f.fmt,
                        f.file_day,
                        records,
                        landed,
                        quarantined,
                        "landed",
                        None,
                        now,
                        f.file_id,
                        str(f.path),
                        f.fields_in_raw,
                    ],
                )
                results.append(FileResult(f.name, records, landed, quarantined, "landed"))
        return results
    except duckdb.Error as e:
        if len(files) > 1:
            return [r for f in files for r in _land_batch(con, [f], now, window_start, max_future_days)]
        # the whole file is unreadable: record it (not its rows) and go on with the others
        f = files[0]
        msg = str(e).splitlines()[0].replace(str(f.path), f.name)[:500]  # (named as in the inbox)
        with wh.transaction(con):
            ((last_id,),) = wh.run(con, "SELECT coalesce(max(file_id), 0) FROM raw.usage_files")
            wh.run(
                con,
                ledger,
                [
                    f.name,
                    f.sha,
                    f.size,
                    f.fmt,
                    f.file_day,
                    None,
                    0,
                    None,
                    "failed",
                    msg,
                    now,
                    last_id + 1,
                    str(f.path),
                    f.fields_in_raw,
                ],
            )
            wh.run(
                con,
                "INSERT INTO core.quarantine VALUES (?, ?, NULL, 'unreadable_file', ?, NULL, ?::TIMESTAMPTZ)",
                [SOURCE, f.name, msg, now],
            )
        return [FileResult(f.name, 0, 0, 0, "failed", msg)]
    finally:
        drop_staged(con)


def land_file(
    con: duckdb.DuckDBPyConnection, path: Path, sha: str, now: datetime, window_start: date, max_future_days: int = 1
) -> FileResult:
    """Land one file inside one transaction: records in = landed + quarantined."""
    ensure_tables(con)
    if wide_raw(con):
        narrow_wide_raw(con, {})
    return _land_batch(con, [keep(con, usage_file(path, sha))], now, window_start, max_future_days)[0]


def _hashes(con: duckdb.DuckDBPyConnection, paths: list[Path]) -> list[str]:
    """The files' sha256, as many at a time as the warehouse has threads (hashlib releases the GIL)."""
    ((threads,),) = wh.run(con, "SELECT current_setting('threads')")
    with ThreadPoolExecutor(max(1, min(int(threads), len(paths)))) as pool:
        return list(pool.map(sha256_of, paths))


def land_inbox(con: duckdb.DuckDBPyConnection, inbox: Path, now: datetime, window_start: date) -> list[FileResult]:
    """Land every file of the inbox that the ledger has not seen (by content hash), in batches."""
    paths = discover(inbox)
    shas = _hashes(con, paths) if paths else []
    ensure_tables(con)
    if wide_raw(con):
        narrow_wide_raw(con, dict(zip(shas, paths, strict=True)))
    seen = {r[0] for r in wh.run(con, "SELECT sha256 FROM raw.usage_files")}
    new = []
    for path, sha in zip(paths, shas, strict=True):
        if sha in seen:
            continue
        new.append(keep(con, usage_file(path, sha)))
        seen.add(sha)
    results = {}
    for batch in batches(con, new):
        for f, r in zip(batch, _land_batch(con, batch, now, window_start), strict=True):
            results[f.sha] = r
    return [results[f.sha] for f in new]
