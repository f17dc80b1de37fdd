"""The Dagster resource holding Zuora's connection settings (empty ``api_base``: not configured)."""

from __future__ import annotations

import dagster as dg


class ZuoraResource(dg.ConfigurableResource):
    """Read access to a Zuora tenant (or the sandbox's ``/zuora`` facade) with an OAuth client.

    Use an OAuth client whose role can only read: only the push job writes.
    """

    api_base: str = ""  # e.g. https://rest.apisandbox.zuora.com; empty: Zuora is not ingested
    client_id: str = ""
    client_secret: str = ""
    requests_per_second: float = 10.0
    page_size: int = 40  # v1 lists allow 40, Object Query 99

    @property
    def enabled(self) -> bool:
        return bool(self.api_base)

    def connector(self, pii_key: str):
        from billing_ai.platforms.zuora.client import ZuoraConnector

        return ZuoraConnector(
            api_base=self.api_base,
            client_id=self.client_id,
            client_secret=self.client_secret,
            pii_key=pii_key,
            requests_per_second=self.requests_per_second,
            page_size=self.page_size,
        )
