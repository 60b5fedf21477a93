"""The template's privacy doors (issue 24): the admin function, created only with an admin-token
secret, serving the privacy API on the ingest API with a role that writes only the
regulations; the scheduled privacy function, which finds objects with Athena over the tables
the template declares and rewrites them, with exactly the permissions a pass needs; the ingest
function, which keeps no S3 access."""

from __future__ import annotations

import re
from typing import Any

import pytest

from functions.admin.app import create_admin_app
from shared.archive import ERRORS_PREFIX
from shared.archive.privacy import athena
from shared.archive.privacy.athena import AthenaFinder
from shared.archive.privacy.store import ROOT as REGULATIONS_ROOT
from shared.settings import Settings
from tests.deploy.conftest import HTTP_METHODS, deployed, environment, props, routed

ADMIN_SECRET = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:event-ingest/admin-Xy12Ab"
REGULATIONS = f"${{ArchivePrefix}}{REGULATIONS_ROOT}*"


def references(node: Any) -> set[str]:
    """Every resource or parameter a node names (Ref, GetAtt, and the names in a Sub)."""
    if isinstance(node, dict):
        found = set()
        for key, value in node.items():
            if key == "Ref":
                found.add(value)
            elif key == "Fn::GetAtt":
                found.add(value[0] if isinstance(value, list) else value.split(".")[0])
            elif key == "Fn::Sub":
                text = value[0] if isinstance(value, list) else value
                found |= {name.split(".")[0] for name in re.findall(r"\$\{([^!}]+)\}", text)}
            found |= references(value)
        return found
    if isinstance(node, list):
        return set().union(*map(references, node)) if node else set()
    return set()


# --- the admin function ---------------------------------------------------------------------


def test_the_admin_function_exists_only_with_an_admin_token_secret(template) -> None:
    parameter = template["Parameters"]["AdminTokenSecretArn"]
    assert parameter["Default"] == ""
    assert not deployed(template, {"Condition": "HasAdminTokenSecret"})
    assert deployed(
        template, {"Condition": "HasAdminTokenSecret"}, AdminTokenSecretArn=ADMIN_SECRET
    )
    conditional = {"AdminFunction", "AdminLogGroup"}
    for name in conditional:
        assert template["Resources"][name]["Condition"] == "HasAdminTokenSecret", name
    # Whatever names them exists only with them (CloudFormation refuses it otherwise).
    for name, resource in template["Resources"].items():
        if references(resource) & conditional:
            assert resource.get("Condition") == "HasAdminTokenSecret", name
    for output in template.get("Outputs", {}).values():
        assert not references(output) & conditional


def admin_routes(template: dict[str, Any]) -> set[tuple[str, str]]:
    events = props(template, "AdminFunction")["Events"].values()
    assert all(e["Type"] == "HttpApi" for e in events)
    assert all(e["Properties"]["ApiId"] == {"Ref": "IngestApi"} for e in events)
    return {(e["Properties"]["Method"], e["Properties"]["Path"]) for e in events}


