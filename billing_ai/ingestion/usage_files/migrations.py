"""One-off upgrades of a warehouse landed by an older layout of raw usage tables.

* :func:`narrow_wide_raw`: raw.usage_events held a full copy of every record of every file (before
  2026-11); it is narrowed in one transaction without reading any file.
* :func:`index_landed`: files landed before the index (``raw.usage_file_days``,
  ``raw.usage_landing_rejects``) are indexed once, in one transaction, on first use.

Both run by themselves, from :func:`ensure_tables` and the landing, the first time this version opens
such a warehouse; each is idempotent and leaves the previous state if it fails.

Lifetime: these go in the first release after 2027-06-30. A warehouse older than the index must by then
have been opened once by a release that still has them (any landing or build does it); the release
notes that remove them say so.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import duckdb

from billing_ai import warehouse as wh
from billing_ai.ingestion.usage_files.fields import (
    EVENT_DATE,
    QUANTITY_TEXT,
    RECEIVED_AT_TEXT,
    TEXT_FIELDS,
    TS_TEXT,
    ident,
)
from billing_ai.ingestion.usage_files.files import SOURCE, create_tables, keep, kept_files, usage_file
from billing_ai.ingestion.usage_files.readers import batches, parquet_ids


def ensure_tables(con: duckdb.DuckDBPyConnection, index: bool = True) -> None:
    """The tables; a warehouse landed before the index (see INDEX_DDL) is indexed (``index``) once."""
    unindexed = wh.table_exists(con, "raw.usage_files") and not wh.table_exists(con, "raw.usage_file_days")
    if index and unindexed and not wide_raw(con):
        with wh.transaction(con):  # the index tables exist only once filled
            create_tables(con)
            index_landed(con)
    else:
        create_tables(con)


def index_landed(con: duckdb.DuckDBPyConnection) -> None:
    """Index the files landed before the index existed, when raw held a narrow row per landed record
    of every file (inside the caller's transaction): their days from those rows. A Parquet file's rows
    then leave raw (its records are read from the kept file), and the records its landing quarantined
    are the kept file's rows that had none (their reason from the quarantine). A text file's records
    stay in raw; the ones its landing quarantined are not indexed (nothing reads them back)."""
    wh.run(
        con,
        f"INSERT INTO raw.usage_file_days SELECT file_id, {EVENT_DATE}, count(*) FROM raw.usage_events GROUP BY ALL",
    )
    for batch in batches(con, kept_files(con, "NOT coalesce(fields_in_raw, format <> 'parquet')")):
        wh.run(
            con,
            f"""
            INSERT INTO raw.usage_landing_rejects
            SELECT v.file_id, v.source_row, coalesce((
                SELECT any_value(q.reason) FROM core.quarantine q
                WHERE q.source = '{SOURCE}' AND q.record_key = f.file_name || ':' || v.source_row), 'quarantined')
            FROM ({parquet_ids(con, batch)}) v JOIN raw.usage_files f USING (file_id)
            ANTI JOIN raw.usage_events r USING (file_id, source_row)""",
        )
        wh.run(con, f"DELETE FROM raw.usage_events WHERE file_id IN ({', '.join(str(f.file_id) for f in batch)})")


def wide_raw(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether raw.usage_events is still the former full copy of every record (see narrow_wide_raw)."""
    return bool(
        wh.run(
            con,
            "SELECT 1 FROM duckdb_columns() WHERE schema_name = 'raw' "
            "AND table_name = 'usage_events' AND column_name = 'source_sha256'",
        )
    )


# the wide raw's columns of typed values (Parquet), as its last version had them
_WIDE_TYPED = ("received_ts TIMESTAMPTZ", "quantity_dec DECIMAL(38, 9)", "quantity_scale UTINYINT")


def narrow_wide_raw(con: duckdb.DuckDBPyConnection, inbox: dict[str, Path]) -> None:
    """A warehouse landed before raw was narrowed holds a full copy of every record in raw.usage_events
    (by source_file/source_sha256, with Parquet values typed). It is narrowed in one transaction
    without reading any file: every ledger file gets a file_id (landed ones in landing order, the
    order the dedup keeps), and its records keep their fields in raw (fields_in_raw), as the text the
    build has always judged them as (a typed value as QUANTITY_TEXT, TIMESTAMP_TEXT, RECEIVED_AT_TEXT
    write it). The inbox need not hold the files any more; those it still holds are kept beside the
    warehouse as well (stored_path), for reference only. Their source_row stays as landed."""
    files = wh.run(con, "SELECT sha256 FROM raw.usage_files ORDER BY status <> 'landed', landed_at, file_name, sha256")
    text = {
        "quantity": QUANTITY_TEXT,
        "timestamp": f"coalesce(\"timestamp\", strftime(event_ts, '{TS_TEXT}'))",
        "received_at": RECEIVED_AT_TEXT,
    }
    fields = ", ".join(f'{text.get(c, ident(c))} AS "{c}"' for c in TEXT_FIELDS)
    with wh.transaction(con):
        for i, (sha,) in enumerate(files, 1):
            kept = keep(con, replace(usage_file(inbox[sha], sha), in_raw=True)) if sha in inbox else None
            wh.run(
                con,
                "UPDATE raw.usage_files SET file_id = ?, stored_path = ?, fields_in_raw = true WHERE sha256 = ?",
                [i, kept and str(kept.path), sha],
            )
        for column in _WIDE_TYPED:
            wh.run(con, f"ALTER TABLE raw.usage_events ADD COLUMN IF NOT EXISTS {column}")
        wh.run(con, "ALTER TABLE raw.usage_events RENAME TO usage_events_wide")
        ensure_tables(con, index=False)
        ((wide,),) = wh.run(con, "SELECT count(*) FROM raw.usage_events_wide")
        columns = ", ".join(f'"{c}"' for c in TEXT_FIELDS)
        ((narrow,),) = wh.run(
            con,
            f"""
            INSERT INTO raw.usage_events (file_id, source_row, event_id, event_ts, {columns})
            SELECT f.file_id, w.source_row, w.event_id, w.event_ts, {fields}
            FROM raw.usage_events_wide w JOIN raw.usage_files f ON f.sha256 = w.source_sha256""",
        )
        if narrow != wide:
            raise RuntimeError(
                f"raw.usage_events: {wide} records, {narrow} of them in files of the ledger: not narrowed"
            )
        wh.run(con, "DROP TABLE raw.usage_events_wide")
        # every file's records are now in raw (fields_in_raw): the index is their days
        wh.run(con, "DELETE FROM raw.usage_file_days")
        index_landed(con)
