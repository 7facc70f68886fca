# syntax=docker/dockerfile:1.7
# Tether auth-token service.  Build from the repository root (the build context):
#
#   docker build -f infra/docker/auth-token.Dockerfile -t tether/auth-token:dev .
#
# The build context is filtered by infra/docker/auth-token.Dockerfile.dockerignore (BuildKit
# reads the ignore file named after the Dockerfile): only tether-kit, this service and its
# contract are sent.  All configuration comes from the environment at run time (see
# services/auth-token/src/tether_auth/config.py); nothing secret is baked into the image.

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
COPY services/auth-token/ services/auth-token/
# Both in one pip call, so the service's "tether-kit" requirement resolves to the local copy.
RUN pip install ./libs/tether-kit ./services/auth-token \
 && python -m compileall -q /opt/venv/lib

# --- runtime: the virtualenv, the contract, a non-root user --------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 tether \
 && useradd --system --uid 10001 --gid tether --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin tether
COPY --from=build /opt/venv /opt/venv
COPY contracts/auth-token/ /app/contracts/auth-token/
# The package is installed (not run from the source tree), so the contract is located by
# TETHER_AUTH_CONTRACT instead of by walking up to contracts/.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TETHER_AUTH_CONTRACT=/app/contracts/auth-token/openapi.json \
    TETHER_AUTH_HOST=0.0.0.0 \
    TETHER_AUTH_PORT=8001
WORKDIR /app
USER 10001:10001
EXPOSE 8001
# "healthy" = ready to serve (/readyz: database reachable, migrations applied).  Orchestrators
# use their own probes (compose healthcheck, Kubernetes readiness/liveness); this one is for
# plain `docker run` and `docker ps`.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('TETHER_AUTH_PORT', '8001'), timeout=2)"]
# Tether's own SIGTERM handler stops accepting and lets Hypercorn finish in-flight requests.
STOPSIGNAL SIGTERM
# Exec form: python is PID 1 and receives SIGTERM itself (no shell in between).
CMD ["python", "-m", "tether_auth"]
