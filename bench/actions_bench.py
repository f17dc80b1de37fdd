"""Write-back benchmark: what exactly-once costs, beside the bare calls it wraps.

Pushes (against the sandbox, one process, same machine load, interleaved):

* baseline: the bare SDK call ``invoice_items.create`` with an idempotency key, once per action;
* ours: :func:`billing_ai.actions.push.push_action` for approved ``pending_invoice_item``
  actions: ledger claim (SQLite transaction + audit row), the push-time re-check against
  the platform (a customer read), the create with the audit pointer, the outcome
  (transaction + audit row).

Audit chain (pure CPU, 100k rows):

* baseline: sha256 over the same canonical row bytes, no chaining or checks;
* ours: :func:`billing_ai.actions.audit.verify` (canonical JSON, chain links, sequence).

    .venv/bin/python bench/run.py --bench actions [--repeats K] [--actions N]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--actions", type=int, default=200)
    ap.add_argument("--audit-rows", type=int, default=100_000)
    args, _ = ap.parse_known_args(argv)
    sys.path.insert(0, str(REPO))
    import stripe

    from billing_ai.actions import audit
    from billing_ai.actions.ledger import Ledger
    from billing_ai.actions.policy import Policy
    from billing_ai.actions.push import Executor, Sinks, push_action
    from billing_ai.clock import parse_instant
    from billing_ai.platforms.stripe.writer import StripeExecutor, StripeWriter
    from billing_ai.sandbox.generator import generate_world, write_world
    from billing_ai.sandbox.server import SandboxServer
    from billing_ai.sandbox.stripe_api import DEFAULT_SECRET_KEY
    from billing_ai.sandbox.world import WorldConfig, WorldPaths
    from billing_ai.writeback.kinds import Proposal, action_id

    root = Path(tempfile.mkdtemp(prefix="billing_ai_actions_bench_"))
    cfg = WorldConfig(seed=5, customers=20, days=40)
    paths = WorldPaths(root / "world", root / "inbox")
    write_world(generate_world(cfg), paths)
    now = parse_instant(cfg.as_of)
    policy = Policy.load()
    push_s, bare_s = [], []
    with SandboxServer(paths.world_dir, root / "state") as server:
        sdk = stripe.StripeClient(DEFAULT_SECRET_KEY, base_addresses={"api": server.url}, max_network_retries=0)
        customers = [(c.id, c.currency) for c in sdk.v1.customers.list({"limit": 100}).data]
        for rep in range(args.repeats):
            # baseline: the bare create calls
            t = time.perf_counter()
            for k in range(args.actions):
                cid, cur = customers[k % len(customers)]
                sdk.v1.invoice_items.create(
                    {"customer": cid, "amount": 100 + k, "currency": cur, "description": "bench"},
                    {"idempotency_key": f"bare-{rep}-{k}"},
                )
            bare_s.append(time.perf_counter() - t)
            # ours: propose + approve (not timed), then push every action through the ledger
            ledger = Ledger(root / f"ledger-{rep}.sqlite")
            proposals = []
            for k in range(args.actions):
                cid, cur = customers[k % len(customers)]
                params = {"amount": 100 + k, "currency": cur, "description": "bench"}
                proposals.append(
                    Proposal(
                        action_id=action_id("bench", "pending_invoice_item", f"{rep}-{k}"),
                        kind="pending_invoice_item",
                        target_type="customer",
                        target_id=cid,
                        params=params,
                        rationale="bench",
                        confidence=1.0,
                        proposer="bench",
                        created_at=now,
                        expires_at=now + timedelta(days=1),
                    )
                )
            ledger.propose(proposals, policy, now)
            for p in proposals:
                ledger.decide(p.action_id, "ana", "approve", "bench", "api", policy, now)
            executor = Executor(
                StripeExecutor(
                    StripeWriter(DEFAULT_SECRET_KEY, server.url, max_network_retries=0, requests_per_second=0)
                ),
                Sinks("", "", root / "outbox"),
            )
            t = time.perf_counter()
            for p in proposals:
                row = push_action(ledger, executor, policy, p.action_id)
                assert row["status"] == "succeeded", row
            push_s.append(time.perf_counter() - t)
            assert ledger.verify().ok
        created = len(sdk.v1.invoice_items.list({"limit": 100}).data)
    # the audit chain, pure CPU
    rows, prev = [], audit.GENESIS
    for seq in range(1, args.audit_rows + 1):
        row = {
            "seq": seq,
            "recorded_at": "2026-11-24T00:00:00+00:00",
            "actor": "ana",
            "event": "approved",
            "action_id": f"act_{seq:020d}",
            "details": {"reason": "ok", "approvals": 1, "required": 1},
        }
        row["prev_hash"] = prev
        row["row_hash"] = prev = audit.row_hash(prev, row)
        rows.append(row)
    verify_s, hash_s = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        for r in rows:
            hashlib.sha256((r["prev_hash"] + r["action_id"] + r["recorded_at"]).encode()).hexdigest()
        hash_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        assert audit.verify(rows).ok
        verify_s.append(time.perf_counter() - t)
    med = statistics.median
    n = args.actions
    print(f"pushes: {n} approved actions x {args.repeats} repeats against the sandbox (page of items seen: {created})")
    print(f"  baseline bare SDK create      {med(bare_s) / n * 1000:7.2f} ms/action  {n / med(bare_s):8.1f} actions/s")
    print(
        f"  ours push_action (exactly once, audited) "
        f"{med(push_s) / n * 1000:7.2f} ms/action  {n / med(push_s):8.1f} actions/s  "
        f"ratio {med(push_s) / med(bare_s):.2f}x"
    )
    print(f"audit chain: {args.audit_rows:,} rows")
    print(f"  baseline sha256 per row       {args.audit_rows / med(hash_s):12,.0f} rows/s")
    print(
        f"  ours verify (canonical JSON + links) {args.audit_rows / med(verify_s):12,.0f} rows/s  "
        f"ratio {med(verify_s) / med(hash_s):.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
