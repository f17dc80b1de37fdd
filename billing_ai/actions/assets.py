"""Dagster wiring for the write-back: proposals, the ops tables, approvals, the sensor and the push job.

* ``ledger/reconciliation_proposals`` (nightly, pooled): findings -> proposals in the ledger.
* ``ops/*`` (pooled): the warehouse copy of the ledger for analysts, with a blocking
  check that the audit chain verifies.
* ``approve_actions_job``: approve or reject from the launchpad (writes the ledger only,
  so it works while a nightly run holds the warehouse).
* ``push_approved_actions`` sensor -> ``push_action_job``: one run per approved action,
  keyed by the action id.
* ``ops_sync_on_ledger_change`` sensor -> ``ops_sync_job``: takes approvals and push
  outcomes into the warehouse in the next pooled step.
"""

import json
from pathlib import Path

import dagster as dg
import polars as pl

from billing_ai import warehouse as wh
from billing_ai.actions import audit
from billing_ai.actions.ledger import Ledger, read_heads
from billing_ai.actions.proposers import FINDINGS_SQL, proposals_from_reconciliation
from billing_ai.actions.push import Executor, Sinks, push_action
from billing_ai.actions.resources import ActionsResource
from billing_ai.ingestion.publish import PUBLISHED_WAREHOUSE
from billing_ai.metadata import check_owners, markdown_preview
from billing_ai.platforms.chargebee.writer import ChargebeeExecutor, ChargebeeWriter
from billing_ai.platforms.recurly.writer import RecurlyExecutor, RecurlyWriter
from billing_ai.platforms.stripe.writer import StripeExecutor, StripeWriter
from billing_ai.platforms.zuora.writer import ZuoraExecutor
from billing_ai.resources import RUN_RETRIES, WAREHOUSE_POOL, PipelineSettings, WarehouseResource


class PushResource(dg.ConfigurableResource):
    """Where approved actions go. Secrets (the write key, the chat webhook URL) only through EnvVar."""

    stripe_api_key: str = dg.EnvVar("STRIPE_PUSH_API_KEY")
    stripe_api_base: str = "https://api.stripe.com"
    # the other platforms: an empty base means no writer there (the router blocks its proposals); keys are
    # <PLATFORM>_PUSH_* EnvVars when set
    chargebee_api_base: str = ""
    chargebee_api_key: str = ""
    recurly_api_base: str = ""
    recurly_api_key: str = ""
    zuora_api_base: str = ""
    zuora_client_id: str = ""
    zuora_client_secret: str = ""
    case_url: str = "http://127.0.0.1:12111/sinks/cases"
    chat_webhook_url: str = dg.EnvVar("BILLING_AI_CHAT_WEBHOOK_URL")
    outbox_dir: str = "data/outbox"

    def executor(self) -> Executor:
        platforms = {"stripe": StripeExecutor(StripeWriter(self.stripe_api_key, self.stripe_api_base))}
        if self.chargebee_api_base:
            platforms["chargebee"] = ChargebeeExecutor(ChargebeeWriter(self.chargebee_api_key, self.chargebee_api_base))
        if self.recurly_api_base:
            platforms["recurly"] = RecurlyExecutor(RecurlyWriter(self.recurly_api_key, self.recurly_api_base))
        if self.zuora_api_base:
            platforms["zuora"] = ZuoraExecutor(self.zuora_api_base, self.zuora_client_id, self.zuora_client_secret)
        return Executor(
            platforms,
            Sinks(case_url=self.case_url, chat_webhook_url=self.chat_webhook_url, outbox_dir=Path(self.outbox_dir)),
        )


