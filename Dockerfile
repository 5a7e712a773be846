# syntax=docker/dockerfile:1
# The relay's production image (the default target) and, as target `dashboard`, rq-dashboard with the
# relay's own rq and redis-py versions, so that it reads the relay's JSON-serialized jobs as they are.
#   docker build -t phlo-relay .                                   # relay serve; also relay worker, ...
#   docker build -t phlo-relay-dashboard --target dashboard .

FROM python:3.11-slim AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home relay
WORKDIR /app
COPY pyproject.toml README.md ./
COPY relay ./relay
RUN pip install . && rm -rf build relay.egg-info phlo_relay.egg-info

FROM runtime AS dashboard
# rq-dashboard 0.9.0 imports six without declaring it; pip keeps the rq the relay installed.
RUN pip install rq-dashboard==0.9.0 six==1.17.0
USER relay
EXPOSE 9181
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9181/', timeout=2)"]
# The Redis URL comes from RQ_DASHBOARD_REDIS_URL, so that a password stays out of the process list.
ENTRYPOINT ["rq-dashboard", "--json"]

FROM runtime AS relay
COPY config ./config
# RELAY_METRICS_DIR: the processes of one container share their counters there (it must be writable).
ENV RELAY_HOST=0.0.0.0 \
    RELAY_PORT=8080 \
    RELAY_CONFIG_PATH=/app/config/routes.yaml \
    RELAY_METRICS_DIR=/tmp/relay-metrics
USER relay
EXPOSE 8080
# slim has no curl: Python asks /healthz. Compose gives the worker and sandbox their own checks.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RELAY_PORT', '8080'), timeout=2)"]
CMD ["relay", "serve"]
