"""The host's view of `make up`: local/compose.env, which a shell sources before
`event-ingest query`/`status` and curl (as `.data/stack.env` after `make run`), must name what
local/compose.yaml publishes on 127.0.0.1 and the services' own bucket, credentials and key.

No Docker engine runs here, so the check is compose's resolved config (`docker compose config`,
as in test_containers.py), not a live stack."""

from __future__ import annotations

import copy
import os
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from functions.ingest.auth import write_keys_of
from local.stack import ENV_FILE_NAMES
from shared.settings import Settings
from tests.deploy.compose_config import built_here, resolved_config
from tests.deploy.conftest import ROOT

ENV_FILE = ROOT / "local" / "compose.env"
PAGE = ROOT / "docs" / "containers.md"
# What `.data/stack.env` sets (local/stack.py), so that the docs' commands read the same after
# `make up` as after `make run`.
EXPECTED = set(ENV_FILE_NAMES)
# Linux's default ip_local_port_range: where `make run`'s fallback ports and the tests' free
# ports come from. A fixed port published for the host stays out of it.
EPHEMERAL_PORTS = range(32768, 61000)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return resolved_config()


def sourced(path: Path) -> dict[str, str]:
    """What `. FILE` sets, read back from a POSIX shell that started with nothing else set.
    Every line must be a comment or `export NAME=value`: the file is for shells only."""
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"export [A-Z][A-Z0-9_]*=\S+", line), f"{path.name}: {line!r}"
    shell = subprocess.run(
        ["/bin/sh", "-c", '. "$1" && env', "sh", str(path)],
        env={"PATH": os.defpath},
        capture_output=True,
        text=True,
        check=True,
    )
    lines = (line.partition("=") for line in shell.stdout.splitlines())
    return {name: value for name, _, value in lines if name not in ("PATH", "PWD", "SHLVL", "_")}


def loopback_port(config: dict[str, Any], service: str, target: int) -> int | None:
    """The host port on 127.0.0.1 where compose publishes `service`'s port `target`."""
    for port in config["services"][service].get("ports", []):
        if port["target"] == target and port.get("host_ip") == "127.0.0.1":
            return int(port["published"])
    return None


def host_env_problems(config: dict[str, Any], env: dict[str, str]) -> list[str]:
    """How `env`, the host's view, disagrees with the containers': [] when it reaches them."""
    if missing := sorted(EXPECTED - env.keys()):
        return [f"missing {missing}"]
    problems = [f"{name}: nothing reads it" for name in sorted(env.keys() - EXPECTED)]
    host = Settings.from_env(env)  # raises ConfigError as the host's CLI would, naming it
    services = config["services"]
    inside = {name: s["environment"] for name, s in built_here(config).items()}
    ingest_bind = inside["ingest"]["BIND"].rpartition(":")[2]

    def reaches(name: str, container_url: str) -> None:
        """The host URL in `name` is `container_url` (service:port) as published on loopback."""
        there, here = urlparse(container_url), urlparse(env[name])
        published = loopback_port(config, there.hostname, there.port)
        if published is None:
            problems.append(f"{name}: {there.hostname}:{there.port} is not published on 127.0.0.1")
        elif (here.scheme, here.hostname, here.port, here.path) != (
            there.scheme,
            "127.0.0.1",
            published,
            there.path,
        ):
            problems.append(
                f"{name}={env[name]}, but compose publishes {container_url} on "
                f"127.0.0.1:{published}"
            )

    reaches("INGEST_URL", f"http://ingest:{ingest_bind}")
    minio = services["minio"]["environment"]
    for service, container_env in inside.items():
        settings = Settings.from_env(container_env)
        reaches("REDIS_URL", settings.redis_url)
        reaches("S3_ENDPOINT_URL", settings.s3_endpoint_url)
        for name in ("stream_key", "s3_prefix"):
            if getattr(host, name) != getattr(settings, name):
                problems.append(f"{name.upper()}: {service} has {getattr(settings, name)!r}")
        if env["AWS_DEFAULT_REGION"] != container_env["AWS_DEFAULT_REGION"]:
            problems.append(f"AWS_DEFAULT_REGION: {service} has another")
    if host.s3_bucket != services["minio-init"]["environment"]["S3_BUCKET"]:
        problems.append("S3_BUCKET is not the bucket minio-init creates")
    credentials = (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    if credentials != (minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"]):
        problems.append("AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are not MinIO's")
    # Judged by the ingest function's own code, from the settings compose gives it.
    keys = write_keys_of(Settings.from_env(inside["ingest"]))()
    if not (keys.required and keys.knows(env["WRITE_KEY"])):
        problems.append("WRITE_KEY is not a key the ingest container accepts")
    return sorted(set(problems))


def test_the_host_env_file_reaches_what_compose_publishes(config: dict[str, Any]) -> None:
    assert host_env_problems(config, sourced(ENV_FILE)) == []


def unpublish_redis(config: dict[str, Any]) -> None:
    del config["services"]["redis"]["ports"]


def move_minio(config: dict[str, Any]) -> None:
    [s3_api] = [p for p in config["services"]["minio"]["ports"] if p["target"] == 9000]
    s3_api["published"] = "19000"


def rename_bucket(config: dict[str, Any]) -> None:
    config["services"]["minio-init"]["environment"]["S3_BUCKET"] = "other"


def change_keys(config: dict[str, Any]) -> None:
    config["services"]["ingest"]["environment"]["WRITE_KEYS"] = "local:another-key"


def change_credentials(config: dict[str, Any]) -> None:
    config["services"]["minio"]["environment"]["MINIO_ROOT_PASSWORD"] = "changed"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (unpublish_redis, "REDIS_URL"),
        (move_minio, "S3_ENDPOINT_URL"),
        (rename_bucket, "S3_BUCKET"),
        (change_keys, "WRITE_KEY"),
        (change_credentials, "AWS_SECRET_ACCESS_KEY"),
    ],
)
def test_a_compose_change_the_env_file_misses_is_caught(
    config: dict[str, Any], change: Any, named: str
) -> None:
    changed = copy.deepcopy(config)
    change(changed)
    assert any(named in problem for problem in host_env_problems(changed, sourced(ENV_FILE)))


def test_every_port_is_published_on_loopback_only(config: dict[str, Any]) -> None:
    # Compose's Redis and MinIO take no real credentials: this machine is the bound.
    for name, service in config["services"].items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port}"
    redis = loopback_port(config, "redis", 6379)
    assert redis is not None, "the host's `event-ingest status` needs Redis"
    # Not where `make run`'s Redis or a developer's own listens, nor where free ports are drawn.
    assert redis != 6379 and redis not in EPHEMERAL_PORTS


def test_the_containers_page_and_make_up_name_published_addresses(
    config: dict[str, Any],
) -> None:
    published = {
        int(port["published"])
        for service in config["services"].values()
        for port in service.get("ports", [])
    }
    up = subprocess.run(
        ["make", "--no-print-directory", "-n", "up"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    page = PAGE.read_text()
    for text in (page, up):
        named = {int(port) for port in re.findall(r"127\.0\.0\.1:(\d+)", text)}
        assert named and named <= published, text
    assert ". local/compose.env" in page and "local/compose.env" in up
