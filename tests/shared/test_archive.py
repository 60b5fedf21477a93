"""The archive writer: partitioning, naming, format, staging, flush rule and object storage."""

from __future__ import annotations

import dataclasses
import gzip
import json
from typing import Any

import pytest

from shared.archive import (
    OBJECT_SUFFIX,
    Buffer,
    ObjectStore,
    UnarchivableEvent,
    compress,
    encode_lines,
    flush_due,
    object_key,
    partition_path,
)
from shared.settings import Settings


def event(received_at: str = "2024-03-05T14:59:59.999Z", **fields: Any) -> dict[str, Any]:
    return {"type": "track", "event": "e", "userId": "u", "receivedAt": received_at, **fields}


# --- partitioner --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("received_at", "expected"),
    [
        ("2024-03-05T14:00:00.000Z", "dt=2024-03-05/hour=14/"),
        ("2024-03-05T14:59:59.999Z", "dt=2024-03-05/hour=14/"),
        ("2024-03-05T15:00:00.000Z", "dt=2024-03-05/hour=15/"),
        ("2024-03-05T00:00:00.000Z", "dt=2024-03-05/hour=00/"),
        ("2024-03-05T23:59:59.999Z", "dt=2024-03-05/hour=23/"),
        ("2024-03-06T00:00:00.000Z", "dt=2024-03-06/hour=00/"),
        ("2024-12-31T23:59:59.999Z", "dt=2024-12-31/hour=23/"),
        ("2025-01-01T00:00:00.000Z", "dt=2025-01-01/hour=00/"),
        ("2024-02-29T09:30:00.000Z", "dt=2024-02-29/hour=09/"),
    ],
)
def test_partition_path_at_hour_boundaries(received_at: str, expected: str) -> None:
    assert partition_path(event(received_at)) == expected


def test_partition_path_uses_received_at_not_client_timestamps() -> None:
    e = event("2024-03-05T14:00:00.000Z", timestamp="1999-01-01T00:00:00.000Z")
    assert partition_path(e) == "dt=2024-03-05/hour=14/"


@pytest.mark.parametrize(
    "received_at",
    [None, "", "2024-03-05", "2024-03-05T1", "20240305T140000Z", 1709647200, ["2024"], {}],
    ids=["none", "empty", "date-only", "short", "basic-format", "epoch", "list", "dict"],
)
def test_partition_path_rejects_bad_received_at(received_at: Any) -> None:
    with pytest.raises(UnarchivableEvent):
        partition_path(event(received_at))


def test_partition_path_rejects_missing_received_at() -> None:
    e = event()
    del e["receivedAt"]
    with pytest.raises(UnarchivableEvent, match="receivedAt"):
        partition_path(e)


def test_unarchivable_event_is_a_value_error() -> None:
    assert issubclass(UnarchivableEvent, ValueError)


# --- naming -------------------------------------------------------------------------------

IDS = [b"1700000000000-0", b"1700000000001-3", b"1700000000002-0"]


def test_object_key_layout() -> None:
    key = object_key("events/", "dt=2024-03-05/hour=14/", IDS)
    assert key.startswith("events/dt=2024-03-05/hour=14/1700000000000-0_1700000000002-0_")
    assert key.endswith(OBJECT_SUFFIX)
    digest = key.removeprefix("events/dt=2024-03-05/hour=14/").split("_")[2]
    digest = digest.removesuffix(OBJECT_SUFFIX)
    assert len(digest) == 16
    int(digest, 16)


def test_object_key_is_deterministic() -> None:
    assert object_key("p/", "dt=x/", list(IDS)) == object_key("p/", "dt=x/", list(IDS))


def test_object_key_digest_depends_on_every_id() -> None:
    middle_changed = [IDS[0], b"1700000000001-4", IDS[2]]
    middle_missing = [IDS[0], IDS[2]]
    keys = {
        object_key("p/", "dt=x/", IDS),
        object_key("p/", "dt=x/", middle_changed),
        object_key("p/", "dt=x/", middle_missing),
    }
    assert len(keys) == 3
    # Same ends, so only the digest tells them apart.
    assert len({k.rsplit("_", 1)[0] for k in keys}) == 1


def test_object_key_of_a_single_entry() -> None:
    key = object_key("", "dt=2024-01-01/hour=00/", [b"5-0"])
    assert key.startswith("dt=2024-01-01/hour=00/5-0_5-0_")


def test_object_key_depends_on_prefix_and_partition() -> None:
    assert object_key("a/", "dt=1/", IDS) != object_key("a/", "dt=2/", IDS)
    assert object_key("a/", "dt=1/", IDS) != object_key("b/", "dt=1/", IDS)


# --- format -------------------------------------------------------------------------------


def test_encode_line_is_one_json_line() -> None:
    e = event(properties={"text": "line\nbreak ünï 🚀", "n": 2**63})
    line = encode_lines([e])
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert json.loads(line) == e


