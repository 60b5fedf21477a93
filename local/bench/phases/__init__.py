"""The phases of `make bench`, one module each, in the order a full run takes them.

Each module has `NEEDS`, what of the stack it needs started before it (`"redis"`, the stack's
Redis; `"s3"`, moto's S3 server and the bucket), and `run(bench)`, which measures, prints a
line per measurement and returns its section of the report (the keys of the results it
fills). A phase starts and stops its own HTTP servers and consumers; a phase that can reuse
servers an earlier one left running (`rate` after `ingest`) starts them when they are not.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from types import ModuleType

# In a full run's order. A phase's module is `local.bench.phases.<name with _ for ->`, imported
# only when the phase runs, so that one phase alone needs none of the others' libraries.
PHASES = (
    "ingest",
    "lambda-handler",
    "rate",
    "memory",
    "drain",
    "crowd",
    "archive",
    "compaction",
    "replication",
    "metrics",
    "cluster",
    "rate-limits",
    "enrichment",
    "plans",
    "privacy",
)


def module(name: str) -> ModuleType:
    """The module of phase `name` (one of `PHASES`)."""
    return importlib.import_module(f"{__name__}.{name.replace('-', '_')}")


def parse_names(values: Iterable[str]) -> list[str]:
    """Phase names given repeatedly or comma-separated, checked; ValueError names the known."""
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in PHASES]
    if unknown:
        raise ValueError(
            f"unknown phase {', '.join(map(repr, unknown))}; known phases: {', '.join(PHASES)}"
        )
    return names


def select(only: Iterable[str], skip: Iterable[str]) -> list[str]:
    """The phases to run, in a full run's order: those of `only` (all when empty) not in
    `skip`."""
    chosen, skipped = set(only), set(skip)
    return [name for name in PHASES if (not chosen or name in chosen) and name not in skipped]


def needs(names: Iterable[str]) -> frozenset[str]:
    """What of the stack the phases `names` need started."""
    return frozenset().union(*(module(name).NEEDS for name in names))