# ---- proposals (nightly) ---------------------------------------------------------------------------
@dg.asset(
    key=["ledger", "reconciliation_proposals"],
    deps=[
        dg.AssetKey(["marts", "invoice_reconciliation"]),
        dg.AssetKey(["core", "subscriptions"]),
        dg.AssetKey(["core", "invoices"]),
    ],
    group_name="actions",
    pool=WAREHOUSE_POOL,
    description="Each reconciliation finding that needs money corrected, proposed in the action ledger "
    "(credit note, pending invoice item or support case); policy approvals applied.",
)
def reconciliation_proposals(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    settings: PipelineSettings,
    actions: ActionsResource,
) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        findings = con.sql(FINDINGS_SQL).pl()
    policy, ledger, now = actions.policy(), actions.ledger(), settings.clock().now()
    proposals = proposals_from_reconciliation(findings, policy, now)
    counts = ledger.propose(proposals, policy, now)
    ledger.set_meta("clock", settings.as_of or "wall")  # so the CLI judges expiry by the same clock
    ledger.record_head(Path(actions.heads_file), context.run.run_id)
    preview = (
        pl.DataFrame(
            [
                {
                    "action_id": p.action_id,
                    "kind": p.kind,
                    "target": p.target_id,
                    "amount": (p.money or (None, None))[0],
                    "currency": (p.money or (None, None))[1],
                    "rationale": p.rationale,
                }
                for p in proposals
            ]
        )
        if proposals
        else pl.DataFrame()
    )
    return dg.MaterializeResult(
        metadata={
            "findings": len(findings),
            "proposals": len(proposals),
            **{f"ledger_{k}": v for k, v in counts.items()},
            "by_kind": dg.MetadataValue.json(
                dict(sorted(pl.Series([p.kind for p in proposals], dtype=pl.String).value_counts().rows()))
            )
            if proposals
            else {},
            "preview": markdown_preview(preview),
        }
    )


# ---- the warehouse copy of the ledger ----------------------------------------------------------------
# every asset that writes proposals into the ledger: the ops copy is taken after all of them
PROPOSERS = [
    dg.AssetKey(["ledger", "reconciliation_proposals"]),
    dg.AssetKey(["ledger", "forecast_proposals"]),
    dg.AssetKey(["ledger", "anomaly_proposals"]),
]

OPS_TABLES = {
    "proposed_actions": "actions",
    "approvals": "approvals",
    "action_attempts": "attempts",
    "audit_log": "audit_log",
}

OPS_DDL = {
    "proposed_actions": """CREATE TABLE IF NOT EXISTS ops.proposed_actions (
        action_id VARCHAR PRIMARY KEY, kind VARCHAR, platform VARCHAR, target_type VARCHAR, target_id VARCHAR,
        params JSON, rationale VARCHAR, evidence JSON, confidence DOUBLE, proposer VARCHAR,
        created_at TIMESTAMPTZ, expires_at TIMESTAMPTZ, amount BIGINT, currency VARCHAR,
        required_approvals INTEGER, violations JSON, status VARCHAR, status_reason VARCHAR,
        platform_object VARCHAR, updated_at TIMESTAMPTZ)""",
    "approvals": """CREATE TABLE IF NOT EXISTS ops.approvals (
        approval_id BIGINT PRIMARY KEY, action_id VARCHAR, approver VARCHAR, decision VARCHAR, reason VARCHAR,
        method VARCHAR, recorded_at TIMESTAMPTZ, audit_seq BIGINT)""",
    "action_attempts": """CREATE TABLE IF NOT EXISTS ops.action_attempts (
        attempt_id BIGINT PRIMARY KEY, action_id VARCHAR, attempt INTEGER, idempotency_key VARCHAR,
        started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, outcome VARCHAR, platform_object VARCHAR,
        response JSON, error VARCHAR)""",
    "audit_log": """CREATE TABLE IF NOT EXISTS ops.audit_log (
        seq BIGINT PRIMARY KEY, recorded_at VARCHAR, actor VARCHAR, event VARCHAR, action_id VARCHAR,
        details VARCHAR, prev_hash VARCHAR, row_hash VARCHAR)""",
}
# recorded_at and details of the audit log stay text: they are hashed exactly as written


