"""The deployment artifacts as the tools that consume them read them: the SAM template through
cfn-lint's own loader, and each function's package built by the same Makefile recipe that
`sam build` runs (local/lambda_build.py), code only: with this venv's libraries."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import cfn_yaml

from local import lambda_build

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
INVOKE = Path(__file__).with_name("lambda_invoke.py")
# Set it to a `sam build` output folder (e.g. .aws-sam/build) to run the handler tests on the
# real build, dependencies included, instead of on the code packages these tests build.
SAM_BUILD_DIR = os.environ.get("SAM_BUILD_DIR")


def load_template() -> dict[str, Any]:
    return cfn_yaml.load(str(TEMPLATE))


def serverless_functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: resource
        for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    }


def props(template: dict[str, Any], name: str) -> dict[str, Any]:
    return template["Resources"][name]["Properties"]


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="session")
def function_packages(
    template: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Logical ID -> the folder Lambda would run the function from (its /var/task)."""
    if SAM_BUILD_DIR:
        return {name: Path(SAM_BUILD_DIR) / name for name in serverless_functions(template)}
    packages = {}
    for name, resource in serverless_functions(template).items():
        assert resource.get("Metadata", {}).get("BuildMethod") == "makefile", name
        artifacts = tmp_path_factory.mktemp("sam-build") / name
        lambda_build.build(lambda_build.function_of(name), artifacts, "x86_64", code_only=True)
        packages[name] = artifacts
    return packages


def site_packages() -> list[str]:
    """This venv's installed packages, as plain import paths: without their .pth files, so
    this repo's editable install stays out."""
    paths = sysconfig.get_paths()
    return sorted({paths["purelib"], paths["platlib"]})


def library_dirs() -> list[str]:
    """Where a function's dependencies are: in its package for a real build, else this venv."""
    return [] if SAM_BUILD_DIR else site_packages()


def invoke(
    package: Path,
    handler: str,
    invocations: list[dict[str, Any]],
    env: dict[str, str],
    timeout_s: float = 60,
) -> dict[str, Any]:
    """Run `invocations` against `handler` imported from `package`, as Lambda would."""
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(INVOKE), str(package), handler, *library_dirs()],
        input=json.dumps({"invocations": invocations}),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert result.returncode == 0, f"handler {handler} failed:\n{result.stdout}\n{result.stderr}"
    *printed, last = result.stdout.splitlines()
    report = json.loads(last)
    report["printed"] = printed
    # Every module of this repo that ran came from the function's package, none from the repo.
    assert report["modules"], "no module of the package was imported"
    for name, file in report["modules"].items():
        assert file is None or Path(file).is_relative_to(package), f"{name} came from {file}"
    return report


HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def routed(route: tuple[str, str], api: set[tuple[str, str]]) -> bool:
    """Whether HTTP API routes `route`, as it matches paths: {name} is one segment, {name+}
    any number."""
    method, path = route
    path = path.rstrip("/") or "/"  # API Gateway ignores a trailing slash
    for api_method, api_path in api:
        pattern = re.sub(r"\\\{[^}]+\\\+\\\}", ".+", re.escape(api_path))
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", pattern)
        if api_method == method and re.fullmatch(pattern, path):
            return True
    return False


def environment(template: dict[str, Any], name: str) -> dict[str, Any]:
    shared = template["Globals"]["Function"]["Environment"]["Variables"]
    return {**shared, **props(template, name).get("Environment", {}).get("Variables", {})}


NO_VALUE = object()


def deployed(template: dict[str, Any], node: Any, **parameters: str) -> Any:
    """`node` as CloudFormation deploys it with these parameter values (the defaults for the
    others): conditions evaluated, Fn::If resolved, AWS::NoValue removed, parameters
    substituted. Other intrinsics stay as written."""
    values = {name: str(p.get("Default", "")) for name, p in template["Parameters"].items()}
    values.update(parameters)

    def evaluate(node: Any) -> Any:
        if isinstance(node, dict) and len(node) == 1:
            [(function, argument)] = node.items()
            if function == "Ref" and argument == "AWS::NoValue":
                return NO_VALUE
            if function == "Ref" and argument in values:
                return values[argument]
            if function == "Condition":
                return evaluate(template["Conditions"][argument])
            if function == "Fn::If":
                condition, then, otherwise = argument
                return evaluate(then if evaluate({"Condition": condition}) else otherwise)
            if function == "Fn::Equals":
                return str(evaluate(argument[0])) == str(evaluate(argument[1]))
            if function == "Fn::Not":
                return not evaluate(argument[0])
            if function == "Fn::Contains":
                return evaluate(argument[1]) in evaluate(argument[0])
        if isinstance(node, dict):
            items = ((key, evaluate(value)) for key, value in node.items())
            return {key: value for key, value in items if value is not NO_VALUE}
        if isinstance(node, list):
            return [value for value in map(evaluate, node) if value is not NO_VALUE]
        return node

    return evaluate(node)
