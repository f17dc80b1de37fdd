"""Usage file landing and build on hand-made files: line numbers, kept files, and the migration of a
warehouse whose raw.usage_events was still the full copy of every record. Expected values are worked
out by hand from the files written here."""

import json
import os
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest

from billing_ai import warehouse as wh
from billing_ai.ingestion.usage_events import build_usage_events
from billing_ai.ingestion.usage_files import kept_dir, land_inbox

WINDOW_START = date(2026, 6, 1)
NOW = datetime(2026, 6, 10, tzinfo=UTC)
DAY = date(2026, 6, 5)


def _core(con) -> None:
    """The few core tables the build validates against: one customer with one subscription, one meter,
    and a cycle invoice for June 1-6, finalized on June 6 at 01:00."""
    wh.run(con, "CREATE TABLE core.meters AS SELECT 'api_calls' AS meter_name")
    wh.run(con, "CREATE TABLE core.customers AS SELECT 'cus_1' AS customer_id")
    wh.run(con, "CREATE TABLE core.subscriptions AS SELECT 'sub_1' AS subscription_id, 'cus_1' AS customer_id")
    wh.run(
        con,
        """CREATE TABLE core.invoices AS
                   SELECT 'sub_1' AS subscription_id, 'subscription_cycle' AS billing_reason,
                          TIMESTAMPTZ '2026-06-01 00:00:00+00' AS period_start,
                          TIMESTAMPTZ '2026-06-06 00:00:00+00' AS period_end,
                          TIMESTAMPTZ '2026-06-06 01:00:00+00' AS finalized_at""",
    )


def _line(event_id: str, **over) -> bytes:
    rec = {
        "event_id": event_id,
        "customer_id": "cus_1",
        "subscription_id": "sub_1",
        "meter_name": "api_calls",
        "quantity": "1",
        "timestamp": "2026-06-05T12:00:00Z",
        "received_at": "2026-06-05T12:00:01Z",
    }
    rec.update(over)
    return json.dumps(rec).encode()


@pytest.fixture
def con(tmp_path):
    c = wh.connect(tmp_path / "w.duckdb")
    _core(c)
    yield c
    c.close()


