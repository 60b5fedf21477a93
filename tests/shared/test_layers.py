"""The two sides of `shared/` meet only at the stream entry format: the stream side (and the
ingest function built on it) never imports the archive side, so a change to the archive cannot
break ingest, and ingest's bundle and cold start carry none of it. Enrichment (shared/enrichment)
is ingest's alone: the other functions' bundles do not ship its libraries."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

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


# Enrichment's libraries (MaxMind's reader, ua-parser, crawlerdetect) are in ingest's bundle
# only: nothing on the archive side, the stream side or the other functions may import it.
ENRICHMENT_FREE = ["shared/archive", "shared/stream", *(
    f"functions/{name}" for name in ("consumer", "compactor", "privacy", "admin")
)]  # fmt: skip
ENRICHMENT_MODULES = ("shared.enrichment", "maxminddb_rust", "ua_parser", "crawlerdetect")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # importlib.import_module("shared.enrichment")
    return names


@pytest.mark.parametrize("folder", ENRICHMENT_FREE)
def test_nothing_but_ingest_imports_enrichment(folder: str) -> None:
    files = sorted((Path(ROOT) / folder).rglob("*.py"))
    assert files, folder
    found = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in files
        for name in _imports(path)
        if name.startswith(ENRICHMENT_MODULES)
    }
    assert not found, found


@pytest.mark.parametrize(
    "module", [f"functions.{name}.app" for name in ("consumer", "compactor", "privacy", "admin")]
)
def test_the_other_functions_load_no_enrichment_library(module: str) -> None:
    probe = (
        f"import sys, {module}; print(sorted(m for m in sys.modules "
        f"if m.startswith({ENRICHMENT_MODULES!r})))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip().splitlines()[-1] == "[]", f"{module} imports {found.stdout}"
