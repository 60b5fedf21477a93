"""The `sam local invoke` recipe of docs/deploying-aws.md, read from the page itself and run.

The page's `--env-vars` file (its one ```json block) and its `sam local invoke` command lines
are parsed out of the page. Every variable the file names must be one the template declares
for that function: SAM drops any other name without a word (a `WRITE_KEYS` there once made the
function run without keys). The function's environment is then built as SAM builds it
(samcli/local/lambdafn/env_vars.py): the template's variables, Globals included, with the
parameters at their defaults and the command's `--parameter-overrides`, an `AWS::NoValue`
left empty and a `Ref` to a resource as its logical ID; then the file's values. Only the Redis
address changes, to a redis-server this module starts. The handler runs from its function's
package, built as `sam build` builds it, in a process of its own (tests/deploy/lambda_invoke.py)
with exactly that environment, and must answer what the page says.

Where the recipe reaches AWS (the secret of the keys' variant, the consumer's bucket), moto's
server stands in for it through `AWS_ENDPOINT_URL_*`: SAM passes no such variable, the real
function reaches AWS with the credentials SAM passes. Nothing else is added.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
import pytest
import redis

from local import lambda_build
from local.redis_server import RedisServer
from local.s3 import FAKE_CREDENTIALS
from local.stack import free_port
from shared import codec
from tests.conftest import archived_events
from tests.deploy.conftest import ROOT, deployed, environment, invoke, serverless_functions

PAGE = ROOT / "docs" / "deploying-aws.md"
SECTION = "## Invoking the functions locally"


# --- what the page says -----------------------------------------------------------------------


def section() -> str:
    text = PAGE.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start : end if end != -1 else None]


def env_vars_file() -> dict[str, dict[str, str]]:
    """The page's `--env-vars` file: the section's one JSON block."""
    blocks = re.findall(r"```json\n(.*?)```", section(), re.S)
    assert len(blocks) == 1, f"expected one ```json block (the --env-vars file), got {len(blocks)}"
    return json.loads(blocks[0])


def shell_commands() -> list[list[str]]:
    """Every command of the section's ```sh blocks, continuation lines joined, as words."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                commands.append(shlex.split(line, comments=True))
    return commands


def invocations() -> dict[str, dict[str, Any]]:
    """Function -> its `sam local invoke` command: event file, env-vars file, overrides."""
    found = {}
    for words in shell_commands():
        if words[:3] != ["sam", "local", "invoke"]:
            continue
        function, options, current = words[3], {}, None
        for word in words[4:]:
            if word.startswith("--"):
                current = word
                options[current] = []
            else:
                assert current is not None, f"stray argument {word!r}"
                options[current].append(word)
        overrides = dict(o.split("=", 1) for o in options.get("--parameter-overrides", []))
        found[function] = {
            "event": ROOT / options["--event"][0],
            "env_vars": options["--env-vars"][0],
            "overrides": overrides,
        }
    return found


def said(pattern: str) -> tuple[str, ...]:
    """What the page's prose says, found by `pattern` (its groups); lines may wrap anywhere."""
    match = re.search(pattern, re.sub(r"\s+", " ", section()))
    assert match, f"the page no longer says {pattern!r}"
    return match.groups()


def local_secret() -> tuple[str, str, dict[str, str]]:
    """The keys' variant: the secret the page creates, and the file's change that names it."""
    [create] = [w for w in shell_commands() if w[:3] == ["aws", "secretsmanager", "create-secret"]]
    name, value = create[create.index("--name") + 1], create[create.index("--secret-string") + 1]
    [setting] = said(r"set `(\"WRITE_KEYS_SECRET\": \"[^\"]*\")` in `local-env.json`")
    return name, value, json.loads("{" + setting + "}")


# --- as SAM builds the environment --------------------------------------------------------------


