"""Evaluation assets: outside the production graph, the only readers of ground truth."""

import json
from pathlib import Path

import dagster as dg

from billing_ai.evaluation.reconciliation import evaluate_reconciliation
from billing_ai.rating.assets import INVOICE_RECONCILIATION
from billing_ai.resources import WAREHOUSE_POOL, WarehouseResource


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


EVALUATION_ASSETS = [reconciliation_quality]
