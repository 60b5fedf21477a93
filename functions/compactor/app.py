"""The compactor function: compact closed hours of the archive for as long as the budget allows.

Lambda calls `handler` on a schedule; `event-ingest compact` runs the same
`shared.archive.compaction` from the command line. The context's
`get_remaining_time_in_millis()` says how long this invocation may run: no step starts in its
last minute (or its last quarter, when shorter), and the hours left, or the one cut short, are
resumed by the next invocation.

Each invocation reports through EMF (nothing scrapes a Lambda function): its counts (hours
compacted and failed, events read and written, objects set aside as unreadable) and the
compaction lag, which CompactionLagAlarm watches. An invocation in which an hour failed ends in
an error once the other hours are done, so that Lambda's Errors metric and CompactorErrorsAlarm
see it.
"""

from __future__ import annotations

import functools
from typing import Any

from shared import metrics
from shared.archive.compaction import Compactor, Summary
from shared.settings import Settings

_emf = metrics.EmfEmitter()


class CompactionFailed(Exception):
    """Hours failed in this invocation, or set unreadable objects aside (each with its reason);
    the others were compacted, and the next invocation tries the failed ones again."""


@functools.cache
def compactor() -> Compactor:
    """One per process, built from the environment at the first call and reused when warm."""
    return Compactor.from_settings(Settings.from_env())


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    summary = compactor().run_scheduled(context.get_remaining_time_in_millis)
    report(summary)
    failures = summary.failures()
    if failures:
        resumed = " (the next run retries them)" if summary.count("failed") else ""
        raise CompactionFailed(
            f"{len(failures)} of {len(summary.hours)} hours failed{resumed}: {'; '.join(failures)}"
        )
    return summary.as_dict()


def report(summary: Summary) -> None:
    """This invocation's counts and the lag, as EMF lines."""
    metrics.count_compaction(summary)
    _emf.emit(metrics.compaction_gauges(summary.report) if summary.report else None)
