"""The inbox's files and the copies raw keeps of them: discovery, content hashes, the ledger's tables
(``raw.usage_files`` and the landing's index), and the folder beside the warehouse where landed files are
kept (``<warehouse>.usage_files/<sha256><suffix>``)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb

from billing_ai import warehouse as wh
from billing_ai.ingestion.quarantine import QUARANTINE_DDL

FORMATS = {".ndjson": "ndjson", ".jsonl": "ndjson", ".json": "ndjson", ".csv": "csv", ".parquet": "parquet"}


SOURCE = "usage_file"


_DAY_IN_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})")


# The landing's index of every landed file, whatever its format: its landed records per UTC event
# day (which files a partition reads, and how many records it must account for), and the records it
# quarantined (few; a Parquet file's records are read from the kept file, and these are skipped).
INDEX_DDL = """
CREATE TABLE IF NOT EXISTS raw.usage_file_days (file_id INTEGER, event_date DATE, events BIGINT);
CREATE TABLE IF NOT EXISTS raw.usage_landing_rejects (file_id INTEGER, source_row BIGINT, reason VARCHAR);
"""


DDL = (
    """
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
"""
    + INDEX_DDL
    + QUARANTINE_DDL
)


def create_tables(con: duckdb.DuckDBPyConnection) -> None:
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
class UsageFile:
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


def kept_dir(warehouse_path: str | Path) -> Path:
    """Where the usage files of the warehouse at ``warehouse_path`` are kept (see the module doc)."""
    return Path(f"{warehouse_path}.usage_files")


def kept_dir_of(con: duckdb.DuckDBPyConnection) -> Path | None:
    """Where the warehouse ``con`` is on keeps its files (None: in memory, it keeps none)."""
    ((db,),) = wh.run(con, "SELECT path FROM duckdb_databases() WHERE database_name = current_database()")
    return kept_dir(db) if db else None


def _kept_name(sha: str, name: str) -> str:
    """A kept file's name: its content hash and its format's suffix."""
    return f"{sha}{Path(name).suffix.lower()}"


def keep(con: duckdb.DuckDBPyConnection, f: UsageFile) -> UsageFile:
    """The file as raw keeps it, by content hash beside the warehouse, written whole or not at all
    (a temp name, then os.replace). A file whose records are read from it again (Parquet) is a
    read-only copy: a hard link would be the inbox file itself, and a producer rewriting that in place
    would change (or truncate) records already landed. A text file, never read again, is a hard link
    where the file system allows. (An in-memory warehouse keeps nothing beyond the session: it reads
    the inbox file.)"""
    home = kept_dir_of(con)
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


def kept_files(con: duckdb.DuckDBPyConnection, where: str) -> list[UsageFile]:
    """Landed files of the ledger (``where`` on raw.usage_files), as raw keeps them: beside the
    warehouse where it is now (a warehouse moved or restored with its folder of kept files reads them
    there, whatever the ledger's ``stored_path`` says), else at ``stored_path``. Fails if a file whose
    records are read from it (a Parquet file landed narrow) is gone or changed size."""
    rows = wh.run(
        con,
        f"""
        SELECT stored_path, file_name, sha256, format, CAST(file_day AS VARCHAR), bytes, file_id, landed,
               coalesce(fields_in_raw, format <> 'parquet')
        FROM raw.usage_files WHERE status = 'landed' AND ({where}) ORDER BY file_id""",
    )

    home = kept_dir_of(con)

    def where_kept(stored: str | None, sha: str, name: str) -> Path:
        here = home / _kept_name(sha, name) if home is not None else None
        return here.resolve() if here is not None and here.is_file() else Path(stored or "")

    files = [
        UsageFile(where_kept(p, sha, name), name, sha, fmt, day, size, file_id, landed, in_raw)
        for p, name, sha, fmt, day, size, file_id, landed, in_raw in rows
    ]
    gone = [f.name for f in files if not f.fields_in_raw and not (f.path.is_file() and f.path.stat().st_size == f.size)]
    if gone:
        raise FileNotFoundError(
            f"raw keeps no intact copy of landed usage files {gone[:5]} (expected beside "
            "the warehouse, see usage_files): their records cannot be read"
        )
    return files


def usage_file(path: Path, sha: str) -> UsageFile:
    m = _DAY_IN_NAME.search(path.name)
    return UsageFile(path, path.name, sha, FORMATS[path.suffix.lower()], m.group(1) if m else None, path.stat().st_size)
