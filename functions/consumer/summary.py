"""What a drain did: the tallies one invocation returns (and reports as metrics through
`metrics.ConsumerCounters`), per shard and in total. Plain data: touches nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Summary:
    consumer: str
    entries_read: int = 0
    events_archived: int = 0
    objects_written: int = 0
    entries_claimed: int = 0
    entries_dead_lettered: int = 0
    consumers_removed: int = 0
    store_failures: int = 0
    unflushed_entries: int = 0
    bytes_written: int = 0
    events_dropped_privacy: int = 0  # a privacy regulation covers their subject

    def as_dict(self) -> dict[str, int | str]:
        return asdict(self)

    @classmethod
    def total(cls, summaries: list[Summary]) -> Summary:
        """One invocation's tallies over every shard it drained."""
        total = cls(consumer=summaries[0].consumer)
        for summary in summaries:
            for name, value in asdict(summary).items():
                if isinstance(value, int):
                    setattr(total, name, getattr(total, name) + value)
        return total
