"""World configuration, ids, calendar helpers and the on-disk layout.

A world is written to ``<world_dir>``:

* ``world.json``       the config, ``as_of`` and a fingerprint
* ``platform/*.parquet`` platform-neutral entities the sandbox facades serve
* ``truth/*.parquet``  ground truth (injected faults, departments, payment
                       outcomes, usage after ``as_of``). Only tests and assets
                       in the evaluation group read this folder.

Product usage event files go to the inbox (``data/inbox/usage`` by default),
one file per landing day, rotating through Parquet, NDJSON and CSV.
"""

from __future__ import annotations

import calendar
import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
DEFAULT_AS_OF = "2026-11-01T06:00:00+00:00"
# bump when the generator or the sandbox's billing changes what a config produces: a world on disk
# with another version is regenerated rather than reused
GENERATOR_VERSION = 7


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 7
    customers: int = 200
    days: int = 120  # usage history before as_of
    future_days: int = 35  # simulated after as_of, kept only in truth/
    as_of: str = DEFAULT_AS_OF
    # injected faults (fixed magnitudes, see generator)
    spike_rate: float = 0.08  # share of metered series drawing a spike (kept only where observable)
    drop_rate: float = 0.06  # share of metered series drawing a drop (kept only where observable)
    duplicate_rate: float = 0.005  # share of events re-sent with a new id
    late_rate: float = 0.003  # share of events landing 1-10 days late
    zero_usage_rate: float = 0.03  # share of customers going silent
    upgrade_rate: float = 0.15
    downgrade_rate: float = 0.05
    cancel_rate: float = 0.08
    usage_after_cancel_rate: float = 0.5  # of cancelled subscriptions
    billing_error_rate: float = 0.02  # per invoice and error kind: the platform bills wrongly
    events_scale: float = 1.0  # multiplies event counts (bench worlds)
    platforms: dict = field(default_factory=lambda: {"stripe": 1.0})

    def as_of_dt(self) -> datetime:
        dt = datetime.fromisoformat(self.as_of)
        return dt if dt.tzinfo else dt.replace(tzinfo=UTC)

    def start_dt(self) -> datetime:
        a = self.as_of_dt()
        return datetime(a.year, a.month, a.day, tzinfo=UTC) - timedelta(days=self.days)

    def fingerprint(self) -> str:
        body = {**asdict(self), "generator_version": GENERATOR_VERSION}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> dict:
        return {**asdict(self), "fingerprint": self.fingerprint()}

    @classmethod
    def from_json(cls, d: dict) -> WorldConfig:
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**d)


def make_id(prefix: str, seed: int, *parts: object) -> str:
    """Deterministic Stripe-looking id: ``prefix_`` + 14 base62 chars."""
    h = int.from_bytes(hashlib.sha256(f"{seed}|{prefix}|{'|'.join(map(str, parts))}".encode()).digest()[:12])
    chars = []
    for _ in range(14):
        h, r = divmod(h, 62)
        chars.append(BASE62[r])
    return f"{prefix}_{''.join(chars)}"


def add_months(dt: datetime, n: int, anchor_day: int | None = None) -> datetime:
    """``dt`` plus ``n`` calendar months, keeping the anchor day (clamped to
    the month's last day), as billing cycle anchors do."""
    day = anchor_day or dt.day
    m = dt.month - 1 + n
    y, m = dt.year + m // 12, m % 12 + 1
    return dt.replace(year=y, month=m, day=min(day, calendar.monthrange(y, m)[1]))


def ts(dt: datetime) -> int:
    return int(dt.timestamp())


@dataclass(frozen=True)
class WorldPaths:
    world_dir: Path
    inbox_dir: Path

    @property
    def platform(self) -> Path:
        return self.world_dir / "platform"

    @property
    def truth(self) -> Path:
        return self.world_dir / "truth"

    @property
    def manifest(self) -> Path:
        return self.world_dir / "world.json"


def load_config(world_dir: Path) -> WorldConfig:
    return WorldConfig.from_json(json.loads((Path(world_dir) / "world.json").read_text()))


def stored_fingerprint(world_dir: Path) -> str | None:
    """The fingerprint the world on disk was written with (None if there is none)."""
    manifest = Path(world_dir) / "world.json"
    if not manifest.exists():
        return None
    return json.loads(manifest.read_text()).get("fingerprint")
