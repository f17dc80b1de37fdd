"""The action ledger as a Dagster resource: what every proposing asset and the approval and push jobs open.

Kept apart from the push wiring (``actions/assets.py``, which holds the platform writers) so that an
analytics asset that proposes depends on the ledger and the policy only, never on a platform.
"""

import dagster as dg

from billing_ai.actions.ledger import Ledger
from billing_ai.actions.policy import Policy


class ActionsResource(dg.ConfigurableResource):
    """The action ledger (SQLite, outside the warehouse), the approval policy and the chain-head file."""

    ledger_path: str = "data/ops/actions.sqlite"
    policy_path: str = ""  # empty: BILLING_AI_ACTION_POLICY, then the packaged default
    heads_file: str = "data/ops/audit_heads.jsonl"

    def ledger(self) -> Ledger:
        return Ledger(self.ledger_path)

    def policy(self) -> Policy:
        return Policy.load(self.policy_path or None)