def sam_environment(
    template: dict[str, Any],
    function: str,
    overrides: dict[str, str],
    values: dict[str, str],
    redis_url: str,
) -> dict[str, str]:
    declared = environment(template, function)
    resolved = deployed(template, declared, **overrides)
    variables = {}
    for name in declared:
        # SAM resolves AWS::NoValue to None, which it passes as an empty variable.
        value = values.get(name, resolved.get(name))
        if isinstance(value, dict) and value.get("Ref") in template["Resources"]:
            value = value["Ref"]  # SAM's symbol table: a resource's Ref is its logical ID
        elif isinstance(value, dict | list) or value is None:
            value = ""
        variables[name] = str(value).lower() if isinstance(value, bool) else str(value)
    # Where the recipe's Redis is (a container on a Docker network), the test's is on loopback.
    recipe_redis = urlparse(variables["REDIS_URL"])
    assert recipe_redis.scheme == "redis", variables["REDIS_URL"]
    variables["REDIS_URL"] = recipe_redis._replace(netloc=urlparse(redis_url).netloc).geturl()
    props = serverless_functions(template)[function]["Properties"]
    timeout = deployed(template, props["Timeout"], **overrides)
    return {
        # What SAM adds to every function (its AWS_* variables), with the tests' credentials.
        "AWS_SAM_LOCAL": "true",
        "AWS_LAMBDA_FUNCTION_NAME": function,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(props["MemorySize"]),
        "AWS_LAMBDA_FUNCTION_TIMEOUT": str(timeout),
        "AWS_LAMBDA_FUNCTION_HANDLER": props["Handler"],
        "AWS_REGION": FAKE_CREDENTIALS["AWS_DEFAULT_REGION"],
        **FAKE_CREDENTIALS,
        **variables,
    }


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    from tests.deploy.conftest import load_template

    return load_template()


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The documented functions' packages, built by `sam build`'s recipe (code only)."""
    built = {}
    for function in invocations():
        folder = tmp_path_factory.mktemp("sam-build") / function
        lambda_build.build(lambda_build.function_of(function), folder, "x86_64", code_only=True)
        built[function] = folder
    return built


@pytest.fixture
def local_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own: the recipe's stream key is the template's default,
    which other tests' streams must not share. No replica, like the recipe's."""
    server = RedisServer(free_port(), tmp_path / "redis").start()
    yield server
    server.kill()


def run(
    template: dict[str, Any],
    packages: dict[str, Path],
    function: str,
    env: dict[str, str],
    events: list[dict[str, Any]],
    budget_ms: int | None = None,
) -> list[dict[str, Any]]:
    props = serverless_functions(template)[function]["Properties"]
    budget_ms = budget_ms or int(env["AWS_LAMBDA_FUNCTION_TIMEOUT"]) * 1000
    report = invoke(
        packages[function],
        props["Handler"],
        [{"event": event, "budget_ms": budget_ms} for event in events],
        env,
        timeout_s=budget_ms / 1000 + 60,
    )
    return [result["response"] for result in report["results"]]


def stream_events(server: RedisServer, key: str) -> list[list[dict[str, Any]]]:
    client = redis.Redis.from_url(server.url)
    return [codec.decode_entry(fields) for _, fields in client.xrange(key)]


def ingest_env(template: dict[str, Any], server: RedisServer, **changes: str) -> dict[str, str]:
    command = invocations()["IngestFunction"]
    values = {**env_vars_file()["IngestFunction"], **changes}
    return sam_environment(template, "IngestFunction", command["overrides"], values, server.url)


def sample_event() -> dict[str, Any]:
    return json.loads(invocations()["IngestFunction"]["event"].read_text())


def sent_message_ids(event: dict[str, Any]) -> list[str]:
    return [e["messageId"] for e in json.loads(event["body"])["batch"]]


def json_body(response: dict[str, Any]) -> Any:
    body = response["body"]
    return json.loads(base64.b64decode(body) if response.get("isBase64Encoded") else body)


# --- tests --------------------------------------------------------------------------------------


