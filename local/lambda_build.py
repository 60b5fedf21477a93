"""The Lambda build of one function, as `sam build` runs it (Makefile: build-IngestFunction, ...).

    python -m local.lambda_build ingest ARTIFACTS_DIR [--architecture arm64] [--code-only]

Into ARTIFACTS_DIR (Lambda's /var/task) go:

- the function's own package (`functions/<name>`, without its sample events) and `shared`;
- exactly the dependencies pinned in `functions/<name>/requirements.txt` (`make lock` writes
  it, with hashes, which pip checks), as wheels for the Lambda runtime's Python, platform and
  architecture, whatever machine builds them;
- bytecode compiled by the runtime's own Python. A bundle compiled by another Python carries
  `.pyc` files that the runtime ignores and cannot replace (/var/task is read-only), so every
  cold start would compile every module again. The bytecode is `unchecked-hash`: valid
  whatever timestamps the zip round trip leaves on the sources.

`--code-only` copies the code and nothing else (the handler tests run it with this venv's
libraries). SAM's makefile builder passes no architecture: LAMBDA_ARCHITECTURE (or
`--architecture`) must match the template's `Architecture` parameter.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = ("ingest", "consumer", "compactor", "admin", "privacy")
# The template's Globals: Runtime python3.12 (Amazon Linux 2023, glibc 2.34).
RUNTIME_VERSION = "3.12"
GLIBC = (2, 34)
MACHINES = {"x86_64": "x86_64", "arm64": "aarch64"}
NOT_SHIPPED = ("__pycache__", "events", "*.pyc")


class BuildError(Exception):
    """The build cannot go on; the message says what to do."""


def function_of(logical_id: str) -> str:
    """The function a template resource builds: IngestFunction -> ingest."""
    return logical_id.removesuffix("Function").lower()


def handler_module(function: str) -> str:
    """The module holding the function's Lambda handler."""
    return f"functions.{function}.app"


def requirements_file(function: str) -> Path:
    return ROOT / "functions" / function / "requirements.txt"


def wheel_platforms(architecture: str) -> list[str]:
    """Every manylinux tag the runtime's glibc accepts, from the oldest: pip takes a wheel only
    for a platform named here."""
    machine = MACHINES[architecture]
    tags = [f"manylinux2014_{machine}"]
    tags += [f"manylinux_2_{minor}_{machine}" for minor in range(17, GLIBC[1] + 1)]
    return tags


NEEDS_RUNTIME_PYTHON = (
    f"the Lambda build needs Python {RUNTIME_VERSION}, the runtime's, to compile the functions' "
    f"bytecode (as `sam build` needs it for any python{RUNTIME_VERSION} function): install it "
    f"(`uv python install {RUNTIME_VERSION}`, pyenv, or your package manager), set LAMBDA_PYTHON "
    "to it, or build in SAM's image: `sam build --use-container`"
)


def runtime_python() -> str:
    """A Python of the runtime's version, to compile the bytecode with: LAMBDA_PYTHON, else
    pythonX.Y on PATH, else one that uv or pyenv installed."""
    if chosen := os.environ.get("LAMBDA_PYTHON"):
        if python_version(chosen) != RUNTIME_VERSION:
            raise BuildError(
                f"LAMBDA_PYTHON={chosen} is not a Python {RUNTIME_VERSION}: " + NEEDS_RUNTIME_PYTHON
            )
        return chosen
    name = f"python{RUNTIME_VERSION}"
    candidates = [shutil.which(name)]
    if uv := shutil.which("uv"):
        found = subprocess.run(
            [uv, "python", "find", RUNTIME_VERSION], capture_output=True, text=True
        )
        candidates.append(found.stdout.strip() if found.returncode == 0 else None)
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/{RUNTIME_VERSION}.*/bin/{name}"))
    for candidate in filter(None, candidates):
        if python_version(candidate) == RUNTIME_VERSION:
            return candidate
    raise BuildError(NEEDS_RUNTIME_PYTHON)


def python_version(python: str) -> str | None:
    try:
        found = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except OSError:
        return None
    return found.stdout.strip() if found.returncode == 0 else None


def copy_code(function: str, artifacts: Path) -> None:
    ignore = shutil.ignore_patterns(*NOT_SHIPPED)
    (artifacts / "functions").mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "functions" / "__init__.py", artifacts / "functions" / "__init__.py")
    shutil.copytree(
        ROOT / "functions" / function, artifacts / "functions" / function, ignore=ignore
    )
    shutil.copytree(ROOT / "shared", artifacts / "shared", ignore=ignore)


def install_dependencies(function: str, artifacts: Path, architecture: str) -> None:
    platforms = [arg for tag in wheel_platforms(architecture) for arg in ("--platform", tag)]
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--target", str(artifacts), *platforms, "--implementation", "cp",
        "--python-version", RUNTIME_VERSION, "--only-binary=:all:", "--no-deps",
        "--require-hashes", "--no-compile", "-r", str(requirements_file(function)),
    ]  # fmt: skip
    if subprocess.run(command).returncode != 0:
        raise BuildError(f"pip could not install {requirements_file(function)}")
    # Console scripts, whose first line names the Python that built them: nothing runs them.
    shutil.rmtree(artifacts / "bin", ignore_errors=True)


def compile_bytecode(artifacts: Path, python: str) -> None:
    command = [
        python, "-m", "compileall", "-q", "-j", "0",
        "--invalidation-mode", "unchecked-hash", str(artifacts),
    ]  # fmt: skip
    if subprocess.run(command).returncode != 0:
        raise BuildError(f"{python} could not compile {artifacts}")


def build(function: str, artifacts: Path, architecture: str, code_only: bool = False) -> None:
    if function not in FUNCTIONS:
        raise BuildError(f"no function named {function!r} (one of {', '.join(FUNCTIONS)})")
    if architecture not in MACHINES:
        raise BuildError(f"no architecture {architecture!r} (x86_64 or arm64)")
    if artifacts.exists() and any(artifacts.iterdir()):
        raise BuildError(f"{artifacts} is not empty: build into a new folder")
    python = None if code_only else runtime_python()  # before any work: fail fast
    copy_code(function, artifacts)
    if python is not None:
        install_dependencies(function, artifacts, architecture)
        compile_bytecode(artifacts, python)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("function", help=", ".join(FUNCTIONS))
    parser.add_argument("artifacts", type=Path, help="the folder to build into (new or empty)")
    parser.add_argument("--architecture", default=os.environ.get("LAMBDA_ARCHITECTURE", "x86_64"))
    parser.add_argument("--code-only", action="store_true", help="the code, no dependencies")
    args = parser.parse_args(argv)
    try:
        build(args.function, args.artifacts, args.architecture, args.code_only)
    except BuildError as exc:
        print(f"lambda build: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
