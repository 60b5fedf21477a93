"""tests/ci_no_skips.py: under CI=true a skip fails, naming what was missing; elsewhere it
stays a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIPPING = """
import pytest

def test_needs_a_tool():
    pytest.skip("the test needs frobnicate on PATH")

def test_runs():
    assert True
"""


def run_pytest(
    tmp_path: Path, ci: str | None, workers: int = 0
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, "-m", "pytest", "-p", "tests.ci_no_skips", "-q"]
    command += ["-n", str(workers)] if workers else ["-p", "no:xdist"]
    return subprocess.run(
        [*command, "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("workers", [0, 2], ids=["one process", "xdist, as make test runs"])
def test_under_ci_a_skip_fails_naming_what_was_missing(tmp_path: Path, workers: int) -> None:
    result = run_pytest(tmp_path, ci="true", workers=workers)
    assert result.returncode == 1, result.stdout
    assert "1 failed, 1 passed" in result.stdout
    assert "CI must not skip" in result.stdout
    assert "the test needs frobnicate on PATH" in result.stdout


def test_elsewhere_a_skip_stays_a_skip(tmp_path: Path) -> None:
    for ci in (None, "false"):
        result = run_pytest(tmp_path, ci=ci)
        assert result.returncode == 0, result.stdout
        assert "1 passed, 1 skipped" in result.stdout
