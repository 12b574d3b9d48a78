# FitSync Hub: one node. `docker compose up` runs several behind nginx (docker-compose.yml).
#
# Three stages keep the image small: the web app's browser packages are installed with npm in
# one, the Python packages into a virtualenv in another, and the last copies only those two
# results onto a slim Python base (no compilers, no npm, no pip cache), to run as a non-root
# user.

FROM node:22-slim AS web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund

FROM python:3.11-slim AS python
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /venv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY hub hub
COPY channels channels
COPY models models
COPY simulator simulator
# Editable: the hub serves the web app from /app/web, next to the packages it runs from.
RUN /venv/bin/pip install -e .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home fitsync
COPY --from=python /venv /venv
COPY --from=python --chown=fitsync:fitsync /app /app
COPY web /app/web
COPY --from=web /web/node_modules /app/web/node_modules
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HUB_HOST=0.0.0.0 \
    HUB_PORT=8000 \
    HUB_LOG_FORMAT=json
WORKDIR /app
USER fitsync
EXPOSE 8000
# Liveness only: /readyz (database and broker reachable, not draining) is for the load balancer.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HUB_PORT', '8000'), timeout=2)"]
# SIGTERM starts the graceful drain; compose's stop_grace_period must outlast HUB_SHUTDOWN_TIMEOUT.
STOPSIGNAL SIGTERM
CMD ["fitsync-hub", "serve"]
