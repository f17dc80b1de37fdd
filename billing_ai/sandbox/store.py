"""The sandbox platform's durable state: a SQLite file beside the world.

Seeded once from the world's platform tables; every write the API accepts
(metadata, invoice items, credit notes, meter events, idempotency records)
lands here too, so the sandbox's state survives a restart.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import polars as pl

from billing_ai.sandbox.world import load_config, stored_fingerprint, ts

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    type TEXT NOT NULL, id TEXT NOT NULL, created INTEGER NOT NULL, seq INTEGER NOT NULL,
    customer TEXT, parent TEXT, body TEXT NOT NULL, PRIMARY KEY (type, id));
CREATE INDEX IF NOT EXISTS objects_order ON objects (type, created DESC, seq DESC);
CREATE INDEX IF NOT EXISTS objects_parent ON objects (type, parent);
CREATE INDEX IF NOT EXISTS objects_customer ON objects (type, customer);
CREATE TABLE IF NOT EXISTS meter_usage (
    meter_id TEXT NOT NULL, customer TEXT NOT NULL, day_start INTEGER NOT NULL, value_milli INTEGER NOT NULL,
    PRIMARY KEY (meter_id, customer, day_start));
CREATE TABLE IF NOT EXISTS meter_event_ids (identifier TEXT PRIMARY KEY, created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT NOT NULL, api_key TEXT NOT NULL, method TEXT NOT NULL, path TEXT NOT NULL, params TEXT NOT NULL,
    status INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (api_key, key));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT, body TEXT);
"""


