"""What a deletion asks of a finder (`Finder`): which objects hold the subjects' events, and
which anonymous IDs the archive links to their userIds.

The interface alone, apart from its two backends: `finder.LocalFinder` (the archive read into
DuckDB, which no Lambda bundle ships) and `athena.AthenaFinder` (AWS). The deletion pass, and so
the privacy function, import this module and neither backend's dependencies.
"""

from __future__ import annotations

from typing import Protocol

from shared.archive.privacy.subjects import Subjects


class Finder(Protocol):
    objects_scanned: int

    def linked(self, user_ids: frozenset[str]) -> set[str]: ...

    def objects(self, subjects: Subjects) -> set[str]: ...

    def close(self) -> None: ...