def test_the_admin_routes_are_the_admin_app_s_on_the_ingest_api(template) -> None:
    api = admin_routes(template)
    assert api == {("POST", "/regulations"), ("GET", "/regulations/{id}")}
    app = create_admin_app(Settings(admin_token="t0ken-for-the-routes"))
    served = {
        (method, re.sub(r"<[^>]+>", "an-id", rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods & HTTP_METHODS
    }
    assert served and all(routed(route, api) for route in served)
    adapter = app.url_map.bind("api.example.com")
    for method, path in api:
        adapter.match(re.sub(r"\{[^}]+\}", "an-id", path), method)  # raises when not served
    ingest = props(template, "IngestFunction")["Events"].values()
    assert not any("regulations" in e["Properties"].get("Path", "") for e in ingest)


def test_the_admin_function_may_write_only_the_regulations(template) -> None:
    function = props(template, "AdminFunction")
    assert function["Handler"] == "functions.admin.app.lambda_handler"
    assert function["Environment"]["Variables"] == {
        "ADMIN_TOKEN_SECRET": {"Ref": "AdminTokenSecretArn"},
        "S3_BUCKET": {"Ref": "ArchiveBucket"},
        "S3_PREFIX": {"Ref": "ArchivePrefix"},
    }
    (policy,) = [p for p in function["Policies"] if "Statement" in p]
    assert policy["Statement"] == [
        {
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject"],
            "Resource": {"Fn::Sub": f"${{ArchiveBucket.Arn}}/{REGULATIONS}"},
        },
        {
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": {"Fn::GetAtt": ["ArchiveBucket", "Arn"]},
            "Condition": {"StringLike": {"s3:prefix": {"Fn::Sub": REGULATIONS}}},
        },
    ]
    assert function["Timeout"] < 30  # API Gateway's integration limit


def test_the_ingest_function_keeps_no_s3_access(template) -> None:
    """It serves the privacy API only where ADMIN_TOKEN is set (locally, in containers); on
    AWS the admin function does, and ingest may read its secrets and nothing else."""
    function = props(template, "IngestFunction")
    assert all("Statement" not in p for p in function["Policies"])
    assert all(
        list(p) == ["AWSSecretsManagerGetSecretValuePolicy"] or "Fn::If" in p
        for p in function["Policies"]
    )
    assert "s3" not in repr(function["Policies"]).lower()
    env = environment(template, "IngestFunction")
    assert not {"S3_BUCKET", "S3_PREFIX", "ADMIN_TOKEN", "ADMIN_TOKEN_SECRET"} & set(env)


# --- the privacy function -------------------------------------------------------------------


def test_the_privacy_function_runs_hourly_one_pass_at_a_time(template) -> None:
    function = props(template, "PrivacyFunction")
    assert function["Handler"] == "functions.privacy.app.handler"
    [schedule] = function["Events"].values()
    assert schedule["Type"] == "Schedule"
    assert schedule["Properties"]["Schedule"] == "rate(1 hour)"
    assert function["Timeout"] == 900  # Lambda's most: Athena's query and the rewrites
    assert function["ReservedConcurrentExecutions"] == 1


def test_the_privacy_function_queries_the_tables_the_template_declares(template) -> None:
    env = environment(template, "PrivacyFunction")
    assert env["ATHENA_WORKGROUP"] == {"Ref": "AthenaWorkGroup"}
    assert env["ATHENA_DATABASE"] == {"Ref": "ArchiveDatabase"}
    assert (env["S3_BUCKET"], env["S3_PREFIX"]) == (
        {"Ref": "ArchiveBucket"},
        {"Ref": "ArchivePrefix"},
    )
    # No output location of its own: the workgroup enforces its, in the results bucket.
    assert "ATHENA_OUTPUT_LOCATION" not in env
    workgroup = props(template, "AthenaWorkGroup")["WorkGroupConfiguration"]
    assert workgroup["EnforceWorkGroupConfiguration"] is True
    tables = [
        resource["Properties"]
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::Glue::Table"
    ]
    names = sorted(t["TableInput"]["Name"] for t in tables)
    # The quarantine's tables are not searched: a pass rewrites every object of quarantine/
    # (Deletion._quarantine, tests/shared/archive/privacy/test_deletion.py).
    searched = [name for name in names if not name.startswith("quarantined_")]
    assert searched == sorted(athena.TABLES)
    assert sorted(set(names) - set(searched)) == ["quarantined_ndjson", "quarantined_parquet"]
    assert all(t["DatabaseName"] == {"Ref": "ArchiveDatabase"} for t in tables)
    assert template["Parameters"]["GlueDatabaseName"]["Default"] == Settings().athena_database
    finder = AthenaFinder.from_settings(
        Settings.from_env({"ATHENA_WORKGROUP": "stack-events"}), remaining_ms=lambda: 900_000
    )
    assert (finder.workgroup, finder.output_location) == ("stack-events", None)


def sub(text: str) -> dict[str, str]:
    return {"Fn::Sub": text}


def arn(service: str, resource: str) -> dict[str, str]:
    return sub(f"arn:${{AWS::Partition}}:{service}:${{AWS::Region}}:${{AWS::AccountId}}:{resource}")


ARCHIVE = {"Fn::GetAtt": ["ArchiveBucket", "Arn"]}
RESULTS_BUCKET = {"Fn::GetAtt": ["AthenaResultsBucket", "Arn"]}


def test_the_privacy_function_may_do_what_a_pass_does_and_nothing_more(template) -> None:
    (policy,) = [p for p in props(template, "PrivacyFunction")["Policies"] if "Statement" in p]
    assert policy["Statement"] == [
        # Objects: rewritten in place, emptied ones removed, older versions deleted, under the
        # archive prefix (the regulations included) and among the dead letters.
        {
            "Effect": "Allow",
            "Action": [
                "s3:GetObject", "s3:GetObjectVersion", "s3:PutObject", "s3:DeleteObject",
                "s3:DeleteObjectVersion",
            ],
            "Resource": [
                sub("${ArchiveBucket.Arn}/${ArchivePrefix}*"),
                sub(f"${{ArchiveBucket.Arn}}/{ERRORS_PREFIX}*"),
            ],
        },
        {
            "Effect": "Allow",
            "Action": ["s3:ListBucket", "s3:ListBucketVersions"],
            "Resource": ARCHIVE,
            "Condition": {
                "StringLike": {"s3:prefix": [sub("${ArchivePrefix}*"), f"{ERRORS_PREFIX}*"]}
            },
        },
        {
            "Effect": "Allow",
            "Action": [
                "athena:StartQueryExecution", "athena:GetQueryExecution",
                "athena:GetQueryResults", "athena:StopQueryExecution",
            ],
            "Resource": arn("athena", "workgroup/${AthenaWorkGroup}"),
        },
        {
            "Effect": "Allow",
            "Action": ["glue:GetDatabase", "glue:GetTable", "glue:GetPartitions"],
            "Resource": [
                arn("glue", "catalog"),
                arn("glue", "database/${ArchiveDatabase}"),
                arn("glue", "table/${ArchiveDatabase}/*"),
            ],
        },
        {
            "Effect": "Allow",
            "Action": "s3:GetBucketLocation",
            "Resource": [ARCHIVE, RESULTS_BUCKET],
        },
        {
            "Effect": "Allow",
            "Action": [
                "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                "s3:ListMultipartUploadParts",
            ],
            "Resource": sub("${AthenaResultsBucket.Arn}/results/*"),
        },
        {
            "Effect": "Allow",
            "Action": ["s3:ListBucket", "s3:ListBucketMultipartUploads"],
            "Resource": RESULTS_BUCKET,
            "Condition": {"StringLike": {"s3:prefix": "results/*"}},
        },
    ]  # fmt: skip
    # Where Athena writes (the workgroup's enforced location) is where the role may delete.
    location = props(template, "AthenaWorkGroup")["WorkGroupConfiguration"]
    assert location["ResultConfiguration"]["OutputLocation"] == sub(
        "s3://${AthenaResultsBucket}/results/"
    )
    assert "Deny" not in repr(policy) and "'*'" not in repr(policy)


@pytest.mark.parametrize("name", ["PrivacyFunction", "AdminFunction"])
def test_the_privacy_doors_run_in_the_vpc_of_redis(template, name) -> None:
    """Both reach Redis (what is in force, the locks, the dead letters): the Globals' VPC."""
    assert "VpcConfig" not in props(template, name)
    assert template["Globals"]["Function"]["VpcConfig"]["SubnetIds"] == {"Ref": "SubnetIds"}
