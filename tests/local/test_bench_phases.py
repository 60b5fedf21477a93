"""`make bench BENCH_ARGS="--phase NAME"` runs one phase of the benchmark alone: the names are
checked before anything starts, and only the phases named run, in a full run's order, with
only the part of the stack they need. No server is started here."""

from __future__ import annotations

import os
import platform
import subprocess
import time

import pytest
import redis

from local.bench import backlog, phases, report, run
from local.bench.context import Bench, Plan
from local.bench.procs import ROOT
from local.stack import free_port
from shared.settings import Settings
from shared.stream import BacklogFull, EventStream, accounting_keys


def test_a_full_run_takes_every_phase_in_order() -> None:
    assert run.parse_args([]).phases == list(phases.PHASES)


def test_phases_are_named_repeatedly_or_comma_separated_and_run_in_a_full_runs_order() -> None:
    args = run.parse_args(["--quick", "--phase", "rate-limits,memory", "--phase", "ingest"])

    assert args.phases == ["ingest", "memory", "rate-limits"]
    assert args.quick


def test_skip_leaves_a_named_phase_out() -> None:
    args = run.parse_args(["--phase", "memory,drain", "--skip", "drain"])

    assert args.phases == ["memory"]


def test_an_unknown_phase_is_refused_naming_the_known_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        run.parse_args(["--phase", "memory,compactoin"])

    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "unknown phase 'compactoin'" in error
    assert "known phases: " + ", ".join(phases.PHASES) in error


def test_a_phase_alone_starts_only_what_it_needs() -> None:
    assert phases.needs(["memory", "rate-limits"]) == {"redis"}
    assert phases.needs(["cluster"]) == set()  # its servers write to a cluster of their own
    assert phases.needs(["memory", "drain"]) == {"redis", "s3"}


def test_the_privacy_phase_alone_starts_only_s3() -> None:
    """It measures the local finder and the rewrite, which read and write the bucket only."""
    assert run.parse_args(["--phase", "privacy"]).phases == ["privacy"]
    assert phases.needs(["privacy"]) == {"s3"}


@pytest.mark.parametrize("name", phases.PHASES)
def test_each_phase_is_a_module_with_an_entry_function(name: str) -> None:
    module = phases.module(name)

    assert callable(module.run)
    assert module.NEEDS.issubset({"redis", "s3"})


