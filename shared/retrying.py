"""How the product retries, on tenacity: the few policies its loops share, each a `Retrying`.

- `within_budget`: capped, jittered, doubling waits while a call fails, for as long as a time
  budget allows (the consumer storing a flush while object storage is down);
- `while_full`: a fixed wait for as long as a stream refuses (replay never drops an event);
- `relisting`: a few tries of a read whose listing went stale (compaction merged and removed an
  object meanwhile), listing again before each.

Each takes the `sleep` to wait with, so a test waits on nothing.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    wait_fixed,
)

Errors = type[BaseException] | tuple[type[BaseException], ...]
Hook = Callable[[RetryCallState], None]


def within_budget(
    errors: Errors,
    *,
    first_s: float,
    max_s: float,
    remaining_ms: Callable[[], int],
    keep_ms: float,
    after_failure: Hook | None = None,
    before_sleep: Hook | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Retrying:
    """Retry on `errors`, waiting `first_s`, then twice as long each time up to `max_s` (each
    wait jittered to half to whole, so that consumers do not retry in step); stop, raising
    tenacity's RetryError, when a wait would leave less than `keep_ms` of `remaining_ms()`.
    `after_failure` sees every failed attempt, the last one too."""

    def wait(state: RetryCallState) -> float:
        doublings = min(state.attempt_number - 1, 64)  # capped long before a float overflows
        return min(first_s * 2**doublings, max_s) * random.uniform(0.5, 1.0)

    def out_of_time(state: RetryCallState) -> bool:
        return remaining_ms() - keep_ms < (state.upcoming_sleep or 0) * 1000

    return Retrying(
        retry=retry_if_exception_type(errors),
        wait=wait,
        stop=out_of_time,
        after=after_failure,
        before_sleep=before_sleep,
        sleep=sleep,
    )


def while_full(
    errors: Errors,
    *,
    wait_s: float,
    before_sleep: Hook | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Retrying:
    """Retry on `errors` every `wait_s`, for as long as they last."""
    return Retrying(
        retry=retry_if_exception_type(errors),
        wait=wait_fixed(wait_s),
        stop=stop_never,
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )


def relisting(errors: Errors, *, attempts: int) -> Retrying:
    """Try up to `attempts` times while `errors` say the listing went stale, without waiting
    (the next listing is the remedy); then tenacity's RetryError."""
    return Retrying(retry=retry_if_exception_type(errors), stop=stop_after_attempt(attempts))