def test_ndjson_lines_keep_their_own_numbers_across_a_batch(con, tmp_path):
    """Three NDJSON files landed by one batch. A record's source_row is its physical line in its own
    file: blank lines count, and so do the lines the reader rejects (invalid UTF-8), which are
    quarantined as <file>:L<line>. (The former landing numbered a line by its position among the lines
    the reader kept, so every line below a rejected one was numbered one too low per rejected line.)"""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    bad = b'{"event_id": "enc-\xff"}'
    (inbox / "a.ndjson").write_bytes(
        b"\n".join(
            [
                _line("a1"),  # 1
                b"",  # 2 blank
                _line("a3"),  # 3
                b"   ",  # 4 blank
                _line("a5"),  # 5
            ]
        )
        + b"\n"
    )
    (inbox / "b.ndjson").write_bytes(
        b"\n".join(
            [
                _line("b1"),  # 1
                bad,  # 2 rejected
                bad,  # 3 rejected
                _line("b4"),  # 4
                b"",  # 5 blank
                b"{oops",  # 6 invalid JSON
                _line("b7"),  # 7
            ]
        )
        + b"\n"
    )
    (inbox / "c.ndjson").write_bytes(
        b"\n".join(
            [
                bad,  # 1 rejected
                _line("c2"),  # 2
                _line("a3"),  # 3 a copy of a.ndjson line 3
            ]
        )
        + b"\n"
    )
    results = {r.file_name: r for r in land_inbox(con, inbox, NOW, WINDOW_START)}
    assert {n: (r.records, r.landed, r.quarantined) for n, r in results.items()} == {
        "a.ndjson": (3, 3, 0),
        "b.ndjson": (6, 3, 3),
        "c.ndjson": (3, 2, 1),
    }
    # one batch: the files were read by one landing (the ledger's landing order is the files' order)
    assert wh.run(con, "SELECT file_name, file_id FROM raw.usage_files ORDER BY file_id") == [
        ("a.ndjson", 1),
        ("b.ndjson", 2),
        ("c.ndjson", 3),
    ]
    raw = wh.run(
        con,
        "SELECT f.file_name, r.source_row, r.event_id FROM raw.usage_events r "
        "JOIN raw.usage_files f USING (file_id) ORDER BY ALL",
    )
    assert raw == [
        ("a.ndjson", 1, "a1"),
        ("a.ndjson", 3, "a3"),
        ("a.ndjson", 5, "a5"),
        ("b.ndjson", 1, "b1"),
        ("b.ndjson", 4, "b4"),
        ("b.ndjson", 7, "b7"),
        ("c.ndjson", 2, "c2"),
        ("c.ndjson", 3, "a3"),
    ]
    assert wh.run(con, "SELECT record_key, reason FROM core.quarantine ORDER BY 1") == [
        ("b.ndjson:6", "invalid_json"),
        ("b.ndjson:L2", "invalid_encoding"),
        ("b.ndjson:L3", "invalid_encoding"),
        ("c.ndjson:L1", "invalid_encoding"),
    ]

    stats = build_usage_events(con, DAY, DAY, NOW)
    assert stats == {"records": 8, "accepted": 7, "quarantined": 1, "late": 0}
    assert wh.run(con, "SELECT source_file, source_row, event_id FROM core.usage_events ORDER BY 1, 2") == [
        ("a.ndjson", 1, "a1"),
        ("a.ndjson", 3, "a3"),
        ("a.ndjson", 5, "a5"),
        ("b.ndjson", 1, "b1"),
        ("b.ndjson", 4, "b4"),
        ("b.ndjson", 7, "b7"),
        ("c.ndjson", 2, "c2"),
    ]
    assert wh.run(con, "SELECT record_key, reason, detail FROM core.quarantine WHERE source = 'usage_events'") == [
        ("a3", "duplicate_of", "a.ndjson:3")
    ]


def _parquet(path: Path, event_ids: list[str], quantity: str = "2.5") -> None:
    n = len(event_ids)
    pl.DataFrame(
        {
            "event_id": event_ids,
            "customer_id": ["cus_1"] * n,
            "subscription_id": ["sub_1"] * n,
            "meter_name": ["api_calls"] * n,
            "quantity": pl.Series([quantity] * n).cast(pl.Decimal(38, 3)),
            "timestamp": [datetime(2026, 6, 5, 12, tzinfo=UTC)] * n,
            "received_at": [datetime(2026, 6, 5, 12, 1, tzinfo=UTC)] * n,
        }
    ).write_parquet(path)


def test_a_parquet_file_rewritten_in_the_inbox_does_not_change_what_landed(con, tmp_path):
    """The build reads a Parquet file's records from the copy raw keeps, which is not the inbox file: a
    producer rewriting that file in place (the same inode) changes nothing that landed."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    path = inbox / "p.parquet"
    _parquet(path, ["p1", "p2"])
    [landed] = land_inbox(con, inbox, NOW, WINDOW_START)
    assert (landed.records, landed.landed) == (2, 2)
    ((stored,),) = wh.run(con, "SELECT stored_path FROM raw.usage_files")
    assert Path(stored).parent == kept_dir(tmp_path / "w.duckdb").resolve()
    assert not os.access(stored, os.W_OK) or os.geteuid() == 0  # read-only (root may write anyway)
    with open(path, "r+b") as f:  # in place: a hard link would see this
        f.write(b"\0" * path.stat().st_size)
    assert build_usage_events(con, DAY, DAY, NOW) == {"records": 2, "accepted": 2, "quarantined": 0, "late": 0}
    assert wh.run(con, "SELECT event_id, CAST(quantity AS VARCHAR) FROM core.usage_events ORDER BY 1") == [
        ("p1", "2.500000000"),
        ("p2", "2.500000000"),
    ]


# raw.usage_files and raw.usage_events as the former landing (before raw was narrowed) created them
WIDE_DDL = """
CREATE TABLE raw.usage_files (
    file_name VARCHAR, sha256 VARCHAR PRIMARY KEY, bytes BIGINT, format VARCHAR, file_day DATE,
    records BIGINT, landed BIGINT, quarantined BIGINT, status VARCHAR, error VARCHAR, landed_at TIMESTAMPTZ);
