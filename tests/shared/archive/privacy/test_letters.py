"""Deleting subjects' events from the dead letters, as the consumer writes them: the JSON copies
under `errors/` (`naming.error_object`) against moto, and the dead-letter streams
(`stream.dead_letters.append`) against a real redis-server (6.2 or 7, as REDIS_SERVER picks)."""

from __future__ import annotations

import base64
import json
from typing import Any

import msgspec
import pytest
import redis

from shared import codec
from shared.archive.naming import error_object
from shared.archive.privacy.letters import scrub_bucket_letters, scrub_dead_letter_streams
from shared.archive.privacy.subjects import Subjects
from shared.archive.storage import ObjectStore
from shared.settings import Settings
from shared.shards import dead_letter_key
from shared.stream import dead_letters
from tests.archives import Crash, objects
from tests.shared.archive.privacy.bucket import Writes

# "u-gone" and "42" deleted; "a-linked" linked to them by the archive, "a-gone" named.
SUBJECTS = Subjects(frozenset({"u-gone", "42"}), frozenset({"a-gone"})).with_links({"a-linked"})


def event(message_id: str, user: Any = None, anonymous: str | None = None) -> dict[str, Any]:
    ids = {"userId": user} if user is not None else {}
    ids |= {"anonymousId": anonymous} if anonymous else {}
    return {"type": "track", "event": "e", "messageId": message_id, "source": "web", **ids}


MIXED = [
    event("m1", "u-gone"),
    event("m2", "u-keep"),
    event("m3", anonymous="a-linked"),  # a linked ID with no userId: deleted
    event("m4", "u-other", "a-linked"),  # a linked ID on a shared device: kept, counted
    event("m5", 42),  # an integer userId matches as its text
]
KEPT = ["m2", "m4"]
ONLY = [event("m6", "u-gone", "a-x"), event("m7", anonymous="a-gone")]
NONE = [event("m8", "u-keep")]
# Entries this version cannot decode: an unknown format version, one naming a subject.
NAMING = {b"v": b"9", b"n": b"1", b"d": msgspec.msgpack.encode([{"userId": "u-gone"}])}
SILENT = {b"v": b"9", b"n": b"1", b"d": b"\x93not events"}
# A field the codec does not write stays as it is.
MIXED_ENTRY = {**codec.encode_entry(MIXED), b"x-other": b"kept"}
# (entry ID, fields, whether a shard's): the shard's has the same ID as the first.
LETTERS: list[tuple[bytes, dict[bytes, bytes] | None, bool]] = [
    (b"1709643000000-0", MIXED_ENTRY, False),
    (b"1709643000001-0", codec.encode_entry(ONLY), False),
    (b"1709643000002-0", codec.encode_entry(NONE), False),
    (b"1709643000003-0", NAMING, False),
    (b"1709643000004-0", SILENT, False),
    (b"1709643000005-0", None, False),  # an unread entry: its record in the bucket has no data
    (b"1709643000000-0", MIXED_ENTRY, True),
]
UNTOUCHED = [b"1709643000002-0", b"1709643000003-0", b"1709643000004-0", b"1709643000005-0"]


def shard_of(settings: Settings) -> str:
    return f"{settings.stream_key}:{{s1}}"


def message_ids(fields: dict[bytes, bytes]) -> list[str]:
    return [e["messageId"] for e in codec.decode_entry(fields)]


# --- errors/ in the bucket ------------------------------------------------------------------


def write_letters(store: ObjectStore, settings: Settings) -> list[str]:
    keys = []
    for entry_id, fields, sharded in LETTERS:
        shard = shard_of(settings) if sharded else ""
        key, body = error_object(entry_id, fields, "reason: cannot be archived", shard=shard)
        store.put(key, body, "application/json")
        keys.append(key)
    return keys


def entry_of(document: bytes) -> dict[bytes, bytes]:
    fields = json.loads(document)["fields"]
    return {name.encode(): base64.b64decode(value) for name, value in fields.items()}


