"""The Dagster resource holding Stripe's connection settings (empty ``api_base``: not configured)."""

from __future__ import annotations

import dagster as dg


class StripeResource(dg.ConfigurableResource):
    """Read access to a Stripe account (or the sandbox at ``api_base``).

    Use a restricted read-only key for ingestion: only the push job writes.
    """

    api_key: str = dg.EnvVar("STRIPE_API_KEY")
    api_base: str = "https://api.stripe.com"
    max_network_retries: int = 3
    requests_per_second: float = 20.0  # client-side limit, under Stripe's 25/s in test mode
    page_size: int = 100

    @property
    def enabled(self) -> bool:
        return bool(self.api_base)

    def connector(self, pii_key: str):
        from billing_ai.platforms.stripe.client import StripeConnector

        return StripeConnector(
            api_key=self.api_key,
            api_base=self.api_base,
            max_network_retries=self.max_network_retries,
            requests_per_second=self.requests_per_second,
            page_size=self.page_size,
            pii_key=pii_key,
        )
