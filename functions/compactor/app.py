"""The compactor function: compact closed hours of the archive for as long as the budget allows.

Lambda calls `handler` on a schedule; `event-ingest compact` runs the same `shared.compaction`
from the command line. The context's `get_remaining_time_in_millis()` says how long this
invocation may run: no step starts in its last minute (or its last quarter, when shorter), and
the hours left, or the one cut short, are resumed by the next invocation.
"""

from __future__ import annotations

import functools
from typing import Any

from shared.compaction import Compactor
from shared.settings import Settings


@functools.cache
def compactor() -> Compactor:
    """One per process, built from the environment at the first call and reused when warm."""
    return Compactor.from_settings(Settings.from_env())


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return compactor().run_scheduled(context.get_remaining_time_in_millis).as_dict()
