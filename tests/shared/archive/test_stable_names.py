"""Stability promises, pinned: the exact names the archive gives its objects and the exact
compacted part each message ID falls in, for fixed inputs.

The expected strings and lists were computed once and written here by hand; they are not
derived from the code under test. Changing any of them is not a refactor: a new object name
renames every object in users' buckets (a retried or re-read flush no longer overwrites the
object an older release wrote, so it is stored twice), and a new part for an ID moves rows
between compacted parts, which breaks deduplication across versions (copies of one event
compacted by two releases no longer meet in the same part).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from shared.archive.compaction.plan import part_of_ids
from shared.archive.naming import Part, compacted_key, error_object_key, object_key, unreadable_key

HOUR_22 = "dt=2023-11-14/hour=22/"
TWO_IDS = [b"1700000000000-0", b"1700000000001-3"]
# 143 entries over a second of 2024-03-05T14, sequence numbers 0 to 2.
MANY_IDS = [f"{1709650800000 + n}-{n % 3}".encode() for n in range(0, 1000, 7)]


@pytest.mark.parametrize(
    ("root", "partition", "entry_ids", "suffix", "salt", "expected"),
    [
        # STREAM_KEY's gzip NDJSON objects, at the prefix itself.
        (
            "events/",
            HOUR_22,
            TWO_IDS,
            ".ndjson.gz",
            "",
            "events/dt=2023-11-14/hour=22/"
            "1700000000000-0_1700000000001-3_38d9b395edf62406.ndjson.gz",
        ),
        # Parquet under its own root: the same digest, another root and suffix.
        (
            "events/parquet/",
            HOUR_22,
            TWO_IDS,
            ".parquet",
            "",
            "events/parquet/dt=2023-11-14/hour=22/"
            "1700000000000-0_1700000000001-3_38d9b395edf62406.parquet",
        ),
        # One entry, no prefix.
        (
            "",
            "dt=2024-01-01/hour=00/",
            [b"5-0"],
            ".ndjson.gz",
            "",
            "dt=2024-01-01/hour=00/5-0_5-0_3cca4bc1953be396.ndjson.gz",
        ),
        # A shard's entries: its key salts the digest.
        (
            "events/",
            HOUR_22,
            TWO_IDS,
            ".ndjson.gz",
            "events:{1.408}",
            "events/dt=2023-11-14/hour=22/"
            "1700000000000-0_1700000000001-3_8935a5c90e930be5.ndjson.gz",
        ),
        (
            "events/parquet/",
            HOUR_22,
            TWO_IDS,
            ".parquet",
            "{events}:{0.443}",
            "events/parquet/dt=2023-11-14/hour=22/"
            "1700000000000-0_1700000000001-3_216fc377659f7dd2.parquet",
        ),
        (
            "events/",
            HOUR_22,
            TWO_IDS,
            ".ndjson.gz",
            "events/{a b}",
            "events/dt=2023-11-14/hour=22/"
            "1700000000000-0_1700000000001-3_ac2443eefc757f68.ndjson.gz",
        ),
        # A large flush: the ends name it, the digest covers every ID between.
        (
            "events/",
            "dt=2024-03-05/hour=14/",
            MANY_IDS,
            ".ndjson.gz",
            "",
            "events/dt=2024-03-05/hour=14/"
            "1709650800000-0_1709650800994-1_f161bce0b612a90b.ndjson.gz",
        ),
    ],
)
def test_object_keys_are_as_released(
    root: str, partition: str, entry_ids: list[bytes], suffix: str, salt: str, expected: str
) -> None:
    assert object_key(root, partition, entry_ids, suffix, salt) == expected


@pytest.mark.parametrize(
    ("entry_id", "shard", "expected"),
    [
        (b"1700000000000-0", "", "errors/dt=2023-11-14/1700000000000-0.json"),
        # The last millisecond of a day, and the first of the next.
        (b"1709683199999-7", "", "errors/dt=2024-03-05/1709683199999-7.json"),
        (b"1709683200000-0", "", "errors/dt=2024-03-06/1709683200000-0.json"),
        # A shard is named by its hash tag, or by a digest of a key without a plain one.
        (
            b"1700000000000-0",
            "events:{1.408}",
            "errors/dt=2023-11-14/1700000000000-0_shard-1.408.json",
        ),
        (
            b"1700000000000-0",
            "{events}:{0.443}",
            "errors/dt=2023-11-14/1700000000000-0_shard-0.443.json",
        ),
        (
            b"1700000000000-0",
            "events/{a b}",
            "errors/dt=2023-11-14/1700000000000-0_shard-8ae7ac95d80c19c3.json",
        ),
    ],
)
def test_dead_letter_keys_are_as_released(entry_id: bytes, shard: str, expected: str) -> None:
    assert error_object_key(entry_id, shard) == expected


@pytest.mark.parametrize(
    ("prefix", "key", "expected"),
    [
        (
            "events/",
            "events/dt=2024-03-05/hour=13/1-0_2-0_abc.ndjson.gz",
            "events/_unreadable/events/dt=2024-03-05/hour=13/1-0_2-0_abc.ndjson.gz",
        ),
        (
            "events/",
            "events/compacted/dt=2024-03-05/hour=13/"
            "compacted-0000-of-0001-0123456789abcdef.parquet",
            "events/_unreadable/events/compacted/dt=2024-03-05/hour=13/"
            "compacted-0000-of-0001-0123456789abcdef.parquet",
        ),
        (
            "",
            "dt=2024-03-05/hour=13/1-0_2-0_abc.parquet",
            "_unreadable/dt=2024-03-05/hour=13/1-0_2-0_abc.parquet",
        ),
    ],
)
def test_unreadable_keys_are_as_released(prefix: str, key: str, expected: str) -> None:
    assert unreadable_key(prefix, key) == expected


SHORT_IDS = ["m1", "m2", None, "m3"]
# Shapes of messageId seen in the wild: UUIDs, analytics.js's, an empty string, a plain counter.
REAL_IDS = [
    "0b9f4e2a-6a2c-4c36-9d7e-3f1f9a1b2c3d",
    "5f2d1c7e-8b4a-4e2f-a1d3-6c9b0e7f4a21",
    "",
    "ajs-next-1709650800000-1f0c",
    "d41d8cd9-8f00-4b20-9e80-0998ecf8427e",
    "user-msg-0001",
    "user-msg-0002",
    "user-msg-0003",
]


@pytest.mark.parametrize(
    ("ids", "count", "expected"),
    [
        (SHORT_IDS, 1, [0, 0, 0, 0]),
        (SHORT_IDS, 2, [1, 1, 0, 1]),
        (SHORT_IDS, 8, [7, 5, 0, 3]),
        (SHORT_IDS, 64, [47, 21, 0, 3]),
        (SHORT_IDS, 4096, [1839, 1685, 0, 1539]),
        (REAL_IDS, 1, [0, 0, 0, 0, 0, 0, 0, 0]),
        (REAL_IDS, 2, [0, 0, 0, 0, 1, 1, 1, 1]),
        (REAL_IDS, 8, [2, 4, 0, 0, 5, 1, 3, 5]),
        (REAL_IDS, 64, [26, 20, 0, 0, 29, 9, 51, 37]),
        (REAL_IDS, 4096, [1242, 3796, 0, 704, 4061, 73, 499, 357]),
    ],
)
def test_parts_of_message_ids_are_as_released(
    ids: list[str | None], count: int, expected: list[int]
) -> None:
    assert part_of_ids(pa.array(ids, pa.string()), count) == expected


def test_parts_of_a_chunked_column_are_those_of_its_rows() -> None:
    chunked = pa.chunked_array([["m1", "m2"], [None, "m3"]], pa.string())
    assert part_of_ids(chunked, 8) == [7, 5, 0, 3]


@pytest.mark.parametrize(
    ("prefix", "hour", "part", "body", "expected"),
    [
        (
            "events/",
            datetime(2024, 3, 5, 13, tzinfo=UTC),
            Part(0, 1),
            b"body",
            "events/compacted/dt=2024-03-05/hour=13/"
            "compacted-0000-of-0001-ec2edbeabbed4a40.parquet",
        ),
        (
            "events/",
            datetime(2024, 3, 5, 13, tzinfo=UTC),
            Part(2, 4),
            b"body",
            "events/compacted/dt=2024-03-05/hour=13/"
            "compacted-0002-of-0004-ec2edbeabbed4a40.parquet",
        ),
        (
            "events/",
            datetime(2024, 3, 5, 13, tzinfo=UTC),
            Part(4095, 4096),
            b"other body",
            "events/compacted/dt=2024-03-05/hour=13/"
            "compacted-4095-of-4096-c35cb2b4a647ed04.parquet",
        ),
        (
            "",
            datetime(2024, 1, 1, 0, tzinfo=UTC),
            Part(7, 8),
            b"",
            "compacted/dt=2024-01-01/hour=00/compacted-0007-of-0008-e4a6a0577479b2b4.parquet",
        ),
        (
            "data/events/",
            datetime(2023, 12, 31, 23, tzinfo=UTC),
            Part(0, 2),
            bytes(range(256)),
            "data/events/compacted/dt=2023-12-31/hour=23/"
            "compacted-0000-of-0002-2b2cedfed655ad3f.parquet",
        ),
    ],
)
def test_compacted_keys_are_as_released(
    prefix: str, hour: datetime, part: Part, body: bytes, expected: str
) -> None:
    assert compacted_key(prefix, hour, part, body) == expected
