"""template.yaml: valid for cfn-lint, and true to the code it deploys (routes, environment
variables, time budget, dependencies, build recipe) and to the security it promises."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from packaging.requirements import Requirement

from functions.consumer.drain import STOP_MARGIN_MS
from functions.ingest.app import BROWSER_PREFIXES, create_app
from local import lambda_build
from shared.archive import ERRORS_PREFIX, columns, partition_path
from shared.archive.columns import DEDUP_KEY
from shared.archive.naming import COMPACTED_ROOT, QUARANTINE_ROOT, RAW_ROOTS, ROOTS
from shared.settings import ENV_VARS, ConfigError, Settings
from tests.athena_in_duckdb import athena_in_duckdb, insert
from tests.deploy.conftest import (
    HTTP_METHODS,
    ROOT,
    TEMPLATE,
    deployed,
    environment,
    props,
    routed,
    serverless_functions,
)
from tests.local.locks import top_level_requirements


def test_cfn_lint_reports_nothing() -> None:
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    result = subprocess.run([str(cfn_lint), str(TEMPLATE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the ingest API routes exactly what the app serves ---------------------------------------


def api_routes(template: dict[str, Any]) -> set[tuple[str, str]]:
    events = props(template, "IngestFunction")["Events"].values()
    return {
        (e["Properties"]["Method"].upper(), e["Properties"]["Path"])
        for e in events
        if e["Type"] == "HttpApi"
    }


def app_routes() -> set[tuple[str, str]]:
    """(method, concrete path) for every route of the ingest app."""
    routes = set()
    for rule in create_app(Settings()).url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        paths = [rule.rule]
        for argument, converter in rule._converters.items():
            # A path segment of any value (a write key) stands for itself: one sample value.
            values = sorted(getattr(converter, "items", ["sample-value"]))
            paths = [
                re.sub(rf"<([^>]*:)?{argument}>", value, path) for path in paths for value in values
            ]
        routes |= {(method, path) for method in rule.methods & HTTP_METHODS for path in paths}
    return routes


# For operators on the server's own port, never for the internet; on Lambda the counts go to
# CloudWatch as EMF lines instead.
NOT_ON_THE_API = {("GET", "/metrics")}


def test_every_route_of_the_app_is_on_the_api(template: dict[str, Any]) -> None:
    api = api_routes(template)
    missing = sorted(route for route in app_routes() - NOT_ON_THE_API if not routed(route, api))
    assert not missing, f"add these routes to IngestFunction's Events: {missing}"


def test_metrics_are_not_on_the_api(template: dict[str, Any]) -> None:
    assert app_routes() >= NOT_ON_THE_API
    api = api_routes(template)
    assert not any(routed(route, api) for route in NOT_ON_THE_API)


def test_every_route_of_the_api_reaches_the_app(template: dict[str, Any]) -> None:
    adapter = create_app(Settings()).url_map.bind("api.example.com")
    for method, path in api_routes(template):
        concrete = re.sub(r"\{[^}]+\}", "batch", path)
        adapter.match(concrete, method)  # raises NotFound or MethodNotAllowed


def test_browsers_get_their_preflight_answered_by_the_app(template: dict[str, Any]) -> None:
    # A CorsConfiguration would make API Gateway answer preflights itself, differently.
    assert "CorsConfiguration" not in props(template, "IngestApi")
    api = api_routes(template)
    browser_paths = [p for m, p in app_routes() if p.startswith(BROWSER_PREFIXES)]
    assert {"/v1/t", "/beacon/v1/batch", "/sourceConfig"} <= set(browser_paths)
    assert all(routed(("OPTIONS", p), api) for p in browser_paths)


# --- configuration and secrets ---------------------------------------------------------------


FUNCTIONS = [
    "IngestFunction", "ConsumerFunction", "CompactorFunction", "PrivacyFunction", "AdminFunction"
]  # fmt: skip


@pytest.mark.parametrize("name", FUNCTIONS)
def test_functions_set_only_variables_the_code_reads(template: dict[str, Any], name: str) -> None:
    assert set(environment(template, name)) <= set(ENV_VARS)


def test_every_function_is_tested_here(template: dict[str, Any]) -> None:
    assert sorted(serverless_functions(template)) == sorted(FUNCTIONS)


READS_REDIS_SECRET = {
    "Fn::If": [
        "HasRedisAuthSecret",
        {"AWSSecretsManagerGetSecretValuePolicy": {"SecretArn": {"Ref": "RedisAuthSecretArn"}}},
        {"Ref": "AWS::NoValue"},
    ]
}


def test_secrets_come_from_secrets_manager_never_from_the_environment(
    template: dict[str, Any],
) -> None:
    assert environment(template, "IngestFunction")["WRITE_KEYS_SECRET"] == {
        "Ref": "WriteKeysSecretArn"
    }
    shared = template["Globals"]["Function"]["Environment"]["Variables"]
    assert shared["REDIS_AUTH_SECRET"] == {
        "Fn::If": ["HasRedisAuthSecret", {"Ref": "RedisAuthSecretArn"}, {"Ref": "AWS::NoValue"}]
    }
    for name in serverless_functions(template):
        env = environment(template, name)
        assert "WRITE_KEYS" not in env and "METRICS_TOKEN" not in env, name
    # No parameter holds a secret any more: nothing to hide, nothing in the console.
    assert not [p for p, d in template["Parameters"].items() if d.get("NoEcho")]
    assert "Default" not in template["Parameters"]["WriteKeysSecretArn"]  # required


def reads_secret(parameter: str) -> dict[str, Any]:
    return {"AWSSecretsManagerGetSecretValuePolicy": {"SecretArn": {"Ref": parameter}}}


def test_each_function_may_read_its_secrets_and_no_other(template: dict[str, Any]) -> None:
    own = {
        "IngestFunction": [reads_secret("WriteKeysSecretArn")],
        "AdminFunction": [reads_secret("AdminTokenSecretArn")],
    }
    for name in serverless_functions(template):
        policies = props(template, name)["Policies"]
        reads = [p for p in policies if "Statement" not in p]
        assert reads == [*own.get(name, []), READS_REDIS_SECRET], name


@pytest.mark.parametrize(
    "parameter", ["WriteKeysSecretArn", "RedisAuthSecretArn", "AdminTokenSecretArn"]
)
def test_secret_parameters_take_full_arns_only(template: dict[str, Any], parameter: str) -> None:
    """IAM grants the exact ARN, which ends in the secret's 6-character suffix: a name or a
    partial ARN would be granted nothing, and the cold start would fail."""
    pattern = template["Parameters"][parameter]["AllowedPattern"]
    assert re.fullmatch(
        pattern, "arn:aws:secretsmanager:eu-west-1:123456789012:secret:ingest/keys-AbC123"
    )
    for value in (
        "ingest/keys",
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:ingest/keys",
    ):
        assert not re.fullmatch(pattern, value), value


def test_the_redis_url_carries_no_token_and_must_use_tls(template: dict[str, Any]) -> None:
    url = template["Parameters"]["RedisUrl"]
    assert "NoEcho" not in url
    for value in ("rediss://master.events.abc123.euw1.cache.amazonaws.com:6379", "rediss://h/0"):
        assert re.fullmatch(url["AllowedPattern"], value), value
    for value in (
        "rediss://:token@h:6379",
        "rediss://user:token@h:6379",
        "redis://user@h",
        "h:6379",
    ):
        assert not re.fullmatch(url["AllowedPattern"], value), value
    shared = template["Globals"]["Function"]["Environment"]["Variables"]
    assert shared["REDIS_REQUIRE_TLS"] == {"Ref": "RedisRequireTls"}
    required = template["Parameters"]["RedisRequireTls"]["Default"]
    with pytest.raises(ConfigError, match="rediss://"):
        Settings.from_env({"REDIS_REQUIRE_TLS": required, "REDIS_URL": "redis://h:6379"})


def test_the_public_url_is_a_parameter_the_settings_accept(template: dict[str, Any]) -> None:
    """PUBLIC_URL cannot be the API's own URL: SAM's API names the ingest function, so the
    function's environment naming the API would be a circular dependency."""
    env = environment(template, "IngestFunction")
    assert env["PUBLIC_URL"] == {
        "Fn::If": ["HasPublicUrl", {"Ref": "PublicUrl"}, {"Ref": "AWS::NoValue"}]
    }
    assert "IngestApi" not in repr(env)
    assert template["Conditions"]["HasPublicUrl"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "PublicUrl"}, ""]}]
    }
    assert template["Parameters"]["PublicUrl"]["Default"] == ""  # unset: private documents
    pattern = template["Parameters"]["PublicUrl"]["AllowedPattern"]
    valid = [
        "https://events.example.com",
        "https://abc123.execute-api.eu-west-1.amazonaws.com",
        "https://api.example.com:8443/Prod",
    ]
    for url in valid:
        assert re.fullmatch(pattern, url), url
        assert Settings.from_env({"PUBLIC_URL": url}).public_url == url
    invalid = [
        "http://events.example.com",
        "https://events.example.com/",
        "events.example.com",
        "https://events.example.com/?a=b",
        "https://user@events.example.com",
    ]
    for url in invalid:
        assert not re.fullmatch(pattern, url), url


