"""The benchmark's in-process measurements (local/bench/in_process.py) post hundreds of
thousands of events a second from one address: the apps they compare must accept every one,
whatever the default rate limits say, or `make bench` stops at its first 429."""

from __future__ import annotations

from local.bench import instrumentation_cost
from shared.settings import Settings

# 50 requests of 100 events, by two apps, in_process.ROUNDS (9) times: 90,000 events from
# 127.0.0.1, past the default address burst (50,000) and what its rate refills in seconds.
REQUESTS, EVENTS = 50, 100


def test_the_metrics_cost_is_measured_past_the_default_rate_limits(settings: Settings) -> None:
    defaults = Settings()
    sent = 2 * 9 * REQUESTS * EVENTS
    assert sent > defaults.rate_limit_address_burst + 5 * defaults.rate_limit_address_events_per_s

    [row] = instrumentation_cost._measure(
        settings.redis_url, settings.stream_key, REQUESTS, sizes=(EVENTS,)
    )

    assert row["events_per_request"] == EVENTS and row["rounds"] == 9
    assert row["on_us"] > 0 and row["off_us"] > 0
