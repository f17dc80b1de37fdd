"""The one Definitions object: every asset, job, schedule and sensor, and the resources they use.

Workspace, ``[tool.dagster]``, tests and tools load it as ``billing_ai.definitions:defs``. What runs
together and when lives beside what it starts: the nightly chain and the hourly loop in
``billing_ai.pipeline``, the write-back's jobs and sensors in ``billing_ai.actions.assets``, the weekly
model selection with the forecasts, the evaluation with its assets, the webhook refresh in
``billing_ai.webhooks``. Settings come from the environment (docs/configuration.md); secrets only
through ``EnvVar``.
"""

import os

import dagster as dg

from billing_ai import pipeline
from billing_ai.actions.assets import (
    ActionsResource,
    PushResource,
    approve_actions_job,
    ops_sync_job,
    ops_sync_on_ledger_change,
    push_action_job,
    push_approved_actions,
)
from billing_ai.anomalies.assets import HOURLY_ANOMALY_ASSETS
from billing_ai.evaluation.assets import EVALUATION_ASSETS, GroundTruth, evaluation_job
from billing_ai.forecasting.assets import SELECTION_ASSETS, forecast_selection_job, weekly_forecast_selection
from billing_ai.metadata import with_contract
from billing_ai.platforms.chargebee.resource import ChargebeeResource
from billing_ai.platforms.recurly.resource import RecurlyResource
from billing_ai.platforms.stripe.resource import StripeResource
from billing_ai.platforms.zuora.resource import ZuoraResource
from billing_ai.resources import DEFAULT_INBOX, DEFAULT_WAREHOUSE, PipelineSettings, WarehouseResource
from billing_ai.webhooks.refresh import targeted_refresh_job


def _secret_if_set(name: str) -> str:
    """An EnvVar for a platform that may not be used here: a deployment without it needs no such variable."""
    return dg.EnvVar(name) if os.environ.get(name) else ""


def default_resources() -> dict:
    return {
        "warehouse": WarehouseResource(path=os.environ.get("BILLING_AI_WAREHOUSE", DEFAULT_WAREHOUSE)),
        "stripe": StripeResource(
            api_key=dg.EnvVar("STRIPE_API_KEY"),
            api_base=os.environ.get("STRIPE_API_BASE", "https://api.stripe.com"),
            requests_per_second=float(os.environ.get("STRIPE_REQUESTS_PER_SECOND", "20")),
        ),
        "zuora": ZuoraResource(
            api_base=os.environ.get("ZUORA_API_BASE", ""),
            client_id=_secret_if_set("ZUORA_CLIENT_ID"),
            client_secret=_secret_if_set("ZUORA_CLIENT_SECRET"),
            requests_per_second=float(os.environ.get("ZUORA_REQUESTS_PER_SECOND", "10")),
        ),
        "recurly": RecurlyResource(
            api_base=os.environ.get("RECURLY_API_BASE", ""),
            api_key=_secret_if_set("RECURLY_API_KEY"),
            requests_per_second=float(os.environ.get("RECURLY_REQUESTS_PER_SECOND", "20")),
        ),
        "chargebee": ChargebeeResource(
            api_base=os.environ.get("CHARGEBEE_API_BASE", ""),
            api_key=_secret_if_set("CHARGEBEE_API_KEY"),
            requests_per_second=float(os.environ.get("CHARGEBEE_REQUESTS_PER_SECOND", "10")),
        ),
        "actions": ActionsResource(
            ledger_path=os.environ.get("BILLING_AI_LEDGER", "data/ops/actions.sqlite"),
            heads_file=os.environ.get("BILLING_AI_AUDIT_HEADS", "data/ops/audit_heads.jsonl"),
        ),
        "push": PushResource(
            stripe_api_key=dg.EnvVar("STRIPE_PUSH_API_KEY"),
            stripe_api_base=os.environ.get("STRIPE_API_BASE", "https://api.stripe.com"),
            recurly_api_key=_secret_if_set("RECURLY_PUSH_API_KEY"),
            recurly_api_base=os.environ.get("RECURLY_API_BASE", ""),
            chargebee_api_key=_secret_if_set("CHARGEBEE_PUSH_API_KEY"),
            chargebee_api_base=os.environ.get("CHARGEBEE_API_BASE", ""),
            case_url=os.environ.get("BILLING_AI_CASE_URL", "http://127.0.0.1:12111/sinks/cases"),
            chat_webhook_url=dg.EnvVar("BILLING_AI_CHAT_WEBHOOK_URL"),
            outbox_dir=os.environ.get("BILLING_AI_OUTBOX", "data/outbox"),
            zuora_api_base=os.environ.get("ZUORA_API_BASE", ""),
            zuora_client_id=_secret_if_set("ZUORA_PUSH_CLIENT_ID"),
            zuora_client_secret=_secret_if_set("ZUORA_PUSH_CLIENT_SECRET"),
        ),
        "truth": GroundTruth(path=os.environ.get("BILLING_AI_TRUTH_DIR", "data/world/truth")),
        "settings": PipelineSettings(
            as_of=os.environ.get("BILLING_AI_AS_OF", ""),
            inbox_dir=os.environ.get("BILLING_AI_INBOX", DEFAULT_INBOX),
            pii_key=dg.EnvVar("BILLING_AI_PII_KEY"),
        ),
    }


defs = dg.Definitions(
    # owners on every asset, the analyst contract's columns on every public table's asset
    assets=with_contract(
        [
            *pipeline.PLATFORM_ASSETS,
            *pipeline.USAGE_ASSETS,
            *pipeline.ANALYTICS_ASSETS,
            *HOURLY_ANOMALY_ASSETS,
            *SELECTION_ASSETS,
            *pipeline.PUBLISH_ASSETS,
            *pipeline.SIDE_TABLES,
            *EVALUATION_ASSETS,
        ]
    ),
    jobs=[
        *pipeline.JOBS,
        targeted_refresh_job,
        forecast_selection_job,
        ops_sync_job,
        approve_actions_job,
        push_action_job,
        evaluation_job,
    ],
    schedules=[*pipeline.SCHEDULES, weekly_forecast_selection],
    sensors=[*pipeline.SENSORS, push_approved_actions, ops_sync_on_ledger_change],
    resources=default_resources(),
)