LAYER = "arn:aws:lambda:eu-west-1:123456789012:layer:geolite2-city:3"


def test_without_a_geoip_layer_ingest_has_no_layer_and_no_database(
    template: dict[str, Any],
) -> None:
    assert template["Parameters"]["GeoIpLayerArn"]["Default"] == ""
    ingest = deployed(template, template["Resources"]["IngestFunction"])

    assert "Layers" not in ingest["Properties"]
    assert "GEOIP_DATABASE" not in ingest["Properties"]["Environment"]["Variables"]


def test_a_geoip_layer_is_attached_and_its_database_opened_from_opt(
    template: dict[str, Any],
) -> None:
    """The layer's zip holds GeoLite2-City.mmdb at its root, and Lambda unpacks a layer under
    /opt (docs/enrichment.md, docs/deploying-aws.md)."""
    ingest = deployed(template, template["Resources"]["IngestFunction"], GeoIpLayerArn=LAYER)

    assert ingest["Properties"]["Layers"] == [LAYER]
    database = ingest["Properties"]["Environment"]["Variables"]["GEOIP_DATABASE"]
    assert database == "/opt/GeoLite2-City.mmdb"
    assert Settings.from_env({"GEOIP_DATABASE": database}).geoip_database == database
    for page in ("enrichment.md", "deploying-aws.md"):
        text = (ROOT / "docs" / page).read_text()
        assert "GeoIpLayerArn" in text and database in text, page
    # Only ingest enriches: no other function gets the layer or the database.
    for name in serverless_functions(template):
        if name != "IngestFunction":
            other = deployed(template, template["Resources"][name], GeoIpLayerArn=LAYER)
            assert "Layers" not in other["Properties"], name
            assert "GEOIP_DATABASE" not in environment(template, name), name