def copy_ledger_to_warehouse(con, ledger: Ledger) -> dict[str, int]:
    """Replace the ops tables with the ledger's contents, in one transaction."""
    counts = {}
    wh.run(con, "CREATE SCHEMA IF NOT EXISTS ops")
    with wh.transaction(con):
        for table, source in OPS_TABLES.items():
            wh.run(con, OPS_DDL[table])
            rows = ledger.table(source)
            wh.run(con, f"DELETE FROM ops.{table}")
            if rows:
                wh.write_frame(con, f"ops.{table}", pl.DataFrame(rows, infer_schema_length=None))
            counts[table] = len(rows)
    return counts


def verify_warehouse_audit_log(con, heads: list[dict] = ()) -> audit.Verdict:
    return audit.verify(con.sql("SELECT * FROM ops.audit_log ORDER BY seq").pl().iter_rows(named=True), heads)


@dg.multi_asset(
    specs=[
        dg.AssetSpec(["ops", t], deps=PROPOSERS, group_name="actions", description=d)
        for t, d in [
            ("proposed_actions", "Every proposal with its status (copy of the action ledger)."),
            ("approvals", "Every approval and rejection: who, how (cli, launchpad, policy), why."),
            ("action_attempts", "Every push attempt: idempotency key, outcome, platform object, response."),
            ("audit_log", "The hash-chained audit trail of proposals, approvals, attempts and outcomes."),
        ]
    ],
    check_specs=[
        dg.AssetCheckSpec(
            "audit_chain_verifies",
            asset=["ops", "audit_log"],
            blocking=True,
            description="The warehouse copy of the audit log verifies row by row and "
            "against the chain heads recorded outside it.",
            metadata=check_owners("actions"),
        )
    ],
    pool=WAREHOUSE_POOL,
    can_subset=False,
)
def ops_tables(context: dg.AssetExecutionContext, warehouse: WarehouseResource, actions: ActionsResource):
    ledger = actions.ledger()
    with warehouse.connect() as con:
        counts = copy_ledger_to_warehouse(con, ledger)
        heads = read_heads(Path(actions.heads_file))
        verdict = verify_warehouse_audit_log(con, heads)
        status = con.sql("SELECT status, count(*) FROM ops.proposed_actions GROUP BY 1 ORDER BY 1").fetchall()
    ledger.record_head(Path(actions.heads_file), context.run.run_id)
    for table, n in counts.items():
        meta = {"rows": n}
        if table == "proposed_actions":
            meta["by_status"] = dg.MetadataValue.json({s: c for s, c in status})
        if table == "audit_log":
            meta["chain_head_seq"] = verdict.head_seq
            meta["chain_head_hash"] = verdict.head_hash
        yield dg.MaterializeResult(asset_key=["ops", table], metadata=meta)
    yield dg.AssetCheckResult(
        asset_key=["ops", "audit_log"],
        check_name="audit_chain_verifies",
        passed=verdict.ok,
        metadata={"verdict": str(verdict), "rows": verdict.rows, "first_broken_seq": verdict.first_broken_seq or 0},
    )


ACTION_ASSETS = [reconciliation_proposals, ops_tables]


# ---- approvals from the launchpad ---------------------------------------------------------------------
class ApprovalConfig(dg.Config):
    """Approve or reject actions from the Dagster UI's launchpad.

    Dagster OSS has no login: ``approver`` is the identity the person *claims*; it is
    recorded with method ``launchpad`` so a reviewer of the audit trail can tell.
    """

    action_ids: list[str]
    decision: str = "approve"  # or "reject"
    approver: str
    reason: str


