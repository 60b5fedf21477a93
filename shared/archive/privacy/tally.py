"""What a deletion pass did, summed over the places it went through; it becomes the
regulations' `progress` (and `undecodable`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Tally:
    objects_scanned: int = 0
    objects_rewritten: int = 0
    objects_removed: int = 0  # emptied: every event in them was a subject's
    events_deleted: int = 0
    shared_devices_kept: int = 0  # events of a linked anonymous ID under another userId
    dead_letters_rewritten: int = 0
    versions_deleted: int = 0
    # Keys (or dead-letter IDs) that may hold a subject but cannot be decoded: for a person.
    undecodable: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> Tally:
        for name, value in vars(other).items():
            if isinstance(value, list):
                getattr(self, name).extend(value)
            else:
                setattr(self, name, getattr(self, name) + value)
        return self

    def progress(self) -> dict[str, int]:
        return {name: value for name, value in vars(self).items() if isinstance(value, int)}
