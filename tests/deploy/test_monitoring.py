"""The Grafana dashboard and the Prometheus alert rules in monitoring/ use only metrics the
services export: the names are read from real expositions, not from a list kept by hand."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from functions.ingest.app import create_app
from shared.settings import Settings
from shared.status import write_compaction_report
from shared.stream import GroupReader
from tests.shared.status_inputs import A_COMPACTION_REPORT, add_aged

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
METRIC = re.compile(r"\bevent_ingest_[a-z_]+\b")


@pytest.fixture
def exported(settings: Settings, redis_client) -> set[str]:
    """Every sample name the ingest function's /metrics shows (its counters, the stream's
    gauges, and, in this one process, the consumer's counters too) with a group present and a
    compaction report, after one accepted, one invalid and one rate-limited request."""
    add_aged(redis_client, settings.stream_key, 2, age_s=1)
    GroupReader(redis_client, settings.stream_key, "archiver", "c").ensure_group()
    write_compaction_report(redis_client, settings.stream_key, A_COMPACTION_REPORT)
    # One event a second: the first batch passes and leaves its source 9 s in debt.
    limited = dataclasses.replace(
        settings, metrics_public=True, rate_limit_events_per_s=1, rate_limit_burst=1
    )
    client = create_app(limited).test_client()
    event = {"type": "track", "userId": "u", "event": "E"}
    assert client.post("/batch", json={"batch": [event] * 10}).status_code == 202
    # Refusals: labelled series exist once counted.
    assert client.post("/batch", json={"batch": []}).status_code == 400
    assert client.post("/batch", json={"batch": [event]}).status_code == 429
    text = client.get("/metrics").text
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def alert_rules() -> list[dict]:
    document = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_alert_uses_exported_metrics_and_says_what_to_do(exported: set[str]) -> None:
    rules = alert_rules()
    names = {rule["alert"] for rule in rules}
    assert {
        "EventIngestArchiveBehind",
        "EventIngestFlushesFailing",
        "EventIngestRefusingEvents",
        "EventIngestBacklogBytesNearBound",
    } <= names
    for rule in rules:
        used = set(METRIC.findall(rule["expr"]))
        assert used, rule["alert"]
        assert used <= exported, f"{rule['alert']} uses {sorted(used - exported)}"
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    refused = next(r for r in rules if r["alert"] == "EventIngestRefusingEvents")
    for reason in re.search(r'reason=~"([^"]+)"', refused["expr"]).group(1).split("|"):
        assert reason in ("backlog_full", "unavailable", "replication_timeout")


def test_every_dashboard_panel_uses_exported_metrics(exported: set[str]) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    for expr in exprs:
        used = set(METRIC.findall(expr))
        assert used and used <= exported, f"{expr}: {sorted(used - exported)}"
    shown = {name for expr in exprs for name in METRIC.findall(expr)}
    assert "event_ingest_freshness_seconds" in shown and "event_ingest_dead_letters" in shown
    assert {"event_ingest_stream_bytes", "event_ingest_rate_limited_events_total"} <= shown


def test_every_scrape_sends_a_bearer_token_kept_out_of_the_config() -> None:
    """/metrics is closed without METRICS_TOKEN (tests/abuse/test_metrics_access.py): the
    sample configuration scrapes both servers with it, and loads the rules beside it."""
    config = yaml.safe_load((MONITORING / "prometheus.yaml").read_text())
    assert [(MONITORING / name).is_file() for name in config["rule_files"]] == [True]
    jobs = config["scrape_configs"]
    assert {job["job_name"] for job in jobs} == {"event-ingest", "event-ingest-consumer"}
    for job in jobs:
        authorization = job["authorization"]
        assert authorization.get("type", "Bearer") == "Bearer", job["job_name"]
        assert set(authorization) <= {"type", "credentials_file"}, job["job_name"]
        assert authorization["credentials_file"].startswith("/"), job["job_name"]
