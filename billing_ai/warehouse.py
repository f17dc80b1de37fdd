"""DuckDB warehouse access: connections, transactions and partition writes.

DuckDB 2.0: statements auto-commit one by one, so multi-statement writes run
inside an explicit ``BEGIN``/``COMMIT`` (:func:`transaction`); an unfetched
``execute()`` result blocks its connection, so :func:`run` always fetches.
Connections are opened only while talking to DuckDB, never across HTTP calls.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import duckdb

SCHEMAS = ("raw", "core", "marts", "ops")


def connect(
    path: str | Path, read_only: bool = False, threads: int | None = None, memory_limit: str | None = None
) -> duckdb.DuckDBPyConnection:
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    config = {}
    if threads:
        config["threads"] = threads
    if memory_limit:
        config["memory_limit"] = memory_limit
    con = duckdb.connect(str(path), read_only=read_only, config=config)
    run(con, "SET TimeZone = 'UTC'")  # every date boundary in the warehouse is UTC
    if not read_only:
        for s in SCHEMAS:
            run(con, f"CREATE SCHEMA IF NOT EXISTS {s}")
    return con


def run(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence | dict | None = None) -> list[tuple]:
    """Execute and fetch everything (an unfetched result would block the connection)."""
    cur = con.execute(sql, params) if params is not None else con.execute(sql)
    return cur.fetchall()


def write_frame(con: duckdb.DuckDBPyConnection, table: str, frame, replace: bool = False) -> None:
    """Write a Polars frame into ``table``: append by column name, or (``replace``) recreate the table
    from it. Runs inside the caller's transaction, if any."""
    con.register("_write_frame", frame)
    try:
        if replace:
            run(con, f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM _write_frame")
        else:
            run(con, f"INSERT INTO {table} BY NAME SELECT * FROM _write_frame")
    finally:
        con.unregister("_write_frame")


_INTEGERS = frozenset(
    {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"}
)


def replace_table(con: duckdb.DuckDBPyConnection, table: str, columns_ddl: str, frame) -> None:
    """Recreate ``table`` with the given columns (see ``billing_ai.contract.Table.ddl``) and fill it from a
    Polars frame by column name: the table's types are the declared ones, whatever the night's data holds.

    The frame must have exactly those columns, each of the declared type -- or of no type at all (a column
    NULL in every row tonight), or an integer of another width: a missing column would be NULL every night
    and a float cast into a money column rounded, silently. Runs inside the caller's transaction, if any."""
    run(con, f"CREATE OR REPLACE TABLE {table} ({columns_ddl})")
    declared = dict(run(con, f"SELECT column_name, column_type FROM (DESCRIBE {table})"))
    con.register("_write_frame", frame)
    try:
        given = dict(run(con, "SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM _write_frame)"))
    finally:
        con.unregister("_write_frame")
    wrong = {
        c: f"{given.get(c, 'missing')} for {t}"
        for c, t in declared.items()
        if given.get(c) != t and given.get(c) not in ("NULL", '"NULL"') and not {given.get(c), t} <= _INTEGERS
    }
    wrong |= {c: "not in the table" for c in given.keys() - declared.keys()}
    if wrong:
        raise ValueError(f"{table}: the frame does not fit the declared columns: {wrong}")
    write_frame(con, table, frame)


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """One explicit transaction: all of it lands, or none of it does."""
    run(con, "BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        run(con, "ROLLBACK")
        raise
    run(con, "COMMIT")


def table_exists(con: duckdb.DuckDBPyConnection, qualified: str) -> bool:
    schema, name = qualified.split(".")
    return bool(
        run(con, "SELECT 1 FROM information_schema.tables WHERE table_schema=? AND table_name=?", [schema, name])
    )


def count(con: duckdb.DuckDBPyConnection, qualified: str, where: str = "", params: Sequence | None = None) -> int:
    return run(con, f"SELECT count(*) FROM {qualified} {('WHERE ' + where) if where else ''}", params)[0][0]


def published_path_for(path: str | Path) -> Path:
    """Where the read-only snapshot of a warehouse is published (beside it)."""
    path = Path(path)
    return path.parent / "published" / path.name


def publish(con: duckdb.DuckDBPyConnection, path: str | Path) -> Path:
    """Publish a consistent read-only copy of the warehouse, atomically.

    DuckDB lets one process write a file and no other process even open it
    meanwhile, so analysts and sensors read this snapshot instead. The caller
    holds the (only) write connection, so after CHECKPOINT the file is
    consistent; it is copied beside the target and swapped in with
    ``os.replace``: a reader sees the old snapshot or the new one, never a mix,
    and readers that already have the old one open keep reading it.
    """
    path = Path(path)
    target = published_path_for(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    run(con, "CHECKPOINT")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.copyfile(path, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)
    return target


def connect_published(path: str | Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the latest published snapshot of the warehouse at ``path``."""
    con = duckdb.connect(str(published_path_for(path)), read_only=True)
    run(con, "SET TimeZone = 'UTC'")
    return con


def read_sql(relative: str) -> str:
    """Text of a file under ``sql/`` (the ``billing_ai.sql`` package: the checkout's folder in a
    development install, packaged data in an installed wheel)."""
    return resources.files("billing_ai.sql").joinpath(relative).read_text()
