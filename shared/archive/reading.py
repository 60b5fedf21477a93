"""Reading the archive back: list the objects of a time range, read one as a table.

Listing prunes by partition: it lists the `dt=` prefixes, then the `hour=` prefixes of the days
at the ends of the range, and lists objects only under the hours inside it, so an object outside
the range is never listed beyond its prefix, nor downloaded. Every object reads as a table of
`columns.SCHEMA`, whatever its format: NDJSON through the same mapping the Parquet writer uses.

Only `dt=` partitions of the roots (`naming.ROOTS`) are listed: what lies beside them, like
`_compaction/` (compaction's work) and `_unreadable/` (objects set aside), is never read as
events.

An object whose bytes cannot all be decoded (corrupt or truncated gzip, a line that is not a
JSON object, bad Parquet) is `Unreadable`, naming the object and what is wrong with it:
`read_object` raises it; `read_salvaging` returns what does decode (the lines before a gzip
truncation, every valid line, the row groups that read) with the `Damage`, for compaction,
which keeps those rows and sets the object aside.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from shared.archive import columns, partitions
from shared.archive.naming import ROOTS
from shared.archive.partitions import HourRange
from shared.archive.storage import ObjectStore

FORMAT_OF_SUFFIX = {".ndjson.gz": "ndjson", ".parquet": "parquet"}
_ndjson = msgspec.json.Decoder()
# A reason lists at most this many failing line numbers (it counts all of them).
LINES_LISTED = 1000
# gzip is inflated in pieces of this size; a faulty piece again byte by byte, to keep all
# the text before the fault.
_PIECE = 64 * 1024
# What decoding bytes already downloaded raises when they are not what their format says.
DECODE_ERRORS = (
    msgspec.DecodeError,
    EOFError,  # gzip truncated
    OSError,  # gzip.BadGzipFile; nothing else reads a file here
    zlib.error,
    AttributeError,  # a JSON line that is not an object
    ValueError,
    TypeError,
    pa.ArrowException,
)


@dataclass(frozen=True)
class Damage:
    """What of an object could not be decoded. The rows that could are returned beside it."""

    reason: str  # what is wrong, one line
    rows_read: int  # the rows that did decode
    lines: tuple[int, ...] = ()  # NDJSON: the failing lines of its text, from 1 (the first ones)
    lines_failed: int = 0  # NDJSON: how many lines failed
    row_groups: tuple[int, ...] = ()  # Parquet: the row groups that failed, from 0


class Unreadable(Exception):
    """An object whose bytes cannot (all) be decoded; reading it again fails the same way."""

    def __init__(self, key: str, damage: Damage) -> None:
        super().__init__(f"{key}: {damage.reason}")
        self.key = key
        self.damage = damage


@dataclass(frozen=True, order=True)
class ArchivedObject:
    key: str
    dt: date
    hour: int
    size: int
    format: str

    @property
    def partition(self) -> str:
        return partitions.partition(self.dt, self.hour)

    @property
    def hour_start(self) -> datetime:
        return partitions.hour_at(self.dt, self.hour)


def list_objects(store: ObjectStore, prefix: str, hours: HourRange) -> list[ArchivedObject]:
    """Every archived object in `hours`, under every root (each format's and the compacted
    one), in key order."""
    found: list[ArchivedObject] = []
    for root in ROOTS:
        found += _objects_in_range(store, f"{prefix}{root}", hours)
    return sorted(found)


def list_partition(store: ObjectStore, prefix: str, day: date, hour: int) -> list[ArchivedObject]:
    """The objects of one hour, under every root, in key order."""
    partition = partitions.partition(day, hour)
    return sorted(
        item for root in ROOTS for item in _objects_under(store, prefix + root + partition)
    )


def _objects_in_range(store: ObjectStore, root: str, hours: HourRange) -> list[ArchivedObject]:
    found: list[ArchivedObject] = []
    for day_prefix in store.common_prefixes(root):
        day = partitions.day_of_prefix(day_prefix)
        if day is None or not hours.holds_day(day):
            continue
        if hours.whole_day(day):
            found += _objects_under(store, day_prefix)
            continue
        for hour_prefix in store.common_prefixes(day_prefix):
            hour = partitions.hour_of_prefix(hour_prefix)
            if hour is not None and hours.holds_hour(day, hour):
                found += _objects_under(store, hour_prefix)
    return found


def _objects_under(store: ObjectStore, prefix: str) -> Iterator[ArchivedObject]:
    for key, size in store.objects_under(prefix):
        archived = archived_object(key, size)
        if archived is not None:
            yield archived


def archived_object(key: str, size: int) -> ArchivedObject | None:
    """The object's partition and format from its key; None for anything else in the prefix."""
    found = partitions.partition_in(key)
    fmt = next((f for suffix, f in FORMAT_OF_SUFFIX.items() if key.endswith(suffix)), None)
    if found is None or fmt is None:
        return None
    return ArchivedObject(key, *found, size, fmt)


def read_object(store: ObjectStore, item: ArchivedObject) -> pa.Table:
    """The object's rows, as a table of `columns.SCHEMA`; Unreadable unless all decode."""
    return read_rows(item, store.get(item.key))


def read_rows(item: ArchivedObject, body: bytes) -> pa.Table:
    """`read_object` for an object already downloaded as `body`."""
    rows, damage = decode(item.format, body)
    if damage is not None:
        raise Unreadable(item.key, damage)
    return rows


