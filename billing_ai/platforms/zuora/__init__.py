"""Zuora (REST v1): plain httpx through PlatformHTTP (``client.py``), mapped to core by ``sql/core/zuora``.

Canonical ids: account ``accountNumber`` (customer), ``subscriptionNumber``, rate plan charge ``number``
(subscription item), product ``sku``, and custom fields (``price_id__c``, ``invoice_id__c``, ``line_id__c``,
``payment_id__c``, ``credit_note_id__c``, ``meter_id__c``) where Zuora mints its own ids; the 32-hex Zuora
ids sit beside them in ``platform_*_id``.
"""

from billing_ai.platforms.spec import PlatformSpec

SPEC = PlatformSpec(
    name="zuora",
    raw_objects=(
        "accounts",
        "products",
        "product_rate_plan_charges",
        "units_of_measure",
        "subscriptions",
        "invoices",
        "invoice_items",
        "payments",
        "credit_memos",
        "usage",
    ),
    core_sources={
        "customers": ("accounts",),
        "products": ("products",),
        "prices": ("product_rate_plan_charges", "products"),
        "price_tiers": ("product_rate_plan_charges",),
        "meters": ("units_of_measure", "product_rate_plan_charges"),
        "subscriptions": ("subscriptions",),
        "subscription_items": ("subscriptions", "product_rate_plan_charges"),
        "invoices": ("invoices", "invoice_items", "payments"),
        "invoice_lines": ("invoice_items", "invoices", "product_rate_plan_charges"),
        "payments": ("payments", "invoices"),
        "credit_notes": ("credit_memos", "invoices"),
        "meter_usage_summaries": ("usage", "units_of_measure", "product_rate_plan_charges"),
    },
    resource_key="zuora",
    kinds=frozenset({"zuora"}),
    children={"invoice_items": ("invoices", "invoiceId")},
    fetches_single_objects=True,
)