CREATE TABLE raw.usage_events (
    event_id VARCHAR, customer_id VARCHAR, subscription_id VARCHAR, meter_name VARCHAR, quantity VARCHAR,
    "timestamp" VARCHAR, metadata VARCHAR, received_at VARCHAR, event_ts TIMESTAMPTZ, source_file VARCHAR,
    source_sha256 VARCHAR,
    source_row BIGINT, file_day DATE, landed_at TIMESTAMPTZ, received_ts TIMESTAMPTZ, quantity_dec DECIMAL(38, 9),
    quantity_scale UTINYINT);
CREATE TABLE core.quarantine (
    source VARCHAR, record_key VARCHAR, partition_date DATE, reason VARCHAR, detail VARCHAR, record VARCHAR,
    quarantined_at TIMESTAMPTZ)
"""


def test_a_wide_raw_is_narrowed_without_its_files(con, tmp_path):
    """A warehouse landed by the former code (every field in raw; Parquet values typed: the quantity
    as quantity_dec with its scale, the timestamp only as event_ts, received_at as received_ts), whose
    inbox no longer holds the files: the next landing narrows raw and keeps every field of those
    records in raw, as the text the build always judged them as; the build gives what it gave."""
    for stmt in WIDE_DDL.split(";"):
        wh.run(con, stmt)
    early, later = datetime(2026, 6, 6, tzinfo=UTC), datetime(2026, 6, 7, tzinfo=UTC)
    wh.run(
        con,
        """INSERT INTO raw.usage_files VALUES
        ('u-2026-06-05.parquet', 'sha_p', 100, 'parquet', DATE '2026-06-05', 2, 2, 0, 'landed', NULL, $early),
        ('u-2026-06-06.ndjson', 'sha_n', 100, 'ndjson', DATE '2026-06-06', 3, 2, 1, 'landed', NULL, $later),
        ('broken.parquet', 'sha_x', 9, 'parquet', NULL, NULL, 0, NULL, 'failed', 'not parquet', $early)""",
        {"early": early, "later": later},
    )
    wh.run(
        con,
        """INSERT INTO raw.usage_events VALUES
        -- Parquet: typed; p2 received after the June 1-6 invoice was finalized (late)
        ('p1', 'cus_1', 'sub_1', 'api_calls', NULL, NULL, '{"project":"x"}', NULL,
         TIMESTAMPTZ '2026-06-05 12:00:00+00', 'u-2026-06-05.parquet', 'sha_p', 1, DATE '2026-06-05', $early,
         TIMESTAMPTZ '2026-06-05 12:00:30+00', 2.5, 3),
        ('p2', 'cus_1', 'sub_1', 'api_calls', NULL, NULL, NULL, NULL,
         TIMESTAMPTZ '2026-06-05 13:00:00.25+00', 'u-2026-06-05.parquet', 'sha_p', 2, DATE '2026-06-05', $early,
         TIMESTAMPTZ '2026-06-06 02:00:00+00', 7, 0),
        -- NDJSON: text; n2 is a later copy of p1, n3 an unknown meter
        ('n1', 'cus_1', 'sub_1', 'api_calls', '4', '2026-06-05T20:00:00Z', NULL, NULL,
         TIMESTAMPTZ '2026-06-05 20:00:00+00', 'u-2026-06-06.ndjson', 'sha_n', 1, DATE '2026-06-06', $later,
         NULL, NULL, NULL),
        ('p1', 'cus_1', 'sub_1', 'api_calls', '2.5', '2026-06-05T12:00:00Z', NULL, NULL,
         TIMESTAMPTZ '2026-06-05 12:00:00+00', 'u-2026-06-06.ndjson', 'sha_n', 3, DATE '2026-06-06', $later,
         NULL, NULL, NULL)""",
        {"early": early, "later": later},
    )

    assert land_inbox(con, tmp_path / "no-inbox", NOW, WINDOW_START) == []
    assert wh.run(
        con, "SELECT file_name, file_id, fields_in_raw, stored_path FROM raw.usage_files ORDER BY file_id"
    ) == [
        ("u-2026-06-05.parquet", 1, True, None),
        ("u-2026-06-06.ndjson", 2, True, None),
        ("broken.parquet", 3, True, None),
    ]
    assert not wh.table_exists(con, "raw.usage_events_wide")
    assert wh.run(
        con,
        'SELECT file_id, source_row, event_id, quantity, "timestamp", received_at FROM raw.usage_events ORDER BY 1, 2',
    ) == [
        (1, 1, "p1", "2.500", "2026-06-05T12:00:00.000000Z", "2026-06-05T12:00:30.000000Z"),
        (1, 2, "p2", "7", "2026-06-05T13:00:00.250000Z", "2026-06-06T02:00:00.000000Z"),
        (2, 1, "n1", "4", "2026-06-05T20:00:00Z", None),
        (2, 3, "p1", "2.5", "2026-06-05T12:00:00Z", None),
    ]

    # late: p2 (received 01:00 after the invoice was finalized) and n1 (no received_at: its file landed June 7)
    assert build_usage_events(con, DAY, DAY, NOW) == {"records": 4, "accepted": 3, "quarantined": 1, "late": 2}
    rows = wh.run(
        con,
        "SELECT event_id, source_file, source_row, CAST(quantity AS VARCHAR), event_ts, is_late, "
        "project FROM core.usage_events ORDER BY event_id",
    )
    assert rows == [
        ("n1", "u-2026-06-06.ndjson", 1, "4.000000000", datetime(2026, 6, 5, 20, tzinfo=UTC), True, None),
        ("p1", "u-2026-06-05.parquet", 1, "2.500000000", datetime(2026, 6, 5, 12, tzinfo=UTC), False, "x"),
        (
            "p2",
            "u-2026-06-05.parquet",
            2,
            "7.000000000",
            datetime(2026, 6, 5, 13, 0, 0, 250000, tzinfo=UTC),
            True,
            None,
        ),
    ]
    assert wh.run(con, "SELECT record_key, reason, detail FROM core.quarantine WHERE source = 'usage_events'") == [
        ("p1", "duplicate_of", "u-2026-06-05.parquet:1")
    ]

    # a new Parquet file lands narrow next to them, and is numbered after them
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _parquet(inbox / "u-2026-06-08.parquet", ["q1", "n1"])
    [new] = land_inbox(con, inbox, NOW, WINDOW_START)
    assert (new.records, new.landed) == (2, 2)
    assert wh.run(
        con, "SELECT file_id, fields_in_raw FROM raw.usage_files WHERE file_name = 'u-2026-06-08.parquet'"
    ) == [(4, False)]
    assert build_usage_events(con, DAY, DAY, NOW) == {"records": 6, "accepted": 4, "quarantined": 2, "late": 2}
    assert wh.run(con, "SELECT record_key, detail FROM core.quarantine WHERE source = 'usage_events' ORDER BY 1") == [
        ("n1", "u-2026-06-06.ndjson:1"),
        ("p1", "u-2026-06-05.parquet:1"),
    ]


def test_a_warehouse_landed_before_the_index_is_indexed_once_with_the_same_build(con, tmp_path):
    """Before the landing's index (raw.usage_file_days, raw.usage_landing_rejects), raw held a narrow row
    per landed record of every file, Parquet ones too. Such a warehouse is indexed on first use: the
    days from those rows, a Parquet file's rows leave raw (its records are read from the kept file),
    and the record its landing quarantined (p2, timestamp before the window) is found as the kept
    file's row without a raw row, with its reason from the quarantine. The build is unchanged."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    ts = datetime(2026, 6, 5, 12, tzinfo=UTC)
    pl.DataFrame(
        {
            "event_id": ["p1", "p2", "p3"],
            "customer_id": ["cus_1"] * 3,
            "subscription_id": ["sub_1"] * 3,
            "meter_name": ["api_calls"] * 3,
            "quantity": pl.Series(["2.5", "1", "3"]).cast(pl.Decimal(38, 3)),
            "timestamp": [ts, datetime(2026, 5, 1, tzinfo=UTC), datetime(2026, 6, 4, 8, tzinfo=UTC)],
        }
    ).write_parquet(inbox / "u.parquet")
    (inbox / "u.ndjson").write_bytes(_line("n1", timestamp="2026-06-04T09:00:00Z") + b"\n" + _line("p1") + b"\n")
    land_inbox(con, inbox, NOW, WINDOW_START)
    index = (
        "SELECT f.file_name, d.event_date, d.events FROM raw.usage_file_days d JOIN raw.usage_files f "
        "USING (file_id) ORDER BY ALL"
    )
    rejects = "SELECT file_id, source_row, reason FROM raw.usage_landing_rejects ORDER BY ALL"
    ((pq,),) = wh.run(con, "SELECT file_id FROM raw.usage_files WHERE format = 'parquet'")
    assert wh.run(con, index) == [
        ("u.ndjson", date(2026, 6, 4), 1),
        ("u.ndjson", DAY, 1),
        ("u.parquet", date(2026, 6, 4), 1),
        ("u.parquet", DAY, 1),
    ]
    assert wh.run(con, rejects) == [(pq, 2, "timestamp_too_old")]
    assert wh.run(con, "SELECT count(*) FROM raw.usage_events WHERE file_id = ?", [pq]) == [(0,)]
    first = build_usage_events(con, date(2026, 6, 4), DAY, NOW)
    core = "SELECT event_id, source_file, source_row, quantity, event_ts FROM core.usage_events ORDER BY ALL"
    built = wh.run(con, core)
    # p1 of the Parquet file is the later copy (u.ndjson sorts first among files landed together);
    # p3 has no received_at and its file landed on June 10, after the June 1-6 invoice: late
    assert first == {"records": 4, "accepted": 3, "quarantined": 1, "late": 1}
    assert [r[:3] for r in built] == [("n1", "u.ndjson", 1), ("p1", "u.ndjson", 2), ("p3", "u.parquet", 3)]

    # the same warehouse as the landing before the index left it
    wh.run(
        con,
        "INSERT INTO raw.usage_events (file_id, source_row, event_id, event_ts) VALUES "
        f"({pq}, 1, 'p1', TIMESTAMPTZ '2026-06-05 12:00:00+00'), ({pq}, 3, 'p3', TIMESTAMPTZ '2026-06-04 08:00:00+00')",
    )
    wh.run(con, "DROP TABLE raw.usage_file_days")
    wh.run(con, "DROP TABLE raw.usage_landing_rejects")
    assert build_usage_events(con, date(2026, 6, 4), DAY, NOW) == first
    assert wh.run(con, core) == built
    assert wh.run(con, index) == [
        ("u.ndjson", date(2026, 6, 4), 1),
        ("u.ndjson", DAY, 1),
        ("u.parquet", date(2026, 6, 4), 1),
        ("u.parquet", DAY, 1),
    ]
    assert wh.run(con, rejects) == [(pq, 2, "timestamp_too_old")]
    assert wh.run(con, "SELECT count(*) FROM raw.usage_events WHERE file_id = ?", [pq]) == [(0,)]


