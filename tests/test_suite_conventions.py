"""The test suite's own rule: helpers shared between test files live in modules not named
`test_*`, and no test module imports another. pytest collects every `test_*` module, so a test
module imported by another runs its tests' names in two places, and with `--dist loadfile` its
module-level state (servers, environment) in two workers."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_test_modules(source: str) -> list[str]:
    """The `tests.…test_*` modules a source imports."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            # `from tests.x.test_y import f`, and `from tests.x import test_y`
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [
            name
            for name in names
            if name.split(".")[0] == "tests" and name.rsplit(".", 1)[-1].startswith("test_")
        ]
    return found


def test_no_test_module_imports_another() -> None:
    offenders = {
        str(path.relative_to(TESTS)): imported
        for path in sorted(TESTS.rglob("*.py"))
        if (imported := imported_test_modules(path.read_text()))
    }
    assert offenders == {}


def test_an_import_of_a_test_module_is_caught() -> None:
    source = (
        "from tests.docs.test_kept_true import commands\n"
        "import tests.local.test_stack\n"
        "from tests.docs.pages import code_in\n"
        "from tests import archives\n"
        "from tests.sdks import test_wire_shapes\n"
    )
    assert imported_test_modules(source) == [
        "tests.docs.test_kept_true",
        "tests.local.test_stack",
        "tests.sdks.test_wire_shapes",
    ]
