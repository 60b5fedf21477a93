"""The consumer function's handler: an invocation that could not archive what it read is an
error (Lambda counts it), and leaves its entries pending."""

from __future__ import annotations

import pytest

from functions.consumer import app
from tests.conftest import pending_count
from tests.functions.consumer.drains import Budget, break_storage, make_drainer, post


class Context:
    """Lambda's: the time left counts down from the budget."""

    def __init__(self, budget_ms: int) -> None:
        self.remaining = Budget(budget_ms / 1000)

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining()


def test_storage_down_through_the_budget_is_an_error_and_loses_nothing(
    settings, s3, redis_client, monkeypatch
):
    post(settings, redis_client, 3)
    drainer = make_drainer(settings, s3)
    restore = break_storage(drainer)
    monkeypatch.setattr(app, "drainer", lambda: drainer)
    with pytest.raises(app.IncompleteDrain, match="3 entries could not be archived"):
        app.handler({}, Context(400))
    assert pending_count(redis_client, settings) == 3
    restore()
    summary = app.handler({}, Context(1500))
    assert summary["events_archived"] == 9 and summary["unflushed_entries"] == 0
