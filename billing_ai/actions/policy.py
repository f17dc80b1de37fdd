"""Who may approve what: business-rule limits and approval rights, from a TOML file.

The default policy (``policy.toml`` beside this module, documented there) is
overridden by ``BILLING_AI_ACTION_POLICY``. Everything here is pure: given a
proposal, its approvals so far and the clock, it says what is wrong or what
the next status is. The ledger applies the verdicts.
"""

from __future__ import annotations

import os
import tomllib
from datetime import datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from billing_ai.money import format_minor
from billing_ai.writeback.kinds import KINDS, Proposal, schema_violations

POLICY_ENV = "BILLING_AI_ACTION_POLICY"
DEFAULT_POLICY = Path(__file__).with_name("policy.toml")
POLICY_ACTOR_PREFIX = "policy:"


class KindPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    roles: list[str] = Field(min_length=1)
    ttl_days: int = Field(default=14, gt=0)
    max_amount: dict[str, int] | None = None
    two_approvers_from: dict[str, int] | None = None
    approvals_required: int = Field(default=1, ge=1, le=3)
    auto_approve_below: dict[str, int] | None = None


class Approver(BaseModel):
    model_config = ConfigDict(extra="forbid")

    roles: list[str] = Field(min_length=1)
    max_amount: dict[str, int] | None = None  # None: no money rights at all


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kinds: dict[str, KindPolicy]
    approvers: dict[str, Approver] = Field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None = None) -> Policy:
        path = Path(path or os.environ.get(POLICY_ENV) or DEFAULT_POLICY)
        with open(path, "rb") as f:
            policy = cls.model_validate(tomllib.load(f))
        missing = sorted(set(KINDS) - set(policy.kinds))
        if missing:
            raise ValueError(f"{path}: no policy for kinds {missing} (every kind needs one)")
        return policy

    def ttl(self, kind: str) -> timedelta:
        return timedelta(days=self.kinds[kind].ttl_days)

    # ---- business rules (before approval, and again at push time) -----------------------
    def violations(self, p: Proposal) -> list[str]:
        """Schema and business-rule violations: a proposal with any cannot be approved."""
        out = schema_violations(p)
        if out:
            return out
        money = p.money
        rule = self.kinds[p.kind]
        if money and rule.max_amount is not None:
            amount, currency = money
            limit = rule.max_amount.get(currency)
            if limit is None:
                out.append(f"the policy sets no {p.kind} limit for {currency}")
            elif amount > limit:
                out.append(
                    f"{format_minor(amount, currency)} is over the {p.kind} limit of {format_minor(limit, currency)}"
                )
        return out

    def required_approvals(self, p: Proposal) -> int:
        rule = self.kinds[p.kind]
        need = rule.approvals_required
        money = p.money
        if money and rule.two_approvers_from is not None:
            threshold = rule.two_approvers_from.get(money[1])
            if threshold is None or money[0] >= threshold:  # unknown currency: the stricter path
                need = max(need, 2)
        return need

    def auto_approves(self, p: Proposal) -> bool:
        """Low-risk, high-volume actions the policy approves itself (recorded as such)."""
        rule = self.kinds[p.kind]
        money = p.money
        if rule.auto_approve_below is None or money is None or self.violations(p):
            return False
        limit = rule.auto_approve_below.get(money[1])
        return limit is not None and money[0] < limit and self.required_approvals(p) == 1

    # ---- approval rights -------------------------------------------------------------------
    def refusals(
        self, p: Proposal, status: str, approved_by: list[str], approver: str, decision: str, now: datetime
    ) -> list[str]:
        """Why ``approver`` may not record ``decision`` ("approve" or "reject") on ``p`` now; [] if allowed."""
        out: list[str] = []
        if status not in ("proposed", "partially_approved"):
            return [f"the action is {status}, not awaiting approval"]
        if now >= p.expires_at:
            return [f"the proposal expired at {p.expires_at.isoformat()}"]
        if approver.startswith(POLICY_ACTOR_PREFIX):
            return [f"{approver!r} is reserved for policy approvals"]
        person = self.approvers.get(approver)
        if person is None:
            return [f"{approver!r} is not a configured approver"]
        roles = self.kinds[p.kind].roles
        if not set(person.roles) & set(roles):
            out.append(f"{approver!r} (roles {person.roles}) may not decide {p.kind} (needs one of {roles})")
        if decision == "reject":
            return out
        if approver == p.proposer:
            out.append("the proposer may not approve its own action")
        if approver in approved_by:
            out.append(f"{approver!r} has already approved this action; a second approver must be someone else")
        out += self.violations(p)
        money = p.money
        if money:
            amount, currency = money
            cap = (person.max_amount or {}).get(currency)
            if cap is None:
                out.append(f"{approver!r} may not approve amounts in {currency}")
            elif amount > cap:
                out.append(
                    f"{format_minor(amount, currency)} is over {approver!r}'s approval limit of "
                    f"{format_minor(cap, currency)}"
                )
        return out
