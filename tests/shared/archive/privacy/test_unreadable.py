"""Deleting subjects' events from the objects compaction set aside as unreadable: damaged
objects made as `tests.unreadable` makes them (truncated gzip, a line that is not JSON, bad
Parquet, and Parquet with a row group that does not read), holding subjects' events, set aside
by the real compactor (moto's S3, a real redis-server for its locks)."""

from __future__ import annotations

import gzip
import io
import json
import zlib
from datetime import UTC, datetime
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from shared.archive import ObjectStore, columns, reading
from shared.archive.compaction import Compactor
from shared.archive.formats import ndjson
from shared.archive.naming import unreadable_key
from shared.archive.privacy.subjects import Subjects
from shared.archive.privacy.unreadable import scrub_unreadable
from shared.settings import Settings
from tests.archives import Client, Crash, ev, objects
from tests.shared.archive.privacy.bucket import Writes
from tests.unreadable import PARTITION, gzip_without_end

NOW = datetime(2024, 3, 7, tzinfo=UTC)
SUBJECTS = Subjects(frozenset({"u-gone"}), frozenset({"a-gone"})).with_links({"a-linked"})
LEVEL = 3


def event(message_id: str, user: str | None, anonymous: str | None = None) -> dict[str, Any]:
    found = ev(message_id, "13:10", "e", user or "")
    if user is None:
        del found["userId"]
    return found | ({"anonymousId": anonymous} if anonymous else {})


def line(message_id: str, user: str | None, anonymous: str | None = None) -> bytes:
    return msgspec.json.encode(event(message_id, user, anonymous)) + b"\n"


def key(name: str, root: str = "") -> str:
    suffix = ".parquet" if root else ".ndjson.gz"
    return f"events/{root}{PARTITION}1709643000000-0_1709643000000-0_{name}{suffix}"


def damaged_row_group(events: list[dict[str, Any]], rows_per_group: int) -> bytes:
    """Parquet whose second row group's column chunks are overwritten: it does not read."""
    sink = pa.BufferOutputStream()
    pq.write_table(columns.to_rows(events), sink, row_group_size=rows_per_group)
    body = bytearray(sink.getvalue().to_pybytes())
    group = pq.ParquetFile(io.BytesIO(bytes(body))).metadata.row_group(1)
    for index in range(group.num_columns):
        chunk = group.column(index)
        start = chunk.dictionary_page_offset or chunk.data_page_offset
        body[start : start + chunk.total_compressed_size] = b"\xff" * chunk.total_compressed_size
    return bytes(body)


CUT = line("cut-6", "u-keep")[:30]  # a line cut by the truncation
BROKEN_NAMING = b'{"messageId":"bad-2","userId":"u-gone",'  # not JSON, names a subject
BROKEN = b'{"messageId":"bad-9","userId":"u-'  # not JSON, names none
DAMAGED = {
    # gzip cut in the middle of its last line
    "truncated": gzip_without_end(
        line("t-0", "u-gone")
        + line("t-1", "u-keep")
        + line("t-2", None, "a-linked")  # a linked ID with no userId: deleted
        + line("t-3", "u-other", "a-linked")  # on a shared device: kept, counted
        + CUT
    ),
    "naming": gzip.compress(
        line("n-0", "u-keep") + BROKEN_NAMING + b"\n" + line("n-1", None, "a-gone"), mtime=0
    ),
    "invalid": gzip.compress(line("i-0", "u-gone") + BROKEN + b"\n" + line("i-1", "u-keep")),
    "only": gzip_without_end(line("o-0", "u-gone") + line("o-1", None, "a-gone")),
    "nobody": gzip_without_end(line("x-0", "u-keep") + CUT),
}
PARQUET = {
    "bad": b"PAR1 this is not Parquet at all PAR1",
    "group": damaged_row_group(
        [event(f"g-{i}", "u-gone" if i in (0, 3) else "u-keep") for i in range(5)],
        rows_per_group=3,
    ),
}


