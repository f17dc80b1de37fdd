"""Bad input never disappears: every record is accepted or quarantined with its reason."""

import json
import shutil
from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest

from billing_ai import warehouse as wh
from billing_ai.clock import PARTITION_START, parse_instant
from billing_ai.ingestion.usage_events import build_usage_events
from billing_ai.ingestion.usage_files import land_inbox
from billing_ai.metadata import markdown_preview

HOSTILE_SQL = "x'); DROP TABLE core.customers; --"
MARKUP = "<script>alert('pwn')</script>|**bold**"


@pytest.fixture(scope="module")
def corpus(tiny_world, tiny_warehouse, tmp_path_factory):
    """Land a corpus of bad records into a copy of the tiny warehouse."""
    tmp = tmp_path_factory.mktemp("corpus")
    path = tmp / "w.duckdb"
    shutil.copy(tiny_warehouse, path)
    con = wh.connect(path)
    sub = wh.run(con, "SELECT subscription_id, customer_id FROM core.subscriptions ORDER BY 1 LIMIT 1")[0]
    day = tiny_world.config.start_dt() + timedelta(days=20, hours=10)
    ts = day.strftime("%Y-%m-%dT%H:%M:%SZ")

    def ev(eid, **over):
        rec = {
            "event_id": eid,
            "customer_id": sub[1],
            "subscription_id": sub[0],
            "meter_name": "api_calls",
            "quantity": "7",
            "timestamp": ts,
            "metadata": {"project": "p1", "endpoint": "/v1/search"},
        }
        rec.update(over)
        return {k: v for k, v in rec.items() if v is not _DROP}

    cases = {
        "ok-1": (ev("ok-1"), None),
        "markup": (ev("markup", metadata={"project": MARKUP}), None),
        "wrong-type": (ev(12345), "wrong_type"),
        "bad-qty": (ev("bad-qty", quantity="abc"), "bad_quantity"),
        "neg-qty": (ev("neg-qty", quantity="-5"), "negative_quantity"),
        "nan-qty": (ev("nan-qty", quantity="NaN"), "bad_quantity"),
        "huge-qty": (ev("huge-qty", quantity="1e30"), "huge_quantity"),
        "no-customer": (ev("no-customer", customer_id=_DROP), "missing_field"),
        "ghost-customer": (ev("ghost-customer", customer_id="cus_nobody", subscription_id=None), "unknown_customer"),
        "ghost-sub": (ev("ghost-sub", subscription_id="sub_nobody"), "unknown_subscription"),
        "ghost-meter": (ev("ghost-meter", meter_name="teleport_minutes"), "unknown_meter"),
        "old": (ev("old", timestamp="1999-01-01T00:00:00Z"), "timestamp_too_old"),
        "future": (ev("future", timestamp="2099-01-01T00:00:00Z"), "timestamp_in_future"),
        "no-ts": (ev("no-ts", timestamp=_DROP), "missing_timestamp"),
        "bad-ts": (ev("bad-ts", timestamp="yesterday"), "bad_timestamp"),
        "big-meta": (ev("big-meta", metadata={"project": "x" * 10_000}), "oversized_metadata"),
        "sql": (ev("sql", customer_id=HOSTILE_SQL, subscription_id=None), "unknown_customer"),
        "dup": (ev("ok-1", quantity="99"), "duplicate_of"),
    }
    lines = [json.dumps(rec).encode() for rec, _ in cases.values()]
    lines += [b"{oops", b"[1, 2]", b'{"event_id": "enc-\xff\xfe", "quantity": "1"}']
    inbox = tmp / "inbox"
    inbox.mkdir()
    (inbox / "corpus-1.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    (inbox / "corpus-2.csv").write_text(
        "event_id,customer_id,subscription_id,meter_name,quantity,timestamp,metadata\n"
        f"csv-ok,{sub[1]},{sub[0]},api_calls,3,{ts},\n"
        f"csv-extra,{sub[1]},{sub[0]},api_calls,3,{ts},,surplus\n"
    )
    (inbox / "corpus-3.parquet").write_bytes(b"PAR1 this is not really parquet")
    now = parse_instant(tiny_world.config.as_of)
    results = {r.file_name: r for r in land_inbox(con, inbox, now, date.fromisoformat(PARTITION_START))}
    stats = build_usage_events(con, day.date(), day.date(), now)
    yield {"con": con, "cases": cases, "results": results, "stats": stats, "day": day.date(), "inbox": inbox}
    con.close()


class _Drop:
    pass


_DROP = _Drop()


def reason_of(con, key: str) -> str | None:
    rows = wh.run(
        con,
        "SELECT reason FROM core.quarantine WHERE record_key = ? OR record LIKE ? ORDER BY reason",
        [key, f'%"event_id": "{key}"%'],
    )
    return rows[0][0] if rows else None


def test_each_bad_record_has_its_reason(corpus):
    con = corpus["con"]
    for key, (_rec, expected) in corpus["cases"].items():
        if expected is None:
            assert wh.run(con, "SELECT count(*) FROM core.usage_events WHERE event_id = ?", [key])[0][0] == 1, key
        elif key == "dup":
            rows = wh.run(con, "SELECT reason, detail FROM core.quarantine WHERE record_key = 'ok-1'")
            assert rows == [("duplicate_of", "corpus-1.ndjson:1")]
        elif key == "wrong-type":
            assert wh.run(con, "SELECT reason FROM core.quarantine WHERE record LIKE '%12345%'") == [("wrong_type",)]
        else:
            got = wh.run(con, "SELECT reason FROM core.quarantine WHERE record LIKE ?", [f'%"{key}"%'])
            if not got:
                got = wh.run(con, "SELECT reason FROM core.quarantine WHERE record_key = ?", [key])
            assert got == [(expected,)], key


