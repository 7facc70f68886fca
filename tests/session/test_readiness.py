"""F10: every check in ``/readyz`` reports its own truth, in every phase and after start-up.

* While start-up waits on the auth-token service (migrations applied, database reachable),
  ``migrations`` and ``postgres`` are true and ``auth_token``/``listen``/``startup`` false;
  the problem's detail names exactly the failing checks (not "phase ...").
* When PostgreSQL goes away after start-up, ``postgres`` is false and ``migrations`` stays
  true (they were applied); the detail names ``postgres``; readiness returns with it.
"""

from __future__ import annotations

import secrets as pysecrets
from typing import Any

import httpx
import pytest
import trio

from tests.support.contract import async_client
from tests.support.pg import PgServer
from tests.support.procs import ServiceProcess
from tests.support.secrets import remember
from tests.support.session import SESSION_CONTRACT, SessionReplica, Stack, session_env
from tests.support.waiting import await_until, scaled
from tether_dev.pg import free_port


async def _readyz(replica: SessionReplica) -> httpx.Response:
    async with async_client(SESSION_CONTRACT, replica.url, timeout=scaled(10)) as http:
        return await http.get("/readyz")


@pytest.mark.trio
async def test_F10_readyz_checks_while_start_up_waits_on_auth_token(pg_server: PgServer, spawn_service: Any) -> None:
    dsn = pg_server.fresh_database("readyz")
    service_key, ingest_key = "svc_" + pysecrets.token_urlsafe(24), "ing_" + pysecrets.token_urlsafe(24)
    remember(service_key, ingest_key)
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens: start-up waits at the auth_token phase
    env = session_env(dsn, nowhere, service_key, ingest_key)
    proc: ServiceProcess = spawn_service("tether_session", env, name="session")
    replica = SessionReplica(proc, env)
    await trio.to_thread.run_sync(proc.wait_listening)
    await await_until(lambda: _waiting_on_auth(proc), timeout=20, what="start-up waiting on the auth_token phase")
    response = await _readyz(replica)
    assert response.status_code == 503
    body = response.json()
    assert body["code"] == "not_ready"
    assert body["checks"] == {
        "migrations": True,
        "postgres": True,
        "listen": False,
        "auth_token": False,
        "accepting": True,
        "startup": False,
    }
    assert body["detail"] == "not ready: auth_token, listen, startup"


def _async(check: Any) -> Any:
    async def run() -> Any:
        return check()

    return run


async def _waiting_on_auth(proc: ServiceProcess) -> bool:
    return bool(proc.events("startup_waiting", phase="auth_token"))


@pytest.mark.trio
async def test_F10_readyz_names_postgres_when_it_goes_away_after_start_up(stack: Stack, pg_server: PgServer) -> None:
    pg_server.require_restartable()
    replica = stack.session
    ready = await _readyz(replica)
    assert ready.status_code == 200
    assert all(ready.json()["checks"].values())
    pg_server.stop()
    try:

        async def postgres_down() -> dict[str, Any] | None:
            response = await _readyz(replica)
            return response.json() if response.status_code == 503 else None

        body = await await_until(postgres_down, timeout=20, what="/readyz 503 while PostgreSQL is down")
        assert body["checks"]["postgres"] is False
        assert body["checks"]["migrations"] is True, "migrations were applied: an outage does not undo them"
        assert body["checks"]["startup"] is True
        assert "postgres" in body["detail"]
        assert body["code"] == "not_ready"

        # the background sweep meets the same outage: a warning naming the dependency, no traceback
        def sweep_failed() -> list[dict[str, Any]]:
            return replica.proc.events("agent_sweep_failed")

        await await_until(_async(sweep_failed), timeout=20, what="the agent sweep to meet the outage")
        for line in sweep_failed():
            assert line["level"] == "warning", line
            assert line["dependency"] == "postgres", line
            assert "exc" not in line, line
            assert "traceback" not in line, line
            assert "connection_id" not in line, "a background task carries no connection's context"
    finally:
        pg_server.start()

    async def ready_again() -> bool:
        return (await _readyz(replica)).status_code == 200

    await await_until(ready_again, timeout=30, what="/readyz 200 after PostgreSQL returned")
