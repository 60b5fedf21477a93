"""How staged events become an object's bytes: one module per format, one small interface.

A format is a module of this package, named as `ARCHIVE_FORMAT` names it, with:

- `SUFFIX`: how its object keys end (`.ndjson.gz`, `.parquet`); readers tell formats apart by it;
- `CONTENT_TYPE`: the objects' `Content-Type` in storage;
- `stage(events) -> (staged, nbytes)`: called once per stream entry (and partition) when the
  entry is read, so that an event the format cannot hold fails there, alone, and is
  dead-lettered, never at flush time with the rest of the buffer. `nbytes` is what
  `FLUSH_MAX_BYTES` is compared with: the events' uncompressed size as the format stages
  them (NDJSON's lines; Parquet's text of the same values, about as large, or for events it
  gathers as Python values, their NDJSON size), so that the hint bounds the buffer's memory;
- `encode(staged_list, level) -> bytes`: one object's body from what `stage` returned for its
  entries, in order. The same list always gives the same bytes, so a retried flush overwrites
  its object with the same content. `level` is the compression level (`GZIP_LEVEL`, 1 to 9).

A third format is one new module here, plus its name in `settings.ARCHIVE_FORMATS`, its root in
`naming.RAW_ROOTS` and its suffix in `reading`. A module is imported only when chosen: an NDJSON
consumer never loads pyarrow.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Any, Protocol


class Format(Protocol):
    SUFFIX: str
    CONTENT_TYPE: str

    def stage(self, events: list[dict[str, Any]]) -> tuple[Any, int]: ...

    def encode(self, staged: list[Any], level: int) -> bytes: ...


@functools.cache
def named(name: str) -> Format:
    """The format module called `name` (`ndjson`, `parquet`)."""
    if not name.isidentifier():
        raise ValueError(f"no archive format named {name!r}")
    module_name = f"{__name__}.{name}"
    try:
        module: ModuleType = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # the format exists, but something it needs is not installed
        raise ValueError(f"no archive format named {name!r}") from None
    return module  # type: ignore[return-value]
