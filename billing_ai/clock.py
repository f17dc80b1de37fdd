"""The pipeline's one clock.

Every "now" (current billing period, freshness, tier position, late events)
comes from a :class:`Clock`, never from ``datetime.now()`` directly, so a run is
reproducible and a test can move time. On the sandbox the clock is the world's
``as_of`` instant; in production it is the wall clock unless pinned.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime

AS_OF_ENV = "BILLING_AI_AS_OF"

# The first event day the pipeline covers (the first usage partition, the start of the landing window).
# Events before it are quarantined as too old rather than silently dropped. The default covers the
# sandbox's default world; production sets BILLING_AI_PARTITION_START.
PARTITION_START = os.environ.get("BILLING_AI_PARTITION_START", "2026-06-01")


def parse_instant(text: str) -> datetime:
    """ISO-8601 instant; a naive value is taken as UTC."""
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Clock:
    """A clock pinned to ``as_of``, or the wall clock when ``as_of`` is None."""

    as_of: datetime | None = None

    def now(self) -> datetime:
        if self.as_of is not None:
            return self.as_of.astimezone(UTC)
        return datetime.now(UTC)  # the single sanctioned wall-clock read

    @classmethod
    def from_setting(cls, value: str | None) -> Clock:
        """Build from a setting: an ISO instant, "wall", or empty (env, then wall)."""
        value = (value or os.environ.get(AS_OF_ENV, "")).strip()
        if not value or value.lower() == "wall":
            return cls(None)
        return cls(parse_instant(value))
