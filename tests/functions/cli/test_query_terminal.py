"""`event-ingest query` on a terminal over compacted hours, which DuckDB streams (issue 28): it
shows how many of the objects it has scanned, and Ctrl-C stops it at once, cleanly."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from local.bench import query_memory
from shared.archive import ObjectStore
from shared.settings import Settings
from tests.conftest import settings_env
from tests.functions.cli.terminal import console_script, on_terminal

SCANNING = b"scanning compacted objects: "


@pytest.fixture
def compacted_env(
    settings: Settings, moto_endpoint: str, http_s3: Any, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """60 compacted hours of 1,000 events."""
    monkeypatch.setattr(query_memory, "HOUR_EVENTS", 1_000)
    store = ObjectStore(http_s3, settings.s3_bucket)
    query_memory.write_archive(store, settings.s3_prefix, 60_000)
    return settings_env(dataclasses.replace(settings, s3_endpoint_url=moto_endpoint))


def test_progress_counts_the_objects_scanned(compacted_env: dict[str, str]) -> None:
    text, status = on_terminal([console_script(), "query", query_memory.GROUP_BY], compacted_env)
    assert status == 0, text
    # Drawn before the scan (DuckDB has read one footer to bind the SQL), and at its end.
    assert re.search(f"{SCANNING.decode()}[01]/60", text)
    assert f"{SCANNING.decode()}60/60" in text
    # Erased before the answer: the table starts on a line of its own.
    answer = text[text.rindex(SCANNING.decode()) :]
    assert "\r\x1b[K┌" in answer and "Signed Up" in answer and "12000" in answer


def test_ctrl_c_stops_the_scan_cleanly(compacted_env: dict[str, str]) -> None:
    command = [console_script(), "query", "SELECT count(DISTINCT message_id) FROM events"]
    text, status = on_terminal(command, compacted_env, SCANNING)
    assert status == 1
    assert text.rstrip().endswith("Aborted!")
    assert "Traceback" not in text and "┌" not in text
