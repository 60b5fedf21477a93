"""gunicorn settings for the ingest function: `gunicorn -c local/gunicorn.conf.py
functions.ingest.app:app`. BIND, WEB_CONCURRENCY and the GUNICORN_* variables override them.

Clients connect directly (no buffering proxy in front): browsers and SDKs keep connections
alive between events, load balancers hold pools of them, and mobile clients send slowly. So each
worker is a gevent worker: one greenlet per connection, thousands per worker, an idle or slow
connection costing a socket and a few KB, never a thread another client waits for. Every client
is bounded: headers within `keepalive` seconds, the body within GUNICORN_BODY_TIMEOUT, idle
keep-alive connections closed after `keepalive`; past `worker_connections` a worker accepts no
more and new connections wait in the listen backlog (`backlog`), then are refused by the kernel.
"""

import multiprocessing
import os
import tempfile
from pathlib import Path

from local.gevent_redis import check_connections_at_once
from local.server_limits import BodyDeadline, raise_open_files_limit
from shared.logs import json_wanted

bind = os.environ.get("BIND", "127.0.0.1:8000")
# Request handling is CPU-bound Python with one short Redis round trip: a process per core.
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
worker_class = "gevent"
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "4096"))
backlog = 2048
# The gevent worker times every read of a request's headers with this too: a client that has
# not sent its headers within `keepalive` seconds (slowloris) is disconnected, like an idle one.
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
body_timeout_s = float(os.environ.get("GUNICORN_BODY_TIMEOUT", "10"))
# On SIGTERM, finish in-flight requests (each is at most one XADD) before exiting.
graceful_timeout = 10
timeout = 30
accesslog = None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
if json_wanted():
    # gunicorn's own lines (start, worker exits) as JSON too, in the app's format.
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "shared.logs.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": loglevel.upper(), "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {
                "level": loglevel.upper(),
                "handlers": ["stderr"],
                "propagate": False,
            }
        },
    }
# gunicorn's control socket lives in $HOME and would clash between instances; nothing uses it.
control_socket_disable = True


# Every worker records its metrics into files here, and /metrics on any worker adds them up.
# Set before a worker imports prometheus_client, which reads it once.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="event-ingest-metrics-"))


def on_starting(server):
    """Each connection is a file descriptor: make room for every worker's connections. The
    metrics start from zero with each server: what an earlier one left is removed."""
    raise_open_files_limit(worker_connections + 1024)
    metrics_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in metrics_dir.glob("*.db"):
        stale.unlink()


def child_exit(server, worker):
    """A worker that exited: its counters keep counting in the sums, its gauges go."""
    from shared.metrics import mark_process_dead

    mark_process_dead(worker.pid)


def post_fork(server, worker):
    """Give the app's own log lines (warnings, request ids of 500s, access lines at debug) a
    handler, in the format LOG_FORMAT asks for."""
    from shared import logs

    logs.configure(loglevel)


def post_worker_init(worker):
    # The deadline is kept by gevent's timers: under another worker class (the benchmark's
    # gthread comparison) there is none to keep. Likewise, only gevent makes redis-py's pool
    # check slow (local/gevent_redis.py), and only greenlets share a round trip to Redis
    # (local/gevent_appends.py).
    if worker.cfg.worker_class_str == "gevent":
        worker.wsgi = BodyDeadline(worker.wsgi, body_timeout_s)
        if not check_connections_at_once():
            worker.log.warning("redis-py's connection check stays gevent's: it changed")
        # Imported here: it imports redis-py, which gevent must patch first (the worker does).
        from local.gevent_appends import group_appends

        group_appends()
