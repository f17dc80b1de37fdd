"""DuckDB warehouse access: connections, transactions and partition writes.

DuckDB 2.0: statements auto-commit one by one, so multi-statement writes run
inside an explicit ``BEGIN``/``COMMIT`` (:func:`transaction`); an unfetched
``execute()`` result blocks its connection, so :func:`run` always fetches.
Connections are opened only while talking to DuckDB, never across HTTP calls.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import duckdb

SCHEMAS = ("raw", "core", "marts", "ops")
SQL_DIR = Path(__file__).resolve().parent.parent / "sql"


def connect(path: str | Path, read_only: bool = False, threads: int | None = None,
            memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
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
    return bool(run(con, "SELECT 1 FROM information_schema.tables WHERE table_schema=? AND table_name=?",
                    [schema, name]))


def count(con: duckdb.DuckDBPyConnection, qualified: str, where: str = "", params: Sequence | None = None) -> int:
    return run(con, f"SELECT count(*) FROM {qualified} {('WHERE ' + where) if where else ''}", params)[0][0]


def read_sql(relative: str) -> str:
    """Text of a file under ``sql/``."""
    return (SQL_DIR / relative).read_text()
