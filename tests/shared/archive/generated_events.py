"""Hypothesis strategies for events of every shape the archive's column mapping must handle
(`columns.to_rows`, and the mappings checked against it): IDs as integers and empty strings,
timestamps of every shape and none, fields beyond the known ones, the `context` the derived
columns read."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st

from shared.archive import columns

# What the archive can hold: the events come from MsgPack, whose integers are 64-bit (ingest
# refuses others).
integers = st.integers(-(2**63), 2**64 - 1)


def event_strategy(every_shape: bool = False, plain: bool = False) -> st.SearchStrategy[dict]:
    """Events as the consumer decodes them from a stream entry. With `every_shape`, also a
    fraction where text belongs, an object as a timestamp, and bytes (MsgPack has them, JSON
    has not: only an entry written by something else than ingest can hold them). `plain`
    events hold only strings or nothing where a column reads text or a timestamp, a boolean or
    nothing as `context.bot`, and an object or nothing as `context` and the parts the derived
    columns read (what `columns.to_columns` stages for Arrow's JSON reader), anything where
    nothing is read but JSON."""
    # Beyond JSON, what a MsgPack entry can carry: bytes, dates (its timestamps), NaN and the
    # infinities, maps with integer keys (`1` beside `"1"` in one map).
    msgpack_only = [
        st.binary(max_size=4),
        st.datetimes(timezones=st.just(UTC)),
        st.sampled_from([math.nan, math.inf, -math.inf]),
    ]
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        integers,
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=12),
        *(msgpack_only if every_shape else []),
    )
    keys = (
        st.one_of(st.text(max_size=6), st.integers(-2, 2)) if every_shape else st.text(max_size=6)
    )
    json_values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
        max_leaves=8,
    )
    # A JSON field whose whole value is NaN or an infinity reads as NULL, as in NDJSON, where
    # the mapping of the release before wrote the text `null` (tests/.../test_columns.py).
    fields = json_values.filter(lambda value: not _not_finite(value))
    wider = [scalars] if every_shape else []
    ids = st.one_of(st.none(), st.just(""), st.text(max_size=12), integers, *wider)
    names = st.one_of(st.none(), st.text(max_size=12), integers, st.booleans(), *wider)
    instants = st.datetimes(
        min_value=datetime(1000, 1, 1), timezones=st.one_of(st.none(), st.timezones())
    )
    timestamps = st.one_of(
        st.none(),
        instants.map(lambda moment: moment.isoformat()),
        instants.map(lambda moment: moment.isoformat(sep=" ", timespec="milliseconds")),
        instants.map(lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")),
        st.sampled_from(
            [
                "2024-05-01T12:00:00.000Z",
                "2024-05-01",
                "2024-13-01T00:00:00Z",
                "2024-01-01T24:00:00Z",
                "2024-02-30T00:00:00Z",
                "2024-05-01T11:59:60Z",
                "0001-01-01T00:00:00+01:00",
                "9999-12-31T23:00:00-05:00",
                "20240501T120000Z",
                "2024-05-01T12:00:00.1234567Z",
                "not a time",
                "",
            ]
        ),
        integers,
        st.booleans(),
        st.lists(integers, max_size=2),
        *([st.dictionaries(st.text(max_size=3), scalars, max_size=2)] if every_shape else []),
    )
    if plain:
        ids = names = st.one_of(st.none(), st.just(""), st.text(max_size=12))
        timestamps = st.one_of(
            st.none(), st.text(max_size=12), timestamps.filter(lambda value: isinstance(value, str))
        )
    places = st.dictionaries(
        st.sampled_from(["country", "countryCode", "region", "city", "latitude"]),
        names if plain else names | json_values,
    )
    agents = st.dictionaries(st.sampled_from(["browser", "os", "device", "browserVersion"]), names)
    parts = {
        "location": places if plain else places | json_values,
        "parsedUserAgent": agents if plain else agents | json_values,
        "bot": st.sampled_from([True, False, None] if plain else [True, False, 1, "true", None]),
        "library": json_values,
    }
    contexts = st.one_of(
        st.none() if plain else fields,
        st.fixed_dictionaries({}, optional=parts),
    )
    extra_keys = st.text(min_size=1, max_size=8).filter(lambda key: key not in columns._KNOWN)
    return st.fixed_dictionaries(
        {},
        optional={
            **{field: ids for field in ("messageId", "userId", "anonymousId", "groupId")},
            "previousId": ids,
            **{field: names for field in ("type", "event", "name", "source")},
            **{field: timestamps for field in columns.TIME_FIELDS.values()},
            **{field: fields for field in ("properties", "traits", "integrations")},
            "context": contexts,
        },
    ).flatmap(
        lambda event: st.dictionaries(extra_keys, json_values, max_size=3).map(
            lambda extra: {**event, **extra}
        )
    )


def _not_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)
