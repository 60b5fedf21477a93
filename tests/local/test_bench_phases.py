"""`make bench BENCH_ARGS="--phase NAME"` runs one phase of the benchmark alone: the names are
checked before anything starts, and only the phases named run, in a full run's order, with
only the part of the stack they need. No server is started here."""

from __future__ import annotations

import pytest

from local.bench import phases, run


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