def test_bucket_letters_lose_the_subjects_events_and_nothing_else(
    s3: Any, settings: Settings
) -> None:
    store = ObjectStore(s3, settings.s3_bucket)
    mixed, only, none, naming, silent, unread, shard_mixed = write_letters(store, settings)
    before = objects(s3, settings.s3_bucket)
    writes = Writes(s3)

    tally = scrub_bucket_letters(store, SUBJECTS)

    after = objects(s3, settings.s3_bucket)
    assert sorted(writes.keys) == sorted([mixed, shard_mixed, f"delete {only}"])
    assert only not in after
    for key in (none, naming, silent, unread):
        assert after[key] == before[key], key
    for key in (mixed, shard_mixed):
        assert message_ids(entry_of(after[key])) == KEPT
        old, new = json.loads(before[key]), json.loads(after[key])
        assert entry_of(after[key])[b"n"] == b"2"
        for document in (old, new):  # everything else of the letter is as it was
            del document["fields"]["d"], document["fields"]["n"]
        assert new == old
    assert tally.undecodable == [naming]  # SILENT and the unread letter name no subject
    assert (tally.objects_scanned, tally.dead_letters_rewritten) == (7, 3)
    assert (tally.events_deleted, tally.shared_devices_kept) == (3 + 2 + 3, 2)

    again = scrub_bucket_letters(store, SUBJECTS)

    assert objects(s3, settings.s3_bucket) == after
    assert len(writes.keys) == 3  # nothing more written
    assert (again.events_deleted, again.dead_letters_rewritten) == (0, 0)
    assert again.undecodable == [naming]


def test_a_document_that_is_no_letter_is_listed_when_it_names_a_subject(
    s3: Any, settings: Settings
) -> None:
    store = ObjectStore(s3, settings.s3_bucket)
    store.put("errors/dt=2024-03-05/1-0.json", b'{"fields": {"d": "not base64 \xc3 u-gone"}}')
    store.put("errors/dt=2024-03-05/2-0.json", b"{half a document")
    writes = Writes(s3)

    tally = scrub_bucket_letters(store, SUBJECTS)

    assert tally.undecodable == ["errors/dt=2024-03-05/1-0.json"]
    assert writes.keys == []


# --- the dead-letter streams in Redis -------------------------------------------------------


def append_letters(client: redis.Redis, settings: Settings) -> None:
    """LETTERS in the dead-letter streams, as the consumer appends them."""
    for entry_id, fields, sharded in LETTERS:
        stream_key = shard_of(settings) if sharded else settings.stream_key
        dead_letters.append(client, stream_key, entry_id, fields, "reason", 100)


def letters(client: redis.Redis, keys: list[str]) -> dict[str, list[tuple[bytes, dict]]]:
    return {key: client.xrange(key) for key in keys}


def contents(client: redis.Redis, keys: list[str]) -> list[tuple[str, bytes, list[str] | None]]:
    """Each letter as (stream, original entry ID, its events' messageIds or None), sorted."""
    found = []
    for key in keys:
        for _, record in client.xrange(key):
            fields = dead_letters.original_fields(record)
            try:
                ids = message_ids(fields)
            except codec.UndecodableEntry:
                ids = None
            found.append((key, record[b"original_id"], ids))
    return sorted(found, key=repr)


def expected(dead_keys: list[str]) -> list[tuple[str, bytes, list[str] | None]]:
    main, shard = dead_keys
    untouched = [
        (main, entry_id, ["m8"] if entry_id.endswith(b"2-0") else None) for entry_id in UNTOUCHED
    ]
    mixed = [(main, b"1709643000000-0", KEPT), (shard, b"1709643000000-0", KEPT)]
    return sorted(untouched + mixed, key=repr)


@pytest.fixture
def dead_keys(settings: Settings) -> list[str]:
    return [dead_letter_key(settings.stream_key), dead_letter_key(shard_of(settings))]


