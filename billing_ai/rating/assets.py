"""Assets over the rating engine: rated usage, tier positions, invoice reconciliation."""

import dagster as dg

from billing_ai import warehouse as wh
from billing_ai.metadata import check_owners, markdown_preview
from billing_ai.rating.reconcile import FINDINGS, ReconcileSettings, build_rating_marts
from billing_ai.resources import WAREHOUSE_POOL, PipelineSettings, WarehouseResource

RATED_USAGE = dg.AssetKey(["marts", "rated_usage"])
TIER_POSITIONS = dg.AssetKey(["marts", "tier_positions"])
INVOICE_RECONCILIATION = dg.AssetKey(["marts", "invoice_reconciliation"])
RECONCILIATION_EVENTS = dg.AssetKey(["marts", "reconciliation_events"])
CORE_DEPS = [
    dg.AssetKey(["core", t])
    for t in (
        "usage_events",
        "subscriptions",
        "subscription_items",
        "prices",
        "price_tiers",
        "invoices",
        "invoice_lines",
    )
]


class ReconciliationTolerance(dg.Config):
    """What the blocking check tolerates before it stops everything downstream.

    Isolated billing errors are findings for people to act on; a large share
    of mismatched lines or money means something systemic (a price not synced,
    a broken rating rule) and nothing downstream should act on it."""

    max_mismatched_line_share: float = 0.05
    max_difference_share: float = 0.05  # sum |difference| / sum |billed|


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            RATED_USAGE,
            deps=CORE_DEPS,
            group_name="rating",
            kinds={"duckdb", "sql"},
            description="Per metered subscription item and billing period: usage window, quantities "
            "(total, on time, late), event count, our amount and per-tier breakdown.",
        ),
        dg.AssetSpec(
            TIER_POSITIONS,
            deps=[RATED_USAGE],
            group_name="rating",
            kinds={"duckdb", "sql"},
            description="Per current metered item, now: tier, units used, units to the next tier, "
            "amount so far this period.",
        ),
        dg.AssetSpec(
            INVOICE_RECONCILIATION,
            deps=[RATED_USAGE],
            group_name="rating",
            kinds={"duckdb", "sql"},
            description="Every platform invoice line beside our recomputation, with a finding.",
        ),
        dg.AssetSpec(
            RECONCILIATION_EVENTS,
            deps=[INVOICE_RECONCILIATION, dg.AssetKey(["core", "usage_events"])],
            group_name="rating",
            kinds={"duckdb", "sql"},
            description="A view: the usage events behind each reconciliation row, for tracing a finding to events.",
        ),
    ],
    check_specs=[
        dg.AssetCheckSpec(
            "reconciliation_within_tolerance",
            asset=INVOICE_RECONCILIATION,
            blocking=True,
            description="Mismatched lines and money stay under the configured shares; above them something "
            "systemic is wrong and downstream actions must not run.",
            metadata=check_owners("rating"),
        )
    ],
    pool=WAREHOUSE_POOL,
)
def rating_marts(
    context: dg.AssetExecutionContext,
    config: ReconciliationTolerance,
    warehouse: WarehouseResource,
    settings: PipelineSettings,
):
    now = settings.clock().now()
    with warehouse.connect() as con:
        counts = build_rating_marts(con, now, ReconcileSettings())
        by_finding = dict(wh.run(con, "SELECT finding, count(*) FROM marts.invoice_reconciliation GROUP BY 1"))
        ((lines, mismatched, diff, billed),) = wh.run(
            con,
            """
            SELECT count(*) FILTER (WHERE line_id IS NOT NULL),
                   count(*) FILTER (WHERE finding IN ('underbilled', 'overbilled', 'missing_line')),
                   coalesce(sum(abs(difference)) FILTER (WHERE finding IN ('underbilled', 'overbilled',
                                                                           'missing_line')), 0),
                   coalesce(sum(abs(billed_amount)), 0)
            FROM marts.invoice_reconciliation""",
        )
        by_currency = con.sql("""SELECT currency, finding, count(*) AS lines, sum(difference) AS difference
                                 FROM marts.invoice_reconciliation WHERE finding NOT IN ('match')
                                 GROUP BY ALL ORDER BY ALL""").pl()
        positions = con.sql("SELECT * FROM marts.tier_positions ORDER BY units_to_next_tier NULLS LAST LIMIT 5").pl()
    line_share = mismatched / lines if lines else 0.0
    money_share = float(diff) / float(billed) if billed else 0.0
    passed = line_share <= config.max_mismatched_line_share and money_share <= config.max_difference_share
    yield dg.MaterializeResult(asset_key=RATED_USAGE, metadata={"dagster/row_count": counts["rated_usage"]})
    yield dg.MaterializeResult(
        asset_key=TIER_POSITIONS,
        metadata={"dagster/row_count": counts["tier_positions"], "closest_to_next_tier": markdown_preview(positions)},
    )
    yield dg.MaterializeResult(
        asset_key=INVOICE_RECONCILIATION,
        metadata={
            "dagster/row_count": counts["invoice_reconciliation"],
            **{f"findings_{f}": by_finding.get(f, 0) for f in FINDINGS},
            # amounts are per currency: never summed across currencies
            "by_currency": markdown_preview(by_currency, rows=30),
        },
    )
    yield dg.MaterializeResult(asset_key=RECONCILIATION_EVENTS)  # a view over the rows above: always current
    yield dg.AssetCheckResult(
        asset_key=INVOICE_RECONCILIATION,
        check_name="reconciliation_within_tolerance",
        passed=passed,
        metadata={
            "mismatched_lines": mismatched,
            "lines": lines,
            "mismatched_line_share": round(line_share, 4),
            "difference_share": round(money_share, 4),
            "max_mismatched_line_share": config.max_mismatched_line_share,
            "max_difference_share": config.max_difference_share,
        },
    )
