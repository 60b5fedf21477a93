"""The buffer: events staged between reads and a flush, grouped by partition, in the format
ARCHIVE_FORMAT chooses; and the flush rule, a small pure function of (count, bytes, age)."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shared.archive import (
    OBJECT_SUFFIX,
    Buffer,
    UnarchivableEvent,
    columns,
    encode_lines,
    flush_due,
    object_key,
)
from shared.archive.formats import named
from shared.settings import ARCHIVE_FORMATS, Settings
from tests.fresh_process import in_a_fresh_process
from tests.shared.archive.conftest import event

# --- staging ------------------------------------------------------------------------------


def decoded_objects(buffer: Buffer, prefix: str = "events/") -> dict[str, list[dict]]:
    result = {}
    for key, body, count in buffer.objects(prefix):
        lines = [json.loads(line) for line in gzip.decompress(body).splitlines()]
        assert len(lines) == count
        result[key] = lines
    return result


def object_rows(buffer: Buffer, prefix: str = "events/") -> dict[str, pa.Table]:
    """Each object's rows (`columns.SCHEMA`), whatever the buffer's format."""
    result = {}
    for key, body, count in buffer.objects(prefix):
        if key.endswith(".parquet"):
            rows = pq.read_table(io.BytesIO(body))
        else:
            rows = columns.to_rows(
                [json.loads(line) for line in gzip.decompress(body).splitlines()]
            )
        assert rows.num_rows == count
        result[key] = rows
    return result


def test_empty_buffer() -> None:
    buffer = Buffer()
    assert len(buffer) == 0
    assert (buffer.events, buffer.bytes, buffer.started_at) == (0, 0, None)
    assert list(buffer.objects("events/")) == []


def test_the_default_format_is_ndjson() -> None:
    assert Buffer().format == "ndjson"
    assert Buffer().content_type == "application/x-ndjson"
    assert Buffer(format="parquet").content_type == "application/vnd.apache.parquet"


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="no archive format"):
        Buffer(format="csv")


def test_ndjson_objects_are_what_they_were_before_formats() -> None:
    """Byte for byte what the consumer wrote before Parquet: gzip (mtime 0) of each entry's
    NDJSON lines, named after the entries, at the prefix itself."""
    entries = [(b"1-0", [event(i=1), event(i=2)]), (b"2-0", [event(i=3)])]
    buffer = Buffer()
    for entry_id, events in entries:
        buffer.add(entry_id, events)
    [(key, body, count)] = list(buffer.objects("events/", 5))
    assert key == object_key("events/", "dt=2024-03-05/hour=14/", [b"1-0", b"2-0"], ".ndjson.gz")
    lines = b"".join(encode_lines(events) for _, events in entries)
    assert body == gzip.compress(lines, compresslevel=5, mtime=0)
    assert count == 3


def test_buffer_counts_entries_events_and_bytes() -> None:
    buffer = Buffer()
    first = [event(i=1), event(i=2)]
    second = [event(i=3)]
    buffer.add(b"1-0", first)
    buffer.add(b"2-0", second)
    assert len(buffer) == 2
    assert buffer.entry_ids == [b"1-0", b"2-0"]
    assert buffer.events == 3
    assert buffer.bytes == sum(len(encode_lines([e])) for e in first + second)
    assert buffer.started_at is not None


def test_buffer_started_at_is_set_by_the_first_add_only() -> None:
    buffer = Buffer()
    buffer.add(b"1-0", [event()])
    started = buffer.started_at
    buffer.add(b"2-0", [event()])
    assert buffer.started_at == started


def test_buffer_groups_events_by_partition() -> None:
    buffer = Buffer()
    a14 = event("2024-03-05T14:10:00.000Z", i=1)
    a15 = event("2024-03-05T15:00:00.000Z", i=2)
    b14 = event("2024-03-05T14:59:59.999Z", i=3)
    c15 = event("2024-03-05T15:30:00.000Z", i=4)
    buffer.add(b"1-0", [a14, a15])
    buffer.add(b"2-0", [b14])
    buffer.add(b"3-0", [c15])

    objects = decoded_objects(buffer)

    assert len(objects) == 2
    [key14] = [k for k in objects if "/hour=14/" in k]
    [key15] = [k for k in objects if "/hour=15/" in k]
    assert objects[key14] == [a14, b14]
    assert objects[key15] == [a15, c15]
    # Each object is named after the entries it holds, in order.
    assert key14 == object_key("events/", "dt=2024-03-05/hour=14/", [b"1-0", b"2-0"], OBJECT_SUFFIX)
    assert key15 == object_key("events/", "dt=2024-03-05/hour=15/", [b"1-0", b"3-0"], OBJECT_SUFFIX)


@pytest.mark.parametrize("archive_format", ARCHIVE_FORMATS)
def test_buffer_groups_rows_by_partition_in_either_format(archive_format: str) -> None:
    buffer = Buffer(format=archive_format)
    a14 = event("2024-03-05T14:10:00.000Z", i=1)
    a15 = event("2024-03-05T15:00:00.000Z", i=2)
    b14 = event("2024-03-05T14:59:59.999Z", i=3)
    buffer.add(b"1-0", [a14, a15])
    buffer.add(b"2-0", [b14])

    objects = object_rows(buffer)

    root = "events/parquet/" if archive_format == "parquet" else "events/"
    suffix = named(archive_format).SUFFIX
    key14 = object_key(root, "dt=2024-03-05/hour=14/", [b"1-0", b"2-0"], suffix)
    key15 = object_key(root, "dt=2024-03-05/hour=15/", [b"1-0"], suffix)
    assert set(objects) == {key14, key15}
    assert objects[key14].equals(columns.to_rows([a14, b14]))
    assert objects[key15].equals(columns.to_rows([a15]))


def test_parquet_objects_have_a_root_of_their_own() -> None:
    """A table over one root (Athena's) reads one format: Parquet under `parquet/`."""
    buffer = Buffer(format="parquet")
    buffer.add(b"1-0", [event()])
    [(key, body, _)] = list(buffer.objects("events/"))
    assert key.startswith("events/parquet/dt=2024-03-05/hour=14/1-0_1-0_")
    assert key.endswith(".parquet")
    assert body[:4] == body[-4:] == b"PAR1"


@pytest.mark.parametrize("archive_format", ARCHIVE_FORMATS)
def test_the_buffer_counts_what_its_format_stages(archive_format: str) -> None:
    """FLUSH_MAX_BYTES is compared with the bytes each entry's stage counts, per partition."""
    entries = [(b"1-0", [event(i=1), event(i=2)]), (b"2-0", [event(i=3, text="ünï")])]
    module = named(archive_format)
    counted = sum(module.stage(events)[1] for _, events in entries)
    buffer = Buffer(format=archive_format)
    for entry_id, events in entries:
        buffer.add(entry_id, events)
    assert (len(buffer), buffer.events, buffer.bytes) == (2, 3, counted)
    if archive_format == "ndjson":  # the lines, the object's size once gunzipped
        assert counted == sum(len(encode_lines(events)) for _, events in entries)


def test_an_entry_with_many_events_in_one_partition_is_named_once() -> None:
    buffer = Buffer()
    buffer.add(b"7-0", [event(i=i) for i in range(3)])
    [(key, _, count)] = list(buffer.objects("p/"))
    assert count == 3
    assert key == object_key("p/", "dt=2024-03-05/hour=14/", [b"7-0"], OBJECT_SUFFIX)


def objects_of_two_entries(archive_format: str) -> list[tuple[str, bytes, int]]:
    buffer = Buffer(format=archive_format)
    buffer.add(b"1-0", [event(i=1), event("2024-03-05T16:00:00.000Z", i=2)])
    buffer.add(b"2-0", [event(i=3)])
    return list(buffer.objects("events/"))


@pytest.mark.parametrize("archive_format", ARCHIVE_FORMATS)
def test_same_entries_give_the_same_objects(archive_format: str) -> None:
    """Built again by another process (another hash seed), as a flush retried by the next
    invocation is: the same names and the same bytes."""
    assert objects_of_two_entries(archive_format) == in_a_fresh_process(
        objects_of_two_entries, archive_format
    )


def test_buffer_add_is_all_or_nothing() -> None:
    buffer = Buffer()
    buffer.add(b"1-0", [event(i=1)])
    before = (list(buffer.entry_ids), buffer.events, buffer.bytes, decoded_objects(buffer))
    bad = event(i=3)
    bad["receivedAt"] = "garbage"
    with pytest.raises(UnarchivableEvent):
        buffer.add(b"2-0", [event("2024-03-05T18:00:00.000Z", i=2), bad])
    after = (list(buffer.entry_ids), buffer.events, buffer.bytes, decoded_objects(buffer))
    assert after == before


def test_an_entry_across_hours_keeps_each_hours_events_in_order() -> None:
    """An entry's events placed one by one when they do not share one receivedAt (a replay
    may write such entries): interleaved hours, each object in the entry's order."""
    a14, b14 = event("2024-03-05T14:10:00.000Z", i=1), event("2024-03-05T14:20:00.000Z", i=3)
    a15 = event("2024-03-05T15:00:00.000Z", i=2)
    buffer = Buffer()
    buffer.add(b"1-0", [a14, a15, b14])
    objects = decoded_objects(buffer)
    assert sorted(objects.values(), key=len) == [[a15], [a14, b14]]


@pytest.mark.parametrize(
    "received_at", ["garbage", None, ["2024-03-05T14:10:00.000Z"]], ids=["text", "none", "list"]
)
def test_an_entry_whose_events_share_an_unusable_received_at_is_unarchivable(
    received_at: Any,
) -> None:
    """Placed once for all its events, or one by one where the value cannot be compared (a
    list): either way the entry is refused whole, with the reason."""
    buffer = Buffer()
    with pytest.raises(UnarchivableEvent, match="receivedAt"):
        buffer.add(b"1-0", [event(received_at, i=1), event(received_at, i=2)])
    assert (buffer.events, buffer.entry_ids) == (0, [])


@pytest.mark.parametrize("fmt", ["ndjson", "parquet"])
def test_an_event_json_cannot_hold_fails_its_entry_alone(fmt: str) -> None:
    """A map key JSON has no form for (MsgPack has them) fails its entry at once, in either
    format, leaving the buffer as it was (the drain loop then dead-letters that entry alone)."""
    buffer = Buffer(format=fmt)
    buffer.add(b"1-0", [event(i=1)])
    before = (list(buffer.entry_ids), buffer.events, buffer.bytes, object_rows(buffer))
    bad = event(i=3, properties={None: "no JSON key"})
    with pytest.raises(UnarchivableEvent):
        buffer.add(b"2-0", [event("2024-03-05T18:00:00.000Z", i=2), bad])
    after = (list(buffer.entry_ids), buffer.events, buffer.bytes, object_rows(buffer))
    assert after[:3] == before[:3]
    assert after[3].keys() == before[3].keys()
    assert all(after[3][key].equals(before[3][key]) for key in before[3])


# --- flush rule ---------------------------------------------------------------------------


@pytest.fixture
def hints() -> Settings:
    return Settings(
        flush_max_events=3, flush_max_bytes=10_000, flush_interval_s=60.0, claim_idle_ms=120_000
    )


def staged(*event_counts: int, archive_format: str = "ndjson") -> Buffer:
    buffer = Buffer(format=archive_format)
    for n, count in enumerate(event_counts):
        buffer.add(f"{n + 1}-0".encode(), [event(i=i) for i in range(count)])
    buffer.started_at = 1000.0  # a round clock value, so age arithmetic is exact
    return buffer


def test_flush_not_due_for_an_empty_buffer(hints: Settings) -> None:
    assert flush_due(Buffer(), hints, now=1e12) is False


def test_flush_not_due_below_every_hint(hints: Settings) -> None:
    buffer = staged(1, 1)
    assert flush_due(buffer, hints, now=buffer.started_at + 59.9) is False


def test_flush_due_by_event_count(hints: Settings) -> None:
    buffer = staged(1, 1)
    assert not flush_due(buffer, hints, now=buffer.started_at)
    buffer.add(b"9-0", [event()])
    assert buffer.started_at == 1000.0
    assert buffer.events == 3
    assert flush_due(buffer, hints, now=buffer.started_at)


def test_flush_due_by_event_count_within_one_entry(hints: Settings) -> None:
    buffer = staged(5)
    assert len(buffer) == 1
    assert flush_due(buffer, hints, now=buffer.started_at)


@pytest.mark.parametrize("archive_format", ARCHIVE_FORMATS)
def test_flush_due_by_bytes(hints: Settings, archive_format: str) -> None:
    buffer = staged(1, archive_format=archive_format)
    line_bytes = buffer.bytes
    exact = dataclasses.replace(hints, flush_max_events=1000, flush_max_bytes=line_bytes)
    above = dataclasses.replace(exact, flush_max_bytes=line_bytes + 1)
    assert flush_due(buffer, exact, now=buffer.started_at)
    assert not flush_due(buffer, above, now=buffer.started_at)


def test_flush_due_by_age(hints: Settings) -> None:
    buffer = staged(1)
    start = buffer.started_at
    assert not flush_due(buffer, hints, now=start + 59.999)
    assert flush_due(buffer, hints, now=start + 60.0)
    assert flush_due(buffer, hints, now=start + 3600)
