"""The Lambda build (local/lambda_build.py, `make build-<Function>`) and the locks it installs:
every dependency pinned and hashed, each function's bundle holding exactly what its code
imports, with bytecode for the runtime's Python whatever Python builds it."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from local import lambda_build
from local.lambda_build import FUNCTIONS, ROOT, RUNTIME_VERSION, BuildError
from tests.local.locks import (
    PROJECT_LOCK,
    hashed,
    pins,
    pins_here,
    requirement_lines,
    requirements_file,
    top_level_requirements,
)

ELF_MACHINES = {"x86_64": 62, "arm64": 183}  # e_machine: EM_X86_64, EM_AARCH64


# --- the locks ---------------------------------------------------------------------------------


def test_the_project_lock_pins_every_dependency_within_pyproject() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    locked = pins(PROJECT_LOCK)
    for line in pyproject["project"]["dependencies"]:
        requirement = Requirement(line)
        version = locked.get(canonicalize_name(requirement.name))
        assert version, f"{requirement.name} is not in {PROJECT_LOCK.name}: run `make lock`"
        assert requirement.specifier.contains(version), f"{requirement} but locked {version}"


def test_the_tests_run_the_locked_versions() -> None:
    """The venv is installed with the lock as constraints: what is tested is what ships."""
    locked = pins_here(PROJECT_LOCK)
    assert "flask" in locked and "pyarrow" in locked
    for name, version in locked.items():
        assert importlib.metadata.version(name) == version, name


def requirements_of(name: str, extras: set[str], machine: str) -> set[str]:
    """What the distribution `name` needs on Lambda (Linux, the runtime's Python, `machine`),
    read from its metadata in this venv, which holds the locked version."""
    environment = default_environment()
    environment.update(
        python_version=RUNTIME_VERSION,
        python_full_version=f"{RUNTIME_VERSION}.0",
        sys_platform="linux",
        platform_system="Linux",
        platform_machine=machine,
        implementation_name="cpython",
        platform_python_implementation="CPython",
    )
    needed = set()
    for line in importlib.metadata.requires(name) or []:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or any(
            marker.evaluate({**environment, "extra": extra}) for extra in extras | {""}
        ):
            needed.add(canonicalize_name(requirement.name))
    return needed


@pytest.mark.parametrize("function", FUNCTIONS)
def test_a_function_lock_is_closed_hashed_and_agrees_with_the_project_lock(function) -> None:
    lock = requirements_file(function)
    locked, project = pins(lock), pins(PROJECT_LOCK)
    assert all(hashed(lock).values()), f"{lock}: a line without --hash; run `make lock`"
    # pip --target evaluates markers for the building machine, not Lambda: none may appear.
    assert not [line for line in requirement_lines(lock) if ";" in line], f"{lock}: a marker"
    for name, version in locked.items():
        assert project.get(name) == version, f"{lock}: {name}=={version}, project {project}"
    extras = {}
    for requirement in top_level_requirements(function):
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{lock} lacks {name}: run `make lock`"
        extras[name] = set(requirement.extras)
    for machine in ("x86_64", "aarch64"):
        for name in locked:
            missing = requirements_of(name, extras.get(name, set()), machine) - set(locked)
            assert not missing, f"{lock}: {name} needs {missing} on {machine}"


# --- what each function's code imports ---------------------------------------------------------


def module_path(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.exists():
            return candidate
    return None


def imported_names(module: str, path: Path) -> set[str]:
    """Every module `module` imports, at its top or inside a function (a lazy import counts).
    A package that imports its modules by name (importlib) counts as importing all of them."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            source = ".".join([*base, node.module] if node.level else [node.module or ""])
            source = source.strip(".")
            names |= {source} | {f"{source}.{alias.name}" for alias in node.names}
    if "import_module" in path.read_text() and path.name == "__init__.py":
        names |= {f"{module}.{p.stem}" for p in path.parent.glob("*.py") if p.stem != "__init__"}
    return names


def third_party_imports(handler: str) -> set[str]:
    """The top-level names of everything outside this repo and the standard library that the
    handler's module can import, following this repo's modules."""
    seen, outside, todo = set(), set(), [handler]
    while todo:
        module = todo.pop()
        if module in seen or (path := module_path(module)) is None:
            continue
        seen.add(module)
        parents = module.split(".")
        todo += [".".join(parents[:i]) for i in range(1, len(parents))]
        for name in imported_names(module, path):
            top = name.split(".")[0]
            if top in ("functions", "shared"):
                todo.append(name)
            elif top not in sys.stdlib_module_names and top != "__future__":
                outside.add(top)
    return outside


def distributions_of(import_names: set[str]) -> set[str]:
    providers = importlib.metadata.packages_distributions()
    return {canonicalize_name(d) for name in import_names for d in providers[name]}


@pytest.mark.parametrize("function", FUNCTIONS)
def test_a_function_requires_exactly_what_its_code_imports(function) -> None:
    imported = distributions_of(third_party_imports(lambda_build.handler_module(function)))
    required = {canonicalize_name(r.name) for r in top_level_requirements(function)}
    # A module the code imports comes from a requirement, or from what a requirement needs.
    assert imported <= set(pins(requirements_file(function))), imported
    # Every requirement is imported somewhere: nothing in the bundle is dead weight.
    assert required <= imported | {"hiredis"}, required - imported  # hiredis: redis-py loads it


# --- the build ---------------------------------------------------------------------------------


def runtime_python() -> str:
    try:
        return lambda_build.runtime_python()
    except BuildError as exc:
        pytest.skip(f"no Python {RUNTIME_VERSION} here: {exc}")


def make_build(function: str, artifacts: Path, **env: str) -> subprocess.CompletedProcess:
    """The Makefile's recipe, as `sam build` runs it, by this venv's Python."""
    target = f"build-{function.capitalize()}Function"
    return subprocess.run(
        ["make", "--no-print-directory", target, f"ARTIFACTS_DIR={artifacts}",
         f"PYTHON={sys.executable}", *(f"{k}={v}" for k, v in env.items())],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """Each function built by this venv's Python (3.11 here), not the runtime's: bytecode of
    the runtime's version only (checked below) can then only come from the runtime's Python."""
    runtime_python()
    built = {}
    for function in FUNCTIONS:
        artifacts = tmp_path_factory.mktemp("lambda") / function
        result = make_build(function, artifacts)
        assert result.returncode == 0, result.stderr
        built[function] = artifacts
    return built


@pytest.mark.parametrize("function", FUNCTIONS)
def test_a_bundle_holds_its_code_and_its_locked_wheels_only(bundles, function) -> None:
    bundle = bundles[function]
    installed = {
        canonicalize_name(p.name.partition("-")[0]): p.name.removesuffix(".dist-info")
        for p in bundle.glob("*.dist-info")
    }
    locked = pins(requirements_file(function))
    assert {name: n.partition("-")[2] for name, n in installed.items()} == locked
    assert sorted(p.name for p in (bundle / "functions").iterdir()) == [
        "__init__.py", "__pycache__", function,
    ]  # fmt: skip
    assert not (bundle / "functions" / function / "events").exists()  # samples for sam local
    assert not (bundle / "bin").exists()


@pytest.mark.parametrize("function", FUNCTIONS)
def test_a_bundle_carries_bytecode_for_the_runtimes_python_only(bundles, function) -> None:
    tag = f"cpython-{RUNTIME_VERSION.replace('.', '')}"
    bundle = bundles[function]
    sources = [p for p in bundle.rglob("*.py") if "__pycache__" not in p.parts]
    assert sources
    for source in sources:
        cached = source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc"
        assert cached.exists(), f"no {tag} bytecode for {source.relative_to(bundle)}"
    for pyc in bundle.rglob("*.pyc"):
        assert pyc.name.endswith(f".{tag}.pyc"), pyc
    # unchecked-hash (PEP 552 flags 0b01): valid whatever mtime the zip leaves on sources.
    sample = next(bundle.rglob(f"*.{tag}.pyc")).read_bytes()
    assert int.from_bytes(sample[4:8], "little") == 0b01


IMPORT_REPORT = """
import importlib.util, json, sys, sysconfig
sys.path[:0] = [sys.argv[1]]
import {handler}
stdlib = sysconfig.get_paths()["stdlib"]
modules = {{}}
for name, module in list(sys.modules.items()):
    spec = getattr(module, "__spec__", None)
    if spec is not None and spec.origin and spec.origin.endswith(".py"):
        modules[name] = [spec.origin, spec.cached]
print(json.dumps({{"magic": importlib.util.MAGIC_NUMBER.hex(), "stdlib": stdlib,
                  "modules": modules}}))
"""


@pytest.mark.parametrize("function", FUNCTIONS)
def test_the_handler_imports_from_its_bundle_with_the_runtimes_python(bundles, function) -> None:
    bundle = bundles[function]
    report_imports = IMPORT_REPORT.format(handler=lambda_build.handler_module(function))
    result = subprocess.run(
        [runtime_python(), "-I", "-S", "-B", "-c", report_imports, str(bundle)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for name, (origin, cached) in report["modules"].items():
        if origin.startswith(report["stdlib"]):
            continue
        assert Path(origin).is_relative_to(bundle), f"{name} came from {origin}"
        # Its bytecode is there, for this interpreter: the import compiled nothing.
        assert Path(cached).read_bytes()[:4].hex() == report["magic"], name


def test_an_arm64_build_takes_arm64_wheels(tmp_path) -> None:
    runtime_python()
    result = make_build("ingest", tmp_path / "ingest", LAMBDA_ARCHITECTURE="arm64")
    assert result.returncode == 0, result.stderr
    libraries = list((tmp_path / "ingest").rglob("*.so"))
    assert libraries  # msgspec, hiredis, markupsafe
    for library in libraries:
        header = library.read_bytes()[:20]
        assert int.from_bytes(header[18:20], "little") == ELF_MACHINES["arm64"], library


def test_a_build_without_the_runtimes_python_stops_before_writing(tmp_path, monkeypatch) -> None:
    # An interpreter of another version than the runtime's, whichever version this venv runs.
    other_python = tmp_path / "python3.99"
    other_python.write_text("#!/bin/sh\necho 3.99\n")
    other_python.chmod(0o755)
    assert lambda_build.python_version(str(other_python)) == "3.99"
    monkeypatch.setenv("LAMBDA_PYTHON", str(other_python))
    result = make_build("ingest", tmp_path / "out", LAMBDA_PYTHON=str(other_python))
    assert result.returncode != 0
    assert f"needs Python {RUNTIME_VERSION}" in result.stderr
    assert "uv python install" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_build_refuses_a_folder_that_is_not_empty(tmp_path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(BuildError, match="not empty"):
        lambda_build.build("ingest", tmp_path, "x86_64", code_only=True)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(
    ("function", "architecture", "message"),
    [("ingestor", "x86_64", "no function named"), ("ingest", "sparc", "no architecture")],
)
def test_a_build_refuses_unknown_names(tmp_path, function, architecture, message) -> None:
    with pytest.raises(BuildError, match=message):
        lambda_build.build(function, tmp_path / "out", architecture, code_only=True)
    assert not (tmp_path / "out").exists()
