"""Python's cyclic garbage collector, paused while decoding makes many containers at once.

Neither side of `shared/`: ingest pauses it to decode a request's JSON, the consumer to decode
and stage each stream entry.
"""

from __future__ import annotations

import gc


class paused:
    """No cyclic garbage collection within. Decoding makes only new, acyclic containers, yet
    every 700 of them start a collection, and the older generations' collections walk them all
    again: 1 MiB of `[[]]` decodes in 160 ms with the collector, 55 ms without (as
    msgpack-python advises for large messages), and a consumer drains gzip NDJSON about 1.3x
    as fast. The collector is the process's: other threads run without it meanwhile, so pause
    it around decoding only, never around I/O. A pause within a pause (or another thread's)
    leaves it to the outer one. A class, not a generator: the consumer pauses once per entry."""

    __slots__ = ("_resume",)

    def __enter__(self) -> None:
        self._resume = gc.isenabled()
        if self._resume:
            gc.disable()

    def __exit__(self, *_: object) -> None:
        if self._resume:
            gc.enable()
