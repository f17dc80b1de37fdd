"""Partitions of the usage tables: one per UTC event day."""

from __future__ import annotations

import os

import dagster as dg

# The first event day the pipeline covers. Events before it are quarantined
# as too old rather than silently dropped. The default covers the sandbox's
# default world; production sets BILLING_AI_PARTITION_START.
PARTITION_START = os.environ.get("BILLING_AI_PARTITION_START", "2026-06-01")

usage_daily_partitions = dg.DailyPartitionsDefinition(start_date=PARTITION_START, timezone="UTC", end_offset=1)
