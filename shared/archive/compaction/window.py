"""The DEDUP_WINDOW's keys: which `DEDUP_KEY`s the compacted objects of nearby hours store.

A part checks its keys against the compacted objects of the window's earlier hours, reading
their key columns alone (ranged GETs of the footer and those column chunks), one object after
another, a batch at a time, so that memory never holds the window's keys at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from itertools import islice

import pyarrow as pa
import pyarrow.parquet as pq

from shared.archive import partitions, reading
from shared.archive.columns import DEDUP_KEY
from shared.archive.compaction.reports import one_line
from shared.archive.naming import COMPACTED_ROOT, compacted_part
from shared.archive.reading import ArchivedObject, Damage
from shared.archive.storage import ObjectGone, ObjectStore

# The key columns of earlier compacted objects are read one object at a time, downloading (not
# decoding) up to this many ahead, so that S3's latency overlaps the decoding (each more costs
# an object's compressed keys, about 20 bytes a row), in batches of at least this many rows.
KEYS_AHEAD = 2
KEY_BATCH_ROWS = 16_384
# A Parquet footer is read with this much of the object's end (Arrow's first read of it too).
FOOTER_BYTES = 64 * 1024


def compacted_objects(
    store: ObjectStore, prefix: str, first: datetime, last: datetime
) -> list[ArchivedObject]:
    """The compacted objects of the hours `first` to `last`: a listing per day (a day of
    compacted hours is one page), not one per hour."""
    found = []
    day = first.date()
    while day <= last.date():
        for key, size in store.objects_under(
            f"{prefix}{COMPACTED_ROOT}{partitions.day_partition(day)}"
        ):
            hour = partitions.hour_in(key)
            if compacted_part(key) and hour and first <= hour <= last:
                found.append(reading.archived_object(key, size))
        day += timedelta(days=1)
    return found


def key_batches(store: ObjectStore, items: list[ArchivedObject], rows: int) -> Iterator[pa.Table]:
    """The `DEDUP_KEY` columns of `items` (Parquet), object after object, in batches of
    about `rows` rows: decoded a batch at a time, downloaded up to KEYS_AHEAD objects
    ahead (compressed, as stored: S3's latency is paid once per KEYS_AHEAD objects)."""
    pool = ThreadPoolExecutor(KEYS_AHEAD, thread_name_prefix="compact-keys")
    try:
        upcoming = iter(items)
        ahead = deque(
            pool.submit(key_columns, store, item) for item in islice(upcoming, KEYS_AHEAD)
        )
        while ahead:
            file, key = ahead.popleft().result()
            for item in islice(upcoming, 1):
                ahead.append(pool.submit(key_columns, store, item))
            yield from _decoded(store, file, key, rows)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def key_columns(store: ObjectStore, item: ArchivedObject) -> tuple[pq.ParquetFile, str]:
    """A Parquet object's footer and `DEDUP_KEY` column chunks downloaded (a GET each),
    not decoded; and its key."""
    file = store.open(item.key, item.size)
    try:
        file.fetch(item.size - FOOTER_BYTES, item.size)
        parquet_file = pq.ParquetFile(file)
        meta = parquet_file.metadata
        names = [meta.schema.column(index).name for index in range(meta.num_columns)]
        for group in range(meta.num_row_groups):
            for name in DEDUP_KEY:
                chunk = meta.row_group(group).column(names.index(name))
                start = chunk.data_page_offset
                if chunk.has_dictionary_page and chunk.dictionary_page_offset:
                    start = min(start, chunk.dictionary_page_offset)
                file.fetch(start, start + chunk.total_compressed_size)
    except ObjectGone:
        raise
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise _why_unread(store, item.key, exc) from exc
    return parquet_file, item.key


def read_keys(store: ObjectStore, item: ArchivedObject) -> pa.Table:
    """The `DEDUP_KEY` columns of a Parquet object, without its other columns."""
    file = store.open(item.key, item.size)
    try:
        keys = pq.ParquetFile(file).read(columns=list(DEDUP_KEY))
    except ObjectGone:
        raise
    except (OSError, pa.ArrowException):
        store.get(item.key, (0, 0))  # raises ObjectGone if that was the trouble
        raise
    return keys.combine_chunks()


def _decoded(store: ObjectStore, file: pq.ParquetFile, key: str, rows: int) -> Iterator[pa.Table]:
    batches = file.iter_batches(batch_size=rows, columns=list(DEDUP_KEY), use_threads=False)
    try:
        for batch in batches:
            yield pa.Table.from_batches([batch])
    except ObjectGone:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise _why_unread(store, key, exc) from exc


def _why_unread(store: ObjectStore, key: str, exc: Exception) -> Exception:
    """Why a Parquet object's keys could not be read: it is gone (ObjectGone), the bucket
    does not answer (the GET that checks it raises), or its bytes are bad (Unreadable)."""
    store.get(key, (0, 0))
    return reading.Unreadable(key, Damage(f"its keys cannot be read: {one_line(exc)}", 0))