def test_csv_rows_below_a_rejected_row_keep_their_own_numbers(con, tmp_path):
    """A CSV record's source_row is its data row (the header is not counted): the rows the reader
    rejects (invalid UTF-8, too many columns) count too, and are quarantined as <file>:L<row, header
    counted>. A quoted field over three physical lines is one row. (The scan numbers only the rows
    it keeps: before the renumbering, c3 was row 2 and c5 row 3.)"""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    header = b"event_id,customer_id,subscription_id,meter_name,quantity,timestamp,received_at"
    row = lambda e: f"{e},cus_1,sub_1,api_calls,1,2026-06-05T12:00:00Z,2026-06-05T12:00:01Z".encode()  # noqa: E731 -- a one-line local helper reads best inline
    (inbox / "u.csv").write_bytes(
        b"\n".join(
            [
                header,
                b'"c1\nwith\nbreaks",cus_1,sub_1,api_calls,1,2026-06-05T12:00:00Z,2026-06-05T12:00:01Z',  # row 1
                b"\xff\xfe,cus_1,sub_1,api_calls,1,2026-06-05T12:00:00Z,2026-06-05T12:00:01Z",  # row 2 rejected
                row("c3"),  # row 3
                row("c4") + b",extra",  # row 4 rejected
                row("c5"),  # row 5
            ]
        )
        + b"\n"
    )
    [res] = land_inbox(con, inbox, NOW, WINDOW_START)
    assert (res.records, res.landed, res.quarantined) == (5, 3, 2)
    assert wh.run(con, "SELECT source_row, event_id FROM raw.usage_events ORDER BY 1") == [
        (1, "c1\nwith\nbreaks"),
        (3, "c3"),
        (5, "c5"),
    ]
    assert wh.run(con, "SELECT record_key, reason FROM core.quarantine ORDER BY 1") == [
        ("u.csv:L3", "invalid_encoding"),
        ("u.csv:L5", "malformed_line"),
    ]
    assert build_usage_events(con, DAY, DAY, NOW)["accepted"] == 3
    assert wh.run(con, "SELECT source_row FROM core.usage_events ORDER BY 1") == [(1,), (3,), (5,)]


