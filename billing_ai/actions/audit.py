"""The tamper-evident audit trail: an append-only log whose rows are chained by hash.

Each row holds ``prev_hash`` (the previous row's ``row_hash``; 64 zeros for the
first) and ``row_hash = sha256(prev_hash + canonical(content))``, where the
content is the row's sequence number, time, actor, event, action id and details
as canonical JSON (sorted keys, no whitespace, UTF-8). Editing any field of a
row changes its hash, deleting a row breaks the next row's link, and truncating
the tail is caught by comparing against a chain head recorded outside the
store (:func:`verify` with ``heads``).

These functions are pure: the ledger (:mod:`billing_ai.actions.ledger`) stores
the rows and the warehouse copy (``ops.audit_log``) is verified by the same
:func:`verify`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

GENESIS = "0" * 64
FIELDS = ("seq", "recorded_at", "actor", "event", "action_id", "details")


def canonical(value: object) -> str:
    """The one serialisation that is hashed: sorted keys, compact, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def row_hash(prev_hash: str, content: Mapping[str, object]) -> str:
    body = canonical({f: content[f] for f in FIELDS})
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Verdict:
    ok: bool
    rows: int
    head_seq: int
    head_hash: str
    first_broken_seq: int | None = None
    reason: str = ""

    def __str__(self) -> str:
        if self.ok:
            return f"audit chain OK: {self.rows} rows, head #{self.head_seq} {self.head_hash[:16]}"
        return f"audit chain BROKEN at row #{self.first_broken_seq}: {self.reason}"


def verify(rows: Iterable[Mapping[str, object]], heads: Iterable[Mapping[str, object]] = ()) -> Verdict:
    """Check the chain over ``rows`` (in ``seq`` order) and name the first broken row.

    ``details`` may be given as a dict or as its canonical JSON text. ``heads``
    are chain heads recorded outside the store (``seq``, ``row_hash``): each must
    still be in the chain with the same hash, which catches a truncated tail.
    """
    prev, expected_seq, n = GENESIS, 1, 0
    by_seq: dict[int, str] = {}
    for r in rows:
        row = dict(r)
        if isinstance(row.get("details"), str):
            try:
                row["details"] = json.loads(row["details"])
            except ValueError:
                return Verdict(False, n, expected_seq - 1, prev, int(row["seq"]), "details are not valid JSON")
        seq = int(row["seq"])
        if seq != expected_seq:
            return Verdict(
                False,
                n,
                expected_seq - 1,
                prev,
                expected_seq,
                f"row #{expected_seq} is missing (next row found is #{seq})",
            )
        if row["prev_hash"] != prev:
            return Verdict(False, n, seq - 1, prev, seq, "prev_hash does not match the previous row's hash")
        if row_hash(prev, row) != row["row_hash"]:
            return Verdict(False, n, seq - 1, prev, seq, "content does not match its hash (the row was edited)")
        prev, expected_seq, n = str(row["row_hash"]), seq + 1, n + 1
        by_seq[seq] = prev
    for h in heads:
        seq = int(h["seq"])
        if seq and by_seq.get(seq) != h["row_hash"]:
            missing = seq not in by_seq
            return Verdict(
                False,
                n,
                expected_seq - 1,
                prev,
                seq,
                f"recorded head #{seq} is {'missing (the log was truncated)' if missing else 'different'}",
            )
    return Verdict(True, n, expected_seq - 1, prev)
