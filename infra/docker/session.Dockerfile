# syntax=docker/dockerfile:1.7
# Tether session service (WebSocket + HTTP, and the browser client / demo page).  Build
# from the repository root (the build context):
#
#   docker build -f infra/docker/session.Dockerfile -t tether/session:dev .
#
# The build context is filtered by infra/docker/session.Dockerfile.dockerignore (BuildKit
# reads the ignore file named after the Dockerfile): only tether-kit, this service, its
# contract and the browser client are sent.  All configuration comes from the environment
# at run time (see services/session/src/tether_session/config.py); no secret is baked in.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install tether-kit + the service into a self-contained virtualenv -------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY libs/tether-kit/ libs/tether-kit/
COPY services/session/ services/session/
# Both in one pip call, so the service's "tether-kit" requirement resolves to the local copy.
RUN pip install ./libs/tether-kit ./services/session \
 && python -m compileall -q /opt/venv/lib

# --- runtime: the virtualenv, the contract, the browser client, a non-root user -----------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 tether \
 && useradd --system --uid 10001 --gid tether --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin tether
COPY --from=build /opt/venv /opt/venv
# The session contract: OpenAPI, the frame schemas and the close-code catalogue.
COPY contracts/session/ /app/contracts/session/
# The browser client and the demo page, served at / and /tether.js (tests are left out).
COPY clients/js/ /app/web/
# The package is installed (not run from the source tree), so the contract and the web
# root are given explicitly instead of being found by walking up to the repository.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TETHER_SESSION_CONTRACT=/app/contracts/session/openapi.json \
    TETHER_WEB_ROOT=/app/web \
    TETHER_SESSION_HOST=0.0.0.0 \
    TETHER_SESSION_PORT=8002
WORKDIR /app
USER 10001:10001
EXPOSE 8002
# "healthy" = ready to serve (/readyz: database, migrations, LISTEN connection, auth-token
# reachable, not draining).  Orchestrators use their own probes; this one is for plain
# `docker run` and `docker ps`.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('TETHER_SESSION_PORT', '8002'), timeout=2)"]
# SIGTERM starts Tether's drain: /readyz turns 503, every socket is closed with the
# retryable 4502 "draining" (jittered retry_after_ms over TETHER_DRAIN_WINDOW_MS), the
# process waits up to TETHER_DRAIN_TIMEOUT_S for the connections to finish, then exits.
# Give it a stop timeout longer than that (compose: stop_grace_period; Kubernetes:
# terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
# Exec form: python is PID 1 and receives SIGTERM itself (no shell in between).
CMD ["python", "-m", "tether_session"]
