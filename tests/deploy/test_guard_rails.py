"""The template's guard rails: failed scheduled runs are not retried and are reported, the
consumer keeps reserved concurrency, the API throttles and logs, and alarms watch what pages
someone (issue 15); the functions log to groups the stack owns, and the archive bucket's
lifecycle keeps what Athena can read."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from functions.privacy import app as privacy_app
from shared import metrics
from shared.archive import ERRORS_PREFIX
from shared.regulations import Regulation
from shared.settings import Settings
from shared.status import CompactionReport, GroupStatus, StreamStatus
from tests.deploy.conftest import deployed, props

SCHEDULED = ("ConsumerFunction", "CompactorFunction", "PrivacyFunction")


def resources_of(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {
        name: resource
        for name, resource in template["Resources"].items()
        if resource["Type"] == kind
    }


def notifies_the_topic(properties: dict[str, Any]) -> bool:
    return properties["AlarmActions"] == {
        "Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]
    }


def test_scheduled_runs_are_not_retried_and_failures_go_to_the_topic(template) -> None:
    for name in SCHEDULED:
        config = props(template, name)["EventInvokeConfig"]
        assert config["MaximumRetryAttempts"] == 0, name
        assert config["MaximumEventAgeInSeconds"] <= 300, name
        on_failure = config["DestinationConfig"]["Fn::If"][1]["OnFailure"]
        assert on_failure == {"Type": "SNS", "Destination": {"Ref": "AlarmTopicArn"}}
    assert template["Parameters"]["AlarmTopicArn"]["Default"] == ""


@pytest.mark.parametrize("name", ["ConsumerFunction", "CompactorFunction"])
def test_scheduled_functions_keep_their_concurrency(template, name) -> None:
    """An ingest spike cannot take every execution: the backlog would fill (consumer) or the
    archive go uncompacted (compactor)."""
    parameter = name.replace("Function", "ReservedConcurrency")
    assert props(template, name)["ReservedConcurrentExecutions"] == {"Ref": parameter}
    assert template["Parameters"][parameter]["MinValue"] >= 1


def test_the_api_throttles_and_logs_json_without_keys(template) -> None:
    api = props(template, "IngestApi")
    assert api["DefaultRouteSettings"] == {
        "ThrottlingRateLimit": {"Ref": "ApiThrottleRateLimit"},
        "ThrottlingBurstLimit": {"Ref": "ApiThrottleBurstLimit"},
    }
    log = api["AccessLogSettings"]
    assert log["DestinationArn"] == {"Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]}
    fields = json.loads(log["Format"])  # one JSON object per request
    assert {"requestId", "status", "route", "latencyMs"} <= set(fields)
    for secret_bearing in ("header", "querystring", "authorizer", "body"):
        assert secret_bearing not in log["Format"].lower()
    group = template["Resources"]["ApiAccessLogGroup"]["Properties"]
    assert group["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_alarms_watch_errors_duration_freshness_5xx_and_throttles(template) -> None:
    alarms = resources_of(template, "AWS::CloudWatch::Alarm")
    watched = {
        (a["Properties"].get("Namespace"), a["Properties"].get("MetricName")): name
        for name, a in alarms.items()
    }
    assert {
        ("AWS/Lambda", "Errors"),
        ("AWS/Lambda", "Throttles"),
        ("AWS/ApiGateway", "5xx"),
        ("EventIngest", "event_ingest_freshness_seconds"),
    } <= set(watched)
    assert "ConsumerDurationAlarm" in alarms
    for name, alarm in alarms.items():
        assert notifies_the_topic(alarm["Properties"]), name
        assert alarm["Properties"]["AlarmDescription"], name


def test_the_freshness_alarm_reads_what_the_consumer_emits(template) -> None:
    alarm = template["Resources"]["ArchiveFreshnessAlarm"]["Properties"]
    # A consumer that stopped running emits nothing: no data must page too.
    assert alarm["TreatMissingData"] == "breaching"
    assert alarm["Namespace"] == metrics.EMF_NAMESPACE
    assert alarm["Dimensions"] == [{"Name": "group", "Value": Settings().consumer_group}]
    lines: list[str] = []
    emitter = metrics.EmfEmitter(lines.append, enabled=True)
    # What the consumer function emits: the stream's gauges, from a status with a stale group.
    group = GroupStatus(
        name=Settings().consumer_group, last_delivered_id="0-0", pending=0, undelivered=3,
        undelivered_exact=True, backlog_events=9, backlog_events_exact=True, freshness_s=42.0,
        oldest_pending_s=None, consumers=(),
    )  # fmt: skip
    status = StreamStatus("events", 3, 100_000, "1-0", (group,), 0, "7.0.15")
    emitter.emit(metrics.stream_gauges(status))
    [line] = [json.loads(line) for line in lines if alarm["MetricName"] in line]
    assert line["group"] == "archiver" and line[alarm["MetricName"]] == 42.0
    [directive] = line["_aws"]["CloudWatchMetrics"]
    assert directive["Dimensions"] == [["group"]]


def test_the_compaction_lag_alarm_reads_what_the_compactor_emits(template) -> None:
    alarm = template["Resources"]["CompactionLagAlarm"]["Properties"]
    # A compactor that stopped running, or dies before its end, emits nothing: that pages too.
    assert alarm["TreatMissingData"] == "breaching"
    assert alarm["Namespace"] == metrics.EMF_NAMESPACE
    assert "Dimensions" not in alarm
    assert alarm["Threshold"] == {"Ref": "CompactionLagAlarmSeconds"}
    assert alarm["Period"] >= 900  # an invocation runs up to 15 minutes, then reports
    lines: list[str] = []
    emitter = metrics.EmfEmitter(lines.append, enabled=True)
    # What the compactor function emits at the end of an invocation: its report's gauges.
    report = CompactionReport(
        finished_at="2024-03-07T00:00:00+00:00", scope="closed hours from 2024-02-29T00 to now",
        lag_s=7300.0, oldest_hour="2024-03-06T21", hours_compacted=3, failed=(),
        unreadable_objects=0,
    )  # fmt: skip
    emitter.emit(metrics.compaction_gauges(report))
    [line] = [json.loads(line) for line in lines if alarm["MetricName"] in line]
    assert line[alarm["MetricName"]] == 7300.0
    [directive] = line["_aws"]["CloudWatchMetrics"]
    assert directive["Dimensions"] == [[]]


def test_the_privacy_alarms_read_what_the_privacy_function_emits(template) -> None:
    errors = template["Resources"]["PrivacyErrorsAlarm"]["Properties"]
    assert (errors["Namespace"], errors["MetricName"]) == ("AWS/Lambda", "Errors")
    assert errors["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "PrivacyFunction"}}]
    assert errors["TreatMissingData"] == "notBreaching"  # no run, no failure
    # The schedule's period: one invocation an hour.
    [schedule] = props(template, "PrivacyFunction")["Events"].values()
    assert schedule["Properties"]["Schedule"] == "rate(1 hour)" and errors["Period"] == 3600

    overdue = template["Resources"]["PrivacyDeletionOverdueAlarm"]["Properties"]
    assert overdue["Threshold"] == 7 * 24 * 3600
    assert overdue["ComparisonOperator"] == "GreaterThanThreshold"
    # A privacy function that stopped running deletes nothing and reports nothing: that pages,
    # but only after three hours without a report, not for one run that reported late.
    assert overdue["TreatMissingData"] == "breaching"
    assert overdue["Period"] == 3600 and overdue["DatapointsToAlarm"] == 3
    assert overdue["EvaluationPeriods"] == 3
    assert overdue["Namespace"] == metrics.EMF_NAMESPACE and "Dimensions" not in overdue
    lines: list[str] = []
    emitter = metrics.EmfEmitter(lines.append, enabled=True)
    # What the privacy function emits: a deletion accepted 8 days ago, not finished.
    now = datetime(2024, 3, 9, tzinfo=UTC)
    late = Regulation(
        id="20240301T000000-0a1b2c3d", type="DELETE_ONLY", subject_type="USER_ID",
        subject_ids=["u-1"], subject_hashes=["h"], accepted_at="2024-03-01T00:00:00.000+00:00",
    )  # fmt: skip
    emitter.emit(privacy_app.deletion_gauges([late], 0, now))
    [line] = [json.loads(line) for line in lines if overdue["MetricName"] in line]
    assert line[overdue["MetricName"]] == 8 * 24 * 3600 > overdue["Threshold"]
    [directive] = line["_aws"]["CloudWatchMetrics"]
    assert directive["Dimensions"] == [[]]


# --- log groups --------------------------------------------------------------------------------


def test_each_function_logs_to_a_group_of_its_own_that_the_stack_creates(template) -> None:
    functions = resources_of(template, "AWS::Serverless::Function")
    groups = resources_of(template, "AWS::Logs::LogGroup")
    attached = []
    for name in functions:
        group = name.removesuffix("Function") + "LogGroup"
        config = props(template, name)["LoggingConfig"]
        # Text: JSON would reformat every line the code and EMF print.
        assert config == {"LogGroup": {"Ref": group}, "LogFormat": "Text"}, name
        attached.append(group)
    assert set(attached) <= set(groups) and len(set(attached)) == len(functions)
    for name, group in groups.items():
        # Named by CloudFormation, so nothing Lambda creates first can be in the way.
        assert group["Properties"] == {"RetentionInDays": {"Ref": "LogRetentionDays"}}, name
    # A function that exists only under a condition (the admin function) has its group so too.
    for name, function in functions.items():
        group = template["Resources"][name.removesuffix("Function") + "LogGroup"]
        assert group.get("Condition") == function.get("Condition"), name
    # The role SAM generates (its AWSLambdaBasicExecutionRole) writes to any group: no own role.
    for name in functions:
        assert "Role" not in props(template, name), name


# --- the archive bucket's lifecycle ------------------------------------------------------------


def lifecycle(template: dict[str, Any], **parameters: str) -> dict[str, dict[str, Any]]:
    bucket = deployed(template, props(template, "ArchiveBucket"), **parameters)
    return {rule["Id"]: rule for rule in bucket["LifecycleConfiguration"]["Rules"]}


def test_old_partitions_move_only_to_classes_athena_reads(template) -> None:
    # Athena skips GLACIER and DEEP_ARCHIVE objects, and the archive's tables are always there.
    assert resources_of(template, "AWS::Glue::Table")
    parameter = template["Parameters"]["ArchiveStorageClass"]
    assert parameter["AllowedValues"] == ["STANDARD_IA", "INTELLIGENT_TIERING", "GLACIER_IR"]
    assert parameter["Default"] == "GLACIER_IR"
    # Intelligent-Tiering's archive tiers, which Athena cannot read either, are opt-in.
    assert "IntelligentTieringConfigurations" not in props(template, "ArchiveBucket")
    for storage_class in parameter["AllowedValues"]:
        [transition] = lifecycle(template, ArchiveStorageClass=storage_class)[
            "colder-storage-for-old-partitions"
        ]["Transitions"]
        assert transition == {"StorageClass": storage_class, "TransitionInDays": "30"}


def rule_holds(template: dict[str, Any], name: str, **parameters: str) -> bool:
    rule = template["Rules"][name]
    if not deployed(template, rule["RuleCondition"], **parameters):
        return True
    return all(deployed(template, a["Assert"], **parameters) for a in rule["Assertions"])


def test_cloudformation_refuses_standard_ia_before_30_days(template) -> None:
    rule = "StandardIaAfter30Days"
    for days in range(1, 30):
        assert not rule_holds(
            template, rule, ArchiveStorageClass="STANDARD_IA", ArchiveTransitionDays=str(days)
        ), days
    for days in ("30", "31", "90", "365"):
        assert rule_holds(
            template, rule, ArchiveStorageClass="STANDARD_IA", ArchiveTransitionDays=days
        )
    for storage_class in ("GLACIER_IR", "INTELLIGENT_TIERING"):
        assert rule_holds(
            template, rule, ArchiveStorageClass=storage_class, ArchiveTransitionDays="1"
        )
    assert rule_holds(template, rule, ArchiveStorageClass="STANDARD_IA")  # the default 30 days
    assert rule_holds(template, rule)
    assert template["Rules"][rule]["Assertions"][0]["AssertDescription"]


REDIS_SECRET = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:redis/auth-AbC123"


def test_cloudformation_refuses_a_redis_without_auth_unless_allowed(template) -> None:
    """Evaluated here as CloudFormation does before it changes anything. cfn-lint checks the
    rule's form (an Assert that is not a boolean fails it) but not its outcome: with
    --parameters that break a rule it still reports nothing."""
    rule = "RedisAuthRequired"
    allow = template["Parameters"]["AllowUnauthenticatedRedis"]
    assert allow["Default"] == "false" and set(allow["AllowedValues"]) == {"false", "true"}
    assert template["Parameters"]["RedisAuthSecretArn"]["Default"] == ""
    assert not rule_holds(template, rule)  # the defaults: no secret, not allowed
    assert not rule_holds(template, rule, AllowUnauthenticatedRedis="false")
    assert rule_holds(template, rule, RedisAuthSecretArn=REDIS_SECRET)
    assert rule_holds(template, rule, AllowUnauthenticatedRedis="true")
    assert rule_holds(
        template, rule, RedisAuthSecretArn=REDIS_SECRET, AllowUnauthenticatedRedis="true"
    )
    description = template["Rules"][rule]["Assertions"][0]["AssertDescription"]
    assert "RedisAuthSecretArn" in description and "AllowUnauthenticatedRedis" in description


def test_archive_objects_expire_only_when_asked(template) -> None:
    assert template["Parameters"]["ArchiveExpirationDays"]["Default"] == 0
    for rules in (lifecycle(template), lifecycle(template, ArchiveExpirationDays="0")):
        assert "expire-old-partitions" not in rules
        assert not any(
            "ExpirationInDays" in r and r.get("Prefix") == "events/" for r in rules.values()
        )
    rules = lifecycle(template, ArchiveExpirationDays="400", ArchivePrefix="archive/")
    assert rules["expire-old-partitions"] == {
        "Id": "expire-old-partitions",
        "Status": "Enabled",
        "Prefix": "archive/",
        "ExpirationInDays": "400",
    }
    # Sooner than the transition is valid too: its own rule, where deletion wins over moving.
    assert "ExpirationInDays" not in rules["colder-storage-for-old-partitions"]


def test_dead_letters_expire_after_a_year_unless_kept_and_never_move(template) -> None:
    assert template["Parameters"]["ErrorsExpirationDays"]["Default"] == 365
    rules = lifecycle(template)
    assert rules["expire-dead-letters"] == {
        "Id": "expire-dead-letters",
        "Status": "Enabled",
        "Prefix": ERRORS_PREFIX,
        "ExpirationInDays": "365",
    }
    assert "expire-dead-letters" not in lifecycle(template, ErrorsExpirationDays="0")
    assert (
        lifecycle(template, ErrorsExpirationDays="30")["expire-dead-letters"]["ExpirationInDays"]
        == "30"
    )
    # No transition reaches errors/ (under the default ArchivePrefix).
    assert not any(
        "Transitions" in r and ERRORS_PREFIX.startswith(r.get("Prefix", "")) for r in rules.values()
    )


def test_versioning_is_off_by_default_and_noncurrent_versions_expire_when_on(template) -> None:
    parameter = template["Parameters"]["ArchiveVersioning"]
    assert parameter["AllowedValues"] == ["Disabled", "Enabled", "Suspended"]
    assert parameter["Default"] == "Disabled"
    bucket = deployed(template, props(template, "ArchiveBucket"))
    assert "VersioningConfiguration" not in bucket
    assert "expire-noncurrent-versions" not in lifecycle(template)
    for status in ("Enabled", "Suspended"):
        bucket = deployed(template, props(template, "ArchiveBucket"), ArchiveVersioning=status)
        assert bucket["VersioningConfiguration"] == {"Status": status}
        # The whole bucket: the compactor's deletes and the expirations leave noncurrent versions.
        assert lifecycle(template, ArchiveVersioning=status)["expire-noncurrent-versions"] == {
            "Id": "expire-noncurrent-versions",
            "Status": "Enabled",
            "NoncurrentVersionExpiration": {"NoncurrentDays": 30},
            "ExpiredObjectDeleteMarker": True,
        }


def test_the_lifecycle_parameters_are_asked_with_the_archive(template) -> None:
    groups = template["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
    [archive] = [g for g in groups if g["Label"]["default"] == "Consumer and archive"]
    new = ["ArchiveExpirationDays", "ErrorsExpirationDays", "ArchiveVersioning"]
    assert set(new) <= set(archive["Parameters"]) <= set(template["Parameters"])
