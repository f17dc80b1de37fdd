"""The analyst contract: every public table and view of the warehouse (schemas ``core``, ``marts``, ``ops``),
its columns, their DuckDB types and what they mean, as data.

One source of truth for two consumers: the Dagster assets attach it as ``dagster/column_schema`` metadata, and
``docs/contract.md`` is rendered from it (``python -m billing_ai.contract --write docs/contract.md``). The test
``billing_ai_tests/test_contract.py`` holds it to a freshly built warehouse: same tables, same columns in the same
order, same types, and the committed page equal to :func:`render_markdown`.

Standard library only, on purpose: this is a foundation module that the asset modules, the docs and the tests
import, so it must stay cheap (no dagster, no duckdb, no polars).

Types are the strings DuckDB's ``information_schema.columns.data_type`` reports (``TIMESTAMP WITH TIME ZONE``,
not ``TIMESTAMPTZ``; ``DECIMAL(38,9)`` without a space), so the test compares them verbatim.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from dataclasses import dataclass
from pathlib import Path

REGENERATE = ".venv/bin/python -m billing_ai.contract --write docs/contract.md"

# DuckDB type strings as information_schema reports them
VARCHAR = "VARCHAR"
BIGINT = "BIGINT"
HUGEINT = "HUGEINT"
INTEGER = "INTEGER"
BOOLEAN = "BOOLEAN"
DATE = "DATE"
DOUBLE = "DOUBLE"
DOUBLE_LIST = "DOUBLE[]"
JSON = "JSON"
TSTZ = "TIMESTAMP WITH TIME ZONE"
QUANTITY = "DECIMAL(38,9)"  # units of usage: exact, never a float
UNIT_PRICE = "DECIMAL(38,12)"  # minor units per unit: exact, up to 12 decimal places

SCHEMAS = ("core", "marts", "ops")


@dataclass(frozen=True)
class Column:
    """One column: its name, its DuckDB type, and one line of plain language for an analyst."""

    name: str
    type: str
    description: str

    def __post_init__(self) -> None:
        # fail at import, not in the docs: a blank or multi-line description would break the rendered table
        if not self.name or not self.type or not self.description.strip():
            raise ValueError(f"column {self.name!r}: name, type and description must be non-empty")
        if "\n" in self.description:
            raise ValueError(f"column {self.name!r}: the description must be one line")


@dataclass(frozen=True)
class Table:
    """One public table or view.

    ``written_by`` lists the Dagster asset keys (``"core/customers"``) whose materialization writes it; an entry
    with ``*`` stands for every key of a multi-asset that writes it (``"raw/stripe_*"``). :attr:`asset_key` is the
    asset named like the table, the one that carries its ``dagster/column_schema``: its own writer, or for the
    two tables several assets write on the side (``core.quarantine``, ``core.catalog_platform_ids``) an asset
    spec downstream of those writers (``billing_ai.pipeline.SIDE_TABLES``).

    ``key`` names the columns that identify a row where the pipeline enforces it (the blocking ``unique_key``
    checks on core, primary keys in ops); empty where nothing enforces one.
    """

    name: str
    description: str
    columns: tuple[Column, ...]
    written_by: tuple[str, ...]
    grain: str | None = None
    key: tuple[str, ...] = ()
    is_view: bool = False

    def __post_init__(self) -> None:
        schema, _, short = self.name.partition(".")
        if schema not in SCHEMAS or not short:
            raise ValueError(f"{self.name!r}: expected '<schema>.<table>' with schema in {SCHEMAS}")
        if not self.description.strip() or not self.columns or not self.written_by:
            raise ValueError(f"{self.name}: description, columns and written_by must be non-empty")
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: duplicate column names")
        if not set(self.key) <= set(names):
            raise ValueError(f"{self.name}: key {self.key} names columns the table does not have")

    @property
    def schema(self) -> str:
        return self.name.split(".")[0]

    @property
    def table_name(self) -> str:
        return self.name.split(".")[1]

    @property
    def asset_key(self) -> str:
        """The asset named after this table (``"core/customers"``), which carries its ``dagster/column_schema``:
        the asset that writes it, or for a table several assets write on the side (``core.quarantine``,
        ``core.catalog_platform_ids``) an asset spec of its own downstream of them (never materialized alone)."""
        return self.name.replace(".", "/")

    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def ddl(self) -> str:
        """The column list of ``CREATE TABLE`` (``"customer_id VARCHAR, ..."``): a table written from a frame is
        created from its contract, so a column that is NULL all night still has its type."""
        return ", ".join(f'"{c.name}" {c.type}' for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")


def _c(name: str, type_: str, description: str) -> Column:
    return Column(name, type_, description)


# ---- descriptions shared by many tables (one wording, so the page reads consistently) -------------------------
PLATFORM = "source platform: `stripe`, `chargebee`, `recurly` or `zuora`"
CATALOG_PLATFORM = (
    "the platform whose copy this row is: the first in registry order (Stripe, Chargebee, Recurly, "
    "Zuora) that carries the canonical id; every copy is in core.catalog_platform_ids"
)
CURRENCY = "ISO 4217 currency code, lower case (`usd`, `eur`, `jpy`, ...); amounts of this row are in its minor unit"
CUSTOMER_ID = "canonical customer id (see core.customers)"
SUBSCRIPTION_ID = "canonical subscription id (see core.subscriptions)"
SUBSCRIPTION_ITEM_ID = "canonical subscription item id (see core.subscription_items)"
PRICE_ID = "canonical price id (see core.prices)"
METER_NAME = "the meter's event name, as usage files carry it: `api_calls`, `storage_gb_hours`, `compute_seconds`"
INVOICE_ID = "canonical invoice id (see core.invoices)"


def _platform_id(obj: str, stripe_note: str = "the same value as the canonical id on Stripe") -> str:
    return f"the {obj}'s own id on its platform ({stripe_note})"


# ---- core ------------------------------------------------------------------------------------------------------
CORE: tuple[Table, ...] = (
    Table(
        name="core.customers",
        description="One row per customer per platform: the billing platform's customer record, mapped to the "
        "canonical model. Names and e-mails arrive as keyed-hash tokens: no PII is stored.",
        grain="one row per (platform, customer_id)",
        key=("platform", "customer_id"),
        written_by=("core/customers",),
        columns=(
            _c(
                "customer_id",
                VARCHAR,
                "canonical customer id: the merchant's own reference, the id usage events "
                "carry (on Stripe the customer id `cus_…`; Chargebee `id`, Recurly account "
                "`code`, Zuora `accountNumber`)",
            ),
            _c("platform", VARCHAR, PLATFORM),
            _c("platform_customer_id", VARCHAR, _platform_id("customer")),
            _c("name_token", VARCHAR, "keyed-hash token of the customer's name (`tok_name_…`), never the name"),
            _c(
                "email_token",
                VARCHAR,
                "keyed-hash token of the customer's e-mail (`tok_email_…`), never the address; "
                "the push job reads the real address from the platform when it needs it",
            ),
            _c("segment", VARCHAR, "from customer metadata: `self_serve`, `mid_market` or `enterprise`"),
            _c("region", VARCHAR, "from customer metadata: `na`, `eu` or `apac`"),
            _c("currency", VARCHAR, "the customer's billing currency, ISO 4217 lower case"),
            _c("success_manager", VARCHAR, "handle of the account's customer-success manager (metadata); NULL if none"),
            _c(
                "email_opt_out",
                BOOLEAN,
                "true when the customer opted out of e-mail; e-mail proposals are refused for them",
            ),
            _c("balance", BIGINT, "customer balance, minor units (integer); negative = credit the customer holds"),
            _c(
                "delinquent",
                BOOLEAN,
                "the platform's delinquency flag (always false on Chargebee and Zuora, which keep dunning on invoices)",
            ),
            _c("created_at", TSTZ, "when the customer was created on the platform, UTC"),
            _c("metadata", JSON, "the platform's metadata object as landed (merchant-set, untrusted text)"),
            _c("landed_at", TSTZ, "pipeline clock time of the snapshot this row came from, UTC"),
        ),
    ),
    Table(
        name="core.products",
        description="The merchant's product catalog: one row per canonical product id, whichever platforms carry "
        "it (the copy of the first platform in registry order; every copy is in "
        "core.catalog_platform_ids). Rebuilt whole on every platform sync.",
        grain="one row per product_id",
        key=("product_id",),
        written_by=("core/products",),
        columns=(
            _c("product_id", VARCHAR, "canonical product id (Stripe `prod_…`, Recurly item `code`, Zuora `sku`)"),
            _c("platform", VARCHAR, CATALOG_PLATFORM),
            _c("platform_product_id", VARCHAR, _platform_id("product")),
            _c("name", VARCHAR, "product name"),
            _c(
                "component",
                VARCHAR,
                "what the product charges for: `platform`, `seats`, `api_calls`, "
                "`storage_gb_hours` or `compute_seconds`",
            ),
            _c("active", BOOLEAN, "the product is active on the platform"),
            _c(
                "created_at",
                TSTZ,
                "when the product was created, UTC (Chargebee: the item's last update, as items "
                "carry no creation time)",
            ),
        ),
    ),
    Table(
        name="core.prices",
        description="One row per canonical price id (the catalog is one: see core.products). Unit prices stay exact "
        "decimals in minor units; the tiers of tiered prices are in core.price_tiers.",
        grain="one row per price_id",
        key=("price_id",),
        written_by=("core/prices",),
        columns=(
            _c("price_id", VARCHAR, "canonical price id (Stripe `price_…`)"),
            _c("platform", VARCHAR, CATALOG_PLATFORM),
            _c("platform_price_id", VARCHAR, _platform_id("price")),
            _c("product_id", VARCHAR, "the product this price belongs to (see core.products)"),
            _c("plan", VARCHAR, "the plan the price belongs to: `starter`, `growth` or `scale`"),
            _c("component", VARCHAR, "what it charges for (see core.products.component)"),
            _c("currency", VARCHAR, "ISO 4217 currency code, lower case"),
            _c(
                "usage_type",
                VARCHAR,
                "`licensed` (a quantity on the item, billed in advance) or `metered` (usage, billed in arrears)",
            ),
            _c("billing_scheme", VARCHAR, "`per_unit` or `tiered`"),
            _c("tiers_mode", VARCHAR, "`graduated` or `volume` for tiered prices; NULL for per-unit prices"),
            _c(
                "unit_amount_decimal",
                UNIT_PRICE,
                "price per unit in minor units, exact up to 12 decimal places "
                "(per package when package_size is set); NULL for tiered prices",
            ),
            _c(
                "package_size",
                BIGINT,
                "package pricing: units per package (Stripe `transform_quantity.divide_by`); NULL when not packaged",
            ),
            _c("package_rounding", VARCHAR, "how a partial package is billed: `up` or `down`; NULL when not packaged"),
            _c("meter_id", VARCHAR, "the meter of a metered price (see core.meters); NULL for licensed prices"),
            _c("meter_name", VARCHAR, "the event name of that meter; NULL for licensed prices"),
            _c("billing_interval", VARCHAR, "billing interval unit, e.g. `month`"),
            _c("billing_interval_count", INTEGER, "number of intervals per billing period, e.g. 1"),
            _c("lookup_key", VARCHAR, "the merchant's stable name for the price, e.g. `growth_api_calls_eur`"),
            _c("active", BOOLEAN, "the price can be used for new subscriptions"),
            _c("created_at", TSTZ, "when the price was created, UTC"),
        ),
    ),
    Table(
        name="core.price_tiers",
        description="The tiers of tiered prices, in order. A zero-priced first tier is an included allowance. "
        "One row per price and tier, one copy per canonical price (see core.products).",
        grain="one row per (price_id, tier_index)",
        key=("price_id", "tier_index"),
        written_by=("core/price_tiers",),
        columns=(
            _c("price_id", VARCHAR, PRICE_ID),
            _c("platform", VARCHAR, CATALOG_PLATFORM),
            _c("tier_index", INTEGER, "position of the tier, from 0, in ascending order of up_to"),
            _c(
                "up_to",
                QUANTITY,
                "inclusive upper bound of the tier in units, DECIMAL(38,9); NULL = infinity (the last, open tier)",
            ),
            _c(
                "unit_amount_decimal",
                UNIT_PRICE,
                "price per unit inside this tier, minor units, exact up to 12 decimal places",
            ),
            _c("flat_amount", BIGINT, "flat fee for reaching the tier, minor units (integer); 0 when none"),
        ),
    ),
    Table(
        name="core.meters",
        description="The usage meters: one row per meter, known by the event name usage files carry (Recurly mints "
        "its own meter ids, so the name is what every platform shares).",
        grain="one row per meter",
        key=("meter_id",),
        written_by=("core/meters",),
        columns=(
            _c("meter_id", VARCHAR, "canonical meter id (Stripe `mtr_…`; Recurly-minted on Recurly)"),
            _c("platform", VARCHAR, CATALOG_PLATFORM),
            _c("platform_meter_id", VARCHAR, _platform_id("meter")),
            _c("meter_name", VARCHAR, METER_NAME),
            _c("display_name", VARCHAR, "human-readable meter name"),
            _c("aggregation", VARCHAR, "how events add up over a period: `sum`, `count` or `last`"),
            _c("status", VARCHAR, "`active` or `inactive`"),
        ),
    ),
    Table(
        name="core.subscriptions",
        description="One row per subscription per platform, as of the last snapshot. Billing periods are monthly, "
        "counted from billing_cycle_anchor.",
        grain="one row per (platform, subscription_id)",
        key=("platform", "subscription_id"),
        written_by=("core/subscriptions",),
        columns=(
            _c(
                "subscription_id",
                VARCHAR,
                "canonical subscription id: the merchant's own reference (Stripe "
                "`sub_…`, Zuora `subscriptionNumber`, Recurly custom field `merchant_ref`)",
            ),
            _c("platform", VARCHAR, PLATFORM),
            _c("platform_subscription_id", VARCHAR, _platform_id("subscription")),
            _c("customer_id", VARCHAR, CUSTOMER_ID),
            _c(
                "status",
                VARCHAR,
                "`active`, `canceled`, `past_due`, `trialing`, … (Stripe's vocabulary; other "
                "platforms' statuses are mapped onto it)",
            ),
            _c("currency", VARCHAR, "ISO 4217 currency code, lower case"),
            _c("plan", VARCHAR, "plan from subscription metadata: `starter`, `growth` or `scale`"),
            _c("started_at", TSTZ, "when the subscription started, UTC"),
            _c("billing_cycle_anchor", TSTZ, "the instant monthly billing periods are counted from, UTC"),
            _c("current_period_start", TSTZ, "start of the period open at snapshot time, UTC"),
            _c("current_period_end", TSTZ, "end (exclusive) of the period open at snapshot time, UTC"),
            _c("canceled_at", TSTZ, "when the subscription was canceled, UTC; NULL if never"),
            _c("ended_at", TSTZ, "when the subscription ended, UTC; NULL while it runs"),
            _c(
                "minimum_commitment",
                BIGINT,
                "minimum spend per period, minor units (integer, from metadata), trued "
                "up by an invoice item; NULL when none",
            ),
            _c("metadata", JSON, "the platform's metadata object as landed (merchant-set, untrusted text)"),
            _c("created_at", TSTZ, "when the subscription was created on the platform, UTC"),
        ),
    ),
    Table(
        name="core.subscription_items",
        description="The prices on each subscription over time: current items, and items a plan change replaced "
        "(known only from invoice lines: they run from the subscription start until their replacement "
        "for the same product was created). Usage is priced by the item of its meter valid at the "
        "event's time.",
        grain="one row per (platform, subscription_item_id)",
        key=("platform", "subscription_item_id"),
        written_by=("core/subscription_items",),
        columns=(
            _c(
                "subscription_item_id",
                VARCHAR,
                "canonical subscription item id (Stripe `si_…`, Zuora charge number; Recurly-minted on Recurly)",
            ),
            _c("platform", VARCHAR, PLATFORM),
            _c(
                "platform_subscription_item_id",
                VARCHAR,
                _platform_id("item", "same as the canonical id on Stripe; `<subscription>:<item price>` on Chargebee"),
            ),
            _c("subscription_id", VARCHAR, SUBSCRIPTION_ID),
            _c("customer_id", VARCHAR, CUSTOMER_ID),
            _c("price_id", VARCHAR, PRICE_ID),
            _c("meter_id", VARCHAR, "the meter of a metered item (see core.meters); NULL for licensed items"),
            _c("meter_name", VARCHAR, "the event name of that meter; NULL for licensed items"),
            _c("usage_type", VARCHAR, "`licensed` or `metered`"),
            _c("quantity", BIGINT, "licensed quantity (e.g. seats); NULL for metered items"),
            _c("valid_from", TSTZ, "from when the item priced usage, UTC"),
            _c(
                "valid_to",
                TSTZ,
                "until when (exclusive), UTC: the replacement's creation, or the subscription's end; "
                "NULL = still pricing",
            ),
            _c("is_current", BOOLEAN, "the item is on the subscription now (false for items a plan change replaced)"),
        ),
    ),
    Table(
        name="core.invoices",
        description="One row per invoice per platform. Amounts are integer minor units of the invoice's currency; "
        "never sum them across currencies.",
        grain="one row per (platform, invoice_id)",
        key=("platform", "invoice_id"),
        written_by=("core/invoices",),
        columns=(
            _c(
                "invoice_id",
                VARCHAR,
                "canonical invoice id (Stripe `in_…`; Recurly custom field `merchant_ref`, Zuora `invoice_id__c`)",
            ),
            _c("platform", VARCHAR, PLATFORM),
            _c("platform_invoice_id", VARCHAR, _platform_id("invoice")),
            _c("customer_id", VARCHAR, CUSTOMER_ID),
            _c(
                "subscription_id",
                VARCHAR,
                "the subscription the invoice bills (see core.subscriptions); NULL for invoices of no subscription",
            ),
            _c("number", VARCHAR, "the invoice number shown to the customer (Chargebee: the invoice id itself)"),
            _c("status", VARCHAR, "`draft`, `open`, `paid`, `void` or `uncollectible`"),
            _c("billing_reason", VARCHAR, "`subscription_create`, `subscription_cycle`, `subscription_cancel`, …"),
            _c("currency", VARCHAR, CURRENCY),
            _c("period_start", TSTZ, "start of the usage period the invoice closes, UTC"),
            _c("period_end", TSTZ, "end (exclusive) of the usage period the invoice closes, UTC"),
            _c("created_at", TSTZ, "when the invoice was created, UTC"),
            _c(
                "finalized_at",
                TSTZ,
                "when the invoice was finalized, UTC; NULL for drafts. Usage that reaches us after this is late",
            ),
            _c("paid_at", TSTZ, "when it was paid, UTC; NULL if unpaid"),
            _c("subtotal", BIGINT, "sum of the lines before discounts, minor units (integer)"),
            _c("total_discount", BIGINT, "discounts on the invoice, minor units (integer, non-negative)"),
            _c("total", BIGINT, "total after discounts, minor units (integer); negative for a downgrade's credit"),
            _c(
                "starting_balance",
                BIGINT,
                "the customer balance applied to this invoice, minor units (integer; negative = credit)",
            ),
            _c("amount_due", BIGINT, "what the customer owes on it, minor units (integer, non-negative)"),
            _c("amount_paid", BIGINT, "what has been paid, minor units (integer)"),
            _c("amount_remaining", BIGINT, "what is still owed, minor units (integer)"),
            _c("attempt_count", INTEGER, "payment attempts so far"),
        ),
    ),
    Table(
        name="core.invoice_lines",
        description="One row per invoice line per platform: subscription lines (from an item, prorations included) "
        "and invoice items (e.g. a minimum-commitment true-up). marts.invoice_reconciliation sets each "
        "beside our own computation.",
        grain="one row per (platform, line_id)",
        key=("platform", "line_id"),
        written_by=("core/invoice_lines",),
        columns=(
            _c("line_id", VARCHAR, "canonical line id (Stripe `il_…`; platform-minted on Chargebee and Recurly)"),
            _c("platform", VARCHAR, PLATFORM),
            _c("platform_line_id", VARCHAR, _platform_id("line")),
            _c("invoice_id", VARCHAR, INVOICE_ID),
            _c("subscription_id", VARCHAR, SUBSCRIPTION_ID),
            _c(
                "subscription_item_id",
                VARCHAR,
                "the item a subscription line bills (see core.subscription_items); NULL for invoice items",
            ),
            _c("price_id", VARCHAR, "the price billed (see core.prices); NULL for invoice items"),
            _c(
                "line_type",
                VARCHAR,
                "`subscription` (from an item) or `invoice_item` (e.g. a minimum-commitment true-up)",
            ),
            _c("description", VARCHAR, "the platform's line text"),
            _c("quantity", QUANTITY, "units billed, DECIMAL(38,9) units"),
            _c("amount", BIGINT, "line amount before discounts, minor units (integer); negative for proration credits"),
            _c("discount_amount", BIGINT, "discounts on this line, minor units (integer)"),
            _c("currency", VARCHAR, CURRENCY),
            _c("period_start", TSTZ, "start of the line's service period, UTC"),
            _c("period_end", TSTZ, "end (exclusive) of the line's service period, UTC"),
            _c("is_proration", BOOLEAN, "the line prorates a mid-period change"),
        ),
    ),
    Table(
        name="core.payments",
        description="One row per payment of an invoice (on Stripe a payment intent; on Chargebee and Recurly the "
        "invoice's collection attempts folded into one). No payment-method details are stored.",
        grain="one row per (platform, payment_id)",
        key=("platform", "payment_id"),
        written_by=("core/payments",),
        columns=(
            _c(
                "payment_id",
                VARCHAR,
                "canonical payment id (Stripe `pi_…`; the first attempt's transaction id on Chargebee and Recurly)",
            ),
            _c("platform", VARCHAR, PLATFORM),
            _c("platform_payment_id", VARCHAR, _platform_id("payment")),
            _c("invoice_id", VARCHAR, INVOICE_ID),
            _c("customer_id", VARCHAR, CUSTOMER_ID),
            _c("amount", BIGINT, "amount to collect, minor units (integer, non-negative)"),
            _c("amount_received", BIGINT, "amount collected, minor units (integer)"),
            _c("currency", VARCHAR, CURRENCY),
            _c("status", VARCHAR, "`succeeded`, `requires_payment_method`, `processing`, … (Stripe's vocabulary)"),
            _c(
                "failure_code",
                VARCHAR,
                "code of the last failure, e.g. `card_declined`, `insufficient_funds`, "
                "`expired_card`; NULL if none failed",
            ),
            _c(
                "decline_code",
                VARCHAR,
                "the issuer's decline code of the last failure, e.g. `generic_decline`; NULL if none",
            ),
            _c("attempt_count", INTEGER, "collection attempts so far"),
            _c("created_at", TSTZ, "when the payment was created, UTC"),
        ),
    ),
    Table(
        name="core.credit_notes",
        description="One row per credit note (money given back against an invoice).",
        grain="one row per (platform, credit_note_id)",
        key=("platform", "credit_note_id"),
        written_by=("core/credit_notes",),
        columns=(
            _c("credit_note_id", VARCHAR, "canonical credit note id (Stripe `cn_…`)"),
            _c("platform", VARCHAR, PLATFORM),
            _c("platform_credit_note_id", VARCHAR, _platform_id("credit note")),
            _c("invoice_id", VARCHAR, "the invoice credited (see core.invoices)"),
            _c("customer_id", VARCHAR, CUSTOMER_ID),
            _c("amount", BIGINT, "amount credited, minor units (integer, positive)"),
            _c("currency", VARCHAR, CURRENCY),
            _c(
                "reason",
                VARCHAR,
                "why, in Stripe's vocabulary: `duplicate`, `fraudulent`, `order_change`, "
                "`product_unsatisfactory`; NULL if not given",
            ),
            _c("status", VARCHAR, "`issued` or `void` (`draft` on Zuora)"),
            _c("created_at", TSTZ, "when the credit note was created, UTC"),
        ),
    ),
    Table(
        name="core.meter_usage_summaries",
        description="The platform's own usage totals per customer, meter and complete UTC day: what billing "
        "received. Compared with core.usage_events (check usage_events_match_platform_summaries) to "
        "find usage that never reached billing.",
        grain="one row per (platform, meter_id, customer_id, usage_date)",
        key=("platform", "meter_id", "customer_id", "usage_date"),
        written_by=("core/meter_usage_summaries",),
        columns=(
            _c("platform", VARCHAR, PLATFORM),
            _c("meter_id", VARCHAR, "the meter (see core.meters)"),
            _c("meter_name", VARCHAR, METER_NAME),
            _c("customer_id", VARCHAR, CUSTOMER_ID),
            _c("usage_date", DATE, "the UTC day summed"),
            _c("quantity", QUANTITY, "the platform's total for the day, DECIMAL(38,9) units"),
        ),
    ),
    Table(
        name="core.usage_events",
        description="One row per accepted usage event from the product's usage files: validated, deduplicated "
        "(the first landed copy of each (source, event_id) wins; later copies are quarantined), "
        "late events flagged, never merged silently. Partitioned by UTC event_date; rebuilding a day "
        "replaces it in one transaction. Rejected records are in core.quarantine.",
        grain="one row per (source, event_id); daily partitions by event_date (UTC)",
        key=("source", "event_id"),
        written_by=("core/usage_events",),
        columns=(
            _c("event_id", VARCHAR, "the product's event id; unique per source"),
            _c("source", VARCHAR, "where the event came from: `inbox` (usage files)"),
            _c("customer_id", VARCHAR, "customer as sent; validated against core.customers"),
            _c(
                "subscription_id",
                VARCHAR,
                "subscription as sent, validated to be the customer's; NULL when the event names none",
            ),
            _c("meter_name", VARCHAR, "meter as sent; validated against core.meters"),
            _c("quantity", QUANTITY, "units, DECIMAL(38,9), non-negative"),
            _c("event_ts", TSTZ, "when the usage happened, UTC"),
            _c("event_date", DATE, "UTC day of event_ts (the partition)"),
            _c("project", VARCHAR, "from event metadata (customer-controlled text); NULL if absent"),
            _c("department", VARCHAR, "from event metadata (customer-controlled text); often missing"),
            _c("endpoint", VARCHAR, "from event metadata, e.g. `/v1/export`; NULL if absent"),
            _c("region", VARCHAR, "from event metadata, e.g. `us-west-2`; NULL if absent"),
            _c("metadata", JSON, "the event's metadata as sent (untrusted customer text: never interpolate it)"),
            _c("source_file", VARCHAR, "the name of the inbox file the record came from"),
            _c(
                "source_row", BIGINT, "the record's line (NDJSON), data row (CSV) or row (Parquet) in that file, from 1"
            ),
            _c(
                "landed_at",
                TSTZ,
                "when the event reached us, UTC: the record's optional `received_at`, else the "
                "clock time its file was landed",
            ),
            _c(
                "is_late",
                BOOLEAN,
                "its billing period had already been invoiced (finalized) before it reached us: "
                "it belongs in the next period's adjustment",
            ),
        ),
    ),
    Table(
        name="core.catalog_platform_ids",
        description="Every platform's copy of each catalog object (the catalog tables keep one row per canonical "
        "id). The blocking checks `<object>_copies_agree` fail when two copies of one id differ in "
        "anything rating reads. Written by the catalog assets (products, meters, prices, price tiers), "
        "each replacing its own object's rows.",
        grain="one row per (object, canonical_id, platform)",
        written_by=("core/products", "core/meters", "core/prices", "core/price_tiers"),
        columns=(
            _c("object", VARCHAR, "`products`, `meters`, `prices` or `price_tiers`"),
            _c(
                "canonical_id",
                VARCHAR,
                "the canonical id (`<price_id>#<tier_index>` for tiers, the meter name for meters)",
            ),
            _c("platform", VARCHAR, "the platform holding this copy"),
            _c("platform_id", VARCHAR, "the copy's id on that platform; NULL for tiers"),
            _c(
                "terms_hash",
                VARCHAR,
                "md5 of the terms rating reads; two hashes for one id fail the blocking `<object>_copies_agree` check",
            ),
        ),
    ),
    Table(
        name="core.quarantine",
        description="Every record refused anywhere in ingestion, with its reason, never dropped: usage records at "
        "landing and at validation (records in = accepted + quarantined), and platform objects a "
        "connector could not map. `record` is the record as received: untrusted text.",
        grain="one row per refused record; each writer replaces its own rows (a platform's on each sync, a usage "
        "day's on each rebuild)",
        written_by=(
            "raw/usage_events",
            "core/usage_events",
            "raw/stripe_*",
            "raw/chargebee_*",
            "raw/recurly_*",
            "raw/zuora_*",
        ),
        columns=(
            _c(
                "source",
                VARCHAR,
                "who refused it: `usage_file` (landing), `usage_events` (validation) or "
                "`<platform>_<object>` (a platform connector, e.g. `chargebee_invoices`)",
            ),
            _c(
                "record_key",
                VARCHAR,
                "the event id, `file:row`, `file:L<line>` for lines the reader rejected, or the platform object's id",
            ),
            _c(
                "partition_date",
                DATE,
                "the UTC event day of a record refused at validation; NULL at landing and for platform objects",
            ),
            _c(
                "reason",
                VARCHAR,
                "why: `invalid_encoding`, `malformed_line`, `invalid_json`, `not_an_object`, "
                "`wrong_type`, `missing_timestamp`, `bad_timestamp`, `timestamp_too_old`, "
                "`timestamp_in_future`, `oversized_metadata`, `unreadable_file`, `missing_field`, "
                "`bad_quantity`, `negative_quantity`, `huge_quantity`, `unknown_meter`, "
                "`unknown_customer`, `unknown_subscription`, `duplicate_of`; from connectors e.g. "
                "`missing_id`, `missing_key`, `bad_money`, `malformed_money`, `unknown_currency`",
            ),
            _c("detail", VARCHAR, "more on the reason, e.g. the first copy's `file:row` for `duplicate_of`"),
            _c("record", VARCHAR, "the record as received, as text (untrusted); NULL for an unreadable file"),
            _c("quarantined_at", TSTZ, "pipeline clock time of the refusal, UTC"),
        ),
    ),
)

# ---- marts -----------------------------------------------------------------------------------------------------
_USAGE_BUCKET_COLUMNS = (
    _c("customer_id", VARCHAR, CUSTOMER_ID),
    _c("subscription_id", VARCHAR, "the subscription the events named; NULL when they named none"),
    _c(
        "subscription_item_id",
        VARCHAR,
        "the item of that meter valid at the event's time; NULL for usage no item covers (e.g. after a cancellation)",
    ),
    _c("meter_name", VARCHAR, METER_NAME),
    _c("bucket_start", TSTZ, "start of the bucket, UTC"),
    _c("quantity", QUANTITY, "units in the bucket, DECIMAL(38,9)"),
    _c("event_count", BIGINT, "events in the bucket"),
    _c("late_quantity", QUANTITY, "units of the bucket that arrived after their period was invoiced, DECIMAL(38,9)"),
)

_ANOMALY_COLUMNS = (
    _c("customer_id", VARCHAR, CUSTOMER_ID),
    _c("meter_name", VARCHAR, "the meter; `*` for account-level kinds (`zero_usage`, `unusual_mix`)"),
    _c("ts", TSTZ, "start of the flagged bucket, UTC"),
    _c("grain", VARCHAR, "bucket size: `1h`; `1d` for account-days (`unusual_mix`)"),
    _c(
        "kind",
        VARCHAR,
        "`spike`, `drop`, `duplicate`, `usage_after_cancel`, `out_of_period`, `unplanned_meter`, "
        "`zero_usage` or `unusual_mix`",
    ),
    _c("detector", VARCHAR, "`statistical`, `logical` or `multivariate`"),
    _c("score", DOUBLE, "evidence: -log10 of the tail probability (logical kinds: 10)"),
    _c("confidence", DOUBLE, "0..1, discounted for short histories; proposals are made from 0.9"),
    _c("is_anomaly", BOOLEAN, "above the alert bar for its kind; false = a candidate below it, kept for context"),
    _c(
        "observed",
        DOUBLE,
        "the bucket's quantity in the meter's units (a statistic, not a billed quantity; "
        "`duplicate`: the duplicated quantity; `unusual_mix`: the day's total)",
    ),
    _c(
        "expected",
        DOUBLE,
        "the seasonal expectation in the same units (`zero_usage`: events per day before the "
        "silence; NULL for `unusual_mix`)",
    ),
    _c("ratio", DOUBLE, "observed / expected over the flagging window; NULL where undefined"),
    _c("window_buckets", INTEGER, "length, in buckets, of the window whose evidence flagged it"),
    _c(
        "root_cause",
        VARCHAR,
        "computed hint, e.g. `endpoint=/v1/export region=us-west-2 carries 85% of the bucket's events`",
    ),
    _c("evidence", VARCHAR, "JSON text: window sums, composition score, history length, example event ids, …"),
    _c("detected_at", TSTZ, "the pipeline clock of the run that detected it, UTC"),
)

MARTS: tuple[Table, ...] = (
    Table(
        name="marts.usage_daily",
        description="Usage per customer, subscription item, meter and UTC day, from core.usage_events. Partitioned "
        "like core.usage_events (usage_daily_job); a rebuilt day replaces its buckets.",
        grain="one row per customer, subscription, subscription item, meter and UTC day",
        written_by=("marts/usage_daily",),
        columns=_USAGE_BUCKET_COLUMNS,
    ),
    Table(
        name="marts.usage_hourly",
        description="Usage per customer, subscription item, meter and UTC hour, from core.usage_events. "
        "Partitioned by event day like core.usage_events; a rebuilt day replaces its buckets.",
        grain="one row per customer, subscription, subscription item, meter and UTC hour",
        written_by=("marts/usage_hourly",),
        columns=_USAGE_BUCKET_COLUMNS,
    ),
    Table(
        name="marts.rated_usage",
        description="Our own rating of usage: per metered subscription item and monthly billing period (from the "
        "billing cycle anchor) up to now, the usage window, quantities (all, on time, late), and the "
        "amount the rating engine computes with its per-tier breakdown. Rebuilt whole nightly "
        "(analytics_job), together with marts.tier_positions and marts.invoice_reconciliation.",
        grain="one row per metered subscription item and billing period",
        written_by=("marts/rated_usage",),
        columns=(
            _c("subscription_item_id", VARCHAR, SUBSCRIPTION_ITEM_ID),
            _c("subscription_id", VARCHAR, SUBSCRIPTION_ID),
            _c("customer_id", VARCHAR, CUSTOMER_ID),
            _c("price_id", VARCHAR, PRICE_ID),
            _c("meter_name", VARCHAR, METER_NAME),
            _c("currency", VARCHAR, CURRENCY),
            _c("period_start", TSTZ, "start of the billing period, UTC"),
            _c("period_end", TSTZ, "end (exclusive) of the billing period, UTC"),
            _c(
                "usage_from",
                TSTZ,
                "start of the part of the period the item priced, UTC (a plan change splits a period between items)",
            ),
            _c("usage_to", TSTZ, "end (exclusive) of that part, UTC"),
            _c("invoice_id", VARCHAR, "the invoice that closed the period; NULL while it is open"),
            _c("is_current_period", BOOLEAN, "the period open at the clock's now"),
            _c("quantity", QUANTITY, "all units in the window, DECIMAL(38,9)"),
            _c("quantity_on_time", QUANTITY, "units that reached us before the invoice was finalized, DECIMAL(38,9)"),
            _c("late_quantity", QUANTITY, "the rest (quantity - quantity_on_time), DECIMAL(38,9)"),
            _c("event_count", HUGEINT, "events in the window"),
            _c("amount", BIGINT, "our rating of quantity, minor units (integer), rounded once per line"),
            _c("amount_on_time", BIGINT, "our rating of quantity_on_time, minor units (integer)"),
            _c(
                "tiers",
                JSON,
                "per-tier breakdown of amount: `tier_index`, `units`, `unit_amount_decimal`, "
                "`flat_amount`, `amount_exact` (`[]` for per-unit prices)",
            ),
        ),
    ),
    Table(
        name="marts.tier_positions",
        description="The real-time tier position of every metered item in its current period: which tier its usage "
        "so far is in, how far to the next, and the amount so far. Rebuilt whole with "
        "marts.rated_usage.",
        grain="one row per metered subscription item of a current period",
        written_by=("marts/tier_positions",),
        columns=(
            _c("subscription_item_id", VARCHAR, SUBSCRIPTION_ITEM_ID),
            _c("subscription_id", VARCHAR, SUBSCRIPTION_ID),
            _c("customer_id", VARCHAR, CUSTOMER_ID),
            _c("price_id", VARCHAR, PRICE_ID),
            _c("meter_name", VARCHAR, METER_NAME),
            _c("currency", VARCHAR, CURRENCY),
            _c("period_start", TSTZ, "start of the current billing period, UTC"),
            _c("period_end", TSTZ, "end (exclusive) of the current billing period, UTC"),
            _c("as_of", TSTZ, "the pipeline clock the position was computed at, UTC"),
            _c("billing_scheme", VARCHAR, "`per_unit` or `tiered` (the price's)"),
            _c("tiers_mode", VARCHAR, "`graduated` or `volume`; NULL for per-unit prices"),
            _c("current_tier", INTEGER, "the tier units_used is in, from 0; NULL for per-unit prices"),
            _c("tier_count", BIGINT, "number of tiers of the price (0 for per-unit prices)"),
            _c("units_used", QUANTITY, "units so far this period, DECIMAL(38,9)"),
            _c(
                "current_tier_up_to",
                QUANTITY,
                "upper bound of the current tier, DECIMAL(38,9) units; NULL = the "
                "last, open tier (or a per-unit price)",
            ),
            _c(
                "units_to_next_tier",
                QUANTITY,
                "current_tier_up_to - units_used, DECIMAL(38,9); NULL when there is no next tier",
            ),
            _c("amount_so_far", BIGINT, "our rating of units_used, minor units (integer)"),
        ),
    ),
    Table(
        name="marts.invoice_reconciliation",
        description="Every platform invoice line beside our recomputation, plus the lines we expected and did not "
        "find and the usage no line could bill. Amounts compare before discounts. A blocking check, "
        "`reconciliation_within_tolerance`, stops everything downstream when more than 5% of lines or "
        "of billed money mismatch. Rebuilt whole with marts.rated_usage.",
        grain="one row per invoice line, missing line, or stretch of unbilled usage",
        written_by=("marts/invoice_reconciliation",),
        columns=(
            _c(
                "invoice_id",
                VARCHAR,
                "the invoice; NULL for usage no invoice bills (e.g. after the subscription ended)",
            ),
            _c(
                "line_id",
                VARCHAR,
                "the platform's line (see core.invoice_lines); NULL for a missing line or unbilled usage",
            ),
            _c("subscription_id", VARCHAR, SUBSCRIPTION_ID),
            _c("subscription_item_id", VARCHAR, "the item billed; NULL for invoice items and unbilled usage"),
            _c("price_id", VARCHAR, "the price billed; NULL for invoice items and unbilled usage"),
            _c("meter_name", VARCHAR, "the meter of a metered line or of unbilled usage; NULL for licensed lines"),
            _c(
                "line_type",
                VARCHAR,
                "`subscription`, `invoice_item` (minimum-commitment true-up) or `usage` (usage no line covers)",
            ),
            _c("description", VARCHAR, "the line's text, or what a missing or unbilled row stands for"),
            _c("currency", VARCHAR, CURRENCY),
            _c("period_start", TSTZ, "start of the line's service period (of the usage, for unbilled rows), UTC"),
            _c("period_end", TSTZ, "end of the line's service period (last event, for unbilled rows), UTC"),
            _c("is_proration", BOOLEAN, "the line prorates a mid-period change"),
            _c(
                "quantity_billed",
                QUANTITY,
                "units on the platform's line, DECIMAL(38,9); NULL for missing lines and unbilled usage",
            ),
            _c(
                "quantity_expected",
                QUANTITY,
                "units we would bill, DECIMAL(38,9): usage that arrived before finalization, or the licensed quantity",
            ),
            _c(
                "expected_amount",
                BIGINT,
                "our amount, minor units (integer), before discounts; NULL for usage no price covers",
            ),
            _c(
                "billed_amount",
                BIGINT,
                "the platform's amount, minor units (integer), before discounts; 0 for "
                "missing lines and unbilled usage",
            ),
            _c("difference", BIGINT, "billed_amount - expected_amount, minor units (integer)"),
            _c(
                "finding",
                VARCHAR,
                "`match`, `rounding`, `underbilled`, `overbilled`, `missing_line`, `unbilled_usage` or `late_usage`",
            ),
            _c("detail", VARCHAR, "e.g. `duplicate of another line for the same item and period`; NULL otherwise"),
            _c(
                "late_quantity",
                QUANTITY,
                "units that arrived after finalization, DECIMAL(38,9) (next period's "
                "adjustment); NULL for licensed lines, invoice items and unbilled usage",
            ),
            _c("late_amount", BIGINT, "what the late units would add, minor units (integer); NULL like late_quantity"),
            _c(
                "usage_from",
                TSTZ,
                "start of the usage behind the row, UTC: core.usage_events of its subscription "
                "and meter in [usage_from, usage_to)",
            ),
            _c("usage_to", TSTZ, "end (exclusive) of that usage, UTC"),
            _c("event_count", HUGEINT, "events behind the row; NULL for licensed lines and invoice items"),
        ),
    ),
    Table(
        name="marts.reconciliation_events",
        description="The usage events behind each reconciliation row (core.usage_events of the row's "
        "subscription and its item's meter in [usage_from, usage_to)). Rows without a subscription item "
        "(unbilled usage, invoice items) have no events here. Created with the rating marts.",
        grain="one row per reconciliation row and event",
        written_by=("marts/reconciliation_events",),
        is_view=True,
        columns=(
            _c("invoice_id", VARCHAR, "the reconciliation row's invoice"),
            _c("line_id", VARCHAR, "the reconciliation row's line; NULL for a missing line"),
            _c("finding", VARCHAR, "the reconciliation row's finding"),
            _c("event_id", VARCHAR, "the usage event (see core.usage_events)"),
            _c("event_ts", TSTZ, "when it happened, UTC"),
            _c("quantity", QUANTITY, "its units, DECIMAL(38,9)"),
            _c("is_late", BOOLEAN, "it reached us after its period was invoiced"),
            _c("source_file", VARCHAR, "the inbox file it came from"),
        ),
    ),
    Table(
        name="marts.usage_anomalies",
        description="Nightly: every flagged usage bucket of the last six weeks (hourly grain), one row per "
        "customer x meter x bucket x kind. Rows with is_anomaly = false are candidates below the alert "
        "bar, kept for context. Rebuilt whole each night (analytics_job).",
        grain="one row per customer, meter, bucket and kind",
        written_by=("marts/usage_anomalies",),
        columns=_ANOMALY_COLUMNS,
    ),
    Table(
        name="marts.usage_anomalies_hourly",
        description="Within the hour: for each hour that ended, the buckets of the previous two days flagged by the "
        "windows ending in it (what was known at that hour). Hourly partitions "
        "(usage_anomalies_hourly_job); a run replaces its own partition_hour's rows, so one bucket may "
        "appear under several hours.",
        grain="one row per partition_hour, customer, meter, bucket and kind",
        written_by=("marts/usage_anomalies_hourly",),
        columns=(
            *_ANOMALY_COLUMNS,
            _c("partition_hour", TSTZ, "the hour (its start, UTC) whose run flagged the row: the partition"),
        ),
    ),
    Table(
        name="marts.forecast_model_selection",
        description="The weekly forecasting model choice per series (forecast_selection_job, Sundays), reused by "
        "the nightly forecasts for 7 days, with the chosen model's cached conformal calibration. "
        "Replaced whole each week.",
        grain="one row per series (subscription item)",
        written_by=("marts/forecast_model_selection",),
        columns=(
            _c("series_id", VARCHAR, "the series: a subscription item id"),
            _c(
                "model",
                VARCHAR,
                "`MSTL`, `AutoTheta`, `SeasonalNaive`, `CrostonOptimized`, or a fallback rule "
                "(`fallback:zeros`, `fallback:new_series`, `fallback:constant`, "
                "`fallback:short_history`)",
            ),
            _c(
                "backtest_error",
                DOUBLE,
                "rolling-origin cross-validation error (RMSSE, < 1 beats the seasonal "
                "naive); NULL where no cross-validation ran",
            ),
            _c("chosen_at", TSTZ, "the pipeline clock of the choice, UTC"),
            _c(
                "calibration_horizon",
                INTEGER,
                "steps (days) of each calibration window: the longest nightly "
                "horizon the choice serves; NULL for fallbacks and short histories",
            ),
            _c(
                "calibration_errors",
                DOUBLE_LIST,
                "the chosen model's absolute rolling-origin errors in the item's "
                "own units, 3 windows of calibration_horizon days, oldest first; "
                "NULL like calibration_horizon",
            ),
        ),
    ),
    Table(
        name="marts.usage_forecasts",
        description="Nightly end-of-period projection per metered subscription item in its current period: usage "
        "so far plus the forecast of the rest, with an interval. Quantities here are statistical "
        "estimates (DOUBLE), not billed quantities. Rebuilt whole nightly (analytics_job).",
        grain="one row per metered subscription item of a current period",
        written_by=("marts/usage_forecasts",),
        columns=(
            _c("subscription_item_id", VARCHAR, SUBSCRIPTION_ITEM_ID),
            _c("subscription_id", VARCHAR, SUBSCRIPTION_ID),
            _c("customer_id", VARCHAR, CUSTOMER_ID),
            _c("meter_name", VARCHAR, METER_NAME),
            _c("price_id", VARCHAR, PRICE_ID),
            _c("currency", VARCHAR, CURRENCY),
            _c("period_start", TSTZ, "start of the current billing period, UTC"),
            _c("period_end", TSTZ, "end (exclusive) of the current billing period, UTC"),
            _c("as_of", TSTZ, "the pipeline clock of the forecast, UTC"),
            _c("units_used", DOUBLE, "units so far this period (as a float: a forecasting input)"),
            _c(
                "remaining_forecast",
                DOUBLE,
                "forecast units for the rest of the period (today and the last day pro rata)",
            ),
            _c("projected_quantity", DOUBLE, "units_used + remaining_forecast: the projected period total"),
            _c("projected_lo", DOUBLE, "lower bound of the interval_level% interval of the total"),
            _c("projected_hi", DOUBLE, "upper bound of that interval (the days' spreads added as independent)"),
            _c("interval_level", INTEGER, "coverage of the interval, in percent (80)"),
            _c("model", VARCHAR, "the forecaster used, or the fallback rule (see marts.forecast_model_selection)"),
            _c("backtest_error", DOUBLE, "the model's cross-validation error (RMSSE); NULL where none ran"),
        ),
    ),
    Table(
        name="marts.usage_forecast_daily",
        description="The daily forecasts behind marts.usage_forecasts: one row per series and day from today to the "
        "end of the longest current period. Written with marts.usage_forecasts, replaced whole nightly.",
        grain="one row per series and UTC day",
        written_by=("marts/usage_forecast_daily",),
        columns=(
            _c("series_id", VARCHAR, "the series: a subscription item id"),
            _c("ds", TSTZ, "the forecast day (its start, UTC)"),
            _c("yhat", DOUBLE, "forecast units for the day"),
            _c("yhat_lo", DOUBLE, "lower bound of the day's interval (80%)"),
            _c("yhat_hi", DOUBLE, "upper bound of the day's interval (80%)"),
            _c("model", VARCHAR, "the forecaster used, or the fallback rule"),
            _c("backtest_error", DOUBLE, "the model's cross-validation error (RMSSE); NULL where none ran"),
            _c(
                "interval_method",
                VARCHAR,
                "how the interval was made: `conformal`, `model`, `empirical` (Croston) or `rule` (fallbacks)",
            ),
        ),
    ),
    Table(
        name="marts.tier_projections",
        description="Nightly, per metered subscription item in its current period: the tier it is projected to end "
        "in, the chance of crossing the current tier's threshold this period, when, and the projected "
        "amount (the rating engine on the projected quantity). Written with marts.usage_forecasts.",
        grain="one row per metered subscription item of a current period",
        written_by=("marts/tier_projections",),
        columns=(
            _c("subscription_item_id", VARCHAR, SUBSCRIPTION_ITEM_ID),
            _c("subscription_id", VARCHAR, SUBSCRIPTION_ID),
            _c("customer_id", VARCHAR, CUSTOMER_ID),
            _c("price_id", VARCHAR, PRICE_ID),
            _c("meter_name", VARCHAR, METER_NAME),
            _c("currency", VARCHAR, CURRENCY),
            _c("period_start", TSTZ, "start of the current billing period, UTC"),
            _c("period_end", TSTZ, "end (exclusive) of the current billing period, UTC"),
            _c("current_tier", BIGINT, "the tier usage so far is in, from 0; NULL for per-unit prices"),
            _c("projected_tier", BIGINT, "the tier the projected quantity falls in, from 0; NULL for per-unit prices"),
            _c("tier_count", BIGINT, "number of tiers of the price"),
            _c(
                "next_threshold",
                QUANTITY,
                "the current tier's upper bound, DECIMAL(38,9) units; NULL for the last, open tier",
            ),
            _c("crossing_probability", DOUBLE, "probability (0..1) of passing next_threshold this period"),
            _c(
                "days_until_threshold",
                DOUBLE,
                "days until the threshold along the expected path; NULL if not expected this period",
            ),
            _c("projected_amount", BIGINT, "the rating engine on the projected quantity, minor units (integer)"),
            _c("amount_so_far", BIGINT, "our rating of the usage so far, minor units (integer)"),
        ),
    ),
)

# ---- ops -------------------------------------------------------------------------------------------------------
OPS: tuple[Table, ...] = (
    Table(
        name="ops.proposed_actions",
        description="Every proposed action and where it stands: the warehouse copy of the action ledger "
        "(data/ops/actions.sqlite), replaced whole by each ops sync. Analytics propose; a person "
        "approves; only the push job acts. rationale and evidence may quote customer text: show them "
        "escaped, never execute them.",
        grain="one row per action",
        key=("action_id",),
        written_by=("ops/proposed_actions",),
        columns=(
            _c("action_id", VARCHAR, "`act_` + a hash of proposer, kind and the finding: stable across reruns"),
            _c(
                "kind",
                VARCHAR,
                "`metadata_update`, `invoice_line_description`, `pending_invoice_item`, "
                "`credit_note`, `tier_upgrade_quote`, `subscription_change`, `payment_retry`, "
                "`support_case`, `chat_message` or `customer_email`",
            ),
            _c("platform", VARCHAR, "the target customer's platform: `stripe`, `chargebee`, `recurly` or `zuora`"),
            _c("target_type", VARCHAR, "`customer`, `subscription` or `invoice`"),
            _c("target_id", VARCHAR, "canonical id of the target"),
            _c("params", JSON, "the typed parameters: the only input to execution"),
            _c("rationale", VARCHAR, "plain-language reason (untrusted text; never executed)"),
            _c("evidence", JSON, "the numbers behind it, e.g. expected and billed amounts and a query for the events"),
            _c("confidence", DOUBLE, "0..1"),
            _c(
                "proposer",
                VARCHAR,
                "e.g. `analytics:invoice_reconciliation`, `analytics:usage_anomalies`, `analytics:usage_forecasts`",
            ),
            _c("created_at", TSTZ, "pipeline clock time of the proposal, UTC"),
            _c("expires_at", TSTZ, "after this (pipeline clock) an undecided proposal expires, UTC"),
            _c("amount", BIGINT, "minor units (integer), for kinds that move money; NULL otherwise"),
            _c("currency", VARCHAR, "currency of amount, ISO 4217 lower case; NULL when amount is"),
            _c("required_approvals", INTEGER, "approvals by distinct people needed: 1 or 2"),
            _c("violations", JSON, "business-rule violations (status `invalid`); `[]` when none"),
            _c(
                "status",
                VARCHAR,
                "`proposed`, `partially_approved`, `approved`, `pushing`, `succeeded`, `failed`, "
                "`blocked`, `unknown`, `rejected`, `expired` or `invalid`",
            ),
            _c("status_reason", VARCHAR, "why failed, blocked, rejected or expired; NULL otherwise"),
            _c("platform_object", VARCHAR, "the platform object created or changed; NULL until pushed"),
            _c("updated_at", TSTZ, "when the status last changed (wall clock), UTC"),
        ),
    ),
    Table(
        name="ops.approvals",
        description="One row per approval or rejection of an action (copy of the action ledger). A launchpad "
        "approval records the identity the person claimed (Dagster OSS has no login).",
        grain="one row per decision",
        key=("approval_id",),
        written_by=("ops/approvals",),
        columns=(
            _c("approval_id", BIGINT, "sequence number of the decision"),
            _c("action_id", VARCHAR, "the action decided (see ops.proposed_actions)"),
            _c("approver", VARCHAR, "who decided (`policy:<kind>` for the policy's own approvals)"),
            _c("decision", VARCHAR, "`approve` or `reject`"),
            _c("reason", VARCHAR, "the approver's reason (free text)"),
            _c("method", VARCHAR, "`cli`, `launchpad` or `policy`"),
            _c("recorded_at", TSTZ, "when it was recorded (wall clock), UTC"),
            _c("audit_seq", BIGINT, "its row in ops.audit_log (seq)"),
        ),
    ),
    Table(
        name="ops.action_attempts",
        description="One row per push attempt of an approved action (copy of the action ledger).",
        grain="one row per attempt",
        key=("attempt_id",),
        written_by=("ops/action_attempts",),
        columns=(
            _c("attempt_id", BIGINT, "sequence number of the attempt"),
            _c("action_id", VARCHAR, "the action pushed (see ops.proposed_actions)"),
            _c("attempt", INTEGER, "attempt number for this action, from 1"),
            _c("idempotency_key", VARCHAR, "the key sent to the platform: `billing_ai-<action_id>-<attempt>`"),
            _c("started_at", TSTZ, "when the attempt started (wall clock), UTC"),
            _c("finished_at", TSTZ, "when it finished (wall clock), UTC; NULL while running"),
            _c(
                "outcome",
                VARCHAR,
                "`succeeded`, `already_applied`, `failed`, `blocked` or `unknown`; NULL while running",
            ),
            _c("platform_object", VARCHAR, "the object created or changed; NULL if none"),
            _c("response", JSON, "what the platform answered"),
            _c("error", VARCHAR, "the error, for failed, blocked or unknown outcomes"),
        ),
    ),
    Table(
        name="ops.audit_log",
        description="The hash chain of every proposal, approval, refusal, rejection, expiry, push attempt and "
        "outcome (copy of the action ledger): row_hash = sha256(prev_hash + canonical JSON of (seq, "
        "recorded_at, actor, event, action_id, details)). The blocking check `audit_chain_verifies` "
        "verifies it; `billing-ai audit verify` does too.",
        grain="one row per audit event",
        key=("seq",),
        written_by=("ops/audit_log",),
        columns=(
            _c("seq", BIGINT, "position in the chain, from 1"),
            _c("recorded_at", VARCHAR, "when it happened (wall clock), ISO 8601 text, hashed exactly as written"),
            _c("actor", VARCHAR, "who or what acted: a person, a proposer, `clock`, the push job"),
            _c(
                "event",
                VARCHAR,
                "`proposed`, `approved`, `rejected`, `approval_refused`, `expired`, `push_attempt`, `push_outcome`, …",
            ),
            _c("action_id", VARCHAR, "the action concerned; NULL for events of no action"),
            _c("details", VARCHAR, "canonical JSON text of the event's details, hashed exactly as written"),
            _c("prev_hash", VARCHAR, "the previous row's row_hash (64 zeros for the first)"),
            _c("row_hash", VARCHAR, "sha256 hex of prev_hash + the canonical content"),
        ),
    ),
)

TABLES: dict[str, Table] = {t.name: t for t in (*CORE, *MARTS, *OPS)}


def table(name: str) -> Table:
    """The contract of ``name`` (``"core.customers"``)."""
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"{name!r} is not in the analyst contract (billing_ai/contract.py)") from None


def for_asset(asset_key: str) -> Table | None:
    """The table an asset is named after (``"core/customers"`` -> core.customers), or None."""
    found = TABLES.get(asset_key.replace("/", ".", 1))
    return found if found is not None and found.asset_key == asset_key else None


def written_by(asset_key: str) -> list[Table]:
    """Every table whose ``written_by`` names ``asset_key`` (patterns with ``*`` included)."""
    return [t for t in TABLES.values() if any(fnmatch.fnmatchcase(asset_key, w) for w in t.written_by)]


# ---- the docs page ---------------------------------------------------------------------------------------------
def _md(text: str) -> str:
    """Escape what would break a Markdown table cell (pipes, even inside code spans in GFM)."""
    return text.replace("\\", "\\\\").replace("|", "\\|")


_INTRO = """\
# The warehouse contract: `core`, `marts`, `ops`