def test_the_geoip_layer_parameter_takes_layer_version_arns_only(
    template: dict[str, Any],
) -> None:
    pattern = template["Parameters"]["GeoIpLayerArn"]["AllowedPattern"]
    for value in ("", LAYER, "arn:aws-cn:lambda:cn-north-1:123456789012:layer:geo_ip-1:12"):
        assert re.fullmatch(pattern, value), value
    for value in (
        "arn:aws:lambda:eu-west-1:123456789012:layer:geolite2-city",  # no version
        "geolite2-city:3",
        "arn:aws:lambda:eu-west-1:123456789012:function:geolite2-city:3",
    ):
        assert not re.fullmatch(pattern, value), value


def test_ingest_waits_for_a_replica_by_default(template: dict[str, Any]) -> None:
    """A deployment answers 2xx only for events a replica holds: a failover loses nothing."""
    assert environment(template, "IngestFunction")["REDIS_WAIT_REPLICAS"] == {
        "Ref": "RedisWaitReplicas"
    }
    parameter = template["Parameters"]["RedisWaitReplicas"]
    assert parameter["Default"] == 1 and parameter["MinValue"] == 0
    settings = Settings.from_env({"REDIS_WAIT_REPLICAS": str(parameter["Default"])})
    assert settings.redis_wait_replicas == 1
    assert settings.redis_wait_timeout_ms < settings.redis_timeout_s * 1000