def test_a_warehouse_moved_with_its_kept_files_still_builds(tmp_path):
    """The ledger's stored_path is where a file was kept when it landed; a warehouse moved (or restored
    from a backup) together with its folder of kept files reads them where it is now."""
    old, new = tmp_path / "old", tmp_path / "new"
    (old / "inbox").mkdir(parents=True)
    _parquet(old / "inbox" / "p.parquet", ["p1", "p2"])
    con = wh.connect(old / "w.duckdb")
    _core(con)
    land_inbox(con, old / "inbox", NOW, WINDOW_START)
    con.close()
    (old / "inbox" / "p.parquet").unlink()
    old.rename(new)
    con = wh.connect(new / "w.duckdb")
    assert not Path(wh.run(con, "SELECT stored_path FROM raw.usage_files")[0][0]).exists()
    assert build_usage_events(con, DAY, DAY, NOW) == {"records": 2, "accepted": 2, "quarantined": 0, "late": 0}
    con.close()


@pytest.mark.parametrize("range_dedup_below", [0.0, 1.01], ids=["over_all_ids", "over_the_range_ids"])
def test_a_days_build_finds_the_earlier_copies_of_its_events_on_other_days(
    con, tmp_path, monkeypatch, range_dedup_below
):
    """Dedup is across all partitions while a build holds only its range's ids: building June 5 alone
    quarantines its copies of x (first in a.parquet on June 4) and of n (first in a.ndjson on June 4:
    files landed together are ordered by name) with the first copy as detail; building June 4 alone keeps
    both first copies and quarantines nothing, although a later copy of each exists (on June 5). The same
    whether the repeated ids are found among all landed ids or among the range's only (the way a build of a
    small range does)."""
    from billing_ai.ingestion import usage_events

    monkeypatch.setattr(usage_events, "RANGE_DEDUP_BELOW", range_dedup_below)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    june4, june5 = datetime(2026, 6, 4, 9, tzinfo=UTC), datetime(2026, 6, 5, 9, tzinfo=UTC)

    def parquet(path, ids, ts):
        n = len(ids)
        pl.DataFrame(
            {
                "event_id": ids,
                "customer_id": ["cus_1"] * n,
                "subscription_id": ["sub_1"] * n,
                "meter_name": ["api_calls"] * n,
                "quantity": pl.Series(["1"] * n).cast(pl.Decimal(38, 3)),
                "timestamp": [ts] * n,
                "received_at": [ts] * n,
            }
        ).write_parquet(path)

    parquet(inbox / "a.parquet", ["w", "x"], june4)
    parquet(inbox / "b.parquet", ["x", "n", "z"], june5)
    (inbox / "a.ndjson").write_bytes(_line("n", timestamp="2026-06-04T10:00:00Z") + b"\n")
    land_inbox(con, inbox, NOW, WINDOW_START)
    quarantine = "SELECT record_key, reason, detail FROM core.quarantine WHERE source = 'usage_events' ORDER BY 1"

    assert build_usage_events(con, DAY, DAY, NOW) == {"records": 3, "accepted": 1, "quarantined": 2, "late": 0}
    assert wh.run(con, quarantine) == [("n", "duplicate_of", "a.ndjson:1"), ("x", "duplicate_of", "a.parquet:2")]
    assert wh.run(con, "SELECT event_id FROM core.usage_events") == [("z",)]

    june_4 = date(2026, 6, 4)
    assert build_usage_events(con, june_4, june_4, NOW) == {"records": 3, "accepted": 3, "quarantined": 0, "late": 0}
    assert wh.run(
        con, "SELECT event_id, source_file FROM core.usage_events WHERE event_date = ? ORDER BY 1", [june_4]
    ) == [("n", "a.ndjson"), ("w", "a.parquet"), ("x", "a.parquet")]
    assert len(wh.run(con, quarantine)) == 2  # June 5's, untouched


