"""The benchmark's Lambda handler measurement (local/bench/lambda_handler_cost.py) invokes the
deployed entry point with API Gateway events it accepts, as on Lambda, in a child process."""

from __future__ import annotations

from local.bench import lambda_handler_cost, report
from shared.settings import Settings


def test_each_load_is_invoked_and_accepted_through_the_deployed_handler(settings: Settings) -> None:
    """The child asserts every answer is 200 or 202: an event API Gateway would not send, or
    one the app refused, fails the measurement (and this test) instead of timing an error."""
    rows = lambda_handler_cost.measure(settings.redis_url, settings.stream_key, 5)

    assert [row["events_per_request"] for row in rows] == [100, 1]
    for row in rows:
        assert row["requests"] == 5 and row["rounds"] == 9
        assert row["duration_us"] > 0
        assert row["per_event_us"] == round(row["duration_us"] / row["events_per_request"], 2)
        assert f"{row['events_per_request']:>3} event(s) an invocation" in (
            report.lambda_handler_line(row)
        )


def test_the_function_runs_as_on_lambda_with_limits_it_never_reaches() -> None:
    env = lambda_handler_cost.function_environment("redis://localhost:1", "key")
    settings = Settings.from_env(env)

    assert "AWS_LAMBDA_FUNCTION_NAME" in env  # counts leave as EMF lines, as deployed
    assert settings.metrics_enabled and settings.write_keys
    assert settings.rate_limit_events_per_s >= 10**9
    assert settings.rate_limit_address_events_per_s >= 10**9
