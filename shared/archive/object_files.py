"""The archive's objects as an fsspec filesystem, so that DuckDB reads them itself, lazily,
through the one S3 adapter (`ObjectStore`): a Parquet scan fetches each object's footer, then
only the column chunks the SQL uses, as ranged GETs, and holds no more than it is scanning.

`ObjectFiles(store, listed)` serves exactly the objects of a listing (`reading.ArchivedObject`:
their sizes are known, so nothing is asked of the bucket but their bytes) under
`archive://<key>`. Objects are immutable under their names, so their modification time is
a constant. An object that is gone when read (a compaction replaced it after the listing)
raises FileNotFoundError in DuckDB's read and is remembered in `gone`, so that the caller can
list its partition again. `read` names the objects DuckDB has read from (a query's progress).
`serving(key, body)` serves an object already downloaded whole from memory instead (the held
NDJSON objects, which DuckDB decodes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from shared.archive.reading import ArchivedObject
from shared.archive.storage import ObjectGone, ObjectStore

PROTOCOL = "archive"
_IMMUTABLE = datetime(1970, 1, 1, tzinfo=UTC)


def url(key: str) -> str:
    """The name DuckDB reads the object `key` by."""
    return f"{PROTOCOL}://{key}"


def key_of(name: str) -> str:
    """The object key of a name `url` made (DuckDB's `filename` column)."""
    return name.removeprefix(f"{PROTOCOL}://")


class ObjectFiles(AbstractFileSystem):
    """Read-only: the objects `listed`, nothing else."""

    protocol = PROTOCOL
    cachable = False  # one per query: fsspec must not hand it to another store's reader

    def __init__(self, store: ObjectStore, listed: list[ArchivedObject]) -> None:
        super().__init__()
        self.store = store
        self.sizes = {item.key: item.size for item in listed}
        self.gone: set[str] = set()
        self.read: set[str] = set()  # the objects DuckDB has read from (progress)
        # Objects downloaded whole beforehand, read from memory: `serving` puts one there.
        self._held: dict[str, bytes] = {}

    def info(self, path: str, **_: Any) -> dict[str, Any]:
        key = self._strip_protocol(path)
        if key not in self.sizes:
            raise FileNotFoundError(path)
        return {"name": key, "size": self.sizes[key], "type": "file"}

    def ls(self, path: str, detail: bool = True, **_: Any) -> list[Any]:
        prefix = self._strip_protocol(path)
        found = [self.info(key) for key in sorted(self.sizes) if key.startswith(prefix)]
        return found if detail else [item["name"] for item in found]

    def modified(self, path: str) -> datetime:
        self.info(path)
        return _IMMUTABLE

    def _open(self, path: str, mode: str = "rb", **_: Any) -> ObjectFile:
        if mode != "rb":
            raise PermissionError(f"{path}: the archive is read here, never written")
        key = self._strip_protocol(path)
        return ObjectFile(self, key, mode, size=self.info(key)["size"], cache_type="none")

    @contextlib.contextmanager
    def serving(self, key: str, body: bytes) -> Iterator[str]:
        """The object `key`, downloaded whole as `body`, served from memory while the block
        runs; yields its name for DuckDB."""
        self.sizes[key], self._held[key] = len(body), body
        try:
            yield url(key)
        finally:
            del self.sizes[key], self._held[key]

    def fetch(self, key: str, start: int, end: int) -> bytes:
        """Bytes `start` to `end` (excluded) of the object `key`."""
        if key in self._held:
            return self._held[key][start:end]
        self.read.add(key)
        try:
            return self.store.get(key, (start, end - 1))
        except ObjectGone:
            self.gone.add(key)
            raise FileNotFoundError(key) from None


class ObjectFile(AbstractBufferedFile):
    """One object; each read is one ranged GET of exactly the bytes DuckDB asks for. No
    read-ahead buffer: DuckDB keeps the files of a scan open until it ends, and a buffer per file
    made a query's memory grow with the objects it scanned (10 MB a million compacted events);
    DuckDB buffers what it reads itself."""

    def _fetch_range(self, start: int, end: int) -> bytes:
        if start >= end:
            return b""
        return self.fs.fetch(self.path, start, min(end, self.size))