def test_the_report_names_its_run_commit_machine_versions_and_phases(
    redis_client: redis.Redis,
) -> None:
    """What a table quoting the run must name (docs/performance.md): the commit measured, the
    machine, the Python and Redis versions and the phases, recorded before any phase runs."""
    args = run.parse_args(["--quick", "--phase", "drain,memory"])
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    results = run.new_results("20261206T000000Z", args, run.plan_of(args))
    # Reading gunicorn's settings leaves this process's metrics alone (the suite's later tests).
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    head = subprocess.run(
        ["git", "--no-optional-locks", "rev-parse", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()

    assert results["phases"] == ["memory", "drain"]
    assert results["commit"]["sha"] == head
    assert isinstance(results["commit"]["dirty"], bool)
    machine = results["machine"]
    assert machine["cpus"] == os.cpu_count()
    assert machine["cpu_model"]  # this VM's /proc/cpuinfo names its model
    assert machine["arch"] == platform.machine()
    assert machine["python"] == platform.python_version()
    # The binary every phase's Redis runs, as a running one of them reports itself.
    assert machine["redis"] == redis_client.info("server")["redis_version"]
    header = report.table(results)
    assert f"commit {head[:7]}" in header
    assert "phases memory, drain" in header


def drained(consumers: int, fmt: str, rate: int) -> dict:
    return {"consumers": consumers, "format": fmt, "events_per_s": rate}


def test_the_drain_report_says_parquet_against_ndjson_and_the_target() -> None:
    """Issue 28's target: one consumer writing Parquet drains at least 0.8x its NDJSON rate in
    the same run, each format's best drain of those taking turns (the 2-consumer row is not
    the comparison)."""
    rows = [drained(1, "ndjson", 200_000), drained(2, "ndjson", 390_000)]
    assert report.drain_format_line(rows) is None  # no Parquet drained: nothing to compare
    line = report.drain_format_line([*rows, drained(1, "parquet", 150_000)])
    assert line == (
        "  1 consumer writing Parquet drains 0.75x its NDJSON rate, best drain of each"
        " (150,000 of 150,000 against 200,000 of 200,000; target >= 0.8x: NOT MET)"
    )
    turns = [
        *rows,
        drained(1, "parquet", 140_000),
        drained(1, "ndjson", 180_000),
        drained(1, "parquet", 160_000),
        drained(1, "ndjson", 190_000),
    ]
    line = report.drain_format_line(turns)
    assert line == (
        "  1 consumer writing Parquet drains 0.80x its NDJSON rate, best drain of each"
        " (160,000 of 140,000, 160,000 against 200,000 of 200,000, 180,000, 190,000;"
        " target >= 0.8x: met)"
    )


def test_the_scaling_target_compares_the_first_drains_side_by_side() -> None:
    """Later NDJSON drains (the formats' turns) do not stand in for the 1-consumer drain that
    ran beside the 2-consumer one."""
    results = {
        "ingest": [],
        "fixed_rate": [],
        "memory": [],
        "drain": [
            drained(1, "ndjson", 200_000),
            drained(2, "ndjson", 210_000),
            drained(1, "parquet", 150_000),
            drained(1, "ndjson", 250_000),
        ],
    }
    found = {name: (measured, verdict) for name, measured, verdict in report.targets(results)}
    assert found["1 consumer drains >= 200,000 ev/s"] == ("200,000", "met")
    assert found["2 consumers drain faster than 1"] == ("1.05x", "met")


def test_a_run_starts_from_a_stream_ingest_has_room_in(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """Emptying the stream between runs takes its byte accounting too: with the stream key
    alone deleted, ingest went on counting the bytes of entries long gone and refused every
    request as a full backlog (the profile's second load measured 503s)."""
    stream = EventStream(redis_client, settings.stream_key, max_len=1_000, max_bytes=100)
    stream.add({b"v": b"1", b"d": b"x" * 200})
    with pytest.raises(BacklogFull):
        stream.add({b"v": b"1", b"d": b"x"})
    redis_client.delete(settings.stream_key)
    with pytest.raises(BacklogFull):  # what deleting the stream alone left
        stream.add({b"v": b"1", b"d": b"x"})
    backlog.empty_stream(redis_client, settings.stream_key)
    stream.add({b"v": b"1", b"d": b"x"})
    assert redis_client.xlen(settings.stream_key) == 1


def test_a_saturating_load_keeps_the_stream_empty_as_consumers_would(
    redis_client: redis.Redis, settings: Settings
) -> None:
    stream = EventStream(redis_client, settings.stream_key, max_len=1_000, max_bytes=100)
    with backlog.kept_empty(redis_client, [settings.stream_key], every_s=0.02):
        stream.add({b"v": b"1", b"d": b"x" * 200})  # full until emptied
        deadline = time.monotonic() + 5
        while redis_client.exists(*accounting_keys(settings.stream_key)):
            assert time.monotonic() < deadline, "the stream was never emptied"
            time.sleep(0.01)
        stream.add({b"v": b"1", b"d": b"x"})  # room again


def test_the_ingest_targets_are_shares_of_the_do_nothing_app_and_p99s_over_enough_requests() -> (
    None
):
    """Issue 29's targets: each hot route's req/s over the do-nothing app's on the same bodies
    (with its floor's, the append alone, where it ran), and p99 at 1,000 events/s over at least
    1,000 batches and 10,000 single events."""

    def saturated(scenario: str, rps: float) -> dict:
        return {"scenario": scenario, "rps": rps}

    results = {
        "ingest": [
            saturated("baseline: do-nothing WSGI, 100-event body", 10_000),
            saturated("/batch 100 events", 2_600),
            saturated("baseline: do-nothing WSGI, /v1/t 1-event body", 12_000),
            saturated("/v1/t 1 event (analytics.js)", 5_000),
            saturated("floor: the append alone, /v1/t 1 event (analytics.js)", 5_400),
        ],
        "fixed_rate": [
            {"scenario": "/batch 100 events at 10 req/s", "p99_ms": 8.0, "requests": 1_000},
            {
                "scenario": "/v1/t 1 event (analytics.js) at 1,000 req/s",
                "p99_ms": 4.0,
                "requests": 5_000,  # too few: a quick run's
            },
        ],
    }
    assert report.ingest_targets(results) == [
        ("/batch 100 events: >= 0.25x do-nothing req/s", "0.26x (2,600/10,000)", "met"),
        (
            "/v1/t 1 event (analytics.js): >= 0.5x do-nothing req/s",
            "0.42x (5,000/12,000); the append alone 0.45x",
            "NOT met",
        ),
        ("/batch 100 events at 10 req/s: p99 <= 10 ms, >= 1,000 requests", "8.00 ms, 1,000", "met"),
        (
            "/v1/t 1 event (analytics.js) at 1,000 req/s: p99 <= 10 ms, >= 10,000 requests",
            "4.00 ms, 5,000",
            "-",
        ),
    ]


def test_a_stream_that_cannot_be_kept_empty_fails_the_load_saying_why() -> None:
    """Redis gone while a load runs: the load's figures would be a full backlog's refusals, so
    the block fails after it, naming the cause, instead of the thread dying unseen."""
    unreachable = redis.Redis(port=free_port(), socket_connect_timeout=0.2)
    with (
        pytest.raises(RuntimeError, match="could not be kept empty"),
        backlog.kept_empty(unreachable, ["events"], every_s=0.01),
    ):
        time.sleep(0.3)


def test_a_full_run_stretches_fixed_rate_runs_to_the_latency_targets_requests() -> None:
    """A full run sends at least the 1,000 batches (at 10/s) and 10,000 single events (at
    1,000/s) the latency targets name; a smoke run keeps its plan's duration, and its shorter
    in-process rounds."""
    full = Bench(None, Plan.full(), "wrk", {})  # type: ignore[arg-type]  # no stack needed
    smoke = Bench(None, Plan.quick(), "wrk", {})  # type: ignore[arg-type]
    batches = report.LATENCY_TARGETS[report.BATCHES_AT_RATE]
    singles = report.LATENCY_TARGETS[report.SINGLES_AT_RATE]
    assert full.rate_duration_s(10, batches) == 100.0
    assert full.rate_duration_s(1000, singles) == Plan.full().rate_duration_s  # 20 s > 10 s
    assert smoke.rate_duration_s(10, batches) == Plan.quick().rate_duration_s
    assert (full.round_requests(500), smoke.round_requests(500)) == (2000, 500)
