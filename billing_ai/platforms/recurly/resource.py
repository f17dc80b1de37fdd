"""The Dagster resource holding the Recurly connection settings (ingestion; the push job has its own key)."""

from __future__ import annotations

import dagster as dg


class RecurlyResource(dg.ConfigurableResource):
    """Read access to a Recurly site (or the sandbox at ``api_base``, e.g. ``http://127.0.0.1:12111/recurly``).

    Empty ``api_base``: not configured, the ``raw.recurly_*`` tables land empty. ``api_key`` is filled from
    ``RECURLY_API_KEY`` (``EnvVar``) only when that variable is set; use a key without write permission.
    """

    api_base: str = ""
    api_key: str = ""
    requests_per_second: float = 20.0  # Recurly allows 1,000-2,000 requests per 5 minutes (sandbox sites less)
    page_size: int = 200  # Recurly's largest page

    @property
    def enabled(self) -> bool:
        return bool(self.api_base)

    def connector(self, pii_key: str):
        from billing_ai.platforms.recurly.client import RecurlyConnector

        return RecurlyConnector(
            api_key=self.api_key,
            api_base=self.api_base,
            pii_key=pii_key,
            requests_per_second=self.requests_per_second,
            page_size=self.page_size,
        )
