"""Planning an hour: what needs compacting, into how many parts, in which steps.

Pure functions of what a listing found; `Plan` is what step 1 stores as `plan.json` and every
later step (of this run or a rerun) follows to the end.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import asdict, dataclass
from datetime import datetime

import pyarrow as pa

from shared.archive.naming import compacted_part
from shared.archive.partitions import hour_label
from shared.archive.reading import ArchivedObject

# Sizing, in stored bytes as listed (gzip NDJSON or Parquet: about 100-200 bytes an event).
# A compacted object holds about this much input, which one merge step holds in memory ...
OBJECT_BYTES = 128 * 2**20
# ... and a split step reads about this much (each reads at least one object).
STEP_BYTES = 128 * 2**20
MAX_PARTS = 4096


def parts_for(total_bytes: int, object_bytes: int = OBJECT_BYTES) -> int:
    """The power of two of parts that keeps each near `object_bytes` or under."""
    needed = max(1, -(-total_bytes // object_bytes))
    return min(MAX_PARTS, 1 << (needed - 1).bit_length())


def part_of_ids(ids: pa.ChunkedArray | pa.Array, count: int) -> list[int]:
    """Each row's part: CRC-32 of its `message_id` (stable across processes and versions)
    modulo `count`, a power of two; rows without one go to part 0. The source is left out: the
    copies of an event share their ID, and the hours compacted already were cut by it alone."""
    if count == 1:
        return [0] * len(ids)
    mask = count - 1
    return [0 if v is None else zlib.crc32(v.encode()) & mask for v in ids.to_pylist()]


@dataclass(frozen=True)
class HourState:
    """A closed hour that needs compacting, as a survey found it."""

    hour: datetime
    raw_objects: int
    compacted_objects: int
    bytes: int
    in_progress: bool  # a plan an earlier run left unfinished
    rechecks: int  # earlier hours that gained events since this one was compacted

    @property
    def label(self) -> str:
        return hour_label(self.hour)


def needs_work(objects: list[ArchivedObject], rechecks: int, in_progress: bool) -> bool:
    """Raw objects, requests to check again, a plan left over, or compacted objects that do not
    form one complete-looking set of parts (what an interrupted older plan may leave)."""
    parts = [compacted_part(item.key) for item in objects]
    if in_progress or rechecks or None in parts:
        return True
    return len({p.count for p in parts}) > 1 or len({p.index for p in parts}) < len(parts)


@dataclass
class Plan:
    """What one compaction of an hour merges, and in which steps. Stored as `plan.json`; a
    rerun follows it to the end, whatever it lists now."""

    hour: str
    parts: int
    inputs: list[str]  # in key order: an input's place is its ORDER ordinal
    sizes: list[int]
    direct: list[int]  # inputs each merge reads as they are (its part's compacted objects)
    batches: list[list[int]]  # the other inputs, cut by part in one split step per batch
    rechecks: list[str]  # the requests to check again this plan answers
    window_h: int

    @property
    def id(self) -> str:
        body = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.blake2b(body, digest_size=8).hexdigest()

    @property
    def new_rows(self) -> bool:
        """Whether it merges raw objects (events the hours after it may hold too)."""
        return any(compacted_part(key) is None for key in self.inputs)

    def direct_inputs(self, part: int) -> list[int]:
        if self.parts == 1:
            return self.direct
        return [i for i in self.direct if compacted_part(self.inputs[i]).index == part]


def make_plan(
    hour: datetime,
    objects: list[ArchivedObject],
    rechecks: list[str],
    *,
    object_bytes: int,
    step_bytes: int,
    window_h: int,
) -> Plan | None:
    """How to compact the hour whose listing is `objects` (in key order), answering the
    requests to check again `rechecks`; None when nothing is to do."""
    if not needs_work(objects, len(rechecks), in_progress=False):
        return None
    parts = [compacted_part(item.key) for item in objects]
    existing = max((p.count for p in parts if p), default=0)
    total = sum(item.size for item in objects)
    count = max(existing, parts_for(total, object_bytes)) if None in parts else existing
    count = count or 1
    if count == 1:
        direct = list(range(len(objects)))
    else:
        direct = [i for i, p in enumerate(parts) if p and p.count == count]
    return Plan(
        hour=hour_label(hour),
        parts=count,
        inputs=[item.key for item in objects],
        sizes=[item.size for item in objects],
        direct=direct,
        batches=_batches(objects, set(direct), step_bytes),
        rechecks=rechecks,
        window_h=window_h,
    )


def _batches(objects: list[ArchivedObject], direct: set[int], step_bytes: int) -> list[list[int]]:
    """The inputs not read directly, cut in split steps of about `step_bytes` each."""
    batches: list[list[int]] = []
    size = 0
    for i, item in enumerate(objects):
        if i in direct:
            continue
        if not batches or size + item.size > step_bytes:
            batches.append([])
            size = 0
        batches[-1].append(i)
        size += item.size
    return batches
