"""The documentation's claims that the code can contradict, checked against the code itself: every
environment variable the code reads is on the configuration page (and every one there is read),
every CLI command and option has help (the CLI reference is generated from it), and every
`make <target>` the docs tell a reader to run exists."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import click

from functions.cli import main as cli
from shared.settings import ENV_VARS
from tests.docs.cli_walk import commands
from tests.docs.configuration_page import PAGE, all_rows
from tests.docs.pages import code_in, documents

ROOT = Path(__file__).resolve().parents[2]
CODE_DIRS = ("shared", "functions", "local")

# Read by the code but not ours to configure, so not on the configuration page. Each says why.
NOT_CONFIGURATION = {
    # Set by AWS Lambda itself: its presence only tells the code it runs on Lambda.
    "AWS_LAMBDA_FUNCTION_NAME": "the platform's",
    # prometheus_client's own; local/gunicorn.conf.py gives each server start a fresh directory.
    "PROMETHEUS_MULTIPROC_DIR": "prometheus_client's",
    # pyenv's own; local/lambda_build.py looks there for a Python 3.12.
    "PYENV_ROOT": "pyenv's",
    # gunicorn's own; the benchmark only records it in its report.
    "GUNICORN_CMD_ARGS": "gunicorn's (recorded by the benchmark)",
}


# --- environment variables ---------------------------------------------------------------------


def _is_os_environ(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def _literal(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _variable_read(node: ast.AST) -> str | None:
    """The name `node` reads from the environment, when it does so with a literal name:
    `os.environ["X"]`, `os.environ.get("X")` (and setdefault, pop), `os.getenv("X")`,
    `"X" in os.environ`."""
    if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
        return _literal(node.slice) if _is_os_environ(node.value) else None
    if isinstance(node, ast.Call) and node.args and isinstance(node.func, ast.Attribute):
        function = node.func
        environ_method = _is_os_environ(function.value) and function.attr in (
            "get",
            "setdefault",
            "pop",
        )
        getenv = function.attr == "getenv" and isinstance(function.value, ast.Name)
        getenv = getenv and function.value.id == "os"
        return _literal(node.args[0]) if environ_method or getenv else None
    if isinstance(node, ast.Compare) and len(node.ops) == 1:
        membership = isinstance(node.ops[0], ast.In | ast.NotIn)
        return _literal(node.left) if membership and _is_os_environ(node.comparators[0]) else None
    return None


def variables_read_in(source: str) -> set[str]:
    return {name for node in ast.walk(ast.parse(source)) if (name := _variable_read(node))}


def variables_read_by_the_code(root: Path = ROOT) -> set[str]:
    found = set(ENV_VARS)
    for directory in CODE_DIRS:
        for path in (root / directory).rglob("*.py"):
            found |= variables_read_in(path.read_text())
    return found


def documented_variables(page: Path = PAGE) -> set[str]:
    """Every variable with a row in one of the page's tables."""
    return set(all_rows(page))


def test_the_scan_finds_each_way_of_reading_a_variable() -> None:
    source = (
        "import os\n"
        "a = os.environ['A']\n"
        "b = os.environ.get('B', '1')\n"
        "c = os.getenv('C')\n"
        "d = 'D' in os.environ\n"
        "os.environ['WRITTEN'] = 'x'\n"
        "e = os.environ.get(name)\n"
        "f = {}.get('NOT_ENV')\n"
    )
    assert variables_read_in(source) == {"A", "B", "C", "D"}


def test_every_environment_variable_read_is_documented() -> None:
    read = variables_read_by_the_code()
    documented = documented_variables()
    undocumented = read - documented - NOT_CONFIGURATION.keys()
    assert sorted(undocumented) == [], "read by the code, missing from docs/configuration.md"
    assert sorted(documented - read) == [], "documented in docs/configuration.md, read nowhere"
    assert sorted(NOT_CONFIGURATION.keys() - read) == [], "allowed, but no longer read: drop it"
    assert sorted(NOT_CONFIGURATION.keys() & documented) == [], "both allowed and documented"


