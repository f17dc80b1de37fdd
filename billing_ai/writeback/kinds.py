"""What an analytic may propose: one typed schema per action kind.

A proposal is an envelope (:class:`Proposal`: kind, target, parameters,
rationale, evidence, confidence, proposer, created/expires) whose ``params``
must validate against its kind's model below (unknown fields are refused).

Only ``params`` and the target drive what is executed. ``rationale`` and
``evidence`` are for the reviewer: they may carry customer-controlled text
(project names, metadata) and are stored and shown as text, never parsed,
templated into a request, or used to pick what runs.

Kinds follow what Stripe really supports: no notes API (a support case or an
internal message goes to a sink instead), at most 50 metadata keys per object,
finalized invoices cannot be edited (a corrective pending invoice item or a
credit note instead; a line description only on a draft invoice).
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from billing_ai.money import MINOR_UNITS

# The one metadata key we write on every object an action touched (the audit pointer).
AUDIT_POINTER_KEY = "billing_ai_audit_id"
RESERVED_METADATA_PREFIX = "billing_ai_"
STRIPE_METADATA_MAX_KEYS = 50
STRIPE_METADATA_KEY_MAX = 40
STRIPE_METADATA_VALUE_MAX = 500

SUPPORT_CASE_TAGS = (
    "Billing - Usage Anomaly",
    "Billing - Invoice Correction",
    "Billing - Payment Recovery",
    "Billing - Tier Crossing",
)
EMAIL_TEMPLATES = (
    "usage_anomaly_heads_up",
    "tier_crossing_notice",
    "upgrade_recommendation",
    "invoice_correction_notice",
)


# Subscription items and invoice lines may carry the platform's own id (Recurly mints them: see docs/platforms.md,
# Platforms): any id-shaped token is accepted, nothing that could reach a URL or a query as anything else.
PLATFORM_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _currency(value: str) -> str:
    if value not in MINOR_UNITS:
        raise ValueError(f"unknown currency {value!r} (fails closed)")
    return value


Currency = Annotated[str, AfterValidator(_currency)]


class MetadataUpdate(_Params):
    """Set (or, with an empty value, remove) metadata keys on a customer or subscription."""

    metadata: dict[str, str] = Field(min_length=1, max_length=20)

    @field_validator("metadata")
    @classmethod
    def _keys(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not key or len(key) > STRIPE_METADATA_KEY_MAX or "[" in key or "]" in key:
                raise ValueError(f"metadata key {key!r}: 1-{STRIPE_METADATA_KEY_MAX} characters, no brackets")
            if key.startswith(RESERVED_METADATA_PREFIX):
                raise ValueError(f"metadata key {key!r}: the {RESERVED_METADATA_PREFIX}* keys are reserved")
            if len(value) > STRIPE_METADATA_VALUE_MAX:
                raise ValueError(f"metadata value for {key!r} is over {STRIPE_METADATA_VALUE_MAX} characters")
        return v


class InvoiceLineDescription(_Params):
    """Rewrite a line's description on a *draft* invoice (finalized ones are immutable)."""

    line_id: str = Field(pattern=PLATFORM_ID)
    description: str = Field(min_length=1, max_length=500)


class PendingInvoiceItem(_Params):
    """A corrective charge (underbilled usage) that the customer's next invoice picks up."""

    amount: int = Field(gt=0)
    currency: Currency
    description: str = Field(min_length=1, max_length=500)
    subscription: str | None = Field(default=None, pattern=r"^sub_[A-Za-z0-9_]+$")


class CreditNote(_Params):
    """Credit an overbilled amount on an open or paid invoice."""

    amount: int = Field(gt=0)
    currency: Currency
    reason: Literal["duplicate", "order_change", "product_unsatisfactory"]
    memo: str = Field(min_length=1, max_length=500)


class TierUpgradeQuote(_Params):
    """A draft quote for moving a subscription item to a higher plan's price."""

    subscription: str = Field(pattern=r"^sub_[A-Za-z0-9_]+$")
    item: str = Field(pattern=PLATFORM_ID)
    from_price: str = Field(pattern=r"^price_[A-Za-z0-9_]+$")
    to_price: str = Field(pattern=r"^price_[A-Za-z0-9_]+$")
    currency: Currency
    projected_saving: int = Field(ge=0)  # minor units per period, from the customer's own projection
    prorated_change: int = 0  # net proration of switching the licensed fees now (minor units, may be < 0)
    to_plan: str | None = Field(default=None, max_length=50)


class SubscriptionChange(_Params):
    """Move one subscription item to another price (Stripe prorates licensed fees)."""

    item: str = Field(pattern=PLATFORM_ID)
    to_price: str = Field(pattern=r"^price_[A-Za-z0-9_]+$")
    proration_behavior: Literal["create_prorations", "none", "always_invoice"] = "create_prorations"


