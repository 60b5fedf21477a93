"""The consumer function: drain the stream into the archive for as long as the budget allows.

Lambda calls `handler` on a schedule; `python -m local.runner` calls it in a loop. Both pass a
context whose `get_remaining_time_in_millis()` says how long this invocation may run.
"""

from __future__ import annotations

import functools
from typing import Any

from functions.consumer.drain import Drainer
from shared.settings import Settings


@functools.cache
def drainer() -> Drainer:
    """One per process, built from the environment at the first call and reused when warm."""
    return Drainer.from_settings(Settings.from_env())


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return drainer().drain(context.get_remaining_time_in_millis).as_dict()