def test_unreadable_lines_are_quarantined_not_fatal(corpus):
    con = corpus["con"]
    reasons = dict(
        wh.run(
            con,
            "SELECT reason, count(*) FROM core.quarantine WHERE record_key LIKE 'corpus-1%' "
            "OR record_key LIKE 'corpus-2%' GROUP BY 1",
        )
    )
    assert reasons["invalid_json"] == 1 and reasons["not_an_object"] == 1
    assert reasons["invalid_encoding"] == 1
    assert reasons["malformed_line"] == 1  # the CSV line with a surplus column
    assert wh.run(con, "SELECT count(*) FROM core.usage_events WHERE event_id = 'csv-ok'")[0][0] == 1


def test_a_malformed_file_does_not_stop_the_others(corpus):
    res = corpus["results"]
    assert res["corpus-3.parquet"].status == "failed"
    assert res["corpus-1.ndjson"].status == "landed" and res["corpus-2.csv"].status == "landed"
    con = corpus["con"]
    assert wh.run(con, "SELECT reason FROM core.quarantine WHERE record_key = 'corpus-3.parquet'") == [
        ("unreadable_file",)
    ]


def test_records_in_equal_accepted_plus_quarantined(corpus):
    res = corpus["results"]
    ndjson = res["corpus-1.ndjson"]
    assert ndjson.records == len(corpus["cases"]) + 3
    assert ndjson.records == ndjson.landed + ndjson.quarantined
    stats = corpus["stats"]
    assert stats["records"] == stats["accepted"] + stats["quarantined"]
    con = corpus["con"]
    day = corpus["day"]
    # the landing's index counts every landed record of the day; a text file's are raw rows too
    in_day = wh.run(con, "SELECT sum(events) FROM raw.usage_file_days WHERE event_date = ?", [day])[0][0]
    assert wh.run(con, "SELECT count(*) FROM raw.usage_events WHERE CAST(event_ts AS DATE) = ?", [day]) == wh.run(
        con,
        "SELECT sum(events) FROM raw.usage_file_days JOIN raw.usage_files USING (file_id) "
        "WHERE event_date = ? AND format <> 'parquet'",
        [day],
    )
    accepted = wh.run(con, "SELECT count(*) FROM core.usage_events WHERE event_date = ?", [day])[0][0]
    quarantined = wh.run(
        con, "SELECT count(*) FROM core.quarantine WHERE source = 'usage_events' AND partition_date = ?", [day]
    )[0][0]
    assert in_day == accepted + quarantined


def test_hostile_strings_are_data(corpus):
    con = corpus["con"]
    assert wh.table_exists(con, "core.customers") and wh.count(con, "core.customers") == 12
    stored = wh.run(con, "SELECT project FROM core.usage_events WHERE event_id = 'markup'")[0][0]
    assert stored == MARKUP  # kept verbatim ...
    md = markdown_preview(pl.DataFrame({"project": [stored]})).value
    assert "<script>" not in md and "&lt;script&gt;" in md  # ... and escaped when shown


def test_relanding_the_same_files_lands_nothing(corpus, tiny_world):
    con = corpus["con"]
    index = "SELECT sum(events) FROM raw.usage_file_days"
    before = wh.count(con, "raw.usage_events"), wh.run(con, index), wh.count(con, "core.quarantine")
    again = land_inbox(
        con, corpus["inbox"], parse_instant(tiny_world.config.as_of), date.fromisoformat(PARTITION_START)
    )
    assert again == []
    assert (wh.count(con, "raw.usage_events"), wh.run(con, index), wh.count(con, "core.quarantine")) == before


def test_objects_a_connector_refuses_land_in_quarantine_and_are_counted():
    """records in = landed + quarantined for platform objects too; a second landing replaces, never doubles."""
    import duckdb

    from billing_ai.ingestion.platform_assets import land_raw
    from billing_ai.platforms.spec import QUARANTINE_KEY, PlatformSpec, quarantine_row

    spec = PlatformSpec(name="acme", raw_objects=("customers", "invoices"), core_sources={}, resource_key="acme")
    snapshot = {
        "customers": [{"id": "c1", "name": "tok"}, {"id": "c2"}],
        "invoices": [],
        QUARANTINE_KEY: [
            quarantine_row(
                "invoices",
                "inv_9",
                "malformed_money",
                {"id": "inv_9", "total": "1,5"},
                "total is not an integer amount",
            ),
            quarantine_row("customers", None, "missing_id", "<customer/>"),
        ],
    }
    con = duckdb.connect()
    con.execute("CREATE SCHEMA raw; CREATE SCHEMA core")
    now = datetime(2026, 11, 1, tzinfo=UTC)
    for _ in range(2):
        counts = land_raw(con, spec, snapshot, now)
    assert counts == {QUARANTINE_KEY: 2, "customers": 2, "invoices": 0}
    assert con.execute("SELECT count(*) FROM raw.acme_customers").fetchall() == [(2,)]
    rows = con.execute(
        "SELECT source, record_key, reason, detail, record FROM core.quarantine ORDER BY source"
    ).fetchall()
    assert rows == [
        ("acme_customers", None, "missing_id", "", "<customer/>"),
        (
            "acme_invoices",
            "inv_9",
            "malformed_money",
            "total is not an integer amount",
            '{"id": "inv_9", "total": "1,5"}',
        ),
    ]
