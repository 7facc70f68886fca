"""Running the real auth-token service for black-box tests (also used by session tests).

* :class:`AuthServiceFactory` starts ``python -m tether_auth`` subprocesses on port 0
  with a known service key, one or many at once, and stops them all on :meth:`close`.
* :class:`AuthService` is one running instance: ``url``, ``dsn``, ``service_key``,
  a contract-checking ``client()``, and the :class:`~tests.support.procs.ServiceProcess`.
* :func:`make_user` runs the real admin CLI (``tether-auth create-user``).
"""

from __future__ import annotations

import secrets as pysecrets
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import httpx

from .contract import REPO_ROOT, async_client
from .pg import PgServer
from .procs import ServiceProcess, wait_all_ready
from .secrets import remember, remember_from_response
from .waiting import scaled

AUTH_CONTRACT = REPO_ROOT / "contracts" / "auth-token" / "openapi.json"
AUTH_MODULE = "tether_auth"
SERVICE_KEY_NAME = "session"
DEFAULT_CORS_ORIGIN = "https://app.tether.test"
HTTP_TIMEOUT_S = 10.0


class UserCredentials(NamedTuple):
    user_id: str
    api_key: str


def unique_name(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("tether-auth")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tether_auth.cli"]


def make_user(dsn: str, name: str | None = None) -> UserCredentials:
    """Create a user with the real admin CLI; return its id and (remembered) API key."""
    name = name or unique_name()
    result = subprocess.run(
        [*_cli(), "--database-url", dsn, "create-user", name],
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"tether-auth create-user {name} failed ({result.returncode}): {result.stderr}")
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    if values.get("user_name") != name or not values.get("user_id") or not values.get("api_key"):
        raise AssertionError(f"unexpected create-user output: {result.stdout!r}")
    remember(values["api_key"])
    return UserCredentials(values["user_id"], values["api_key"])


def auth_env(dsn: str, service_key: str, **overrides: str) -> dict[str, str]:
    """The environment of an auth-token instance: port 0, test mode off, one service key."""
    env = {
        "DATABASE_URL": dsn,
        "TETHER_AUTH_HOST": "127.0.0.1",
        "TETHER_AUTH_PORT": "0",
        "TETHER_SERVICE_KEYS": f"{SERVICE_KEY_NAME}={service_key}",
        "TETHER_CORS_ORIGINS": DEFAULT_CORS_ORIGIN,
        "TETHER_TEST_MODE": "0",
    }
    env.update(overrides)
    return env


@dataclass
class AuthService:
    """One running auth-token instance."""

    proc: ServiceProcess
    dsn: str
    service_key: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.proc.url

    @property
    def test_mode(self) -> bool:
        return self.env.get("TETHER_TEST_MODE", "0").lower() in ("1", "true", "yes", "on")

    @property
    def cors_origins(self) -> list[str]:
        return [o.strip() for o in self.env.get("TETHER_CORS_ORIGINS", "").split(",") if o.strip()]

    def service_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.service_key}"}

    def client(self, *, timeout: float = HTTP_TIMEOUT_S, **kwargs: Any) -> httpx.AsyncClient:
        """An AsyncClient on this instance; every response is checked against the contract
        and its secrets are remembered for the log scan."""
        return async_client(
            AUTH_CONTRACT, self.url, timeout=scaled(timeout), on_response=remember_from_response, **kwargs
        )

    def make_user(self, name: str | None = None) -> UserCredentials:
        return make_user(self.dsn, name)


class AuthServiceFactory:
    """Starts auth-token instances; :meth:`close` stops every one it started (by PID)."""

    def __init__(self, pg: PgServer, log_dir: Path, *, db_prefix: str = "auth") -> None:
        self.pg = pg
        self.log_dir = log_dir
        self.db_prefix = db_prefix
        self.started: list[AuthService] = []

    def spawn(
        self, dsn: str | None = None, *, env: dict[str, str] | None = None, service_key: str | None = None
    ) -> AuthService:
        """Start one instance without waiting for readiness (``dsn=None``: a fresh database)."""
        dsn = dsn or self.pg.fresh_database(self.db_prefix)
        service_key = service_key or "svc_" + pysecrets.token_urlsafe(24)
        remember(service_key)
        full_env = auth_env(dsn, service_key, **(env or {}))
        proc = ServiceProcess(AUTH_MODULE, full_env, name="auth", log_dir=self.log_dir)
        service = AuthService(proc, dsn, service_key, full_env)
        self.started.append(service)
        proc.start()
        return service

    def start(
        self,
        dsn: str | None = None,
        *,
        env: dict[str, str] | None = None,
        service_key: str | None = None,
        ready_timeout: float = 30.0,
    ) -> AuthService:
        """Start one instance and wait until ``/readyz`` is 200."""
        service = self.spawn(dsn, env=env, service_key=service_key)
        service.proc.wait_ready(ready_timeout)
        return service

    def start_many(
        self,
        count: int,
        dsn: str | None = None,
        *,
        env: dict[str, str] | None = None,
        ready_timeout: float = 30.0,
    ) -> list[AuthService]:
        """Start ``count`` replicas on one database at the same moment, then wait for all."""
        dsn = dsn or self.pg.fresh_database(self.db_prefix)
        service_key = "svc_" + pysecrets.token_urlsafe(24)
        services = [self.spawn(dsn, env=env, service_key=service_key) for _ in range(count)]
        wait_all_ready([s.proc for s in services], ready_timeout)
        return services

    def close(self) -> None:
        errors: list[BaseException] = []
        for service in reversed(self.started):
            try:
                service.proc.stop()
            except Exception as exc:  # keep stopping the others; re-raised below
                errors.append(exc)
        self.started.clear()
        if errors:
            raise errors[0]


# -- request helpers (every response still goes through the client's contract check) --------


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def issue_token(client: httpx.AsyncClient, api_key: str, project_id: str | None = None) -> dict[str, Any]:
    """POST /v1/tokens as the user; assert 201 and return the body."""
    body: dict[str, Any] = {} if project_id is None else {"project_id": project_id}
    response = await client.post("/v1/tokens", json=body, headers=bearer(api_key))
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def consume_token(client: httpx.AsyncClient, service_key: str, token: str, **headers: str) -> httpx.Response:
    """POST /v1/tokens/consume with the service credential; returns the response."""
    return await client.post("/v1/tokens/consume", json={"token": token}, headers={**bearer(service_key), **headers})