# --- least privilege and the archive bucket --------------------------------------------------


def test_the_consumer_may_put_archive_objects_and_nothing_else(template: dict[str, Any]) -> None:
    (policy,) = [p for p in props(template, "ConsumerFunction")["Policies"] if "Statement" in p]
    privacy = "${ArchivePrefix}_privacy/*"  # read only: the regulations in force
    assert policy["Statement"] == [
        {
            "Effect": "Allow",
            "Action": "s3:PutObject",
            "Resource": [
                {"Fn::Sub": "${ArchiveBucket.Arn}/${ArchivePrefix}*"},
                {"Fn::Sub": f"${{ArchiveBucket.Arn}}/{ERRORS_PREFIX}*"},
            ],
        },
        {
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": {"Fn::Sub": f"${{ArchiveBucket.Arn}}/{privacy}"},
        },
        {
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": {"Fn::GetAtt": ["ArchiveBucket", "Arn"]},
            "Condition": {"StringLike": {"s3:prefix": {"Fn::Sub": privacy}}},
        },
    ]
    assert all("Statement" not in p for p in props(template, "IngestFunction")["Policies"])
    for name, resource in template["Resources"].items():
        assert not resource["Type"].startswith("AWS::IAM::"), name
        assert "Role" not in resource.get("Properties", {}), name


