"""Recurly (API v3, ``v2021-02-25``): plain httpx (``client.py``), mapped to core by ``sql/core/recurly``.

Canonical ids: account ``code`` (customer), the ``merchant_ref`` custom field (subscriptions, invoices,
credit invoices), item ``code`` (product), add-on ``code`` (price). Recurly's own ids sit beside them in
``platform_*_id``; subscription add-ons (subscription items), line items, transactions (payments) and
measured units (meters) have no merchant-set field, so their canonical id is Recurly's (docs/platforms.md, Recurly).
"""

from billing_ai.platforms.spec import PlatformSpec

SPEC = PlatformSpec(
    name="recurly",
    raw_objects=(
        "accounts",
        "account_balances",
        "items",
        "measured_units",
        "plans",
        "add_ons",
        "subscriptions",
        "invoices",
        "line_items",
        "transactions",
        "usage",
    ),
    core_sources={
        "customers": ("accounts", "account_balances"),
        "products": ("items",),
        "prices": ("add_ons", "plans", "items", "measured_units"),
        "price_tiers": ("add_ons", "plans", "items"),
        "meters": ("measured_units", "add_ons"),
        "subscriptions": ("subscriptions", "line_items", "add_ons"),
        "subscription_items": ("subscriptions", "line_items", "add_ons", "measured_units"),
        "invoices": ("invoices", "account_balances", "subscriptions", "transactions"),
        "invoice_lines": ("line_items", "invoices", "subscriptions"),
        "payments": ("transactions", "invoices"),
        "credit_notes": ("invoices", "line_items"),
        "meter_usage_summaries": ("usage", "measured_units", "subscriptions"),
    },
    resource_key="recurly",
    kinds=frozenset({"recurly"}),
)