class Store:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
        self._seq = self.db.execute("SELECT coalesce(max(seq), 0) FROM objects").fetchone()[0]

    # ---- seeding -------------------------------------------------------------
    def fingerprint(self) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key='fingerprint'").fetchone()
        return row[0] if row else None

    def seed_from_world(self, world_dir: Path) -> bool:
        """Load the world, as Stripe renders it, unless this store already holds it (state survives
        restarts). Another facade sharing this store overrides :meth:`render` and :meth:`created_of`."""
        cfg = load_config(world_dir)
        fingerprint = stored_fingerprint(world_dir)
        if self.fingerprint() == fingerprint:
            return False
        tables = {p.stem: pl.read_parquet(p) for p in (Path(world_dir) / "platform").glob("*.parquet")}
        as_of = ts(cfg.as_of_dt())
        with self._lock:
            self.db.execute("BEGIN")
            for t in ("objects", "meter_usage", "meter_event_ids", "idempotency", "meta", "outbox"):
                self.db.execute(f"DELETE FROM {t}")
            rows = [
                (typ, obj["id"], self.created_of(typ, obj), k, cust, parent, json.dumps(obj))
                for k, (typ, obj, cust, parent) in enumerate(self.render(tables, as_of))
            ]
            self.db.executemany("INSERT INTO objects VALUES (?,?,?,?,?,?,?)", rows)
            self._seq = len(rows)
            self.seed_usage(tables, {r[1] for r in rows if r[0] == "customer"})
            self.db.execute("INSERT INTO meta VALUES ('fingerprint', ?), ('as_of', ?)", (fingerprint, str(as_of)))
            self.db.execute("COMMIT")
        return True

    def render(self, tables: dict[str, pl.DataFrame], as_of: int):
        from billing_ai.sandbox.stripe_render import render_world

        return render_world(tables, as_of)

    def created_of(self, typ: str, obj: dict) -> int:
        return obj.get("created") or 0

    def seed_usage(self, tables: dict[str, pl.DataFrame], customers: set[str]) -> None:
        """The platform's daily meter totals of its own customers (Stripe's meter event summaries)."""
        mu = tables["meter_usage"].filter(pl.col("customer_id").is_in(list(customers)))
        self.db.executemany(
            "INSERT INTO meter_usage VALUES (?,?,?,?)",
            mu.select("meter_id", "customer_id", "day_start", "value_milli").iter_rows(),
        )

    def as_of(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key='as_of'").fetchone()
        return int(row[0]) if row else 0

    # ---- objects ---------------------------------------------------------------
    def get(self, typ: str, oid: str) -> dict | None:
        row = self.db.execute("SELECT body FROM objects WHERE type=? AND id=?", (typ, oid)).fetchone()
        return json.loads(row[0]) if row else None

    def put(
        self, typ: str, obj: dict, customer: str | None = None, parent: str | None = None, created: int | None = None
    ) -> None:
        """Insert or replace; ``created`` orders lists when the object has no such field."""
        with self._lock:
            existing = self.db.execute("SELECT seq FROM objects WHERE type=? AND id=?", (typ, obj["id"])).fetchone()
            if existing:
                self.db.execute("UPDATE objects SET body=? WHERE type=? AND id=?", (json.dumps(obj), typ, obj["id"]))
            else:
                self._seq += 1
                self.db.execute(
                    "INSERT INTO objects VALUES (?,?,?,?,?,?,?)",
                    (typ, obj["id"], created or obj.get("created") or 0, self._seq, customer, parent, json.dumps(obj)),
                )

    def list(
        self,
        typ: str,
        *,
        limit: int,
        starting_after: str | None = None,
        ending_before: str | None = None,
        where: dict[str, str] | None = None,
        predicate=None,
        newest_first: bool = True,
    ) -> tuple[list[dict], bool]:
        """A page in Stripe's order (newest first, or oldest first for invoice lines); cursor by id."""
        sql = "SELECT body FROM objects WHERE type=?"
        args: list = [typ]
        for col, val in (where or {}).items():
            sql += f" AND {col}=?"
            args.append(val)
        cursor_id = starting_after or ending_before
        if cursor_id:
            row = self.db.execute("SELECT created, seq FROM objects WHERE type=? AND id=?", (typ, cursor_id)).fetchone()
            if row is None:
                raise KeyError(cursor_id)
            # walking forward (starting_after) goes in list order; ending_before walks backwards
            forward_is_desc = newest_first
            desc = forward_is_desc if starting_after else not forward_is_desc
            op = "<" if desc else ">"
            sql += f" AND (created {op} ? OR (created = ? AND seq {op} ?))"
            args += [row[0], row[0], row[1]]
        else:
            desc = newest_first
        sql += " ORDER BY created {0}, seq {0}".format("DESC" if desc else "ASC")
        out: list[dict] = []
        more = False
        for (body,) in self.db.execute(sql, args):
            obj = json.loads(body)
            if predicate and not predicate(obj):
                continue
            if len(out) == limit:
                more = True
                break
            out.append(obj)
        if ending_before:
            out.reverse()
        return out, more

    # ---- meters ------------------------------------------------------------------
    def meter_summaries(self, meter_id: str, customer: str, start: int, end: int) -> list[tuple[int, int]]:
        return self.db.execute(
            "SELECT day_start, value_milli FROM meter_usage WHERE meter_id=? AND customer=? "
            "AND day_start >= ? AND day_start < ? ORDER BY day_start",
            (meter_id, customer, start, end),
        ).fetchall()

    def record_meter_event(
        self, identifier: str, meter_id: str, customer: str, at: int, value_milli: int, created: int
    ) -> bool:
        """False if the identifier was seen before (Stripe dedups meter events by identifier)."""
        with self._lock:
            try:
                self.db.execute("BEGIN")
                self.db.execute("INSERT INTO meter_event_ids VALUES (?, ?)", (identifier, created))
                self.db.execute(
                    "INSERT INTO meter_usage VALUES (?,?,?,?) ON CONFLICT (meter_id, customer, day_start) "
                    "DO UPDATE SET value_milli = value_milli + excluded.value_milli",
                    (meter_id, customer, at // 86400 * 86400, value_milli),
                )
                self.db.execute("COMMIT")
                return True
            except sqlite3.IntegrityError:
                self.db.execute("ROLLBACK")
                return False

    # ---- idempotency ---------------------------------------------------------------
    def idem_get(self, api_key: str, key: str) -> tuple | None:
        return self.db.execute(
            "SELECT method, path, params, status, body FROM idempotency WHERE api_key=? AND key=?", (api_key, key)
        ).fetchone()

    def idem_put(self, api_key: str, key: str, method: str, path: str, params: str, status: int, body: str) -> None:
        with self._lock:
            self.db.execute(
                "INSERT OR IGNORE INTO idempotency VALUES (?,?,?,?,?,?,?)",
                (key, api_key, method, path, params, status, body),
            )

    def outbox_add(self, kind: str, body: dict) -> None:
        with self._lock:
            self.db.execute("INSERT INTO outbox (kind, body) VALUES (?, ?)", (kind, json.dumps(body)))

    def outbox_list(self, kind: str) -> list[dict]:
        return [json.loads(b) for (b,) in self.db.execute("SELECT body FROM outbox WHERE kind=? ORDER BY seq", (kind,))]

    def close(self) -> None:
        self.db.close()
