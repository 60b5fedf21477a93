# syntax=docker/dockerfile:1
# One image for both functions, with the code, dependencies and environment variables of the
# Lambda build:
#   ingest (the default command)  gunicorn -c local/gunicorn.conf.py functions.ingest.app:app
#   consumer                      python -m local.runner
# local/compose.yaml runs both next to Redis and MinIO (`make up`).
FROM python:3.12-slim

WORKDIR /app
# The runtime lock only (the functions' dependencies and the WSGI server, with hashes): no tool
# of the test suite reaches the image.
COPY functions/requirements.txt functions/requirements.txt
RUN pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
        --require-hashes -r functions/requirements.txt

COPY shared/ shared/
COPY functions/ functions/
COPY local/__init__.py local/gunicorn.conf.py local/gevent_redis.py local/gevent_appends.py local/server_limits.py local/runner.py local/
RUN python -m compileall -q shared functions local \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app

USER 10001
# Every interface: /metrics is then refused (403) until METRICS_TOKEN is set, and the
# settings document is not publicly cacheable until PUBLIC_URL is.
ENV BIND=0.0.0.0:8000
EXPOSE 8000
# The ingest function's liveness: /livez answers while the server does, whatever Redis's
# state, so that a full or unreachable Redis never gets every replica restarted (load
# balancers ask /readyz instead). The consumer has no HTTP port: local/compose.yaml gives it a
# check of its own.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['BIND'].rpartition(':')[2] + '/livez', timeout=2)"]
CMD ["gunicorn", "-c", "local/gunicorn.conf.py", "functions.ingest.app:app"]
