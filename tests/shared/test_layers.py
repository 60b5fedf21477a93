"""The two sides of `shared/` meet only at the stream entry format: the stream side (and the
ingest function built on it) never imports the archive side, so a change to the archive cannot
break ingest, and ingest's bundle and cold start carry none of it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from local.lambda_build import ROOT

STREAM_SIDE = [
    "shared.stream",
    "shared.shards",
    "shared.codec",
    "shared.events",
    "shared.token_bucket",
    "shared.status",
    "shared.metrics",
    "functions.ingest.app",
]


@pytest.mark.parametrize("module", STREAM_SIDE)
def test_the_stream_side_never_imports_the_archive_side(module: str) -> None:
    probe = (
        f"import sys, {module}; "
        "print(sorted(m for m in sys.modules if m.startswith('shared.archive')))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "[]", f"{module} imports {found.stdout.strip()}"


def test_the_regulation_model_imports_neither_side() -> None:
    """Ingest checks suppressions with it, and the archive side carries deletions out with it."""
    probe = (
        "import sys, shared.regulations; print(sorted(m for m in sys.modules "
        "if m.startswith(('shared.archive', 'shared.stream'))))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "[]", found.stdout
