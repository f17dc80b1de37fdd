"""The Dagster resource holding the Chargebee connection settings."""

from __future__ import annotations

import dagster as dg


class ChargebeeResource(dg.ConfigurableResource):
    """Read access to a Chargebee site (``https://<site>.chargebee.com``) or the sandbox at ``api_base``.

    Empty ``api_base``: Chargebee is not configured and its raw tables land empty. ``api_key`` comes from
    ``CHARGEBEE_API_KEY`` (use a read-only key: only the push job writes).
    """

    api_base: str = ""
    api_key: str = ""
    requests_per_second: float = 10.0  # client-side, under Chargebee's per-site limits
    page_size: int = 100

    @property
    def enabled(self) -> bool:
        return bool(self.api_base)

    def connector(self, pii_key: str):
        from billing_ai.platforms.chargebee.client import ChargebeeConnector

        return ChargebeeConnector(
            api_key=self.api_key,
            api_base=self.api_base,
            pii_key=pii_key,
            requests_per_second=self.requests_per_second,
            page_size=self.page_size,
        )
