"""core.quarantine: every record refused anywhere in ingestion, with its reason, never dropped.

Usage files quarantine at landing and validation (``source`` ``usage_file`` /
``usage_events``); platform connectors quarantine objects they cannot map
(``source`` ``<platform>_<object>``, e.g. ``chargebee_invoices``).
"""

QUARANTINE_DDL = """
CREATE SCHEMA IF NOT EXISTS core;
CREATE TABLE IF NOT EXISTS core.quarantine (
    source VARCHAR, record_key VARCHAR, partition_date DATE, reason VARCHAR, detail VARCHAR, record VARCHAR,
    quarantined_at TIMESTAMPTZ);
"""
