"""`python -m local.bench.bundles`: each function's Lambda bundle, built as `sam build` builds it,
measured: its size unzipped and zipped, and its handler's cold import in a fresh interpreter of
the runtime's Python, with the bundle's bytecode and without it (what a bundle compiled by
another Python amounts to: the runtime ignores foreign `.pyc` files and cannot write its own).

Each import time is the median of ROUNDS fresh interpreters run with `-I -S -B`, the bundle
alone on sys.path, as Lambda's read-only /var/task is.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from local import lambda_build

ROUNDS = 7
# What a cold start adds where a handler reads its secrets (shared/secrets.py).
SECRETS_CLIENT = "import boto3; boto3.client('secretsmanager', region_name='us-east-1')"


def tree_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def zipped_bytes(folder: Path, into: Path) -> int:
    with zipfile.ZipFile(into, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, path.relative_to(folder))
    return into.stat().st_size


def import_seconds(python: str, bundle: Path, statement: str) -> float:
    timed = (
        f"import sys, time; sys.path.insert(0, {str(bundle)!r}); t = time.perf_counter(); "
        f"{statement}; print(time.perf_counter() - t)"
    )
    runs = [
        float(
            subprocess.run(
                [python, "-I", "-S", "-B", "-c", timed], capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(ROUNDS)
    ]
    return statistics.median(runs)


def without_bytecode(bundle: Path, into: Path) -> Path:
    shutil.copytree(bundle, into, ignore=shutil.ignore_patterns("__pycache__"))
    return into


def measure(function: str, python: str, work: Path) -> dict[str, float]:
    bundle = work / function
    lambda_build.build(function, bundle, "x86_64")
    bare = without_bytecode(bundle, work / f"{function}-no-bytecode")
    handler = f"import {lambda_build.handler_module(function)}"
    row = {
        "unzipped_mb": tree_bytes(bundle) / 1e6,
        "zipped_mb": zipped_bytes(bundle, work / f"{function}.zip") / 1e6,
        "import_s": import_seconds(python, bundle, handler),
        "import_no_bytecode_s": import_seconds(python, bare, handler),
    }
    if function == "ingest":
        row["secrets_client_s"] = import_seconds(python, bundle, f"{handler}; {SECRETS_CLIENT}")
    return row


def main() -> int:
    python = lambda_build.runtime_python()
    print(f"runtime Python: {python}; median of {ROUNDS} cold imports each")
    with tempfile.TemporaryDirectory(prefix="bundles-") as work:
        for function in lambda_build.FUNCTIONS:
            row = measure(function, python, Path(work))
            cells = "  ".join(f"{name} {value:.2f}" for name, value in row.items())
            print(f"{function:<10} {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
