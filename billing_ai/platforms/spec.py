"""What a billing platform contributes to ingestion, in one declaration per platform.

Every platform package (``billing_ai/platforms/<name>/``) exposes a ``SPEC``:
the raw objects its connector lands (``raw.<name>_<object>``: ``id``,
``payload`` JSON, ``landed_at``), which raw objects each ``core`` table reads,
and the Dagster resource that holds its connection settings. The core model is
the ``UNION ALL BY NAME`` of ``sql/core/<name>/<table>.sql`` over every
platform, so a platform that is not configured lands empty raw tables and adds
no rows.

Canonical ids (the contract with analysts, see docs/platforms.md): a ``core``
id is the merchant's own reference for the object (the id the product's usage
events carry), which each platform stores where it lets the merchant choose:
Stripe's object id, Chargebee's ``id``, Recurly's account ``code`` (and a
custom field where Recurly mints ids), Zuora's ``accountNumber`` /
``subscriptionNumber``. The platform's own id sits beside it in
``platform_*_id`` columns, so an analyst can always get back to the source
object, and two platforms that happen to mint the same id never collide.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PlatformSpec:
    name: str  # "stripe", "chargebee", ...
    raw_objects: tuple[str, ...]  # landed as raw.<name>_<object>
    core_sources: dict[str, tuple[str, ...]]  # core table -> raw objects its SQL reads (lineage)
    resource_key: str  # the Dagster resource with the connection settings
    id_fields: dict[str, str] = field(default_factory=dict)  # raw object -> payload field with its id ("id")
    kinds: frozenset[str] = frozenset()  # extra Dagster kinds tags for the UI (besides the platform's name)
    # raw object -> (parent raw object, payload field with the parent's id): refreshing a parent (one
    # invoice, after a webhook) replaces its children (that invoice's lines) too
    children: dict[str, tuple[str, str]] = field(default_factory=dict)
    # the connector has ``fetch_objects(kind, ids)``: a webhook can refresh one invoice or subscription
    fetches_single_objects: bool = False

    def raw_table(self, obj: str) -> str:
        return f"raw.{self.name}_{obj}"

    def id_field(self, obj: str) -> str:
        return self.id_fields.get(obj, "id")


# A connector's snapshot holds its objects under their raw names, and the objects it could not accept
# under QUARANTINE_KEY (land_raw puts them in core.quarantine with their reason).
QUARANTINE_KEY = "quarantine"


def quarantine_row(obj: str, record_key: str | None, reason: str, record, detail: str = "") -> dict:
    """What a connector returns, under ``snapshot["quarantine"]``, for an object it could not accept:
    the raw object name, its id if it has one, the reason, and the record as received."""
    return {
        "object": obj,
        "record_key": record_key,
        "reason": reason,
        "detail": detail,
        "record": record if isinstance(record, str) else json.dumps(record, default=str),
    }
