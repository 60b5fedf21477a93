"""The loop runner: `python -m local.runner` emulates the scheduler of the consumer function.

With METRICS_PORT set, it serves the consumer's metrics for Prometheus on that port
(METRICS_ADDR, default 127.0.0.1), where Lambda prints them as EMF lines instead; as the ingest
function's /metrics, only to scrapers with METRICS_TOKEN, or to anyone with METRICS_PUBLIC=true.

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
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from functions.consumer.app import IncompleteDrain, handler
from shared import logs, metrics_access
from shared.settings import ConfigError, Settings

log = logging.getLogger("local.runner")

# As the scheduled Lambda's (rate 1 minute): each invocation ends with a flush. Well below
# CLAIM_IDLE_MS (300 s), though a consumer retrying storage keeps its entries alive anyway.
DEFAULT_BUDGET_S = 60.0
# After a failed invocation, wait this long before the next one, doubling up to RETRY_MAX_S.
DEFAULT_RETRY_S = 1.0
RETRY_MAX_S = 30.0
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


def serve_metrics(port: int, addr: str, token: str | None, public: bool) -> WSGIServer:
    """The consumer's counters (shared.metrics) for Prometheus, on a port of its own, to the
    scrapers shared.metrics_access lets in (prometheus_client's own server asks for nothing),
    from a daemon thread; `shutdown()` stops it."""
    import prometheus_client
    from prometheus_client.exposition import ThreadingWSGIServer

    exposition = prometheus_client.make_wsgi_app()

    def guarded(environ: dict, start_response: Callable) -> Iterable[bytes]:
        refused = metrics_access.refusal(token, public, environ.get("HTTP_AUTHORIZATION"))
        if refused is None:
            return exposition(environ, start_response)
        headers = [("Content-Type", "text/plain; charset=utf-8")]
        if refused.status == 401:
            headers.append(("WWW-Authenticate", "Bearer"))
        start_response(f"{refused.status} {HTTPStatus(refused.status).phrase}", headers)
        return [f"{refused.message}\n".encode()]

    class Server(ThreadingWSGIServer):
        # An IPv6 METRICS_ADDR (::1) needs its own address family, as prometheus_client's has.
        address_family = socket.getaddrinfo(
            addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0][0]

    server = make_server(addr, port, guarded, Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics", addr, port)
    if notice := metrics_access.closed_notice(token, public):
        log.warning(notice)
    return server


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # a line per scrape says nothing


def run(
    budget_s: float, once: bool, stop: threading.Event, retry_s: float = DEFAULT_RETRY_S
) -> None:
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
            stop.wait(min(RETRY_MAX_S, retry_s * 2 ** (failures - 1)))
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
    parser.add_argument(
        "--retry-s",
        type=float,
        default=DEFAULT_RETRY_S,
        help="wait after a failed invocation, doubled after each further one (default: "
        "%(default)s)",
    )
    args = parser.parse_args(argv)
    logs.configure(os.environ.get("LOG_LEVEL", "info"))
    stop = threading.Event()
    install_signal_handlers(stop)
    try:
        if port := os.environ.get("METRICS_PORT", "").strip():
            settings = Settings.from_env()
            address = os.environ.get("METRICS_ADDR", "127.0.0.1")
            serve_metrics(int(port), address, settings.metrics_token, settings.metrics_public)
        run(args.budget_s, args.once, stop, args.retry_s)
    except ConfigError as exc:
        log.error("bad configuration: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