@dg.op(description="Record approvals or rejections in the action ledger (never touches the warehouse).")
def record_decisions(
    context: dg.OpExecutionContext, config: ApprovalConfig, actions: ActionsResource, settings: PipelineSettings
) -> dict:
    from billing_ai.actions.ledger import ApprovalRefused

    ledger, policy = actions.ledger(), actions.policy()
    now = clock_for(ledger, settings).now()
    results, refused = {}, {}
    for aid in config.action_ids:
        try:
            results[aid] = ledger.decide(aid, config.approver, config.decision, config.reason, "launchpad", policy, now)
        except ApprovalRefused as e:
            refused[aid] = e.reasons
    ledger.record_head(Path(actions.heads_file), context.run.run_id)
    context.add_output_metadata({"recorded": dg.MetadataValue.json(results), "refused": dg.MetadataValue.json(refused)})
    if refused:
        raise dg.Failure(
            description=f"{len(refused)} decision(s) refused: {json.dumps(refused)}",
            metadata={"refused": dg.MetadataValue.json(refused)},
            allow_retries=False,
        )
    return results


@dg.job(
    description="Approve or reject proposed actions (config: action_ids, decision, approver, reason). "
    "The approver is a claimed identity: Dagster OSS has no login."
)
def approve_actions_job():
    record_decisions()


def clock_for(ledger: Ledger, settings: PipelineSettings):
    """The clock that judges expiry: the pipeline's setting, else the one the proposer recorded."""
    from billing_ai.clock import Clock

    return Clock.from_setting(settings.as_of or ledger.meta().get("clock", ""))


# ---- pushing --------------------------------------------------------------------------------------------
class PushConfig(dg.Config):
    action_id: str


@dg.op(description="Push one approved action to its platform or sink, exactly once, audited.")
def push_approved_action(
    context: dg.OpExecutionContext, config: PushConfig, actions: ActionsResource, push: PushResource
) -> dict:
    ledger = actions.ledger()
    row = push_action(ledger, push.executor(), actions.policy(), config.action_id, run_id=context.run.run_id)
    ledger.record_head(Path(actions.heads_file), context.run.run_id)
    context.add_output_metadata(
        {"status": row["status"], "platform_object": row["platform_object"] or "", "reason": row["status_reason"] or ""}
    )
    if row["status"] == "failed":
        context.log.warning(f"{config.action_id} failed: {row['status_reason']}")
    return {"action_id": config.action_id, "status": row["status"]}


@dg.job(
    description="Push one approved action (config: action_id). Started by the push_approved_actions sensor.",
    tags=RUN_RETRIES,
)
def push_action_job():
    push_approved_action()


@dg.sensor(
    job=push_action_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="One push run per newly approved action, keyed by the action id: a re-evaluated tick "
    "launches nothing twice.",
)
def push_approved_actions(actions: ActionsResource):
    ids = actions.ledger().approved_to_push()
    if not ids:
        return dg.SkipReason("no approved actions waiting")
    return [
        dg.RunRequest(
            run_key=f"push-{aid}",
            run_config={"ops": {"push_approved_action": {"config": {"action_id": aid}}}},
            tags={"billing_ai/action_id": aid},
        )
        for aid in ids
    ]


ops_sync_job = dg.define_asset_job(
    "ops_sync_job",
    # the published snapshot by key: it is built from every core/marts/ops asset (billing_ai.pipeline)
    selection=dg.AssetSelection.assets(ops_tables) | dg.AssetSelection.assets(PUBLISHED_WAREHOUSE),
    description="Take approvals and push outcomes from the action ledger into the ops tables, then publish.",
)


@dg.sensor(
    job=ops_sync_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="When the ledger's audit chain grew, copy it into the warehouse at the next pooled step.",
)
def ops_sync_on_ledger_change(context: dg.SensorEvaluationContext, actions: ActionsResource):
    seq, _ = actions.ledger().head()
    if str(seq) == (context.cursor or "0"):
        return dg.SkipReason(f"audit chain unchanged at #{seq}")
    context.update_cursor(str(seq))
    return dg.RunRequest(run_key=f"ops-sync-{seq}")
