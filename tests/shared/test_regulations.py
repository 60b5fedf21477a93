"""The regulation model and the suppression view: pure, without Redis or a bucket."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from shared import regulations
from shared.regulations import BadRegulation, CachedView, PrivacyView

KEY = bytes(range(32))
NOW = datetime(2026, 12, 6, 11, 0, tzinfo=UTC)


def make(kind: str = "DELETE_ONLY", ids=("u1",), subject: str = "USER_ID", **options):
    return regulations.new_regulation(KEY, kind, subject, list(ids), now=NOW, **options)


@pytest.mark.parametrize(
    ("kind", "subject", "ids", "message"),
    [
        ("DELETE", "USER_ID", ["u"], "regulationType must be one of"),
        (None, "USER_ID", ["u"], "regulationType must be one of"),
        ("DELETE_ONLY", "EMAIL", ["u"], "subjectType must be one of"),
        ("DELETE_ONLY", "USER_ID", [], "one or more IDs"),
        ("DELETE_ONLY", "USER_ID", "u1", "must be a list"),
        ("DELETE_ONLY", "USER_ID", ["u"] * 5001, "at most 5000"),
        ("DELETE_ONLY", "USER_ID", ["u", ""], "subjectIds[1] is not a non-empty string"),
        ("DELETE_ONLY", "USER_ID", ["u", 7], "subjectIds[1] is not a non-empty string"),
        ("DELETE_ONLY", "USER_ID", ["  "], "subjectIds[0] is not a non-empty string"),
    ],
)
def test_bad_input_is_one_clear_error(kind, subject, ids, message) -> None:
    with pytest.raises(BadRegulation, match=message.replace("[", r"\[").replace("]", r"\]")):
        regulations.new_regulation(KEY, kind, subject, ids, now=NOW)


def test_exactly_5000_subjects_are_accepted_each_once() -> None:
    regulation = make(ids=[f"u{i}" for i in range(5000)])
    assert len(regulation.subject_ids) == len(regulation.subject_hashes) == 5000
    assert make(ids=["a", "b", "a"]).subject_ids == ["a", "b"]


def test_a_deletion_waits_with_its_ids_a_suppression_keeps_hashes_only() -> None:
    deletion = make("SUPPRESS_WITH_DELETE")
    assert (deletion.state, deletion.subject_ids) == ("pending", ["u1"])
    assert deletion.deletes and deletion.suppresses
    suppression = make("SUPPRESS_ONLY")
    assert (suppression.state, suppression.subject_ids) == ("finished", [])
    assert suppression.subject_hashes == deletion.subject_hashes
    assert "u1" not in str(suppression.as_dict())


def test_ids_and_order() -> None:
    first, second = make(), make()
    assert first.id != second.id and first.id.startswith("20261206T110000-")
    assert regulations.Regulation.from_dict(first.as_dict()) == first


def test_linking_applies_to_user_ids_only() -> None:
    assert make().linked and not make(linked=False).linked
    assert not make(subject="ANONYMOUS_ID").linked


def test_hashes_are_keyed_per_field_and_read_ids_as_the_archive_does() -> None:
    by_user = regulations.subject_hash(KEY, "userId", "123")
    assert by_user != regulations.subject_hash(KEY, "anonymousId", "123")
    assert by_user != regulations.subject_hash(bytes(32), "userId", "123")
    view = PrivacyView(KEY, suppressed=frozenset({by_user}))
    assert view.suppresses({"userId": 123}) and view.suppresses({"userId": "123"})
    assert not view.suppresses({"userId": 1234}) and not view.suppresses({"anonymousId": "123"})
    assert not view.suppresses({"userId": None}) and not view.suppresses({})


def test_the_view_in_force_follows_the_regulations_in_order() -> None:
    suppress = make("SUPPRESS_ONLY", ids=["a", "b"])
    unsuppress = make("UNSUPPRESS", ids=["a"])
    delete = make("DELETE_ONLY", ids=["c"])
    fields = regulations.view_fields(KEY, [suppress, unsuppress, delete])
    raw = {k.encode(): v.encode() for k, v in fields.items()}
    view = regulations.parse_view(raw)
    assert view.key == KEY
    assert view.suppresses({"userId": "b"}) and not view.suppresses({"userId": "a"})
    assert not view.suppresses({"userId": "c"})
    assert view.drops({"userId": "c"}) and view.drops({"anonymousId": "x", "userId": "b"})
    delete.state = "finished"
    after = regulations.parse_view(
        {k.encode(): v.encode() for k, v in regulations.view_fields(KEY, [delete]).items()}
    )
    assert not after.drops({"userId": "c"}) and after.empty
    assert regulations.parse_view({}) is None


def test_a_cached_view_reloads_after_its_period_and_keeps_what_it_knew_when_redis_fails() -> None:
    now = [0.0]
    reads: list[int] = []
    served = {b"key": KEY.hex().encode()}
    hashed = regulations.subject_hash(KEY, "userId", "u")

    def read() -> dict[bytes, bytes]:
        reads.append(1)
        if served is None:
            raise ConnectionError("Redis away")
        return served

    cache = CachedView(read, reload_s=1.0, clock=lambda: now[0])
    assert not cache.current().suppresses({"userId": "u"})
    served[f"s:{hashed}".encode()] = b"r1"
    now[0] = 0.5
    assert not cache.current().suppresses({"userId": "u"}) and len(reads) == 1
    now[0] = 1.0
    assert cache.current().suppresses({"userId": "u"}) and len(reads) == 2
    served = None
    now[0] = 5.0
    assert cache.current().suppresses({"userId": "u"}) and len(reads) == 3


def test_before_its_first_read_ends_a_cached_view_is_waited_for_not_taken_empty() -> None:
    """The shards' drainers (or ingest's concurrent requests) ask at once: the one that does
    not read waits for the first copy instead of taking the empty view the process starts
    with, which let a suppressed subject's events through."""
    hashed = regulations.subject_hash(KEY, "userId", "u")
    served = {b"key": KEY.hex().encode(), f"s:{hashed}".encode(): b"r1"}
    reading, release = threading.Event(), threading.Event()

    def read() -> dict[bytes, bytes]:
        reading.set()
        release.wait(timeout=30)
        return served

    cache = CachedView(read, reload_s=60.0)
    first = threading.Thread(target=cache.current)
    first.start()
    assert reading.wait(timeout=30)
    seen: list[PrivacyView] = []
    second = threading.Thread(target=lambda: seen.append(cache.current()))
    second.start()
    release.set()
    first.join(timeout=30)
    second.join(timeout=30)
    assert seen and seen[0].suppresses({"userId": "u"})


def test_while_a_cached_view_is_read_again_the_others_go_on_with_the_last_copy() -> None:
    now = [0.0]
    hashed = regulations.subject_hash(KEY, "userId", "u")
    served = {b"key": KEY.hex().encode(), f"s:{hashed}".encode(): b"r1"}
    reading, release = threading.Event(), threading.Event()
    slow = [False]

    def read() -> dict[bytes, bytes]:
        if slow[0]:
            reading.set()
            release.wait(timeout=30)
        return served

    cache = CachedView(read, reload_s=1.0, clock=lambda: now[0])
    assert cache.current().suppresses({"userId": "u"})
    now[0], slow[0] = 2.0, True
    reloading = threading.Thread(target=cache.current)
    reloading.start()
    assert reading.wait(timeout=30)
    assert cache.current().suppresses({"userId": "u"})  # at once, the last copy
    release.set()
    reloading.join(timeout=30)