def test_stream_letters_are_replaced_without_the_subjects_events(
    redis_client: redis.Redis, settings: Settings, dead_keys: list[str]
) -> None:
    append_letters(redis_client, settings)
    main, shard = dead_keys
    before = letters(redis_client, dead_keys)

    tally = scrub_dead_letter_streams(redis_client, dead_keys, SUBJECTS)

    after = letters(redis_client, dead_keys)
    assert contents(redis_client, dead_keys) == expected(dead_keys)
    # The untouched letters keep their place and ID; the mixed one is added again at the end.
    assert after[main][:-1] == before[main][2:] and after[shard][:-1] == []
    assert [r[b"original_id"] for _, r in after[main][:-1]] == UNTOUCHED
    for key in dead_keys:
        new_id, record = after[key][-1]
        old = before[key][0][1]
        assert new_id > before[key][-1][0]
        assert list(record) == list(old)  # the same fields, in the same order
        assert record[b"field:n"] == b"2"
        rewritten = (b"field:n", b"field:d")
        assert {n: v for n, v in record.items() if n not in rewritten} == {
            n: v for n, v in old.items() if n not in rewritten
        }
    assert tally.undecodable == [f"{main} {before[main][3][0].decode()}"]  # NAMING's
    assert (tally.dead_letters_rewritten, tally.events_deleted) == (3, 8)
    assert tally.shared_devices_kept == 2 and tally.objects_scanned == 0

    again = scrub_dead_letter_streams(redis_client, dead_keys, SUBJECTS)

    assert letters(redis_client, dead_keys) == after  # nothing added, nothing deleted
    assert (again.dead_letters_rewritten, again.events_deleted) == (0, 0)
    assert again.undecodable == tally.undecodable


class Dying:
    """The Redis client, passed through, that dies at its `n`-th change (a transaction, an XADD
    or an XDEL outside one) before it is sent or right after it is answered, as a killed
    process would."""

    def __init__(self, client: redis.Redis, n: int, after: bool) -> None:
        self._client, self.n, self.after, self.changes = client, n, after, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _change(self, send: Any) -> Any:
        self.changes += 1
        if self.changes == self.n and not self.after:
            raise Crash(f"killed before change {self.n}")
        answer = send()
        if self.changes == self.n:
            raise Crash(f"killed after change {self.n}")
        return answer

    def xadd(self, *args: Any, **kwargs: Any) -> Any:
        return self._change(lambda: self._client.xadd(*args, **kwargs))

    def xdel(self, *args: Any, **kwargs: Any) -> Any:
        return self._change(lambda: self._client.xdel(*args, **kwargs))

    def pipeline(self, transaction: bool = True) -> Any:
        pipe = self._client.pipeline(transaction=transaction)
        execute = pipe.execute
        pipe.execute = lambda *args, **kwargs: self._change(lambda: execute(*args, **kwargs))
        return pipe


@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_a_run_killed_at_a_letter_and_started_again_ends_as_one_run(
    redis_client: redis.Redis, settings: Settings, dead_keys: list[str], n: int, after: bool
) -> None:
    append_letters(redis_client, settings)

    with pytest.raises(Crash):
        scrub_dead_letter_streams(Dying(redis_client, n, after), dead_keys, SUBJECTS)
    scrub_dead_letter_streams(redis_client, dead_keys, SUBJECTS)

    assert contents(redis_client, dead_keys) == expected(dead_keys)


def test_a_letter_removed_while_it_is_rewritten_is_not_added_back(
    redis_client: redis.Redis, settings: Settings, dead_keys: list[str]
) -> None:
    """A redrive (or a trim) deleting the letter between the check and the transaction: the
    WATCH fails the transaction, and the letter, looked for again, is gone."""
    append_letters(redis_client, settings)
    main = dead_keys[0]
    mixed = redis_client.xrange(main, count=1)[0][0]
    other = redis.Redis.from_url(settings.redis_url)

    class Redriving(Dying):
        def pipeline(self, transaction: bool = True) -> Any:
            pipe = self._client.pipeline(transaction=transaction)
            multi = pipe.multi

            def redriven_multi() -> Any:
                other.xdel(main, mixed)  # as `dead_letters.redrive` ends
                return multi()

            pipe.multi = redriven_multi
            return pipe

    tally = scrub_dead_letter_streams(Redriving(redis_client, 0, False), [main], SUBJECTS)

    assert [r[b"original_id"] for _, r in redis_client.xrange(main)] == UNTOUCHED
    assert tally.dead_letters_rewritten == 1  # ONLY's letter, deleted
