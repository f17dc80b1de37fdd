"""Stripe Billing: the official SDK (``client.py``), mapped to core by ``sql/core/stripe``."""

from billing_ai.platforms.spec import PlatformSpec

SPEC = PlatformSpec(
    name="stripe",
    raw_objects=(
        "customers",
        "products",
        "prices",
        "meters",
        "subscriptions",
        "invoices",
        "invoice_lines",
        "payment_intents",
        "credit_notes",
        "meter_event_summaries",
    ),
    core_sources={
        "customers": ("customers",),
        "products": ("products",),
        "prices": ("prices", "products", "meters"),
        "price_tiers": ("prices",),
        "meters": ("meters",),
        "subscriptions": ("subscriptions",),
        "subscription_items": ("subscriptions", "invoice_lines", "prices", "meters"),
        "invoices": ("invoices",),
        "invoice_lines": ("invoice_lines",),
        "payments": ("payment_intents",),
        "credit_notes": ("credit_notes",),
        "meter_usage_summaries": ("meter_event_summaries", "meters"),
    },
    resource_key="stripe",
    children={"invoice_lines": ("invoices", "invoice")},
    fetches_single_objects=True,
)
