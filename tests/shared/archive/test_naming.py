"""Object names: derived from the stream entry IDs an object holds, so a retried flush of the
same entries overwrites the same object instead of adding a duplicate."""

from __future__ import annotations

import pytest

from shared import shards
from shared.archive import OBJECT_SUFFIX, object_key
from shared.archive.formats import named
from shared.archive.naming import error_object_key
from tests.fresh_process import in_a_fresh_process

IDS = [b"1700000000000-0", b"1700000000001-3", b"1700000000002-0"]


def test_object_key_layout() -> None:
    key = object_key("events/", "dt=2024-03-05/hour=14/", IDS, OBJECT_SUFFIX)
    assert key.startswith("events/dt=2024-03-05/hour=14/1700000000000-0_1700000000002-0_")
    assert key.endswith(OBJECT_SUFFIX)
    digest = key.removeprefix("events/dt=2024-03-05/hour=14/").split("_")[2]
    digest = digest.removesuffix(OBJECT_SUFFIX)
    assert len(digest) == 16
    int(digest, 16)


@pytest.mark.parametrize("archive_format", ["ndjson", "parquet"])
def test_object_key_is_deterministic(archive_format: str) -> None:
    """The same in another process, with another hash seed: a flush retried by the next
    invocation overwrites its object. (test_stable_names.py pins the names across versions.)"""
    suffix = named(archive_format).SUFFIX
    assert object_key("p/", "dt=x/", list(IDS), suffix) == in_a_fresh_process(
        object_key, "p/", "dt=x/", list(IDS), suffix
    )


def test_object_key_differs_between_formats_only_by_suffix() -> None:
    ndjson = object_key("p/", "dt=x/", IDS, named("ndjson").SUFFIX)
    parquet = object_key("p/", "dt=x/", IDS, named("parquet").SUFFIX)
    assert ndjson.removesuffix(".ndjson.gz") == parquet.removesuffix(".parquet")


def test_object_key_digest_depends_on_every_id() -> None:
    middle_changed = [IDS[0], b"1700000000001-4", IDS[2]]
    middle_missing = [IDS[0], IDS[2]]
    keys = {
        object_key("p/", "dt=x/", IDS, OBJECT_SUFFIX),
        object_key("p/", "dt=x/", middle_changed, OBJECT_SUFFIX),
        object_key("p/", "dt=x/", middle_missing, OBJECT_SUFFIX),
    }
    assert len(keys) == 3
    # Same ends, so only the digest tells them apart.
    assert len({k.rsplit("_", 1)[0] for k in keys}) == 1


def test_object_key_of_a_single_entry() -> None:
    key = object_key("", "dt=2024-01-01/hour=00/", [b"5-0"], OBJECT_SUFFIX)
    assert key.startswith("dt=2024-01-01/hour=00/5-0_5-0_")


def test_object_key_depends_on_prefix_and_partition() -> None:
    assert object_key("a/", "dt=1/", IDS, OBJECT_SUFFIX) != object_key(
        "a/", "dt=2/", IDS, OBJECT_SUFFIX
    )
    assert object_key("a/", "dt=1/", IDS, OBJECT_SUFFIX) != object_key(
        "b/", "dt=1/", IDS, OBJECT_SUFFIX
    )


def test_dead_letters_of_shards_are_named_apart_and_stream_keys_letters_as_before() -> None:
    keys = shards.shard_keys("events", 4) + shards.shard_keys("events", 8)
    names = {error_object_key(IDS[0], key) for key in set(keys)}
    assert len(names) == len(set(keys))
    assert error_object_key(IDS[0]) == "errors/dt=2023-11-14/1700000000000-0.json"
    tag = shards.shard_keys("events", 4)[1].rsplit("{", 1)[1][:-1]
    assert error_object_key(IDS[0], f"events:{{{tag}}}").endswith(f"-0_shard-{tag}.json")
    # A stream key with a hash tag of its own: the shard's tag, the last one, names it.
    braced = shards.shard_keys("{events}", 4)
    assert len({error_object_key(IDS[0], key) for key in braced}) == 4
    # Any other key: a digest, safe in a name.
    odd = error_object_key(IDS[0], "events/{a b}")
    assert odd.rsplit("_shard-", 1)[1].removesuffix(".json").isalnum()
