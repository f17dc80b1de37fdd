"""Partitions of the usage tables: one per UTC event day."""

from __future__ import annotations

import dagster as dg

from billing_ai.clock import PARTITION_START

usage_daily_partitions = dg.DailyPartitionsDefinition(start_date=PARTITION_START, timezone="UTC", end_offset=1)
