"""Python's cyclic garbage collector, paused while decoding makes many containers at once.

Neither side of `shared/`: ingest pauses it to decode a request's JSON, the consumer to decode
and stage a read's stream entries.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused() -> Iterator[None]:
    """No cyclic garbage collection meanwhile. Decoding makes only new, acyclic containers,
    yet every 700 of them start a collection, and the older generations' collections walk
    them all again: 1 MiB of `[[]]` decodes in 160 ms with the collector, 55 ms without (as
    msgpack-python advises for large messages), and a consumer drains gzip NDJSON about 1.4x
    as fast. Whatever is paused must be bounded: what it allocates is not collected until it
    ends (cycles only; reference counting frees the rest as always)."""
    if not gc.isenabled():  # paused by a caller: leave it to them
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
