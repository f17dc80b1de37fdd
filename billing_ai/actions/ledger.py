"""The action ledger: proposals, approvals, push attempts and the audit chain.

Why a separate SQLite file (``data/ops/actions.sqlite``) and not the DuckDB
warehouse: people approve while the nightly run holds the warehouse's single
writer lock, and the sensor and push job must not wait for it. SQLite lets any
number of processes read and write at once (WAL, short ``BEGIN IMMEDIATE``
transactions). The warehouse's ``ops.*`` tables are a read-only copy taken in
by the next pooled step (:func:`billing_ai.actions.assets` ``ops_tables``).

Every state change and the audit row that records it are written in one
transaction, so the log and the state never disagree. Audit rows are chained
by hash (:mod:`billing_ai.actions.audit`); ``BEGIN IMMEDIATE`` serialises
appends, so the chain stays linear with concurrent writers.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from billing_ai.actions import audit
from billing_ai.actions.policy import POLICY_ACTOR_PREFIX, Policy
from billing_ai.clock import Clock
from billing_ai.writeback.kinds import Proposal

LEDGER_ENV = "BILLING_AI_LEDGER"
DEFAULT_LEDGER = "data/ops/actions.sqlite"

# proposed -> partially_approved -> approved -> pushing -> succeeded | failed | blocked | unknown
# proposed -> rejected | expired;  invalid at proposal time (breaks a rule: cannot be approved)
OPEN = ("proposed", "partially_approved")
TERMINAL = ("succeeded", "failed", "blocked", "rejected", "expired", "invalid")

SCHEMA = """
CREATE TABLE IF NOT EXISTS actions (
    action_id TEXT PRIMARY KEY, kind TEXT NOT NULL, platform TEXT NOT NULL, target_type TEXT NOT NULL,
    target_id TEXT NOT NULL, params TEXT NOT NULL, rationale TEXT NOT NULL, evidence TEXT NOT NULL,
    confidence REAL NOT NULL, proposer TEXT NOT NULL, created_at TEXT NOT NULL, expires_at TEXT NOT NULL,
    amount INTEGER, currency TEXT, required_approvals INTEGER NOT NULL, violations TEXT NOT NULL,
    status TEXT NOT NULL, status_reason TEXT, platform_object TEXT, updated_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS actions_status ON actions (status);
CREATE TABLE IF NOT EXISTS approvals (
    approval_id INTEGER PRIMARY KEY AUTOINCREMENT, action_id TEXT NOT NULL, approver TEXT NOT NULL,
    decision TEXT NOT NULL, reason TEXT NOT NULL, method TEXT NOT NULL, recorded_at TEXT NOT NULL,
    audit_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS attempts (
    attempt_id INTEGER PRIMARY KEY AUTOINCREMENT, action_id TEXT NOT NULL, attempt INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL, started_at TEXT NOT NULL, finished_at TEXT, outcome TEXT,
    platform_object TEXT, response TEXT, error TEXT);
CREATE TABLE IF NOT EXISTS audit_log (
    seq INTEGER PRIMARY KEY, recorded_at TEXT NOT NULL, actor TEXT NOT NULL, event TEXT NOT NULL,
    action_id TEXT, details TEXT NOT NULL, prev_hash TEXT NOT NULL, row_hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class ApprovalRefused(Exception):
    def __init__(self, action_id: str, reasons: list[str]):
        super().__init__(f"{action_id}: " + "; ".join(reasons))
        self.reasons = reasons


class UnknownAction(KeyError):
    pass


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat()


def wall_now() -> str:
    """Audit rows record when something really happened: the wall clock, not the pipeline's."""
    return _iso(Clock(None).now())


@dataclass(frozen=True)
class Claim:
    """What the push job got from :meth:`Ledger.claim`."""

    proposal: Proposal
    status: str  # the status before the claim
    attempt: int  # this attempt's number (1, 2, ...)
    idempotency_key: str
    audit_seq: int  # the audit row of this attempt: the pointer left on the platform object
    outcome_unknown: bool  # an earlier attempt may have reached the platform: read back before resending


class Ledger:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path or os.environ.get(LEDGER_ENV) or DEFAULT_LEDGER)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")  # persistent in the file: readers never block the writer
            con.executescript(SCHEMA)

    # ---- plumbing -------------------------------------------------------------------------
    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """The ledger's one connection, opened on first use and kept (opening and closing
        an SQLite file per call costs a WAL checkpoint each time)."""
        with self._lock:
            if self._con is None:
                self._con = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
                self._con.row_factory = sqlite3.Row
                self._con.execute("PRAGMA busy_timeout=60000")
            yield self._con

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    def __del__(self) -> None:  # a Ledger dropped without close() must not leak its file handle
        with suppress(Exception):
            self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock up front (no upgrade deadlocks)."""
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    @staticmethod
    def _append(con: sqlite3.Connection, actor: str, event: str, action_id: str | None, details: dict) -> int:
        last = con.execute("SELECT seq, row_hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (last[0] + 1, last[1]) if last else (1, audit.GENESIS)
        row = {
            "seq": seq,
            "recorded_at": wall_now(),
            "actor": actor,
            "event": event,
            "action_id": action_id,
            "details": details,
        }
        h = audit.row_hash(prev, row)
        con.execute(
            "INSERT INTO audit_log VALUES (?,?,?,?,?,?,?,?)",
            (seq, row["recorded_at"], actor, event, action_id, audit.canonical(details), prev, h),
        )
        return seq

    @staticmethod
    def _set_status(
        con: sqlite3.Connection,
        action_id: str,
        status: str,
        reason: str | None = None,
        platform_object: str | None = None,
    ) -> None:
        con.execute(
            "UPDATE actions SET status=?, status_reason=?, platform_object=coalesce(?, platform_object), "
            "updated_at=? WHERE action_id=?",
            (status, reason, platform_object, wall_now(), action_id),
        )

    # ---- reading --------------------------------------------------------------------------
    def get(self, action_id: str) -> dict:
        with self._connect() as con:
            row = con.execute("SELECT * FROM actions WHERE action_id=?", (action_id,)).fetchone()
        if row is None:
            raise UnknownAction(action_id)
        return dict(row)

    def proposal(self, action_id: str) -> Proposal:
        return to_proposal(self.get(action_id))

    def actions(self, status: str | None = None, kind: str | None = None) -> list[dict]:
        sql, args = "SELECT * FROM actions WHERE 1=1", []
        if status:
            sql, args = sql + " AND status=?", [*args, status]
        if kind:
            sql, args = sql + " AND kind=?", [*args, kind]
        with self._connect() as con:
            return [dict(r) for r in con.execute(sql + " ORDER BY created_at, action_id", args)]

    def table(self, name: str) -> list[dict]:
        if name not in ("actions", "approvals", "attempts", "audit_log"):
            raise ValueError(name)
        order = {
            "actions": "created_at, action_id",
            "approvals": "approval_id",
            "attempts": "attempt_id",
            "audit_log": "seq",
        }[name]
        with self._connect() as con:
            return [dict(r) for r in con.execute(f"SELECT * FROM {name} ORDER BY {order}")]

    def history(self, action_id: str) -> dict[str, list[dict]]:
        with self._connect() as con:
            return {
                t: [dict(r) for r in con.execute(f"SELECT * FROM {t} WHERE action_id=? ORDER BY 1", (action_id,))]
                for t in ("approvals", "attempts", "audit_log")
            }

    def head(self) -> tuple[int, str]:
        with self._connect() as con:
            row = con.execute("SELECT seq, row_hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else (0, audit.GENESIS)

    def verify(self, heads_file: Path | None = None) -> audit.Verdict:
        heads = read_heads(heads_file) if heads_file else []
        return audit.verify(self.table("audit_log"), heads)

    def record_head(self, heads_file: Path, run_id: str) -> tuple[int, str]:
        """Append the chain head to a file outside the ledger and the warehouse (catches truncation)."""
        seq, h = self.head()
        heads_file.parent.mkdir(parents=True, exist_ok=True)
        with open(heads_file, "a", encoding="utf-8") as f:
            f.write(json.dumps({"seq": seq, "row_hash": h, "run_id": run_id, "recorded_at": wall_now()}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return seq, h

    def meta(self) -> dict[str, str]:
        with self._connect() as con:
            return {r[0]: r[1] for r in con.execute("SELECT key, value FROM meta")}

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as con:
            con.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value=excluded.value", (key, value)
            )

    # ---- proposing ------------------------------------------------------------------------
    def propose(self, proposals: list[Proposal], policy: Policy, now: datetime) -> dict[str, int]:
        """Record new proposals (an id seen before is left as it is) and apply policy approvals.

        Returns counts: new, existing, invalid, auto_approved, expired.
        """
        counts = {"new": 0, "existing": 0, "invalid": 0, "auto_approved": 0, "expired": 0}
        with self._tx() as con:
            for p in proposals:
                if con.execute("SELECT 1 FROM actions WHERE action_id=?", (p.action_id,)).fetchone():
                    counts["existing"] += 1
                    continue
                violations = policy.violations(p)
                money = p.money
                status = "invalid" if violations else "proposed"
                con.execute(
                    "INSERT INTO actions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        p.action_id,
                        p.kind,
                        p.platform,
                        p.target_type,
                        p.target_id,
                        audit.canonical(p.params),
                        p.rationale,
                        audit.canonical(p.evidence),
                        p.confidence,
                        p.proposer,
                        _iso(p.created_at),
                        _iso(p.expires_at),
                        money[0] if money else None,
                        money[1] if money else None,
                        policy.required_approvals(p) if not violations else 0,
                        json.dumps(violations),
                        status,
                        "; ".join(violations) or None,
                        None,
                        wall_now(),
                    ),
                )
                self._append(
                    con,
                    p.proposer,
                    "proposed",
                    p.action_id,
                    {
                        "kind": p.kind,
                        "target": f"{p.target_type}:{p.target_id}",
                        "params": p.params,
                        "rationale_sha256": _sha(p.rationale),
                        "confidence": p.confidence,
                        "expires_at": _iso(p.expires_at),
                        "violations": violations,
                    },
                )
                counts["new"] += 1
                if violations:
                    counts["invalid"] += 1
                elif policy.auto_approves(p):
                    actor = f"{POLICY_ACTOR_PREFIX}{p.kind}"
                    reason = "auto-approved: below the policy's auto_approve_below for this kind"
                    seq = self._append(
                        con,
                        actor,
                        "approved",
                        p.action_id,
                        {"method": "policy", "reason": reason, "approvals": 1, "required": 1},
                    )
                    con.execute(
                        "INSERT INTO approvals (action_id, approver, decision, reason, method, recorded_at, "
                        "audit_seq) VALUES (?,?,?,?,?,?,?)",
                        (p.action_id, actor, "approve", reason, "policy", wall_now(), seq),
                    )
                    self._set_status(con, p.action_id, "approved")
                    counts["auto_approved"] += 1
            counts["expired"] = self._expire(con, now)
        return counts

    def _expire(self, con: sqlite3.Connection, now: datetime) -> int:
        rows = con.execute(
            f"SELECT action_id, expires_at FROM actions WHERE status IN {OPEN} AND expires_at <= ?", (_iso(now),)
        ).fetchall()
        for action_id, expires_at in rows:
            self._append(con, "clock", "expired", action_id, {"expires_at": expires_at, "now": _iso(now)})
            self._set_status(con, action_id, "expired", f"not approved by {expires_at}")
        return len(rows)

    # ---- deciding -------------------------------------------------------------------------
    def decide(
        self, action_id: str, approver: str, decision: str, reason: str, method: str, policy: Policy, now: datetime
    ) -> str:
        """Record an approval or rejection; returns the new status or raises :class:`ApprovalRefused`.

        ``method``: ``cli``, ``launchpad`` (Dagster UI; the identity is claimed, OSS has no login) or
        ``api``. A refused attempt is itself audited.
        """
        if decision not in ("approve", "reject"):
            raise ValueError(f"decision must be approve or reject, not {decision!r}")
        if not reason.strip():
            raise ApprovalRefused(action_id, ["a reason is required"])
        refused: list[str] = []
        with self._tx() as con:
            self._expire(con, now)
            row = con.execute("SELECT * FROM actions WHERE action_id=?", (action_id,)).fetchone()
            if row is None:
                raise UnknownAction(action_id)
            p = to_proposal(dict(row))
            approved_by = [
                r[0]
                for r in con.execute(
                    "SELECT approver FROM approvals WHERE action_id=? AND decision='approve'", (action_id,)
                )
            ]
            refused = policy.refusals(p, row["status"], approved_by, approver, decision, now)
            if refused:
                self._append(
                    con,
                    approver,
                    "approval_refused",
                    action_id,
                    {"decision": decision, "method": method, "reasons": refused},
                )
            else:
                if decision == "reject":
                    status = "rejected"
                else:
                    status = "approved" if len(approved_by) + 1 >= row["required_approvals"] else "partially_approved"
                seq = self._append(
                    con,
                    approver,
                    "rejected" if decision == "reject" else "approved",
                    action_id,
                    {
                        "method": method,
                        "reason": reason,
                        "approvals": len(approved_by) + 1,
                        "required": row["required_approvals"],
                        "status": status,
                    },
                )
                con.execute(
                    "INSERT INTO approvals (action_id, approver, decision, reason, method, recorded_at, "
                    "audit_seq) VALUES (?,?,?,?,?,?,?)",
                    (action_id, approver, decision, reason, method, wall_now(), seq),
                )
                self._set_status(con, action_id, status, reason if decision == "reject" else None)
        if refused:  # raised after the commit: the refusal stays in the log
            raise ApprovalRefused(action_id, refused)
        return status

    # ---- pushing --------------------------------------------------------------------------
    def approved_to_push(self) -> list[str]:
        with self._connect() as con:
            return [
                r[0]
                for r in con.execute(
                    "SELECT action_id FROM actions WHERE status IN ('approved', 'unknown', 'pushing') "
                    "ORDER BY updated_at, action_id"
                )
            ]

    def claim(self, action_id: str, actor: str, run_id: str) -> Claim | None:
        """Start a push attempt; None if the action is not (or no longer) pushable."""
        with self._tx() as con:
            row = con.execute("SELECT * FROM actions WHERE action_id=?", (action_id,)).fetchone()
            if row is None:
                raise UnknownAction(action_id)
            if row["status"] not in ("approved", "unknown", "pushing"):
                return None
            last = con.execute(
                "SELECT attempt, outcome FROM attempts WHERE action_id=? ORDER BY attempt DESC LIMIT 1", (action_id,)
            ).fetchone()
            n = (last[0] + 1) if last else 1
            unknown = bool(last) and last[1] in (None, "unknown")
            key = idempotency_key(action_id, n)
            con.execute(
                "INSERT INTO attempts (action_id, attempt, idempotency_key, started_at) VALUES (?,?,?,?)",
                (action_id, n, key, wall_now()),
            )
            seq = self._append(
                con,
                actor,
                "push_attempt",
                action_id,
                {"attempt": n, "idempotency_key": key, "run_id": run_id, "read_back_first": unknown},
            )
            self._set_status(con, action_id, "pushing")
            return Claim(to_proposal(dict(row)), row["status"], n, key, seq, unknown)

    def finish(
        self,
        action_id: str,
        attempt: int,
        outcome: str,
        actor: str,
        *,
        platform_object: str | None = None,
        response: dict | None = None,
        error: str | None = None,
    ) -> int:
        """Record an attempt's outcome: succeeded, already_applied, failed, blocked or unknown.

        Returns the audit sequence number of the outcome row (the pointer left on the platform object).
        """
        status = {"already_applied": "succeeded"}.get(outcome, outcome)
        with self._tx() as con:
            con.execute(
                "UPDATE attempts SET finished_at=?, outcome=?, platform_object=?, response=?, error=? "
                "WHERE action_id=? AND attempt=?",
                (
                    wall_now(),
                    outcome,
                    platform_object,
                    json.dumps(response, default=str) if response is not None else None,
                    error,
                    action_id,
                    attempt,
                ),
            )
            seq = self._append(
                con,
                actor,
                "push_outcome",
                action_id,
                {"attempt": attempt, "outcome": outcome, "platform_object": platform_object, "error": error},
            )
            self._set_status(con, action_id, status, error, platform_object)
        return seq

    def note(self, action_id: str | None, actor: str, event: str, details: dict) -> int:
        """Append an audit row with no state change (e.g. the pointer left on a platform object)."""
        with self._tx() as con:
            return self._append(con, actor, event, action_id, details)


def idempotency_key(action_id: str, attempt: int) -> str:
    """Derived from the action: retries inside one attempt resend this key; a new attempt gets a new
    key only after reading the platform back showed the previous one did not apply."""
    return f"billing_ai-{action_id}-{attempt}"


def to_proposal(row: dict) -> Proposal:
    return Proposal(
        action_id=row["action_id"],
        kind=row["kind"],
        platform=row["platform"],
        target_type=row["target_type"],
        target_id=row["target_id"],
        params=json.loads(row["params"]),
        rationale=row["rationale"],
        evidence=json.loads(row["evidence"]),
        confidence=row["confidence"],
        proposer=row["proposer"],
        created_at=datetime.fromisoformat(row["created_at"]),
        expires_at=datetime.fromisoformat(row["expires_at"]),
    )


def read_heads(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