def test_compress_is_deterministic() -> None:
    lines = [encode_lines([event(i=i)]) for i in range(50)]
    assert compress(lines) == compress(list(lines))
    assert compress(lines) != compress(lines[:-1])


def test_compress_gunzips_to_ndjson_lines() -> None:
    events = [event(i=i, text="ü") for i in range(5)]
    body = compress([encode_lines([e]) for e in events])
    assert body[:2] == b"\x1f\x8b"
    text = gzip.decompress(body)
    assert text.endswith(b"\n")
    assert [json.loads(line) for line in text.splitlines()] == events


def test_compress_has_no_timestamp_in_the_header() -> None:
    body = compress([b"{}\n"])
    assert body[4:8] == b"\x00\x00\x00\x00"  # gzip MTIME field


# --- staging ------------------------------------------------------------------------------


def decoded_objects(buffer: Buffer, prefix: str = "events/") -> dict[str, list[dict]]:
    result = {}
    for key, body, count in buffer.objects(prefix):
        lines = [json.loads(line) for line in gzip.decompress(body).splitlines()]
        assert len(lines) == count
        result[key] = lines
    return result


def test_empty_buffer() -> None:
    buffer = Buffer()
    assert len(buffer) == 0
    assert (buffer.events, buffer.bytes, buffer.started_at) == (0, 0, None)
    assert list(buffer.objects("events/")) == []


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
    assert key14 == object_key("events/", "dt=2024-03-05/hour=14/", [b"1-0", b"2-0"])
    assert key15 == object_key("events/", "dt=2024-03-05/hour=15/", [b"1-0", b"3-0"])


def test_an_entry_with_many_events_in_one_partition_is_named_once() -> None:
    buffer = Buffer()
    buffer.add(b"7-0", [event(i=i) for i in range(3)])
    [(key, _, count)] = list(buffer.objects("p/"))
    assert count == 3
    assert key == object_key("p/", "dt=2024-03-05/hour=14/", [b"7-0"])


def test_same_entries_give_the_same_objects() -> None:
    def build() -> list[tuple[str, bytes, int]]:
        buffer = Buffer()
        buffer.add(b"1-0", [event(i=1), event("2024-03-05T16:00:00.000Z", i=2)])
        buffer.add(b"2-0", [event(i=3)])
        return list(buffer.objects("events/"))

    assert build() == build()


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


# --- flush rule ---------------------------------------------------------------------------


@pytest.fixture
def hints() -> Settings:
    return Settings(
        flush_max_events=3, flush_max_bytes=10_000, flush_interval_s=60.0, claim_idle_ms=120_000
    )


def staged(*event_counts: int) -> Buffer:
    buffer = Buffer()
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


def test_flush_due_by_bytes(hints: Settings) -> None:
    buffer = staged(1)
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


# --- storage ------------------------------------------------------------------------------


def test_object_store_put(s3: Any, settings: Settings) -> None:
    store = ObjectStore(s3, settings.s3_bucket)
    body = compress([encode_lines([event(i=1), event(i=2)])])
    key = "events/dt=2024-03-05/hour=14/1-0_2-0_abc.ndjson.gz"

    store.put(key, body)

    stored = s3.get_object(Bucket=settings.s3_bucket, Key=key)
    assert stored["Body"].read() == body
    assert stored["ContentType"] == "application/x-ndjson"


def test_object_store_put_overwrites_the_same_key(s3: Any, settings: Settings) -> None:
    store = ObjectStore(s3, settings.s3_bucket)
    store.put("k.ndjson.gz", b"first")
    store.put("k.ndjson.gz", b"second")
    listing = s3.list_objects_v2(Bucket=settings.s3_bucket)
    assert [o["Key"] for o in listing["Contents"]] == ["k.ndjson.gz"]
    assert s3.get_object(Bucket=settings.s3_bucket, Key="k.ndjson.gz")["Body"].read() == b"second"


def test_object_store_from_settings_writes_the_buffers_objects(s3: Any, settings: Settings) -> None:
    store = ObjectStore.from_settings(settings)
    assert store.bucket == settings.s3_bucket
    buffer = Buffer()
    events = [event(i=1), event("2024-03-05T15:00:00.000Z", i=2)]
    buffer.add(b"1-0", events)
    for key, body, _ in buffer.objects(settings.s3_prefix):
        store.put(key, body)

    listing = s3.list_objects_v2(Bucket=settings.s3_bucket)
    keys = sorted(o["Key"] for o in listing["Contents"])
    assert len(keys) == 2
    assert all(k.startswith(settings.s3_prefix + "dt=2024-03-05/hour=1") for k in keys)
    archived = []
    for key in keys:
        body = s3.get_object(Bucket=settings.s3_bucket, Key=key)["Body"].read()
        archived += [json.loads(line) for line in gzip.decompress(body).splitlines()]
    assert archived == events


def test_object_store_put_to_a_missing_bucket_fails(s3: Any) -> None:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError):
        ObjectStore(s3, "no-such-bucket").put("k", b"x")
