"""Scenario 5: entries the consumer cannot archive appear in the stream while the load runs.
Each must reach the dead letters (the stream `{STREAM_KEY}:dead` and the bucket's `errors/`)
and be acknowledged, and every accepted event must still be archived."""

from __future__ import annotations

import json
import time

import msgspec

from tests.conftest import archived_keys
from tests.faults.harness import LoadClient, assert_nothing_lost, settle

POISON = {
    "unknown format version": {b"v": b"99", b"d": b"junk"},
    "corrupt MsgPack": {b"v": b"1", b"n": b"1", b"d": b"\xc1\xff not msgpack"},
    "no receivedAt": {
        b"v": b"1",
        b"n": b"1",
        b"d": msgspec.msgpack.encode([{"type": "track", "userId": "u", "event": "x"}]),
    },
}


def test_poison_entries_are_dead_lettered_and_the_rest_flows(start_pipeline, report, seed):
    started = time.monotonic()
    pipeline = start_pipeline()
    redis, settings = pipeline.redis, pipeline.settings
    pipeline.start_runner()
    load = LoadClient(pipeline.url, threads=2, requests_per_s=60, seed=seed).start()
    poison_ids = {}
    try:
        for kind, fields in POISON.items():
            time.sleep(0.7)
            poison_ids[redis.xadd(settings.stream_key, fields).decode()] = kind
        time.sleep(1.5)
    finally:
        load.stop()

    outcome = settle(pipeline, load, "poison entries", started, notes=f"{len(POISON)} poisoned")
    report(outcome.figures)
    dead = {f[b"original_id"].decode(): f for _, f in pipeline.dead_letters()}
    assert dead.keys() == poison_ids.keys()
    for entry_id, kind in poison_ids.items():
        assert dead[entry_id][b"reason"], f"{kind}: dead letter without a reason"
        assert dead[entry_id][b"field:v"] == POISON[kind][b"v"]
    error_objects = {
        key.rsplit("/", 1)[-1].removesuffix(".json"): key
        for key in archived_keys(pipeline.s3, settings.s3_bucket, "errors/")
    }
    assert error_objects.keys() == poison_ids.keys()
    for entry_id, key in error_objects.items():
        document = json.loads(
            pipeline.s3.get_object(Bucket=settings.s3_bucket, Key=key)["Body"].read()
        )
        assert document["originalId"] == entry_id and document["reason"]
    assert outcome.figures.dead_letters == len(POISON)
    assert_nothing_lost(outcome, max_duplicates=0)
    assert pipeline.stop_runner() == 0