class PaymentRetry(_Params):
    """Attempt payment of an open invoice again."""

    amount_due: int = Field(gt=0)
    currency: Currency


class SupportCase(_Params):
    """Open a case in the support tool (the case sink)."""

    subject: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1, max_length=5000)
    tags: list[str] = Field(min_length=1)
    priority: Literal["low", "normal", "high"] = "normal"

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        bad = [t for t in v if t not in SUPPORT_CASE_TAGS]
        if bad:
            raise ValueError(f"unknown case tags {bad}; allowed: {list(SUPPORT_CASE_TAGS)}")
        return v


class ChatMessage(_Params):
    """An internal message (Slack-compatible webhook) to the account's success manager."""

    recipient: str = Field(min_length=1, max_length=100)
    text: str = Field(min_length=1, max_length=3000)


class CustomerEmail(_Params):
    """A templated e-mail to the customer's billing contact (address read from the platform at push time)."""

    template: Literal[EMAIL_TEMPLATES]  # type: ignore[valid-type]
    subject: str = Field(min_length=1, max_length=200)
    variables: dict[str, str] = Field(default_factory=dict, max_length=30)


# kind -> (params model, target types it accepts, where it is executed)
KINDS: dict[str, tuple[type[_Params], tuple[str, ...], str]] = {
    "metadata_update": (MetadataUpdate, ("customer", "subscription"), "platform"),
    "invoice_line_description": (InvoiceLineDescription, ("invoice",), "platform"),
    "pending_invoice_item": (PendingInvoiceItem, ("customer",), "platform"),
    "credit_note": (CreditNote, ("invoice",), "platform"),
    "tier_upgrade_quote": (TierUpgradeQuote, ("customer",), "platform"),
    "subscription_change": (SubscriptionChange, ("subscription",), "platform"),
    "payment_retry": (PaymentRetry, ("invoice",), "platform"),
    "support_case": (SupportCase, ("customer",), "case_sink"),
    "chat_message": (ChatMessage, ("customer",), "chat_sink"),
    "customer_email": (CustomerEmail, ("customer",), "email_sink"),
}

ID_PATTERNS = {
    "customer": r"^cus_[A-Za-z0-9_]+$",
    "subscription": r"^sub_[A-Za-z0-9_]+$",
    "invoice": r"^in_[A-Za-z0-9_]+$",
}


class Proposal(BaseModel):
    """The envelope every proposer writes (stored as one row of ``ops.proposed_actions``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action_id: str
    kind: str
    platform: str = "stripe"
    target_type: str
    target_id: str
    params: dict
    rationale: str = Field(max_length=10_000)
    evidence: dict = Field(default_factory=dict)
    confidence: float = Field(ge=0.0, le=1.0)
    proposer: str = Field(min_length=1, max_length=100)
    created_at: datetime
    expires_at: datetime

    @property
    def money(self) -> tuple[int, str] | None:
        """(amount in minor units, currency) for kinds that move money, else None."""
        p = self.params
        if "currency" in p and isinstance(p.get("amount", p.get("amount_due")), int):
            return int(p.get("amount", p.get("amount_due"))), str(p["currency"])
        return None

    def typed_params(self) -> _Params:
        return KINDS[self.kind][0].model_validate(self.params)

    def sink(self) -> str:
        return KINDS[self.kind][2]


def action_id(proposer: str, kind: str, dedup_key: str) -> str:
    """Deterministic id: the same finding proposed again maps to the same action (no duplicates)."""
    digest = hashlib.sha256(f"{proposer}\x1f{kind}\x1f{dedup_key}".encode()).hexdigest()[:20]
    return f"act_{digest}"


def schema_violations(p: Proposal) -> list[str]:
    """Everything wrong with a proposal's shape: kind, target and params against the kind's schema."""
    if p.kind not in KINDS:
        return [f"unknown kind {p.kind!r}; known: {sorted(KINDS)}"]
    model, targets, _ = KINDS[p.kind]
    out = []
    if p.target_type not in targets:
        out.append(f"{p.kind} targets {list(targets)}, not {p.target_type!r}")
    pattern = ID_PATTERNS.get(p.target_type)
    if pattern and not re.match(pattern, p.target_id):
        out.append(f"target id {p.target_id!r} is not a {p.target_type} id")
    if p.expires_at <= p.created_at:
        out.append("expires_at is not after created_at")
    try:
        model.model_validate(p.params)
    except ValidationError as e:
        out += [f"params.{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
    return out


def json_schemas() -> dict[str, dict]:
    """The JSON schema of each kind's params (documentation, and for other tools)."""
    return {kind: model.model_json_schema() for kind, (model, _, _) in KINDS.items()}


def params_json(p: Proposal) -> str:
    return json.dumps(p.params, sort_keys=True)