The analysts' tables. The pipeline writes one DuckDB file (by default `data/warehouse.duckdb`; see
`BILLING_AI_WAREHOUSE`). Read the published read-only snapshot, `data/published/warehouse.duckdb`, or use
`billing-ai query "SQL"`: the snapshot is swapped in atomically after each run, so a reader never sees a
half-written state and never meets a lock error.

## Schemas

| schema | what it holds | contract |
| --- | --- | --- |
| `raw` | platform payloads and usage records as landed | **no**: may change with any release |
| `core` | one canonical, platform-independent model of the billing platforms' objects and the usage events | yes |
| `marts` | analytics over core: usage buckets, rating, reconciliation, anomalies, forecasts | yes |
| `ops` | the warehouse copy of the action ledger: proposals, approvals, push attempts, audit chain | yes |

## Stability

Names, columns, column order and types in `core`, `marts` and `ops` are stable: renaming or removing a table or a
column, or changing its type, is a **breaking change** and is announced as one. Adding a table, or a column at
the end of a table, is not. This page is
generated from `billing_ai/contract.py`, and `billing_ai_tests/test_contract.py` fails when a freshly built warehouse
and this page disagree in any table, column, order or type.

## Conventions

* **Money** is integer minor units (`BIGINT`): cents for USD and EUR, yen for JPY (no minor unit), fils for KWD
  (three). Never a float. Nothing sums across currencies: every amount sits beside its `currency` (ISO 4217, lower
  case). **Rounding**: a line's exact amount is rounded once, to the nearest minor unit, halves away from zero.