def set_aside(s3: Any, settings: Settings) -> dict[str, str]:
    """DAMAGED and PARQUET in the archive, set aside by compaction; their keys there."""
    store = ObjectStore(s3, settings.s3_bucket)
    for name, body in DAMAGED.items():
        store.put(key(name), body)
    for name, body in PARQUET.items():
        store.put(key(name, "parquet/"), body)
    client = redis.Redis.from_url(settings.redis_url)
    Compactor(settings, store, client, clock=NOW.timestamp).run()
    names = [*((n, key(n)) for n in DAMAGED), *((n, key(n, "parquet/")) for n in PARQUET)]
    aside = {name: unreadable_key(settings.s3_prefix, original) for name, original in names}
    assert set(aside.values()) <= set(objects(s3, settings.s3_bucket))
    return aside


def ids(fmt: str, body: bytes) -> list[str]:
    return reading.decode(fmt, body)[0]["message_id"].to_pylist()


def notes(stored: dict[str, bytes], aside: str) -> list[str]:
    return json.loads(stored[aside + ".reason.json"]).get("privacy_deletions", [])


def test_the_subjects_decoded_events_go_and_every_other_byte_that_can_stay_stays(
    s3: Any, settings: Settings
) -> None:
    aside = set_aside(s3, settings)
    before = objects(s3, settings.s3_bucket)
    writes = Writes(s3)

    tally = scrub_unreadable(ObjectStore(s3, settings.s3_bucket), "events/", SUBJECTS, LEVEL)

    stored = objects(s3, settings.s3_bucket)
    # Lines are kept as they were, the ones that are not JSON and the cut one included.
    truncated = gzip.decompress(stored[aside["truncated"]])
    assert truncated == line("t-1", "u-keep") + line("t-3", "u-other", "a-linked") + CUT
    naming = gzip.decompress(stored[aside["naming"]])
    assert naming == line("n-0", "u-keep") + BROKEN_NAMING + b"\n"
    assert gzip.decompress(stored[aside["invalid"]]) == BROKEN + b"\n" + line("i-1", "u-keep")
    # Parquet: the row group that reads, without the subjects; the other one could not stay.
    assert ids("parquet", stored[aside["group"]]) == ["g-1", "g-2"]
    assert reading.decode("parquet", stored[aside["group"]])[1] is None
    # Held only the subjects' decoded events: gone with its reason.
    assert aside["only"] not in stored and aside["only"] + ".reason.json" not in stored
    # Nothing of a subject decodes in them: never written.
    for name in ("nobody", "bad"):
        assert stored[aside[name]] == before[aside[name]]
        assert not any(aside[name] in written for written in writes.keys)
    # Each rewritten one's reason says so, and what of it could not stay.
    assert "gzip fault (the gzip data is truncated" in notes(stored, aside["truncated"])[0]
    assert notes(stored, aside["naming"]) == notes(stored, aside["invalid"])
    assert "left out" not in notes(stored, aside["invalid"])[0]
    assert "1 of its row groups" in notes(stored, aside["group"])[0]
    # Listed for a person: what cannot be decoded and may hold a subject, not `invalid`'s
    # line, whose text names none.
    listed = ["truncated", "naming", "only", "nobody", "bad", "group"]
    assert sorted(tally.undecodable) == sorted(aside[name] for name in listed)
    assert (tally.objects_scanned, tally.objects_rewritten, tally.objects_removed) == (7, 4, 1)
    # g-3, a subject's, was in the row group that does not read.
    assert (tally.events_deleted, tally.shared_devices_kept) == (2 + 1 + 1 + 2 + 1, 1)

    again = scrub_unreadable(ObjectStore(s3, settings.s3_bucket), "events/", SUBJECTS, LEVEL)

    assert objects(s3, settings.s3_bucket) == stored
    assert len(writes.keys) == 4 * 2 + 2  # each rewrite and its reason, and one removal
    assert (again.events_deleted, again.objects_rewritten, again.objects_removed) == (0, 0, 0)
    # What no longer holds anything undecodable that may be a subject's is no longer listed.
    still = ["naming", "nobody", "bad"]
    assert sorted(again.undecodable) == sorted(aside[name] for name in still)


