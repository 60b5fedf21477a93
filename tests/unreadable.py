"""An archive whose hour 2024-03-05T13 holds objects that cannot be decoded beside good ones,
and whose next hour is good: for compaction (which keeps what decodes and sets the objects
aside) and for the readers (which name them).

The damaged objects, each with what of it decodes:
- `truncated`: gzip NDJSON cut before its end marker, in the middle of line 7: lines 1-6;
- `invalid_line`: gzip NDJSON whose line 3 is not JSON: the 9 other lines;
- `bad_parquet`: a `.parquet` object that is not Parquet: nothing.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field

import msgspec

from shared.archive import ObjectStore
from tests import archives
from tests.archives import ev

HOUR = "2024-03-05T13"
NEXT_HOUR = "2024-03-05T14"
PARTITION = "dt=2024-03-05/hour=13/"
LINES = 10


@dataclass
class Damaged:
    """What `write` stored."""

    readable: set[str] = field(default_factory=set)  # the IDs of HOUR that decode
    next_hour: set[str] = field(default_factory=set)  # the IDs of NEXT_HOUR
    bad: dict[str, bytes] = field(default_factory=dict)  # the damaged objects, by key
    truncated: str = ""
    invalid_line: str = ""
    bad_parquet: str = ""


def lines(tag: str, minute: int = 10) -> list[bytes]:
    """`LINES` NDJSON lines of events `<tag>-0`... of HOUR, as the consumer writes them."""
    events = [ev(f"{tag}-{i}", f"13:{minute + i:02d}", "e", "u") for i in range(LINES)]
    return [msgspec.json.encode(event) + b"\n" for event in events]


def gzip_without_end(text: bytes) -> bytes:
    """gzip of `text` that stops before its end marker, as a cut upload would."""
    deflate = zlib.compressobj(wbits=31)
    return deflate.compress(text) + deflate.flush(zlib.Z_SYNC_FLUSH)


def write(store: ObjectStore, prefix: str) -> Damaged:
    damaged = Damaged()
    good = [
        (b"1709643000000-0", [ev(f"good-{i}", f"13:0{i}", "e", "u") for i in range(5)]),
        (b"1709643000001-0", [ev(f"next-{i}", f"14:0{i}", "e", "u") for i in range(5)]),
    ]
    archives.write_ndjson(store, prefix, good)
    archives.write_parquet(store, prefix, [(b"1709643000002-0", [ev("pq-0", "13:40", "e", "u")])])
    damaged.readable = {f"good-{i}" for i in range(5)} | {"pq-0"}
    damaged.next_hour = {f"next-{i}" for i in range(5)}

    cut = lines("cut")
    damaged.truncated = f"{prefix}{PARTITION}1709643000003-0_1709643000003-0_cut.ndjson.gz"
    damaged.bad[damaged.truncated] = gzip_without_end(b"".join(cut[:6]) + cut[6][:25])
    damaged.readable |= {f"cut-{i}" for i in range(6)}

    broken = lines("bad", minute=30)
    broken[2] = broken[2][:40] + b"\n"
    damaged.invalid_line = f"{prefix}{PARTITION}1709643000004-0_1709643000004-0_bad.ndjson.gz"
    damaged.bad[damaged.invalid_line] = gzip.compress(b"".join(broken), mtime=0)
    damaged.readable |= {f"bad-{i}" for i in range(LINES) if i != 2}

    damaged.bad_parquet = f"{prefix}parquet/{PARTITION}1709643000005-0_1709643000005-0_x.parquet"
    damaged.bad[damaged.bad_parquet] = b"PAR1 this is not Parquet at all PAR1"

    for key, body in damaged.bad.items():
        store.put(key, body)
    return damaged
