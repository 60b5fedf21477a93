"""Compaction killed at each change it makes to the bucket (a rerun ends with the archive an
uninterrupted run leaves), and queried after each change (each event seen once). Split from
test_compaction.py so that pytest-xdist (`--dist loadfile`) can run it beside the rest.
Against moto's in-process S3 and a real redis-server (the locks).
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import pytest

from shared.settings import Settings
from tests import archives
from tests.archives import Client, Crash
from tests.shared.compacting import (
    SCENARIOS,
    assert_fully_compacted,
    make,
    objects,
    restore,
    snapshot,
    view,
)


# "one part" is left out: "late objects" compacts its hours again, through the same steps.
@pytest.mark.parametrize("scenario", ["parts", "late objects"])
def test_a_rerun_after_a_kill_at_any_change_gives_the_same_archive(
    s3: Any, settings: Settings, scenario: str
) -> None:
    options = SCENARIOS[scenario](s3, settings)
    prepared = snapshot(s3, settings)
    expected = view(s3, settings)
    make(settings, s3, **options).run()
    assert_fully_compacted(s3, settings, expected)
    compacted = objects(s3, settings)

    for die_at in itertools.count():
        attempt = archives.fresh_bucket(s3, settings)
        restore(s3, attempt, prepared)
        try:
            make(attempt, s3, Client(s3, die_at=die_at), **options).run()
        except Crash:
            pass
        else:
            break  # it made every change before dying: every step has been killed once
        summary = make(attempt, s3, **options).run()

        assert {h.state for h in summary.hours} <= {"compacted", "unchanged"}, summary
        assert objects(s3, attempt) == compacted, f"killed before change {die_at}"
    assert die_at > 10


def keyed(answer: Counter) -> Counter:
    return Counter({row: n for row, n in answer.items() if row[1] is not None})


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_query_at_any_moment_sees_each_event_once(
    s3: Any, settings: Settings, scenario: str
) -> None:
    options = SCENARIOS[scenario](s3, settings)
    expected = view(s3, settings)
    seen = []

    def query() -> None:
        seen.append(view(s3, settings))

    make(settings, s3, Client(s3, after_change=query), **options).run()

    assert len(seen) > 10
    for moment, answer in enumerate(seen):
        assert keyed(answer) == keyed(expected), f"after change {moment}"
        # A row without a message_id cannot be told from its copy: between storing the
        # compacted object and removing its inputs, a query counts it twice (ingest always
        # gives events one, so only rows written by other means can lack it).
        unkeyed = answer - keyed(answer)
        assert set(unkeyed) == set(expected - keyed(expected))
        assert max(unkeyed.values(), default=1) <= 2
    assert_fully_compacted(s3, settings, expected)
