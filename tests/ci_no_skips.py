"""A pytest plugin: with CI=true a skipped test fails instead, naming what it missed.

Tests skip, saying why, where a tool they need is missing (Chromium, Node.js, a Python 3.12):
right on a developer's machine, wrong in CI, where a suite skipped whole would let a change
pass untested. `.ci/run` sets CI=true, as CI services do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


def skips_fail() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and skips_fail():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"CI must not skip ({item.nodeid}): {reason}"