def test_the_archive_bucket_is_private_encrypted_kept_and_cooled(
    template: dict[str, Any],
) -> None:
    bucket = template["Resources"]["ArchiveBucket"]
    assert bucket["DeletionPolicy"] == bucket["UpdateReplacePolicy"] == "Retain"
    block = bucket["Properties"]["PublicAccessBlockConfiguration"]
    assert set(block.values()) == {True} and len(block) == 4
    (encryption,) = bucket["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert encryption["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    rules = bucket["Properties"]["LifecycleConfiguration"]["Rules"]
    cooling = next(rule for rule in rules if "Transitions" in rule)
    assert cooling["Prefix"] == {"Ref": "ArchivePrefix"}
    assert cooling["Transitions"] == [
        {
            "StorageClass": {"Ref": "ArchiveStorageClass"},
            "TransitionInDays": {"Ref": "ArchiveTransitionDays"},
        }
    ]
    consumer = environment(template, "ConsumerFunction")
    assert consumer["S3_BUCKET"] == {"Ref": "ArchiveBucket"}
    assert consumer["S3_PREFIX"] == {"Ref": "ArchivePrefix"}


def test_outputs_give_the_api_url_and_the_bucket(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    assert "${IngestApi}.execute-api." in outputs["ApiUrl"]["Value"]["Fn::Sub"]
    assert outputs["ArchiveBucketName"]["Value"] == {"Ref": "ArchiveBucket"}


# --- the consumer's schedule and time budget -------------------------------------------------


def seconds_of_rate(expression: str) -> int:
    count, unit = re.fullmatch(r"rate\((\d+) (minutes?|hours?|days?)\)", expression).groups()
    return int(count) * {"m": 60, "h": 3600, "d": 86400}[unit[0]]


def test_the_consumer_runs_on_a_schedule_with_a_timeout_that_fits_its_budget(
    template: dict[str, Any],
) -> None:
    consumer = props(template, "ConsumerFunction")
    (schedule,) = [e for e in consumer["Events"].values() if e["Type"] == "Schedule"]
    assert schedule["Properties"]["Schedule"] == {"Ref": "ConsumerSchedule"}
    assert template["Parameters"]["ConsumerSchedule"]["Default"] == "rate(1 minute)"
    assert consumer["Timeout"] == {"Ref": "ConsumerTimeout"}
    timeout = template["Parameters"]["ConsumerTimeout"]
    # At any allowed timeout the drain keeps its whole stop margin (min(margin, budget/4))...
    assert timeout["MinValue"] * 1000 >= 4 * STOP_MARGIN_MS
    assert timeout["MaxValue"] <= 900  # Lambda's limit
    # ...and by default one invocation reads until the next one starts: no gap in draining.
    reading_s = timeout["Default"] - STOP_MARGIN_MS / 1000
    assert reading_s >= seconds_of_rate(template["Parameters"]["ConsumerSchedule"]["Default"])


# --- what `sam build` puts in each function --------------------------------------------------


def test_each_function_requires_only_project_dependencies_and_all_are_required() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = {Requirement(line).name for line in pyproject["project"]["dependencies"]}
    required = set()
    for function in lambda_build.FUNCTIONS:
        names = {r.name for r in top_level_requirements(function)}
        assert names <= project, f"{function} requires what pyproject.toml does not"
        required |= names
    # click is the command line's (`event-ingest`), which no function imports.
    assert required | {"click"} == project, "a project dependency that nothing imports"


@pytest.mark.parametrize("name", FUNCTIONS)
def test_sam_build_recipe_targets_the_runtime_and_architecture(
    template: dict[str, Any], name: str
) -> None:
    function = {**template["Globals"]["Function"], **props(template, name)}
    assert template["Resources"][name]["Metadata"]["BuildMethod"] == "makefile"
    recipe = subprocess.run(
        ["make", "--no-print-directory", "-n", f"build-{name}", "ARTIFACTS_DIR=/artifacts"],
        cwd=ROOT / function["CodeUri"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    short = lambda_build.function_of(name)
    assert f'-m local.lambda_build {short} "/artifacts" --architecture x86_64' in recipe
    assert function["Runtime"] == f"python{lambda_build.RUNTIME_VERSION}"
    # The architecture is a parameter, x86_64 unless the user picks arm64 (and builds for it).
    assert function["Architectures"] == [{"Ref": "Architecture"}]
    parameter = template["Parameters"]["Architecture"]
    assert parameter["Default"] == "x86_64"
    assert set(parameter["AllowedValues"]) == set(lambda_build.MACHINES)


def test_every_function_is_built_from_the_repo_root(template: dict[str, Any]) -> None:
    for name, resource in serverless_functions(template).items():
        assert (ROOT / resource["Properties"]["CodeUri"]).resolve() == ROOT, name


def test_the_ingest_timeout_outlasts_a_slow_redis(template: dict[str, Any]) -> None:
    """Connecting and answering may each take REDIS_TIMEOUT_S; then the client gets a 503
    from the app, not a bare 500 from API Gateway for a timed-out function."""
    timeout_s = props(template, "IngestFunction")["Timeout"]
    assert timeout_s > 2 * Settings().redis_timeout_s


def test_both_functions_run_in_the_vpc_of_redis(template: dict[str, Any]) -> None:
    vpc = template["Globals"]["Function"]["VpcConfig"]
    assert vpc == {
        "SubnetIds": {"Ref": "SubnetIds"},
        "SecurityGroupIds": {"Ref": "SecurityGroupIds"},
    }
    for name in serverless_functions(template):
        assert "VpcConfig" not in props(template, name), name
    assert template["Parameters"]["SubnetIds"]["Type"] == "List<AWS::EC2::Subnet::Id>"


# --- Athena: tables over what the consumer and the compactor write ----------------------------


ATHENA_TABLES = {
    # logical id: (root under the archive prefix, format)
    "NdjsonTable": (RAW_ROOTS["ndjson"], "ndjson"),
    "ParquetTable": (RAW_ROOTS["parquet"], "parquet"),
    "CompactedTable": (COMPACTED_ROOT, "parquet"),
    # The quarantine: the same layout under its own root (shared/archive/naming.py).
    "QuarantinedNdjsonTable": (QUARANTINE_ROOT + RAW_ROOTS["ndjson"], "ndjson"),
    "QuarantinedParquetTable": (QUARANTINE_ROOT + RAW_ROOTS["parquet"], "parquet"),
}


def athena_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_boolean(arrow_type):
        return "boolean"
    return "timestamp" if pa.types.is_timestamp(arrow_type) else "string"


# The columns issue 26 added, restated (not read from `columns.SCHEMA`): the Parquet tables and
# the view must declare each, so that "events by country" needs no JSON path in Athena.
ENRICHED_COLUMNS = [
    ("country", "string"),
    ("country_code", "string"),
    ("region", "string"),
    ("city", "string"),
    ("browser", "string"),
    ("os", "string"),
    ("device", "string"),
    ("is_bot", "boolean"),
]


@pytest.mark.parametrize("name", sorted(ATHENA_TABLES))
def test_each_athena_table_has_the_archive_columns_and_reads_its_own_root(
    template: dict[str, Any], name: str
) -> None:
    root, fmt = ATHENA_TABLES[name]
    table = props(template, name)["TableInput"]
    storage = table["StorageDescriptor"]
    declared = [(c["Name"], c["Type"]) for c in storage["Columns"]]
    if fmt == "parquet":
        assert "Parquet" in storage["SerdeInfo"]["SerializationLibrary"]
        assert declared == [(f.name, athena_type(f.type)) for f in columns.SCHEMA]
        assert declared[-len(ENRICHED_COLUMNS) :] == ENRICHED_COLUMNS
    else:
        # NDJSON holds the events as sent: timestamps are ISO-8601 text, there is no `extra`
        # column (the view reads the other formats' `extra` beside NULL), and the columns
        # derived from `context` are the view's (`json_extract_scalar`), not the table's.
        assert "JsonSerDe" in storage["SerdeInfo"]["SerializationLibrary"]
        assert declared == [
            (f.name, "string")
            for f in columns.SCHEMA
            if f.name != "extra" and f.name not in columns.DERIVED_COLUMNS
        ]
        assert ("context", "string") in declared  # its JSON text, which the view reads
        mapping = {
            k.removeprefix("mapping."): v
            for k, v in storage["SerdeInfo"]["Parameters"].items()
            if k.startswith("mapping.")
        }
        fields = {**columns.TEXT_FIELDS, **columns.TIME_FIELDS, **columns.JSON_FIELDS}
        assert mapping == {c: f for c, f in fields.items() if c != f}
    assert [k["Name"] for k in table["PartitionKeys"]] == ["dt", "hour"]
    parameters = table["Parameters"]
    assert parameters["projection.enabled"] == "true"
    assert parameters["projection.hour.digits"] == "2"
    assert parameters["projection.dt.format"] == "yyyy-MM-dd"
    location = parameters["storage.location.template"]["Fn::Sub"]
    expected_root = "s3://${ArchiveBucket}/${ArchivePrefix}" + root
    assert location == expected_root + "dt=${!dt}/hour=${!hour}/"
    assert storage["Location"]["Fn::Sub"] == expected_root


def test_the_athena_tables_cover_every_root_the_archive_writes(template: dict[str, Any]) -> None:
    quarantine = [QUARANTINE_ROOT + root for root in RAW_ROOTS.values()]
    assert sorted(root for root, _ in ATHENA_TABLES.values()) == sorted([*ROOTS, *quarantine])
    # A projected partition path is exactly what the partitioner writes under a root.
    assert partition_path({"receivedAt": "2026-11-30T07:00:00.000Z"}) == "dt=2026-11-30/hour=07/"


def test_a_deployed_stack_is_queryable_in_athena_at_once(template: dict[str, Any]) -> None:
    workgroup = props(template, "AthenaWorkGroup")["WorkGroupConfiguration"]
    assert workgroup["EnforceWorkGroupConfiguration"] is True
    assert "AthenaResultsBucket" in workgroup["ResultConfiguration"]["OutputLocation"]["Fn::Sub"]
    view = props(template, "EventsView")["QueryString"]
    for table in ("events_ndjson", "events_parquet", "events_compacted"):
        assert f"FROM {table}" in view
    # The key `event-ingest query` and compaction deduplicate by (run in tests/abuse).
    assert f"PARTITION BY {', '.join(DEDUP_KEY)} ORDER BY received_at" in view


def test_the_athena_view_has_the_enriched_columns_from_every_table() -> None:
    """The view's SQL from the template, run in DuckDB over the tables as declared (with
    Presto's JSON functions as Presto defines them): NDJSON's columns derived from `context`,
    the Parquet tables' read as stored, older objects' NULL (and `is_bot` false)."""
    con = athena_in_duckdb()
    described = {row[0]: row[1] for row in con.execute("DESCRIBE events").fetchall()}
    assert list(described) == [*columns.SCHEMA.names, "dt", "hour"]
    assert described["is_bot"] == "BOOLEAN" and described["country"] == "VARCHAR"
    france = {
        "location": {"country": "France", "countryCode": "FR", "region": "IDF", "city": "Paris"},
        "parsedUserAgent": {"browser": "Chrome", "os": "Mac OS X", "device": "Other"},
    }
    at = "2024-03-05T13:00:00Z"
    for n, context in enumerate(
        [
            json.dumps(france),
            json.dumps({**france, "bot": True}),
            json.dumps({"library": {"name": "analytics.js"}}),  # archived before enrichment
            json.dumps({"location": 42, "bot": "true"}),  # a client's odd location, no bot
            json.dumps({"location": {"country": {"name": "France"}, "city": 7}}),
        ]
    ):
        insert(
            con, "events_ndjson", f"s3://a/{n}.ndjson.gz", at, message_id=f"n{n}", context=context
        )
    parquet_france = {
        "country": "France",
        "country_code": "FR",
        "region": "IDF",
        "city": "Paris",
        "browser": "Chrome",
        "os": "Mac OS X",
        "device": "Other",
    }
    insert(
        con,
        "events_parquet",
        "s3://a/p/1.parquet",
        at,
        message_id="p1",
        is_bot=False,
        **parquet_france,
    )
    insert(con, "events_parquet", "s3://a/p/2.parquet", at, message_id="p2")  # an older object
    insert(
        con,
        "events_compacted",
        "s3://a/c/1.parquet",
        at,
        message_id="c1",
        is_bot=True,
        **parquet_france,
    )
    insert(con, "events_compacted", "s3://a/c/2.parquet", at, message_id="c2")  # an older object

    by_country = con.execute(
        "SELECT country, count(*) FROM events GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert by_country == [("France", 4), (None, 5)]
    assert con.execute("SELECT is_bot, count(*) FROM events GROUP BY 1 ORDER BY 1").fetchall() == [
        (False, 7),
        (True, 2),
    ]
    rows = con.execute(
        "SELECT message_id, country_code, region, city, browser, os, device FROM events "
        "WHERE message_id IN ('n0', 'n4', 'p1', 'c2') ORDER BY 1"
    ).fetchall()
    assert rows == [
        ("c2", None, None, None, None, None, None),
        ("n0", "FR", "IDF", "Paris", "Chrome", "Mac OS X", "Other"),
        ("n4", None, None, "7", None, None, None),  # a number's text, an object's NULL
        ("p1", "FR", "IDF", "Paris", "Chrome", "Mac OS X", "Other"),
    ]


def test_cluster_mode_and_shards_are_parameters(template: dict[str, Any]) -> None:
    shared = template["Globals"]["Function"]["Environment"]["Variables"]
    assert shared["REDIS_CLUSTER"] == {"Ref": "RedisClusterMode"}
    assert shared["STREAM_SHARDS"] == {"Ref": "StreamShards"}
    mode, count = template["Parameters"]["RedisClusterMode"], template["Parameters"]["StreamShards"]
    assert mode["Default"] == "false" and count["Default"] == 1  # one Redis, one key: as before
    settings = Settings.from_env({"REDIS_CLUSTER": "true", "STREAM_SHARDS": "6"})
    assert settings.redis_cluster and settings.stream_shards == 6
    assert Settings.from_env({"REDIS_CLUSTER": mode["Default"]}).redis_cluster is False
