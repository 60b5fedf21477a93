"""The loop runner: `python -m local.runner` emulates the scheduler of the consumer function.

With METRICS_PORT set, it serves the consumer's metrics for Prometheus on that port
(METRICS_ADDR, default 127.0.0.1), where Lambda prints them as EMF lines instead.

It calls the same `handler` Lambda calls, again and again, each time with a context whose
time budget it controls. SIGINT or SIGTERM ends the budget at once: the handler stops
reading, flushes, acknowledges and returns, and the runner exits. A second signal exits
immediately; nothing is lost either way, since unacknowledged entries stay pending.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time

from functions.consumer.app import IncompleteDrain, handler
from shared import logs
from shared.settings import ConfigError

log = logging.getLogger("local.runner")

# As the scheduled Lambda's (rate 1 minute): each invocation ends with a flush. Well below
# CLAIM_IDLE_MS (300 s), though a consumer retrying storage keeps its entries alive anyway.
DEFAULT_BUDGET_S = 60.0
# After a stop signal, the flush in progress gets this long before the process exits anyway
# (unacknowledged entries stay pending, so this loses nothing).
SHUTDOWN_DEADLINE_S = 30.0


class LoopContext:
    """The part of Lambda's context the consumer reads, with a budget that a stop can cut."""

    def __init__(self, budget_s: float, stop: threading.Event) -> None:
        self.deadline = time.monotonic() + budget_s
        self.stop = stop

    def get_remaining_time_in_millis(self) -> int:
        if self.stop.is_set():
            return 0
        return max(0, int((self.deadline - time.monotonic()) * 1000))


def install_signal_handlers(stop: threading.Event) -> None:
    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            log.warning("second signal: exiting now; unacknowledged entries stay pending")
            sys.exit(1)
        log.info("signal %d: finishing the current invocation, then exiting", signum)
        stop.set()
        deadline = threading.Timer(SHUTDOWN_DEADLINE_S, _exit_now)
        deadline.daemon = True
        deadline.start()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


def _exit_now() -> None:
    log.error(
        "shutdown took over %ss; exiting, unacknowledged entries stay pending", SHUTDOWN_DEADLINE_S
    )
    logging.shutdown()
    os._exit(1)


def serve_metrics(port: int, addr: str) -> None:
    """The consumer's counters (shared.metrics) for Prometheus, on a port of its own."""
    import prometheus_client

    prometheus_client.start_http_server(port, addr)
    log.info("metrics on http://%s:%d/metrics", addr, port)


def run(budget_s: float, once: bool, stop: threading.Event) -> None:
    failures = 0
    while not stop.is_set():
        try:
            summary = handler({}, LoopContext(budget_s, stop))
            failures = 0
            log.info("invocation done %s", json.dumps(summary))
        except ConfigError:
            raise
        except Exception as exc:
            failures += 1
            if isinstance(exc, IncompleteDrain):  # storage was down: said plainly, no traceback
                log.error("invocation failed: %s", exc)
            else:
                log.exception("invocation failed; entries stay pending and are retried")
            stop.wait(min(30.0, 0.5 * 2**failures))
        if once:
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--budget-s",
        type=float,
        default=DEFAULT_BUDGET_S,
        help="time budget of each invocation (default: %(default)s)",
    )
    parser.add_argument("--once", action="store_true", help="run one invocation, then exit")
    args = parser.parse_args(argv)
    logs.configure(os.environ.get("LOG_LEVEL", "info"))
    if port := os.environ.get("METRICS_PORT", "").strip():
        serve_metrics(int(port), os.environ.get("METRICS_ADDR", "127.0.0.1"))
    stop = threading.Event()
    install_signal_handlers(stop)
    try:
        run(args.budget_s, args.once, stop)
    except ConfigError as exc:
        log.error("bad configuration: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
