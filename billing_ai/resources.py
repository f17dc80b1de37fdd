"""Dagster resources: the warehouse, the clock and settings (each platform's own lives in its package).

Secrets (API keys, the PII tokenization key) come from the environment through
``EnvVar`` and are never put in config, logs or metadata.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb

from billing_ai import warehouse
from billing_ai.clock import Clock

DEFAULT_WAREHOUSE = "data/warehouse.duckdb"
DEFAULT_INBOX = "data/inbox/usage"

# Every asset and check that writes the warehouse runs in this pool. The
# instance gives it one slot (dagster.yaml): DuckDB allows a single writer.
WAREHOUSE_POOL = "warehouse"

# A failed run is retried (run_retries in dagster.yaml); writes are idempotent, so a retry never double-counts.
RUN_RETRIES = {"dagster/max_retries": "2"}


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file. Open it only while talking to DuckDB."""

    path: str = DEFAULT_WAREHOUSE
    threads: int = 0  # 0: DuckDB's default (all cores)
    memory_limit: str = ""

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        con = warehouse.connect(
            self.path, read_only=read_only, threads=self.threads or None, memory_limit=self.memory_limit or None
        )
        try:
            yield con
        finally:
            con.close()


class PipelineSettings(dg.ConfigurableResource):
    """The pipeline's clock, inbox and PII key.

    ``as_of``: an ISO instant pins "now" (the sandbox world's as_of); empty or
    "wall" uses the wall clock. Every asset reads time through :meth:`clock`.
    """

    as_of: str = ""
    inbox_dir: str = DEFAULT_INBOX
    pii_key: str = dg.EnvVar("BILLING_AI_PII_KEY")

    def clock(self) -> Clock:
        return Clock.from_setting(self.as_of)

    def inbox(self) -> Path:
        return Path(self.inbox_dir)
