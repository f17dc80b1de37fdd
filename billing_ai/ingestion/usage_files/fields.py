"""What a usage record is, and how its fields read as text: the record's fields, and the SQL that
writes a typed value (a Parquet timestamp or decimal) as the text it has always been judged and shown as,
the record's event time and UTC day. Shared by the readers, the landing and the build
(``billing_ai.ingestion.usage_events``)."""

from __future__ import annotations

from pathlib import Path

# `received_at` (optional) is when the product emitted the event to billing and to this log; an
# event whose billing period was invoiced before it was received is late
FIELDS = (
    "event_id",
    "customer_id",
    "subscription_id",
    "meter_name",
    "quantity",
    "timestamp",
    "metadata",
    "received_at",
)


# the fields raw keeps for a record of a text file (event_id is kept for every record)
TEXT_FIELDS = ("customer_id", "subscription_id", "meter_name", "quantity", "timestamp", "metadata", "received_at")


# how a typed timestamp is written as text (in the quarantine record, and as the build sees it)
TS_TEXT = "%Y-%m-%dT%H:%M:%S.%fZ"


# typed timestamps in this range survive strftime(TS_TEXT) -> TRY_CAST(... AS TIMESTAMPTZ) unchanged,
# so they can be read typed; anything else is read as that text
TS_SAFE = "BETWEEN TIMESTAMPTZ '1000-01-01 00:00:00+00' AND TIMESTAMPTZ '9999-12-31 23:59:59.999999+00'"


def blank(col: str) -> str:
    """SQL: ``col IS NULL OR trim(col) = ''`` (empty, or only space separators). trim() decodes the whole
    string, so a value starting with a printable ASCII character (not blank) skips it -- with CASE:
    DuckDB evaluates both sides of an OR/AND, but only the chosen branch of a CASE."""
    return f"CASE WHEN {col} IS NULL THEN true WHEN {col} >= '!' AND {col} < '~' THEN false ELSE trim({col}) = '' END"


# A record's fields as text, as received (see records(): a typed value as the text it was always
# written as): what every check judges, and what a quarantine record shows
QUANTITY_TEXT = (
    "coalesce(quantity, CASE quantity_scale "
    + " ".join(f"WHEN {s} THEN CAST(CAST(quantity_dec AS DECIMAL(38, {s})) AS VARCHAR)" for s in range(10))
    + " END)"
)


TIMESTAMP_TEXT = f"coalesce(\"timestamp\", strftime(ts_typed, '{TS_TEXT}'))"


RECEIVED_AT_TEXT = f"coalesce(received_at, strftime(received_ts, '{TS_TEXT}'))"


# A landed record's event_ts, from its fields: what the landing computed (see _checked: a typed
# timestamp inside the landing window is itself, a text one is parsed), for every landed record
EVENT_TS = 'coalesce(ts_typed, TRY_CAST("timestamp" AS TIMESTAMPTZ))'


# the UTC day of event_ts, by arithmetic on the instant (no time zone conversion; a landed record holds
# no infinite timestamp, the one case where it differs from CAST(event_ts AT TIME ZONE 'UTC' AS DATE))
EVENT_DATE = "CAST(make_timestamp(epoch_us(event_ts)) AS DATE)"


def record_json(metadata_json: str = "metadata") -> str:
    """SQL: the quarantine record of a record that is not a line of text: its fields as text, as JSON
    (``metadata_json``: its metadata's JSON text, see Records)."""
    return (
        f"CAST(to_json(struct_pack(event_id, customer_id, subscription_id, meter_name, quantity := {QUANTITY_TEXT}, "
        f'"timestamp" := {TIMESTAMP_TEXT}, metadata := CAST({metadata_json} AS VARCHAR), '
        f"received_at := {RECEIVED_AT_TEXT})) AS VARCHAR)"
    )


def quote(path: Path | str) -> str:
    return str(path).replace("'", "''")


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
