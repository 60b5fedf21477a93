"""gunicorn settings for the ingest function: `gunicorn -c local/gunicorn.conf.py
functions.ingest.app:app`. BIND and WEB_CONCURRENCY override the defaults."""

import multiprocessing
import os

bind = os.environ.get("BIND", "127.0.0.1:8000")
# Request handling is CPU-bound Python with one short Redis round trip: a process per core,
# a few threads each to overlap that round trip and keep client connections alive.
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
# A keep-alive connection stays with the worker that accepted it, and an idle worker is not
# woken first: left uncapped, one worker can take every connection of a few busy clients (a
# load balancer, a load generator) while the others idle, halving throughput. Capping the
# connections a worker holds sends the rest to the other workers. Clients beyond
# workers x cap wait in the listen backlog, so raise it with many concurrent clients.
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", str(2 * threads)))
keepalive = 5
# On SIGTERM, finish in-flight requests (each is at most one XADD) before exiting.
graceful_timeout = 10
timeout = 30
accesslog = None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# gunicorn's control socket lives in $HOME and would clash between instances; nothing uses it.
control_socket_disable = True


def post_fork(server, worker):
    """Give the app's own log lines (warnings, request ids of 500s) a handler and timestamps."""
    import logging

    logging.basicConfig(
        level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
