"""Reading the dependency files that `make lock` writes: each function's requirements.in (what
it imports) and requirements.txt (its lock), the project's runtime lock (functions/requirements.txt)
and the venv's dev lock (local/requirements-dev.txt)."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from local.lambda_build import ROOT, requirements_file

PROJECT_LOCK = ROOT / "functions" / "requirements.txt"
DEV_LOCK = ROOT / "local" / "requirements-dev.txt"
RUN_LOCK = ROOT / "local" / "requirements-run.txt"
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)")


def requirement_lines(path: Path) -> list[str]:
    """The requirements of a pip file: without comments, continuations joined."""
    text = path.read_text().replace("\\\n", " ")
    lines = (line.split(" #")[0].strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def top_level_requirements(function: str) -> list[Requirement]:
    return [Requirement(line) for line in requirement_lines(requirements_in(function))]


def requirements_in(function: str) -> Path:
    return requirements_file(function).with_suffix(".in")


def pins(path: Path) -> dict[str, str]:
    """name -> pinned version, for every line of a lock."""
    found = {}
    for line in requirement_lines(path):
        match = PIN.match(line)
        assert match, f"{path}: not pinned with ==: {line}"
        found[canonicalize_name(match[1])] = match[2]
    return found


def pins_here(path: Path) -> dict[str, str]:
    """The pins of a lock that apply to this interpreter: a line's marker
    (`; python_full_version < '3.12'`) is evaluated here, so of a universal lock's two lines for
    one distribution the one for this Python is taken."""
    found = {}
    for line in requirement_lines(path):
        requirement = Requirement(line.split(" --hash")[0])
        if requirement.marker is None or requirement.marker.evaluate():
            found[canonicalize_name(requirement.name)] = PIN.match(line)[2]
    return found


def hashed(path: Path) -> dict[str, bool]:
    """name -> whether its line carries at least one --hash."""
    return {
        canonicalize_name(PIN.match(line)[1]): "--hash=sha256:" in line
        for line in requirement_lines(path)
    }
