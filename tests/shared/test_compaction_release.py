"""A deploy while an hour is being compacted: the release before issue 26 killed at each change
of the bucket, then this release resumes its plan. Split from test_compaction.py so that
pytest-xdist (`--dist loadfile`) can run it beside the rest. Against moto's in-process S3 and a
real redis-server (the locks).
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

from shared.archive import columns
from shared.settings import Settings
from tests import archives
from tests.archives import Client, Crash, ev
from tests.shared.compacting import (
    assert_fully_compacted,
    make,
    prepare_parts,
    restore,
    snapshot,
    store_of,
    view,
)


def test_a_plan_the_release_before_the_derived_columns_began_ends_right_in_this_one(
    s3: Any, settings: Settings
) -> None:
    """A deploy while an hour is being compacted: the release before issue 26 (its Parquet
    and spills without the derived columns, nothing derived) killed at each change, then this
    release resumes its plan: it reads the older spills and objects (with the columns derived
    from `context`), and ends with each event once, as the query chose it. A merge killed
    between storing its object and its marker leaves an older object that this release's redo
    does not overwrite (its bytes, so its name, differ): two objects then claim one part, and
    the next run merges them (`plan.needs_work`), so nothing is lost or kept twice."""
    options = prepare_parts(s3, settings)
    with archives.release_before_derived_columns():  # ingest enriched, the consumer was older
        archives.write_parquet(
            store_of(s3, settings),
            settings.s3_prefix,
            [
                (
                    b"900-0",
                    [
                        archives.enriched(
                            ev(f"m{n}", "13:30", "e", "u9"), "France", "FR", bot=n == 3
                        )
                        for n in range(1, 6)
                    ],
                )
            ],
        )
    prepared = snapshot(s3, settings)
    expected = view(s3, settings)
    assert any(row[columns.SCHEMA.names.index("country") + 1] == "France" for row in expected)
    runs_after = Counter()
    for die_at in itertools.count():
        attempt = archives.fresh_bucket(s3, settings)
        restore(s3, attempt, prepared)
        try:
            with archives.release_before_derived_columns():
                make(attempt, s3, Client(s3, die_at=die_at), **options).run()
        except Crash:
            pass
        else:
            break
        working = 0  # the runs of this release that compacted something
        while True:
            summary = make(attempt, s3, **options).run()
            assert not summary.failures(), summary
            if not summary.count("compacted"):
                break
            working += 1
            assert working <= 2
        runs_after[working] += 1
        assert_fully_compacted(s3, attempt, expected)
    assert die_at > 10
    assert runs_after[2] > 0, "no kill left an older merge's object beside its redo"
