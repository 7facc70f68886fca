"""F06: a dependency outage is a 503 with a machine-readable code and Retry-After, readiness
goes false and the log names the dependency; the service recovers on its own.
F10: ``/healthz`` is liveness only; ``/readyz`` stays false until the database is there."""

from __future__ import annotations

import httpx
import pytest

from tests.support.auth import AuthServiceFactory, bearer, consume_token, issue_token
from tests.support.logs import assert_one_error_line
from tests.support.pg import PgServer
from tests.support.procs import ServiceProcess
from tests.support.waiting import await_until
from tether_dev.pg import free_port

from .test_token_batch import consume_batch


async def _status(client: httpx.AsyncClient, path: str) -> int:
    return (await client.get(path)).status_code


@pytest.mark.trio
async def test_F06_postgres_down_gives_503_with_retry_after_and_recovers(
    restartable_pg: PgServer, auth_factory: AuthServiceFactory
) -> None:
    pg_server = restartable_pg
    service = auth_factory.start()
    user = service.make_user()
    async with service.client() as client:
        before = await issue_token(client, user.api_key)
        pg_server.stop()
        try:
            down = await client.post("/v1/tokens", json={}, headers=bearer(user.api_key))
            assert down.status_code == 503, down.text
            problem = down.json()
            assert problem["code"] == "dependency_unavailable"
            assert problem["dependency"] == "postgres"
            assert int(down.headers["Retry-After"]) >= 1
            assert_one_error_line(
                service.proc, down.headers["X-Request-ID"], "dependency_unavailable", dependency="postgres"
            )

            consume_down = await consume_token(client, service.service_key, before["token"])
            assert consume_down.status_code == 503
            assert consume_down.json()["code"] == "dependency_unavailable"
            batch_down = await consume_batch(client, service.service_key, [before["token"]])
            assert batch_down.status_code == 503
            assert batch_down.json()["code"] == "dependency_unavailable"
            assert_one_error_line(
                service.proc, batch_down.headers["X-Request-ID"], "dependency_unavailable", dependency="postgres"
            )

            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["code"] == "not_ready"
            assert ready.json()["checks"]["postgres"] is False
            assert "Retry-After" in ready.headers
            health = await client.get("/healthz")
            assert health.status_code == 200, "liveness must not depend on the database"
        finally:
            pg_server.start()

        # the same process recovers: readiness comes back and the work goes through
        await await_until(
            lambda: _status(client, "/readyz"), timeout=30, what="/readyz to answer 200 after Postgres restarted"
        )
        after = await issue_token(client, user.api_key)
        consumed = await consume_token(client, service.service_key, after["token"])
        assert consumed.status_code == 200, consumed.text
        # the token issued before the outage survived it and is still single-use
        old = await consume_token(client, service.service_key, before["token"])
        assert old.status_code == 200, old.text
    assert service.proc.is_running()


@pytest.mark.trio
async def test_F10_readyz_false_until_database_reachable_healthz_live(
    pg_server: PgServer, auth_factory: AuthServiceFactory
) -> None:
    # A database URL nobody listens on: the service starts, stays alive, never ready.
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    service = auth_factory.spawn(unreachable)
    proc: ServiceProcess = service.proc
    await await_until(
        lambda: _has_event(proc, "startup_waiting"), timeout=20, what="a startup_waiting log line naming the phase"
    )
    async with service.client() as client:
        health = await client.get("/healthz")
        assert health.status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["code"] == "not_ready"
        assert ready.json()["checks"] == {"migrations": False, "postgres": False}
        user_call = await client.post("/v1/tokens", json={}, headers=bearer("tk_" + "x" * 40))
        assert user_call.status_code == 503
        assert user_call.json()["code"] == "dependency_unavailable"
    waiting = proc.events("startup_waiting")
    assert waiting[0]["phase"] == "database"
    assert proc.is_running()


async def _has_event(proc: ServiceProcess, event: str) -> bool:
    return bool(proc.events(event))
