"""Partitions: an event goes under `dt=YYYY-MM-DD/hour=HH/` of its `receivedAt`."""

from __future__ import annotations

from typing import Any

import pytest

from shared.archive import UnarchivableEvent, partition_path
from tests.shared.archive.conftest import event


@pytest.mark.parametrize(
    ("received_at", "expected"),
    [
        ("2024-03-05T14:00:00.000Z", "dt=2024-03-05/hour=14/"),
        ("2024-03-05T14:59:59.999Z", "dt=2024-03-05/hour=14/"),
        ("2024-03-05T15:00:00.000Z", "dt=2024-03-05/hour=15/"),
        ("2024-03-05T00:00:00.000Z", "dt=2024-03-05/hour=00/"),
        ("2024-03-05T23:59:59.999Z", "dt=2024-03-05/hour=23/"),
        ("2024-03-06T00:00:00.000Z", "dt=2024-03-06/hour=00/"),
        ("2024-12-31T23:59:59.999Z", "dt=2024-12-31/hour=23/"),
        ("2025-01-01T00:00:00.000Z", "dt=2025-01-01/hour=00/"),
        ("2024-02-29T09:30:00.000Z", "dt=2024-02-29/hour=09/"),
    ],
)
def test_partition_path_at_hour_boundaries(received_at: str, expected: str) -> None:
    assert partition_path(event(received_at)) == expected


def test_partition_path_uses_received_at_not_client_timestamps() -> None:
    e = event("2024-03-05T14:00:00.000Z", timestamp="1999-01-01T00:00:00.000Z")
    assert partition_path(e) == "dt=2024-03-05/hour=14/"


@pytest.mark.parametrize(
    "received_at",
    [None, "", "2024-03-05", "2024-03-05T1", "20240305T140000Z", 1709647200, ["2024"], {}],
    ids=["none", "empty", "date-only", "short", "basic-format", "epoch", "list", "dict"],
)
def test_partition_path_rejects_bad_received_at(received_at: Any) -> None:
    with pytest.raises(UnarchivableEvent):
        partition_path(event(received_at))


def test_partition_path_rejects_missing_received_at() -> None:
    e = event()
    del e["receivedAt"]
    with pytest.raises(UnarchivableEvent, match="receivedAt"):
        partition_path(e)


def test_unarchivable_event_is_a_value_error() -> None:
    assert issubclass(UnarchivableEvent, ValueError)