def test_an_undocumented_variable_is_caught(tmp_path: Path) -> None:
    """The check above fails when code reads a new variable, or the page names a dead one."""
    for directory in CODE_DIRS:
        (tmp_path / directory).mkdir()
    (tmp_path / "local" / "new.py").write_text("import os\nos.environ.get('NEW_KNOB')\n")
    read = variables_read_by_the_code(tmp_path)
    assert "NEW_KNOB" in read and "NEW_KNOB" not in documented_variables()
    page = tmp_path / "configuration.md"
    page.write_text(PAGE.read_text() + "| `GONE_KNOB` | `1` | nothing reads it |\n")
    assert "GONE_KNOB" in documented_variables(page) - variables_read_by_the_code()


# --- the command line ----------------------------------------------------------------------------


def missing_help(group: click.Command) -> list[str]:
    missing = []
    for path, command in commands(group):
        if not (command.help or "").strip():
            missing.append(path)
        for param in command.params:
            if isinstance(param, click.Option) and not (param.help or "").strip():
                missing.append(f"{path} {'/'.join(param.opts)}")
    return missing


def test_every_cli_command_and_option_has_help() -> None:
    assert len(list(commands(cli))) > 10  # the walk reaches the subgroups' commands
    assert missing_help(cli) == []


def test_a_command_or_option_without_help_is_caught() -> None:
    @click.group(help="A group.")
    def group() -> None: ...

    @group.command()
    @click.option("--documented", help="Has help.")
    @click.option("--bare")
    def bare(documented: str, bare: str) -> None: ...

    assert missing_help(group) == ["event-ingest bare", "event-ingest bare --bare"]


# --- make targets --------------------------------------------------------------------------------

MAKE = re.compile(r"(?<![\w./-])make\s+([^\n#;&|`]*)")
SHELL_COMMENT = re.compile(r"(?:^|(?<=\s))#.*$", re.MULTILINE)
OPTIONS_WITH_VALUES = {"-C", "-f", "-j", "-I", "-o", "-W"}


def make_targets_named(markdown: str) -> set[str]:
    targets = set()
    for code in code_in(markdown):
        code = SHELL_COMMENT.sub("", code)  # "# after make run started: ..." names no target
        for arguments in MAKE.findall(code):
            words = iter(arguments.split())
            for word in words:
                if word in OPTIONS_WITH_VALUES:
                    next(words, None)
                elif not word.startswith("-") and "=" not in word:
                    targets.add(word)
    return targets


def makefile_targets() -> set[str]:
    """The targets make itself knows, generated ones included (`-q` runs nothing)."""
    database = subprocess.run(
        ["make", "-pRrq", "-C", str(ROOT), "--no-print-directory", "-f", "Makefile", "run"],
        capture_output=True,
        text=True,
    ).stdout
    targets = set()
    not_a_target = False
    for line in database.splitlines():
        if line.startswith("# Not a target"):
            not_a_target = True
            continue
        match = re.match(r"^([^\s#:=%][^:=]*):(?!=)", line)
        if match and not not_a_target:
            targets.update(match.group(1).split())
        not_a_target = False if line and not line.startswith("#") else not_a_target
    return targets


def test_every_make_target_the_docs_name_exists() -> None:
    known = makefile_targets()
    assert {"run", "test", "bench", "build-IngestFunction"} <= known  # the parse works
    named = {
        (path.name, target)
        for path in documents()
        for target in make_targets_named(path.read_text())
    }
    assert {target for _, target in named} >= {"run", "test"}  # the docs' commands are found
    assert sorted((doc, target) for doc, target in named if target not in known) == []


def test_a_target_the_makefile_lacks_is_caught() -> None:
    markdown = (
        "Run `make run`, then\n```\nPHASE=x make bench # a comment: make nothing\n"
        "make deploy\n```\nmake sure."
    )
    assert make_targets_named(markdown) == {"run", "bench", "deploy"}
    assert "deploy" not in makefile_targets()


def deleted_by_make_clean() -> set[str]:
    """The paths `make clean` removes, read from the recipe make would run (`-n` runs nothing)."""
    recipe = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "--no-print-directory", "clean"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {word for line in recipe.splitlines() if line.startswith("rm ") for word in line.split()}


def test_the_docs_say_everything_make_clean_deletes() -> None:
    deleted = deleted_by_make_clean() - {"rm", "-rf", ".pytest_cache", ".ruff_cache"}
    assert {".venv", ".data"} <= deleted
    row = next(
        line
        for line in (ROOT / "docs" / "development.md").read_text().splitlines()
        if line.startswith("| `make clean`")
    )
    assert sorted(path for path in deleted if f"`{path}`" not in row) == []