def test_an_object_that_decodes_whole_is_rewritten_as_the_archive_writes_it(
    s3: Any, settings: Settings
) -> None:
    store = ObjectStore(s3, settings.s3_bucket)
    whole = unreadable_key("events/", key("whole"))
    emptied = unreadable_key("events/", key("emptied"))
    untouched = unreadable_key("events/", key("untouched"))
    kept = [event("w-1", "u-keep"), event("w-2", "u-other", "a-linked")]
    events = [event("w-0", None, "a-linked"), *kept]
    for aside, body in [
        (whole, ndjson.encode([ndjson.encode_lines(events)], LEVEL)),
        (emptied, ndjson.encode([line("e-0", "u-gone")], LEVEL)),
        (untouched, ndjson.encode([line("u-0", "u-keep")], LEVEL)),
    ]:
        store.put(aside, body)
        store.put_json(aside + ".reason.json", {"reason": "set aside"})
    before = objects(s3, settings.s3_bucket)
    writes = Writes(s3)

    tally = scrub_unreadable(store, "events/", SUBJECTS, LEVEL)

    stored = objects(s3, settings.s3_bucket)
    assert stored[whole] == ndjson.compress([ndjson.encode_lines(kept)], LEVEL)
    assert stored[whole + ".reason.json"] == before[whole + ".reason.json"]
    assert emptied not in stored and emptied + ".reason.json" not in stored
    assert stored[untouched] == before[untouched]
    assert sorted(writes.keys) == sorted(
        [whole, f"delete {emptied}", f"delete {emptied}.reason.json"]
    )
    assert tally.undecodable == [] and tally.shared_devices_kept == 1
    assert (tally.objects_rewritten, tally.objects_removed, tally.events_deleted) == (1, 1, 2)


def test_gzip_that_is_not_gzip_after_a_fault_keeps_the_text_before_it(
    s3: Any, settings: Settings
) -> None:
    """A corrupt byte in the middle: the text before it is rewritten without the subjects;
    what follows cannot be carried over (deflate refers back into the text the rewrite
    changes), so the reason says it was left out and the key is listed."""
    store = ObjectStore(s3, settings.s3_bucket)
    text = b"".join(line(f"c-{i}", ("u-gone", "u-keep")[i % 2]) for i in range(200))
    deflate = zlib.compressobj(wbits=31)
    body = bytearray(deflate.compress(text) + deflate.flush())
    body[len(body) // 2 : len(body) // 2 + 16] = b"\xff" * 16
    aside = unreadable_key("events/", key("corrupt"))
    store.put(aside, bytes(body))
    salvaged = ids("ndjson", bytes(body))
    assert 10 < len(salvaged) < 200  # some of it decodes

    tally = scrub_unreadable(store, "events/", SUBJECTS, LEVEL)

    kept = ids("ndjson", store.get(aside))
    assert kept == [i for i in salvaged if int(i[2:]) % 2]
    assert tally.undecodable == [aside] and tally.events_deleted == len(salvaged) - len(kept)
    note = store.get_json(aside + ".reason.json")["privacy_deletions"]
    assert len(note) == 1 and "left out" in note[0]


@pytest.mark.parametrize("die_at", range(4 * 2 + 1))
def test_a_run_killed_at_any_change_and_started_again_ends_as_one_run(
    s3: Any, settings: Settings, die_at: int
) -> None:
    """Killed after any of its PUTs and deletes (a reason file's and its object's among them),
    and started again: the same objects as a run never killed."""
    set_aside(s3, settings)
    before = objects(s3, settings.s3_bucket)
    dying = ObjectStore(Client(s3, die_at=die_at), settings.s3_bucket)
    with pytest.raises(Crash):
        scrub_unreadable(dying, "events/", SUBJECTS, LEVEL)
    scrub_unreadable(ObjectStore(s3, settings.s3_bucket), "events/", SUBJECTS, LEVEL)
    resumed = objects(s3, settings.s3_bucket)

    for key in resumed:
        s3.delete_object(Bucket=settings.s3_bucket, Key=key)
    for key, body in before.items():
        s3.put_object(Bucket=settings.s3_bucket, Key=key, Body=body)
    scrub_unreadable(ObjectStore(s3, settings.s3_bucket), "events/", SUBJECTS, LEVEL)

    assert resumed == objects(s3, settings.s3_bucket)