def test_a_csv_row_the_reader_rejects_for_two_reasons_is_one_record(con, tmp_path):
    """The reader reports one error per missing column: the row is still one record, quarantined once
    with both reasons in its detail (records in = rows in the file)."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.csv").write_bytes(
        b"\n".join(
            [
                b"event_id,customer_id,subscription_id,meter_name,quantity,timestamp,received_at",
                b"c1,cus_1,sub_1,api_calls,1,2026-06-05T12:00:00Z,2026-06-05T12:00:01Z",
                b"c2,cus_1,sub_1,api_calls,1",  # two columns missing
            ]
        )
        + b"\n"
    )
    [res] = land_inbox(con, inbox, NOW, WINDOW_START)
    assert (res.records, res.landed, res.quarantined) == (2, 1, 1)
    [(key, reason, detail)] = wh.run(con, "SELECT record_key, reason, detail FROM core.quarantine")
    assert (key, reason) == ("a.csv:L3", "malformed_line") and detail


def test_a_parquet_file_with_a_column_named_like_the_readers_own_lands(con, tmp_path):
    """A column the reader would add itself (any case: FILENAME, File_Row_Number) is the file's own data."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _parquet(inbox / "u.parquet", ["p1", "p2"])
    pl.read_parquet(inbox / "u.parquet").with_columns(pl.lit("x").alias("Filename")).write_parquet(inbox / "u.parquet")
    [res] = land_inbox(con, inbox, NOW, WINDOW_START)
    assert (res.status, res.records, res.landed) == ("landed", 2, 2)
    assert build_usage_events(con, DAY, DAY, NOW)["accepted"] == 2
    assert wh.run(con, "SELECT event_id, source_row FROM core.usage_events ORDER BY 1") == [("p1", 1), ("p2", 2)]