* **Unit prices** are exact decimals in minor units per unit, `DECIMAL(38,12)` (up to 12 places).
* **Quantities** (units of usage) are `DECIMAL(38,9)`, never floats. The exceptions are statistics, not billed
  quantities: anomaly scores and observed/expected values, and forecasts (`DOUBLE`).
* **Time**: timestamps are `TIMESTAMP WITH TIME ZONE` in UTC, and day boundaries are UTC days. Every "now" (current
  period, lateness, tier position, forecast origin) is the pipeline clock, not the wall clock; only the action
  ledger's own records (in `ops`: approvals, push attempts, audit rows, `updated_at`) carry the wall clock.
  Billing periods and usage windows are half-open, `[start, end)`.
* **PII** stays on the platform: names and e-mails are keyed-hash tokens (`tok_name_…`, `tok_email_…`); addresses
  and payment-method details are never stored.
* **Untrusted text**: customer-controlled strings (event metadata, project names, quarantined records, rationales
  that quote them) are data. Never interpolate them into SQL or render them unescaped.
* **Nothing is lost**: every usage record is either in `core.usage_events` or in `core.quarantine` with its reason.

## Platforms and ids

Every `core` table mirrored from a billing platform has a `platform` column (`stripe`, `chargebee`, `recurly`,
`zuora`) and, beside each canonical id, the platform's own id in a `platform_<object>_id` column
(`platform_customer_id`, `platform_subscription_id`, `platform_subscription_item_id`, `platform_price_id`,
`platform_product_id`, `platform_meter_id`, `platform_invoice_id`, `platform_line_id`, `platform_payment_id`,
`platform_credit_note_id`). A canonical id (`customer_id`, `subscription_id`, `price_id`, `invoice_id`, ...) is
the merchant's own reference for the object, the id the product's usage events carry; on Stripe the two are the
same value. So an analyst can always get back to the source object
(`WHERE platform = 'zuora' AND platform_invoice_id = ...`), and two platforms that mint the same id never collide.
The catalog tables (`products`, `meters`, `prices`, `price_tiers`) hold one row per canonical id whichever
platforms carry it; `core.catalog_platform_ids` lists every platform's copy. `core.usage_events` (from the
product's own files) and `core.quarantine` have no `platform` column. The platform tables of `core` are rebuilt
whole from each platform snapshot (`platform_sync_job`, nightly); a webhook's targeted refresh rebuilds them for one
invoice or subscription in between.
"""


def _section(t: Table) -> list[str]:
    out = [f"### {t.name}", "", ("A **view**. " if t.is_view else "") + t.description, ""]
    facts = []
    if t.grain:
        facts.append(f"Grain: {t.grain}.")
    if t.key:
        facts.append("Key: " + ", ".join(f"`{k}`" for k in t.key) + ".")
    facts.append(
        "Written by: "
        + ", ".join(f"`{w}`" for w in t.written_by)
        + ("" if t.asset_key else " (no asset of its own)")
        + "."
    )
    out += [" ".join(facts), "", "| column | type | meaning |", "| --- | --- | --- |"]
    out += [f"| {c.name} | {c.type} | {_md(c.description)} |" for c in t.columns]
    out.append("")
    return out


def render_markdown() -> str:
    """The whole ``docs/contract.md`` page."""
    lines = [
        f"<!-- generated from billing_ai/contract.py; do not edit by hand; regenerate with: {REGENERATE} -->",
        "",
        _INTRO.rstrip("\n"),
        "",
        "## Tables",
        "",
    ]
    for schema in SCHEMAS:
        names = [t for t in TABLES.values() if t.schema == schema]
        lines.append(f"* `{schema}`: " + ", ".join(f"[{t.table_name}](#{t.name.replace('.', '')})" for t in names))
    lines.append("")
    for schema in SCHEMAS:
        lines += [f"## {schema}", ""]
        for t in TABLES.values():
            if t.schema == schema:
                lines += _section(t)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m billing_ai.contract", description="Print the warehouse contract page (docs/contract.md)."
    )
    parser.add_argument("--write", metavar="PATH", help="write the page to PATH instead of printing it")
    args = parser.parse_args(argv)
    page = render_markdown()
    if args.write:
        path = Path(args.write)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