def read_salvaging(store: ObjectStore, item: ArchivedObject) -> tuple[pa.Table, Damage | None]:
    """The object's rows that decode, as a table of `columns.SCHEMA`, and what did not (None
    when everything did); ObjectGone when it is gone."""
    return decode(item.format, store.get(item.key))


def decode(fmt: str, body: bytes) -> tuple[pa.Table, Damage | None]:
    """An object's bytes in `fmt` (`ndjson`: gzip NDJSON; `parquet`) as `read_salvaging`
    returns them. Whole objects decode at once; only a faulty one is taken apart."""
    try:
        if fmt == "parquet":
            return parquet_rows(body), None
        return columns.to_rows(_ndjson.decode_lines(gzip.decompress(body))), None
    except DECODE_ERRORS as exc:
        fault = _first_line(exc)
    if fmt == "parquet":
        return _salvage_parquet(body, fault)
    return _salvage_ndjson(body)


def parquet_rows(body: bytes, needed: frozenset[str] | None = None) -> pa.Table:
    """A whole Parquet object's rows as a table of `columns.SCHEMA` (`columns.conform`: an
    object written before a column existed reads with it derived, or NULL); raises what
    pyarrow raises when it cannot be decoded. With `needed`, only those columns are read (and
    `context` too where a derived one is needed that the object lacks); the others are NULL:
    for a query that reads only them."""
    if needed is None:
        return columns.conform(pq.read_table(io.BytesIO(body)))
    file = pq.ParquetFile(io.BytesIO(body))
    present = file.schema_arrow.names
    wanted = set(needed)
    if wanted & (set(columns.DERIVED_COLUMNS) - set(present)):
        wanted.add("context")  # derived from it, as NDJSON is read
    table = file.read(columns=[name for name in present if name in wanted])
    return columns.conform(table)


def _salvage_ndjson(body: bytes) -> tuple[pa.Table, Damage | None]:
    """Every line of the text that gunzips (all of it before a fault) that is a JSON object."""
    text, gzip_fault = gunzip(body)
    events, failed, first_fault = [], [], None
    for number, line in enumerate(text.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            event = _ndjson.decode(line)
            if not isinstance(event, dict):
                raise TypeError(f"a JSON {type(event).__name__}, not an object")
        except (msgspec.DecodeError, TypeError) as exc:
            failed.append(number)
            first_fault = first_fault or f"line {number}: {_first_line(exc)}"
            continue
        events.append(event)
    faults = [gzip_fault] if gzip_fault else []
    if failed:
        lines = "1 line is" if len(failed) == 1 else f"{len(failed)} lines are"
        faults.append(f"{lines} not a JSON object ({first_fault})")
    rows = columns.to_rows(events)
    if not faults:  # only what the fast path tripped on and this did not (no such case known)
        return rows, None
    damage = Damage(
        "; ".join(faults), rows.num_rows, tuple(failed[:LINES_LISTED]), lines_failed=len(failed)
    )
    return rows, damage


def gunzip(body: bytes) -> tuple[bytes, str | None]:
    """The text of `body`'s gzip members, up to a fault if there is one, and the fault."""
    text: list[bytes] = []
    rest = body
    while rest.strip(b"\0"):  # gzip(1) ignores zeros after the last member, as this does
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        for start in range(0, len(rest), _PIECE):
            piece = rest[start : start + _PIECE]
            before = inflater.copy()
            try:
                text.append(inflater.decompress(piece))
            except zlib.error as exc:
                text.append(_until_fault(before, piece))
                read = b"".join(text)
                return read, f"{'corrupt gzip data' if read else 'not gzip data'} ({exc})"
            if inflater.eof:
                rest = inflater.unused_data + rest[start + _PIECE :]
                break
        else:
            text.append(inflater.flush())
            return b"".join(text), "the gzip data is truncated (it ends before its end marker)"
    return b"".join(text), None


def _until_fault(inflater, piece: bytes) -> bytes:
    """What `inflater` gives for `piece` up to the byte it fails on, byte by byte."""
    text = []
    for at in range(len(piece)):
        try:
            text.append(inflater.decompress(piece[at : at + 1]))
        except zlib.error:
            break
    return b"".join(text)


def _salvage_parquet(body: bytes, fault: str) -> tuple[pa.Table, Damage]:
    """Every row group that reads, when the file's footer does."""
    try:
        file = pq.ParquetFile(io.BytesIO(body))
    except DECODE_ERRORS as exc:
        return columns.SCHEMA.empty_table(), not_parquet(exc)
    tables, failed = [], []
    for group in range(file.num_row_groups):
        try:
            tables.append(columns.conform(file.read_row_group(group)))
        except DECODE_ERRORS as exc:
            if not failed:
                fault = f"row group {group}: {_first_line(exc)}"
            failed.append(group)
    rows = pa.concat_tables(tables) if tables else columns.SCHEMA.empty_table()
    if failed:
        fault = f"{len(failed)} of {file.num_row_groups} Parquet row groups unreadable ({fault})"
    return rows, Damage(fault, rows.num_rows, row_groups=tuple(failed))


def not_parquet(exc: BaseException) -> Damage:
    """The damage of an object whose Parquet footer does not read."""
    return Damage(f"not a Parquet file ({_first_line(exc)})", 0)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
