"""The synthetic world's price catalog, as data.

Three plans (starter, growth, scale) in USD, EUR and JPY. Each plan has a
licensed platform fee, licensed seats and three metered components, and
together they cover every price model the world uses:

* per-unit with a decimal unit price (storage, up to 12 decimal places)
* package pricing, rounded up per package (starter API calls per 1,000)
* graduated tiers with a zero-priced first tier (an included allowance)
* volume tiers, with a flat fee on a tier
* flat licensed fees and per-seat licensed prices (prorated on plan changes)
* minimum commitments (recorded in subscription metadata, trued up by an
  invoice item)

Unit amounts are strings in the currency's minor unit, as Stripe's
``unit_amount_decimal`` is. ``None`` as ``up_to`` means "inf".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

PLANS = ("starter", "growth", "scale")
CURRENCIES = ("usd", "eur", "jpy")
METERED = ("api_calls", "storage_gb_hours", "compute_seconds")
LICENSED = ("platform", "seats")

# Meter name -> (display name, Stripe event name, aggregation)
METERS: dict[str, tuple[str, str, str]] = {
    "api_calls": ("API calls", "api_calls", "sum"),
    "storage_gb_hours": ("Storage (GB-hours)", "storage_gb_hours", "sum"),
    "compute_seconds": ("Compute (seconds)", "compute_seconds", "sum"),
}


@dataclass(frozen=True)
class Tier:
    up_to: int | None  # inclusive upper bound in units; None = inf
    unit_amount_decimal: str  # minor units per unit
    flat_amount: int = 0  # minor units for reaching the tier


@dataclass(frozen=True)
class PriceSpec:
    component: str  # platform | seats | api_calls | storage_gb_hours | compute_seconds
    usage_type: str  # licensed | metered
    billing_scheme: str  # per_unit | tiered
    unit_amount_decimal: str | None = None
    tiers_mode: str | None = None  # graduated | volume
    tiers: tuple[Tier, ...] = ()
    divide_by: int | None = None  # package pricing (transform_quantity)
    round: str | None = None  # up | down
    meter: str | None = None
    extra: dict = field(default_factory=dict)


def _usd_plans() -> dict[str, list[PriceSpec]]:
    return {
        "starter": [
            PriceSpec("platform", "licensed", "per_unit", "4900"),
            PriceSpec("seats", "licensed", "per_unit", "1000"),
            # package: 50 cents per started block of 1,000 calls
            PriceSpec("api_calls", "metered", "per_unit", "50", divide_by=1000, round="up", meter="api_calls"),
            PriceSpec("storage_gb_hours", "metered", "per_unit", "0.03", meter="storage_gb_hours"),
            PriceSpec(
                "compute_seconds",
                "metered",
                "tiered",
                tiers_mode="graduated",
                meter="compute_seconds",
                tiers=(Tier(3600, "0"), Tier(None, "0.02")),
            ),
        ],
        "growth": [
            PriceSpec("platform", "licensed", "per_unit", "49900"),
            PriceSpec("seats", "licensed", "per_unit", "800"),
            # graduated with an included allowance (zero-priced first tier)
            PriceSpec(
                "api_calls",
                "metered",
                "tiered",
                tiers_mode="graduated",
                meter="api_calls",
                tiers=(Tier(100_000, "0"), Tier(1_000_000, "0.05"), Tier(None, "0.03")),
            ),
            PriceSpec("storage_gb_hours", "metered", "per_unit", "0.025", meter="storage_gb_hours"),
            PriceSpec(
                "compute_seconds",
                "metered",
                "tiered",
                tiers_mode="volume",
                meter="compute_seconds",
                tiers=(Tier(100_000, "0.015"), Tier(1_000_000, "0.0125"), Tier(None, "0.01")),
            ),
        ],
        "scale": [
            PriceSpec("platform", "licensed", "per_unit", "199900"),
            PriceSpec("seats", "licensed", "per_unit", "600"),
            # volume tiers with a flat fee on the first tier
            PriceSpec(
                "api_calls",
                "metered",
                "tiered",
                tiers_mode="volume",
                meter="api_calls",
                tiers=(Tier(1_000_000, "0.04", 2500), Tier(10_000_000, "0.025"), Tier(None, "0.015")),
            ),
            # a 12-decimal unit price
            PriceSpec("storage_gb_hours", "metered", "per_unit", "0.018333333333", meter="storage_gb_hours"),
            PriceSpec(
                "compute_seconds",
                "metered",
                "tiered",
                tiers_mode="graduated",
                meter="compute_seconds",
                tiers=(Tier(360_000, "0", 0), Tier(3_600_000, "0.008"), Tier(None, "0.006")),
            ),
        ],
    }


def _scale(spec: PriceSpec, factor: Decimal) -> PriceSpec:
    """The same price in another currency: amounts times ``factor`` (exact)."""

    def s(x: str | None) -> str | None:
        if x is None:
            return None
        # a platform stores at most 12 decimal places of a unit price
        v = (Decimal(x) * factor).quantize(Decimal("1e-12")).normalize()
        return format(v, "f")

    tiers = tuple(Tier(t.up_to, s(t.unit_amount_decimal), int(Decimal(t.flat_amount) * factor)) for t in spec.tiers)
    return PriceSpec(
        spec.component,
        spec.usage_type,
        spec.billing_scheme,
        s(spec.unit_amount_decimal),
        spec.tiers_mode,
        tiers,
        spec.divide_by,
        spec.round,
        spec.meter,
    )


# JPY has no minor unit: 1 US cent is about 1.5 yen.
_FACTORS = {"usd": Decimal(1), "eur": Decimal("0.92"), "jpy": Decimal("1.5")}


def catalog() -> dict[tuple[str, str], list[PriceSpec]]:
    """(plan, currency) -> the plan's prices."""
    usd = _usd_plans()
    return {(plan, cur): [_scale(p, _FACTORS[cur]) for p in specs] for cur in CURRENCIES for plan, specs in usd.items()}


# Minimum commitment per billing period, in minor units, for enterprise
# subscriptions on the scale plan (trued up by an invoice item).
MIN_COMMITMENT = {"usd": 500_000, "eur": 460_000, "jpy": 750_000}
