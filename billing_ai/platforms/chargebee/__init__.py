"""Chargebee (API v2, Product Catalog 2.0): plain httpx through ``PlatformHTTP`` (``client.py``),
mapped to core by ``sql/core/chargebee``. See docs/platforms.md, Chargebee, for where canonical ids live."""

from billing_ai.platforms.spec import PlatformSpec

SPEC = PlatformSpec(
    name="chargebee",
    raw_objects=(
        "customers",
        "items",
        "item_prices",
        "subscriptions",
        "invoices",
        "invoice_line_items",
        "transactions",
        "credit_notes",
        "usages",
    ),
    core_sources={
        "customers": ("customers",),
        "products": ("items",),
        "prices": ("item_prices", "items"),
        "price_tiers": ("item_prices",),
        "meters": ("items",),
        "subscriptions": ("subscriptions",),
        "subscription_items": ("subscriptions", "invoice_line_items", "invoices", "item_prices", "items"),
        "invoices": ("invoices", "subscriptions", "customers"),
        "invoice_lines": ("invoice_line_items", "invoices", "item_prices", "items", "subscriptions"),
        "payments": ("transactions",),
        "credit_notes": ("credit_notes",),
        "meter_usage_summaries": ("usages", "item_prices", "items", "subscriptions"),
    },
    resource_key="chargebee",
    kinds=frozenset({"chargebee"}),
    children={"invoice_line_items": ("invoices", "invoice_id")},
    fetches_single_objects=True,
)