def test_the_recipe_names_only_variables_the_template_declares_for_each_function(
    template: dict[str, Any],
) -> None:
    commands = invocations()
    assert "IngestFunction" in commands
    for function, values in env_vars_file().items():
        assert function in commands, f"{function} is in the file but never invoked"
        undeclared = set(values) - set(environment(template, function))
        assert not undeclared, f"SAM would drop {sorted(undeclared)} for {function}"
    for function, command in commands.items():
        assert function in env_vars_file(), function
        assert command["env_vars"] == "local-env.json"
        assert command["event"].is_file(), command["event"]
        assert set(command["overrides"]) <= set(template["Parameters"]), command["overrides"]


def test_ingest_answers_as_the_page_says_and_the_events_reach_the_stream(
    template: dict[str, Any], packages: dict[str, Path], local_redis: RedisServer
) -> None:
    status, body = said(r"IngestFunction answers `(\d{3})` with the body `([^`]+)`")
    [stream_key] = said(r"one entry of the stream `([^`]+)`")
    env = ingest_env(template, local_redis)
    assert env["STREAM_KEY"] == stream_key
    event = sample_event()

    [response] = run(template, packages, "IngestFunction", env, [event])

    assert (response["statusCode"], json_body(response)) == (int(status), json.loads(body))
    entries = stream_events(local_redis, stream_key)
    assert [[e["messageId"] for e in entry] for entry in entries] == [sent_message_ids(event)]


def test_with_a_secret_of_its_own_the_local_ingest_takes_the_sample_key_only(
    template: dict[str, Any],
    packages: dict[str, Path],
    local_redis: RedisServer,
    moto_endpoint: str,
) -> None:
    name, keys, change = local_secret()
    secrets = boto3.client("secretsmanager", endpoint_url=moto_endpoint, region_name="us-east-1")
    secrets.create_secret(Name=name, SecretString=keys)
    [source] = said(r"accepted as source `([^`]+)`")
    [refused] = said(r"any other key is answered `(\d{3})`")
    env = ingest_env(template, local_redis, **change)
    env["AWS_ENDPOINT_URL_SECRETS_MANAGER"] = moto_endpoint  # moto standing in for AWS
    event = sample_event()
    other_key = json.loads(json.dumps(event))
    other_key["headers"]["authorization"] = "Basic " + base64.b64encode(b"another-key:").decode()

    accepted, rejected = run(template, packages, "IngestFunction", env, [event, other_key])

    assert accepted["statusCode"] == 202, accepted
    assert rejected["statusCode"] == int(refused), rejected
    [entry] = stream_events(local_redis, env["STREAM_KEY"])
    assert {e.get("source") for e in entry} == {source}


def test_the_consumer_archives_what_the_local_ingest_accepted(
    template: dict[str, Any],
    packages: dict[str, Path],
    local_redis: RedisServer,
    moto_endpoint: str,
) -> None:
    [archived] = said(r"`events_archived`: (\d+)")
    command = invocations()["ConsumerFunction"]
    values = env_vars_file()["ConsumerFunction"]
    env = sam_environment(
        template, "ConsumerFunction", command["overrides"], values, local_redis.url
    )
    env["AWS_ENDPOINT_URL_S3"] = moto_endpoint  # moto standing in for AWS
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=env["S3_BUCKET"])
    event = sample_event()
    run(template, packages, "IngestFunction", ingest_env(template, local_redis), [event])

    # It drains until a quarter of a short budget is left (at most 10 s): a 3 s budget is about
    # 2 s of draining, not the template's 60.
    [summary] = run(
        template,
        packages,
        "ConsumerFunction",
        env,
        [json.loads(command["event"].read_text())],
        budget_ms=3_000,
    )

    assert summary["events_archived"] == int(archived), summary
    stored = archived_events(s3, env["S3_BUCKET"], env["S3_PREFIX"])
    assert sorted(e["messageId"] for e in stored) == sorted(sent_message_ids(event))
