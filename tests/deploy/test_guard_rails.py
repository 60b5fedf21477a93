"""The template's guard rails: failed scheduled runs are not retried and are reported, the
consumer keeps reserved concurrency, the API throttles and logs, and alarms watch what pages
someone (issue 15)."""

from __future__ import annotations

import json
from typing import Any

from shared import metrics
from shared.settings import Settings
from tests.deploy.test_template import props

SCHEDULED = ("ConsumerFunction", "CompactorFunction")


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


def test_the_consumer_keeps_its_concurrency(template) -> None:
    reserved = props(template, "ConsumerFunction")["ReservedConcurrentExecutions"]
    assert reserved == {"Ref": "ConsumerReservedConcurrency"}
    assert template["Parameters"]["ConsumerReservedConcurrency"]["MinValue"] >= 1


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
    family = metrics.GaugeMetricFamily(alarm["MetricName"], "", labels=["group"])
    family.add_metric([Settings().consumer_group], 42.0)
    emitter.emit(iter([family]))
    [line] = [json.loads(line) for line in lines if alarm["MetricName"] in line]
    assert line["group"] == "archiver" and line[alarm["MetricName"]] == 42.0
    [directive] = line["_aws"]["CloudWatchMetrics"]
    assert directive["Dimensions"] == [["group"]]
