"""`make bench` measures a deletion's local scan and rewrite (local/bench/phases/privacy.py):
what it times is the real work, the finder finding every object that holds the subjects and the
rewrite leaving none of their events."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from local.bench import archive_reading, report
from local.bench.phases import privacy
from shared.archive import ObjectStore, query, reading
from shared.archive.privacy.subjects import Subjects
from shared.settings import Settings


def _subjects_rows(store: ObjectStore, at: str, user_ids: frozenset[str]) -> dict[str, int]:
    """Per object, the rows of `user_ids` (every event the writer makes carries a userId)."""
    found = {}
    for item in reading.list_objects(store, at, query.EVERY_HOUR):
        rows = reading.read_object(store, item)
        count = pc.sum(pc.is_in(rows["user_id"], value_set=pa.array(sorted(user_ids)))).as_py() or 0
        if count:
            found[item.key] = count
    return found


@pytest.mark.parametrize("fmt", privacy.FORMATS)
def test_the_scan_finds_the_subjects_objects_and_the_rewrite_leaves_none(
    settings: Settings, s3: Any, fmt: str
) -> None:
    store = ObjectStore(s3, settings.s3_bucket)
    at = privacy.prefix(fmt)
    stored = archive_reading.write_archive(store, at, 2_000, fmt)
    user_ids = privacy.subjects_in(store, at, 3)
    holding = _subjects_rows(store, at, user_ids)

    scanned = privacy.scan(store, at, user_ids)

    assert len(user_ids) == 3
    assert scanned["events"] == stored
    assert scanned["found"] == sorted(holding)
    assert scanned["linked"] == 3  # each subject's events carry one anonymousId of theirs
    assert scanned["events_per_s"] > 0
    assert scanned["arrow_bytes_per_event"] > 0
    subjects = Subjects(user_ids=user_ids).with_links(scanned["linked_ids"])

    rewritten = privacy.rewrite_found(store, at, scanned["found"], subjects, 3)

    assert rewritten["objects"] == rewritten["rewritten"] == len(holding)
    assert rewritten["events_deleted"] == sum(holding.values())
    assert _subjects_rows(store, at, user_ids) == {}
    after = privacy.scan(store, at, user_ids)
    assert (after["events"], after["objects_found"]) == (stored - sum(holding.values()), 0)
    lines = report.privacy_lines(
        {"plan": {"repeat": 1}, "privacy": privacy_section(fmt, scanned, rewritten)}
    )
    assert f"{scanned['events_per_s']:,} events/s" in lines[2]
    assert f"{rewritten['events_deleted']:,} of the subjects' events deleted" in lines[3]


def privacy_section(fmt: str, scanned: dict, rewritten: dict) -> dict[str, Any]:
    return {
        "events": 2_000,
        "subjects": 3,
        "scan": {fmt: scanned},
        "rewrite": {fmt: rewritten},
    }
