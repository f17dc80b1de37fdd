"""Product usage event files -> raw.usage_files (the ledger, with its index) and raw.usage_events.

Files (NDJSON, CSV or Parquet) are landed whole, once: the ledger ``raw.usage_files`` keys them by
content hash, so a re-run lands only new files and a replayed file is never counted twice. Every
record of a file is either landed or quarantined with its reason (unreadable line, no parseable
timestamp, timestamp outside the window the pipeline covers, oversized metadata); a file that cannot
be read at all is recorded as failed and the others go on.

Raw keeps each file once. The file is kept beside the warehouse (``<warehouse>.usage_files/<sha256>
<suffix>``: the ledger's ``stored_path``). The landing indexes every file (INDEX_DDL): its landed
records per UTC event day (``raw.usage_file_days``: which files a partition reads, and how many
records it must account for) and the records it quarantined (``raw.usage_landing_rejects``). A text
file's (NDJSON, CSV) landed records are also rows of ``raw.usage_events``: its file (``file_id``: what
is the same for all its records is in the ledger), its row in that file (``source_row``, from 1: the
physical line of an NDJSON file, blank and rejected lines counted; the data row of a CSV file, rejected
rows counted), its
``event_id``, ``event_ts`` and its other fields, as parsed, once: parsing the file again would cost
more than keeping them. A Parquet file's records are read from the kept file (typed and columnar,
reading it again costs little; its row is the ``source_row``), less the ones its landing quarantined.
The ledger's ``fields_in_raw`` says which: true for text files, and for every file landed before raw
was narrowed (see ``migrations.narrow_wide_raw``; files landed before the index are indexed by
``migrations.index_landed``). A
kept Parquet file is a read-only copy (the build reads it again, so it must not change if the inbox
file is rewritten in place); a text file, which is never read again, is a hard link where the file
system allows. The build (``usage_events``) reads the records with ``readers.records``; every row of core
or of the quarantine leads back to the record as received (file and row).

How files are landed, built for millions of records (see ``landing.land_inbox``): new files are landed in
batches (Parquet files of one schema; NDJSON files up to NDJSON_BATCH_BYTES; CSV files), one
transaction per batch, the ledger exact per file; if a batch fails, its files are landed one by one
so that only the unreadable one fails. Per batch, every record is read and judged once, the checks
inline (see ``landing._land``): a text file's verdicts go to a temp table that splits into one append to
raw.usage_events (one large append is much cheaper for DuckDB than one per file: it reads the files
in parallel, and leaves no partial row groups for the checkpoint to merge and rewrite), the index and
the quarantine; a Parquet file's are counted per day in one grouped pass that keeps only the failing
records. An NDJSON line is parsed once (json_transform), its JSON types checked again only where a
value looks like it may not be a string.

The package, by concern: ``fields`` (what a record is, its fields as text), ``files`` (the inbox, the
ledger's tables, the copies kept beside the warehouse), ``readers`` (records per format), ``landing``
(judging and writing them), ``migrations`` (the upgrades of older layouts of these tables, with their
lifetime). What other modules use is exported here.
"""

from billing_ai.ingestion.usage_files.fields import EVENT_DATE, EVENT_TS, QUANTITY_TEXT, blank, record_json
from billing_ai.ingestion.usage_files.files import FileResult, kept_dir, kept_files, sha256_of
from billing_ai.ingestion.usage_files.landing import land_file, land_inbox
from billing_ai.ingestion.usage_files.migrations import ensure_tables, wide_raw
from billing_ai.ingestion.usage_files.readers import Records, batches, parquet_ids, records

__all__ = [
    "EVENT_DATE",
    "EVENT_TS",
    "QUANTITY_TEXT",
    "FileResult",
    "Records",
    "batches",
    "blank",
    "ensure_tables",
    "kept_dir",
    "kept_files",
    "land_file",
    "land_inbox",
    "parquet_ids",
    "record_json",
    "records",
    "sha256_of",
    "wide_raw",
]
