"""Partitions of the usage tables: one per UTC event day, and a range of days backfilled as one run."""

from __future__ import annotations

import warnings

import dagster as dg

from billing_ai.clock import PARTITION_START

usage_daily_partitions = dg.DailyPartitionsDefinition(start_date=PARTITION_START, timezone="UTC", end_offset=1)

# A range of usage days (the nightly late window, a first load) runs as one run: the dedup and the late
# flags read the range at once, and one run holds the warehouse's single writer slot once, not per day.
SINGLE_RUN_BACKFILL = dg.BackfillPolicy.single_run()

# Dagster marks `backfill_policy=` on @asset as beta and says so (BetaWarning) each time an asset is defined
# with it. We use it knowingly (above); only that notice is silenced, no other beta or deprecation warning.
warnings.filterwarnings("ignore", message=r"Parameter `backfill_policy` of function `asset`", category=dg.BetaWarning)
