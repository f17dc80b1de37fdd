"""Evaluation assets: outside the production graph, the only readers of ground truth."""

import json
from pathlib import Path

import dagster as dg

from billing_ai.evaluation.reconciliation import evaluate_reconciliation
from billing_ai.rating.assets import INVOICE_RECONCILIATION
from billing_ai.resources import WAREHOUSE_POOL, PipelineSettings, WarehouseResource


class GroundTruth(dg.ConfigurableResource):
    """The sandbox generator's truth folder (``data/world/truth``). Only evaluation assets get it."""

    path: str = "data/world/truth"

    def dir(self) -> Path:
        p = Path(self.path)
        if not p.exists():
            raise FileNotFoundError(f"no ground truth at {p}: evaluation needs a generated sandbox world")
        return p


@dg.asset(
    key=dg.AssetKey(["evaluation", "reconciliation_quality"]),
    deps=[INVOICE_RECONCILIATION],
    group_name="evaluation",
    kinds={"duckdb"},
    pool=WAREHOUSE_POOL,
    description="Recall per injected billing-error kind, precision, and disagreements on clean lines.",
)
def reconciliation_quality(warehouse: WarehouseResource, truth: GroundTruth) -> dg.MaterializeResult:
    with warehouse.connect(read_only=False) as con:
        result = evaluate_reconciliation(con, truth.dir())
    meta = {f"recall_{k}": round(v["recall"], 4) for k, v in result["per_kind"].items()}
    meta.update({f"truth_{k}": v["truth"] for k, v in result["per_kind"].items()})
    meta.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items() if k != "per_kind"})
    meta["full_result"] = dg.MetadataValue.json(json.loads(json.dumps(result)))
    return dg.MaterializeResult(metadata=meta)


@dg.asset(
    key=dg.AssetKey(["evaluation", "anomaly_quality"]),
    deps=[dg.AssetKey(["marts", "usage_anomalies"])],
    group_name="evaluation",
    kinds={"duckdb"},
    pool=WAREHOUSE_POOL,
    description="Precision, recall and F1 per injected anomaly kind, beside the naive 5x-daily-volume rule.",
)
def anomaly_quality(
    warehouse: WarehouseResource, truth: GroundTruth, settings: PipelineSettings
) -> dg.MaterializeResult:
    from billing_ai.evaluation.anomalies import evaluate_warehouse, format_report

    with warehouse.connect(read_only=False) as con:
        report = evaluate_warehouse(con, truth.dir(), settings.clock().now())
    meta = {}
    for side in ("ours", "naive"):
        for kind, figures in report[side].items():
            for m in ("precision", "recall", "f1"):
                meta[f"{side}_{kind}_{m}"] = figures[m]
    meta["f1_margin_over_naive"] = report["f1_margin_over_naive"]
    meta["report"] = dg.MetadataValue.md("```\n" + format_report(report) + "\n```")
    return dg.MaterializeResult(metadata=meta)


@dg.asset(
    key=dg.AssetKey(["evaluation", "forecast_quality"]),
    deps=[dg.AssetKey(["marts", "tier_projections"])],
    group_name="evaluation",
    kinds={"duckdb"},
    pool=WAREHOUSE_POOL,
    description="Forecast MASE beside SeasonalNaive, interval coverage, tier-crossing precision and recall, "
    "against what the world did after as_of.",
)
def forecast_quality(
    warehouse: WarehouseResource, truth: GroundTruth, settings: PipelineSettings
) -> dg.MaterializeResult:
    from billing_ai.evaluation.forecasts import evaluate_forecasts, format_forecast_report

    with warehouse.connect(read_only=False) as con:
        result = evaluate_forecasts(con, truth.dir(), settings.clock().now())
    return dg.MaterializeResult(
        metadata={
            **{k: v for k, v in result.items() if v is not None},
            "report": dg.MetadataValue.md("```\n" + format_forecast_report(result) + "\n```"),
        }
    )


EVALUATION_ASSETS = [reconciliation_quality, anomaly_quality, forecast_quality]

evaluation_job = dg.define_asset_job(
    "evaluation_job",
    selection=dg.AssetSelection.assets(*EVALUATION_ASSETS),
    description="Score the analytics against the sandbox world's ground truth (sandbox only).",
)
