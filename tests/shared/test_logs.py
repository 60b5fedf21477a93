"""LOG_FORMAT=json: the formatter alone, then a real gunicorn's whole output."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
import time

import urllib3

from local import stack
from local.bench.procs import output_to
from shared.logs import JsonFormatter
from tests.conftest import free_port, settings_env, wait_until


def test_a_record_becomes_one_json_object_with_its_extra_fields() -> None:
    record = logging.LogRecord(
        "event_ingest.access", logging.INFO, "f.py", 1, "%s %d", ("POST", 202), None
    )
    record.route, record.events = "/batch", 3
    document = json.loads(JsonFormatter().format(record))
    assert document["message"] == "POST 202" and document["level"] == "info"
    assert document["logger"] == "event_ingest.access"
    assert (document["route"], document["events"]) == ("/batch", 3)
    assert document["time"].endswith("+00:00")
    assert "args" not in document and "msg" not in document


def test_an_exception_is_inside_its_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, "f.py", 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exception"]


def test_gunicorn_logs_only_json_lines_with_access_fields_and_no_secrets(settings, tmp_path):
    keyed = dataclasses.replace(settings, write_keys=(("web", "wk-very-secret"),))
    port = free_port()
    env = settings_env(keyed, WEB_CONCURRENCY="1", LOG_FORMAT="json", LOG_LEVEL="debug")
    log_path = tmp_path / "gunicorn.log"
    with output_to(log_path):
        process = stack.start_gunicorn(env, f"127.0.0.1:{port}")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url), what="gunicorn")
        body = {
            "batch": [
                {
                    "type": "track",
                    "userId": "u",
                    "event": "E",
                    "properties": {"card": "4111-private"},
                }
            ]
        }
        headers = urllib3.make_headers(basic_auth="wk-very-secret:")
        answer = urllib3.request("POST", f"{url}/batch", json=body, headers=headers)
        assert answer.status == 202
        assert urllib3.request("POST", f"{url}/batch", body=b"{", headers=headers).status == 400
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    time.sleep(0.1)
    text = log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # all JSON
    access = [line for line in lines if line["logger"] == "event_ingest.access"]
    accepted = next(line for line in access if line["status"] == 202)
    assert (accepted["route"], accepted["events"], accepted["source"]) == ("/batch", 1, "web")
    assert accepted["duration_ms"] >= 0 and len(accepted["request_id"]) == 32
    refused = next(line for line in access if line["status"] == 400)
    assert refused["error"] == "invalid_request"
    assert any(line["logger"] == "gunicorn.error" for line in lines)  # gunicorn's own, as JSON
    assert "wk-very-secret" not in text and "4111-private" not in text


def _answers(url: str) -> bool:
    try:
        return urllib3.request("GET", f"{url}/livez", retries=False, timeout=1).status == 200
    except urllib3.exceptions.HTTPError:
        return False
