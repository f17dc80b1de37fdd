"""Pure logic of the write-back: schemas, policy, audit chain, proposals from reconciliation findings."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from billing_ai.actions import audit
from billing_ai.actions.ledger import ApprovalRefused, Ledger
from billing_ai.actions.policy import Policy
from billing_ai.actions.proposers import RECONCILIATION_PROPOSER, proposals_from_reconciliation
from billing_ai.writeback.kinds import Proposal, action_id, schema_violations

NOW = datetime(2026, 11, 1, 6, tzinfo=UTC)
POLICY = Policy.load()


def proposal(
    kind="pending_invoice_item",
    target_type="customer",
    target_id="cus_A",
    params=None,
    proposer="analytics:test",
    rationale="r",
    **kw,
) -> Proposal:
    params = params if params is not None else {"amount": 1250, "currency": "usd", "description": "fix"}
    return Proposal(
        action_id=action_id(proposer, kind, str(params) + target_id),
        kind=kind,
        target_type=target_type,
        target_id=target_id,
        params=params,
        rationale=rationale,
        confidence=0.9,
        proposer=proposer,
        created_at=NOW,
        expires_at=NOW + timedelta(days=14),
        **kw,
    )


# ---- schemas -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"amount": 1250, "currency": "xxx", "description": "d"}, "unknown currency"),
        ({"amount": -5, "currency": "usd", "description": "d"}, "greater than 0"),
        ({"amount": 12.5, "currency": "usd", "description": "d"}, "valid integer"),  # never a float
        ({"amount": 1250, "currency": "usd"}, "description"),
        ({"amount": 1250, "currency": "usd", "description": "d", "run_sql": "DROP TABLE"}, "Extra inputs"),
    ],
)
def test_params_are_validated_against_the_kind_schema(params, fragment):
    problems = schema_violations(proposal(params=params))
    assert problems and any(fragment in p for p in problems), problems


def test_targets_reserved_keys_and_tags():
    assert schema_violations(proposal(target_type="invoice", target_id="in_1"))  # wrong target type for the kind
    assert schema_violations(proposal(target_id="in_1"))  # not a customer id
    assert schema_violations(proposal("metadata_update", params={"metadata": {"billing_ai_audit_id": "x"}}))
    assert schema_violations(proposal("support_case", params={"subject": "s", "body": "b", "tags": ["Anything"]}))
    assert not schema_violations(
        proposal("support_case", params={"subject": "s", "body": "b", "tags": ["Billing - Usage Anomaly"]})
    )
    assert schema_violations(proposal("unknown_kind")) == [
        "unknown kind 'unknown_kind'; known: "
        + str(sorted(__import__("billing_ai.writeback.kinds", fromlist=["KINDS"]).KINDS))
    ]


def test_action_ids_are_deterministic():
    assert action_id("p", "credit_note", "in_1|il_1") == action_id("p", "credit_note", "in_1|il_1")
    assert action_id("p", "credit_note", "in_1|il_1") != action_id("p", "credit_note", "in_1|il_2")
    expected = "act_" + hashlib.sha256(b"p\x1fcredit_note\x1fin_1|il_1").hexdigest()[:20]
    assert action_id("p", "credit_note", "in_1|il_1") == expected


# ---- policy -----------------------------------------------------------------------------------------
def credit(amount: int, currency: str = "usd") -> Proposal:
    return proposal(
        "credit_note", "invoice", "in_1", {"amount": amount, "currency": currency, "reason": "duplicate", "memo": "m"}
    )


def test_two_approvers_from_the_configured_amount():
    # policy.toml: credit_note two_approvers_from usd 50000 (500.00 USD), jpy 5000000
    assert POLICY.required_approvals(credit(49_999)) == 1
    assert POLICY.required_approvals(credit(50_000)) == 2
    assert POLICY.required_approvals(credit(4_999_999, "jpy")) == 1
    assert POLICY.required_approvals(credit(5_000_000, "jpy")) == 2
    assert (
        POLICY.required_approvals(
            proposal("subscription_change", "subscription", "sub_1", {"item": "si_1", "to_price": "price_2"})
        )
        == 2
    )  # always two


def test_business_rule_limits():
    assert POLICY.violations(credit(500_000)) == []
    assert POLICY.violations(credit(500_001)) == ["5,000.01 USD is over the credit_note limit of 5,000.00 USD"]
    assert "no credit_note limit for gbp" in POLICY.violations(credit(100, "gbp"))[0]  # fails closed


def test_who_may_approve():
    p = credit(10_000)  # 100.00 USD, one approver
    assert POLICY.refusals(p, "proposed", [], "ana", "approve", NOW) == []
    assert "not a configured approver" in POLICY.refusals(p, "proposed", [], "mallory", "approve", NOW)[0]
    assert "may not decide credit_note" in POLICY.refusals(p, "proposed", [], "chloe", "approve", NOW)[0]
    own = proposal(
        "credit_note",
        "invoice",
        "in_1",
        {"amount": 100, "currency": "usd", "reason": "duplicate", "memo": "m"},
        proposer="ana",
    )
    assert "the proposer may not approve its own action" in POLICY.refusals(own, "proposed", [], "ana", "approve", NOW)
    big = credit(300_000)  # ben may approve up to 2,000.00 USD
    assert any("over 'ben'" in r for r in POLICY.refusals(big, "proposed", [], "ben", "approve", NOW))
    assert any(
        "already approved" in r
        for r in POLICY.refusals(credit(60_000), "partially_approved", ["ana"], "ana", "approve", NOW)
    )
    assert "expired" in POLICY.refusals(p, "proposed", [], "ana", "approve", NOW + timedelta(days=15))[0]
    assert "policy approvals" in POLICY.refusals(p, "proposed", [], "policy:credit_note", "approve", NOW)[0]


def test_auto_approval_is_for_low_value_payment_retries_only():
    retry = lambda amount: proposal("payment_retry", "invoice", "in_1", {"amount_due": amount, "currency": "usd"})  # noqa: E731 -- a one-line local helper reads best inline
    assert POLICY.auto_approves(retry(4_999)) and not POLICY.auto_approves(retry(5_000))
    assert not POLICY.auto_approves(credit(1))


# ---- ledger state machine ------------------------------------------------------------------------------
def test_ledger_flow_two_approvers_refusals_audited(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    p = credit(60_000)
    assert ledger.propose([p], POLICY, NOW)["new"] == 1
    assert ledger.propose([p], POLICY, NOW) == {"new": 0, "existing": 1, "invalid": 0, "auto_approved": 0, "expired": 0}
    assert (
        ledger.decide(p.action_id, "ana", "approve", "checked the invoice", "cli", POLICY, NOW) == "partially_approved"
    )
    with pytest.raises(ApprovalRefused, match="a second approver must be someone else"):
        ledger.decide(p.action_id, "ana", "approve", "again", "cli", POLICY, NOW)
    assert ledger.decide(p.action_id, "ben", "approve", "agree", "launchpad", POLICY, NOW) == "approved"
    events = [r["event"] for r in ledger.table("audit_log")]
    assert events == ["proposed", "approved", "approval_refused", "approved"]
    assert [(a["approver"], a["method"]) for a in ledger.table("approvals")] == [("ana", "cli"), ("ben", "launchpad")]
    assert ledger.verify().ok


def test_invalid_proposals_cannot_be_approved_and_rejection_is_final(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    over, ok = credit(900_000), credit(1_000)
    ledger.propose([over, ok], POLICY, NOW)
    assert ledger.get(over.action_id)["status"] == "invalid"
    with pytest.raises(ApprovalRefused, match="not awaiting approval"):
        ledger.decide(over.action_id, "ana", "approve", "please", "cli", POLICY, NOW)
    assert (
        ledger.decide(ok.action_id, "ben", "reject", "customer already refunded by hand", "cli", POLICY, NOW)
        == "rejected"
    )
    with pytest.raises(ApprovalRefused):
        ledger.decide(ok.action_id, "ana", "approve", "override", "cli", POLICY, NOW)
    with pytest.raises(ApprovalRefused, match="reason is required"):
        ledger.decide(ok.action_id, "ana", "approve", "  ", "cli", POLICY, NOW)


def test_expiry_and_policy_approval(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    retry = proposal("payment_retry", "invoice", "in_9", {"amount_due": 1_000, "currency": "usd"})
    stale = credit(2_000)
    counts = ledger.propose([retry, stale], POLICY, NOW)
    assert counts["auto_approved"] == 1 and ledger.get(retry.action_id)["status"] == "approved"
    (approval,) = [a for a in ledger.table("approvals") if a["action_id"] == retry.action_id]
    assert (approval["approver"], approval["method"]) == ("policy:payment_retry", "policy")
    assert ledger.propose([], POLICY, NOW + timedelta(days=14))["expired"] == 1
    assert ledger.get(stale.action_id)["status"] == "expired"


# ---- the audit chain -----------------------------------------------------------------------------------
def chain(n: int) -> list[dict]:
    rows, prev = [], audit.GENESIS
    for seq in range(1, n + 1):
        row = {
            "seq": seq,
            "recorded_at": f"2026-11-01T00:00:0{seq}+00:00",
            "actor": "ana",
            "event": "approved",
            "action_id": f"act_{seq}",
            "details": {"reason": "ok"},
        }
        row["prev_hash"], row["row_hash"] = prev, audit.row_hash(prev, row)
        prev = row["row_hash"]
        rows.append(row)
    return rows


def test_row_hash_is_sha256_of_the_previous_hash_and_canonical_content():
    row = chain(1)[0]
    text = (
        '{"action_id":"act_1","actor":"ana","details":{"reason":"ok"},"event":"approved",'
        '"recorded_at":"2026-11-01T00:00:01+00:00","seq":1}'
    )
    assert row["row_hash"] == hashlib.sha256(("0" * 64 + text).encode()).hexdigest()


def test_verify_names_the_first_broken_row():
    rows = chain(5)
    assert audit.verify(rows).ok and audit.verify(rows).head_seq == 5
    edited = [dict(r) for r in rows]
    edited[2]["details"] = {"reason": "changed"}
    v = audit.verify(edited)
    assert (v.ok, v.first_broken_seq) == (False, 3) and "edited" in v.reason
    deleted = rows[:1] + rows[2:]
    v = audit.verify(deleted)
    assert (v.ok, v.first_broken_seq) == (False, 2) and "missing" in v.reason
    relinked = [dict(r) for r in rows]
    relinked[3]["prev_hash"] = "f" * 64
    assert audit.verify(relinked).first_broken_seq == 4
    heads = [{"seq": 5, "row_hash": rows[4]["row_hash"]}]
    assert audit.verify(rows, heads).ok
    v = audit.verify(rows[:4], heads)  # the tail was cut: still a valid chain, but the recorded head is gone
    assert (v.ok, v.first_broken_seq) == (False, 5) and "truncated" in v.reason


# ---- proposals from reconciliation findings ---------------------------------------------------------------
def findings(*rows: dict) -> pl.DataFrame:
    base = {
        "invoice_id": "in_1",
        "line_id": "il_1",
        "subscription_id": "sub_1",
        "subscription_item_id": "si_1",
        "price_id": "price_1",
        "meter_name": "api_calls",
        "line_type": "subscription",
        "description": "API calls",
        "currency": "usd",
        "period_start": datetime(2026, 9, 1, tzinfo=UTC),
        "period_end": datetime(2026, 10, 1, tzinfo=UTC),
        "is_proration": False,
        "quantity_billed": 1200,
        "quantity_expected": 1250,
        "expected_amount": 1250,
        "billed_amount": 1200,
        "difference": -50,
        "finding": "underbilled",
        "detail": None,
        "late_quantity": None,
        "late_amount": None,
        "usage_from": None,
        "usage_to": None,
        "event_count": 17,
        "customer_id": "cus_1",
        "invoice_number": "INV-1",
        "invoice_status": "paid",
        "platform": "stripe",
    }
    return pl.DataFrame([{**base, **r} for r in rows], infer_schema_length=None)


def test_each_finding_becomes_the_right_proposal():
    df = findings(
        {},  # underbilled by 50 cents
        {
            "line_id": "il_2",
            "billed_amount": 2400,
            "expected_amount": 1200,
            "finding": "overbilled",
            "detail": "duplicate of another line for the same item and period",
        },
        {"line_id": "il_3", "finding": "late_usage", "billed_amount": 1250, "late_quantity": 30, "late_amount": 30},
        {"line_id": None, "finding": "missing_line", "billed_amount": 0, "expected_amount": 999},
        {
            "line_id": None,
            "subscription_item_id": None,
            "finding": "unbilled_usage",
            "expected_amount": None,
            "billed_amount": 0,
            "description": "usage after the subscription ended: api_calls",
        },
        {"line_id": "il_4", "finding": "rounding", "billed_amount": 1249},
    )
    ps = proposals_from_reconciliation(df.filter(pl.col("finding") != "rounding"), POLICY, NOW)
    got = [(p.kind, p.target_id, p.params.get("amount"), p.params.get("reason")) for p in ps]
    assert got == [
        ("pending_invoice_item", "cus_1", 50, None),
        ("credit_note", "in_1", 1200, "duplicate"),
        ("pending_invoice_item", "cus_1", 30, None),
        ("pending_invoice_item", "cus_1", 999, None),
        ("support_case", "cus_1", None, None),
    ]
    assert all(p.proposer == RECONCILIATION_PROPOSER and not schema_violations(p) for p in ps)
    assert ps[0].expires_at - ps[0].created_at == timedelta(days=14)
    assert ps[0].evidence["events_query"].endswith("line_id IS NOT DISTINCT FROM 'il_1'")
    assert "billed 12.00 USD" in ps[0].rationale and "gives 12.50 USD" in ps[0].rationale
    again = proposals_from_reconciliation(df.filter(pl.col("finding") != "rounding"), POLICY, NOW + timedelta(days=1))
    assert [p.action_id for p in again] == [p.action_id for p in ps]  # the same finding, the same action


# ---- the router: the proposal's platform carries platform kinds --------------------------------------------
class _FakePlatform:
    """A platform that can only change metadata and knows one customer."""

    kinds = frozenset({"metadata_update"})

    def __init__(self, name: str):
        self.platform, self.applied = name, []

    def precheck(self, p):
        return []

    def read_back(self, p):
        return None

    def apply(self, p, key, audit_seq):
        from billing_ai.writeback.outcomes import Applied

        self.applied.append((p.action_id, key))
        return Applied(p.target_id)

    def contact(self, customer_id):
        from billing_ai.writeback.outcomes import Contact

        return Contact(email="x@example.invalid", email_opt_out=True) if customer_id == "cus_1" else None

    def leave_pointer(self, customer_id, key, mark):
        pass


def test_the_router_sends_each_proposal_to_its_own_platform(tmp_path):
    from billing_ai.actions.push import Executor, Sinks
    from billing_ai.writeback.outcomes import Permanent

    a, b = _FakePlatform("stripe"), _FakePlatform("recurly")
    ex = Executor({"stripe": a, "recurly": b}, Sinks("", "", tmp_path))

    def proposal(kind: str, platform: str, params: dict, target: str = "cus_1"):
        return Proposal(
            action_id=f"act_{kind}_{platform}",
            kind=kind,
            platform=platform,
            target_type="customer",
            target_id=target,
            params=params,
            rationale="r",
            confidence=0.9,
            proposer="t",
            created_at=NOW,
            expires_at=NOW + timedelta(days=1),
        )

    meta = proposal("metadata_update", "recurly", {"metadata": {"tier": "gold"}})
    assert ex.precheck(meta) == []
    ex.apply(meta, "key-1", 1)
    assert b.applied == [("act_metadata_update_recurly", "key-1")] and a.applied == []
    # a kind the platform cannot carry out is blocked with the reason, never sent
    item = proposal("pending_invoice_item", "recurly", {"amount": 500, "currency": "usd", "description": "x"})
    assert ex.precheck(item) == ["pending_invoice_item is not something recurly can carry out"]
    # sinks read the customer from the customer's platform: opted out -> blocked; unknown -> blocked
    mail = proposal(
        "customer_email",
        "stripe",
        {"template": "usage_anomaly_heads_up", "subject": "s", "variables": {"summary": "x"}},
    )
    assert ex.precheck(mail) == ["customer cus_1 opted out of e-mail"]
    ghost = proposal("customer_email", "stripe", mail.params, target="cus_ghost")
    assert ex.precheck(ghost) == ["customer cus_ghost does not exist"]
    with pytest.raises(Permanent, match="no writer is configured for platform 'zuora'"):
        ex.precheck(proposal("metadata_update", "zuora", {"metadata": {"a": "b"}}))


def test_http_failures_are_classified_once_for_every_plain_http_writer():
    from billing_ai.platforms.http import PlatformHTTPError, http_outcome
    from billing_ai.retry import RateLimited, Transient
    from billing_ai.writeback.outcomes import Permanent, Unknown, none_if_missing

    def failing(exc):
        def call():
            raise exc

        return call

    err = lambda status: PlatformHTTPError("acme", "POST", "/x", status, {"message": "no"})  # noqa: E731 -- a one-line local helper reads best inline
    with pytest.raises(PlatformHTTPError):  # configuration: the run fails, the action stays approved
        http_outcome(failing(err(401)))
    for exc in (err(503), RateLimited(2.0), Transient("ReadError")):
        with pytest.raises(Unknown):  # maybe applied: read back before any resend
            http_outcome(failing(exc))
    with pytest.raises(Unknown):  # Zuora: the same key still in flight
        http_outcome(failing(err(409)), unknown_statuses=frozenset({409}))
    with pytest.raises(Permanent) as refused:
        http_outcome(failing(err(422)), lambda body: body["message"])
    assert refused.value.status == 422 and str(refused.value) == "422 no"
    assert none_if_missing(lambda: http_outcome(failing(err(404)))) is None
    assert http_outcome(lambda: {"id": "x"}) == {"id": "x"}
