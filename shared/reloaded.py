"""A value read from outside the process and re-read while it runs: a secret (shared/secrets.py),
the tracking plan (shared/plans/source.py).

`Reloaded(name, max_age_s, fetch, parse)` reads `parse(fetch(name))` at its first use, whose
errors propagate (a value that cannot be read at start fails the start, naming it), and again
when the value is older than `max_age_s`. A re-read that fails with one of `failures` keeps the
value in use, with a warning: a store's hiccup or a bad new value never turns into refused
requests. One thread re-reads; the others go on with the current value meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Reloaded:
    """`value()`: what `parse` makes of `fetch(name)`, at most `max_age_s` old (or the last
    value that could be read). Warnings name the value as "`what` `name`", never quote it."""

    def __init__(
        self,
        name: str,
        max_age_s: float,
        fetch: Callable[[str], Any],
        parse: Callable[[Any], Any] = str,
        clock: Callable[[], float] = time.monotonic,
        what: str = "value",
        failures: tuple[type[Exception], ...] = (ValueError,),
    ) -> None:
        self.name = name
        self.max_age_s = max_age_s
        self._fetch = fetch
        self._parse = parse
        self._clock = clock
        self._what = what
        self._failures = failures
        self._lock = threading.Lock()
        self._value: Any = None
        self._read_at = 0.0

    def value(self) -> Any:
        value = self._value  # asked for on every request: the common case first, one comparison
        if value is not None and self._clock() - self._read_at < self.max_age_s:
            return value
        if self._value is None:
            with self._lock:  # the first read: everyone waits for it, its errors propagate
                if self._value is None:
                    self._value = self._parse(self._fetch(self.name))
                    self._read_at = self._clock()
            return self._value
        if self._stale() and self._lock.acquire(blocking=False):
            try:  # one thread re-reads; the others go on with the current value meanwhile
                if self._stale():
                    self._refresh()
            finally:
                self._lock.release()
        return self._value

    def _stale(self) -> bool:
        return self._clock() - self._read_at >= self.max_age_s

    def _refresh(self) -> None:
        self._read_at = self._clock()  # failed or not: the next try waits max_age_s
        try:
            self._value = self._parse(self._fetch(self.name))
        except self._failures as exc:  # messages never quote the value
            log.warning("%s %s: %s; keeping the value in use", self._what, self.name, exc)
