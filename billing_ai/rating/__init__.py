"""Rating: price plans as data, and the exact amounts they charge for usage.

Our own, independent re-implementation of Stripe's price models (per-unit,
package, graduated and volume tiers, flat tier fees, prorations, minimum
commitments). It must never import :mod:`billing_ai.sandbox`: the sandbox bills
with its own code, and agreement between the two is the cross-check.

* :mod:`billing_ai.rating.plans` -- :class:`PricePlan` / :class:`Tier`, validated
  on construction, and :func:`load_plans` from ``core.prices``/``core.price_tiers``.
* :mod:`billing_ai.rating.engine` -- pure functions on one line: :func:`rate`,
  :func:`prorate`, :func:`plan_change_proration`,
  :func:`minimum_commitment_true_up`.
* :mod:`billing_ai.rating.vectorized` -- the same rating for many rows at once in
  DuckDB SQL (:func:`rate_relation`, :func:`tier_breakdown_relation`).

Every amount is exact ``Decimal`` arithmetic in minor units, rounded once per
line by :func:`billing_ai.money.round_minor`.
"""

from billing_ai.rating.engine import (
    PlanChangeProration,
    ProratedAmount,
    RatedLine,
    TierCharge,
    minimum_commitment_true_up,
    plan_change_proration,
    prorate,
    prorated,
    proration_fraction,
    rate,
)
from billing_ai.rating.plans import PricePlan, Tier, load_plans

__all__ = [
    "PlanChangeProration",
    "PricePlan",
    "ProratedAmount",
    "RatedLine",
    "Tier",
    "TierCharge",
    "load_plans",
    "minimum_commitment_true_up",
    "plan_change_proration",
    "prorate",
    "prorated",
    "proration_fraction",
    "rate",
]
