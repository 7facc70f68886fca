"""Atomicity of every write (F02, F06): a failure forced at a named failpoint inside a write
transaction answers 500 ``failpoint`` with one log line and leaves the database exactly as
it was.  Outside test mode nothing can arm a failpoint: the header is refused with 400.

The cases come from the contract: every ``x-failpoints`` name of every operation is tested,
and an operation with a failpoint but no scenario here fails the suite.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import pytest

from tests.support.auth import (
    AUTH_CONTRACT,
    AuthService,
    AuthServiceFactory,
    bearer,
    consume_token,
    issue_token,
)
from tests.support.contract import load_contract
from tests.support.logs import assert_one_error_line
from tests.support.pg import aquery

from .test_token_batch import consume_batch

AUTH_TABLES = ("users", "api_keys", "web_sessions", "connection_tokens")
FAILPOINTS = load_contract(AUTH_CONTRACT).failpoints()
FAILPOINT_HEADER = "X-Tether-Failpoint"


async def snapshot(dsn: str) -> dict[str, tuple[int, str]]:
    """Row count and content checksum of every auth table."""
    result: dict[str, tuple[int, str]] = {}
    for table in AUTH_TABLES:
        rows = await aquery(
            dsn,
            f"SELECT count(*) AS n, md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) AS sum FROM auth.{table} t",
        )
        result[table] = (rows[0]["n"], rows[0]["sum"])
    return result


@dataclass
class Scenario:
    """A write, ready to send: ``send(headers)`` makes the request; ``still_works()`` proves
    afterwards that the state the failed write touched is intact and usable."""

    send: Callable[[dict[str, str]], Awaitable[httpx.Response]]
    still_works: Callable[[], Awaitable[None]]


async def _login(client: httpx.AsyncClient, service: AuthService) -> Scenario:
    user = service.make_user()

    async def send(headers: dict[str, str]) -> httpx.Response:
        return await client.post("/v1/login", json={"api_key": user.api_key}, headers=headers)

    async def still_works() -> None:
        ok = await send({})
        assert ok.status_code == 200

    return Scenario(send, still_works)


async def _logout(client: httpx.AsyncClient, service: AuthService) -> Scenario:
    user = service.make_user()
    login = await client.post("/v1/login", json={"api_key": user.api_key})
    assert login.status_code == 200
    session = login.cookies["tether_session"]
    client.cookies.clear()
    cookie = {"Cookie": f"tether_session={session}"}

    async def send(headers: dict[str, str]) -> httpx.Response:
        return await client.post("/v1/logout", headers={**cookie, **headers})

    async def still_works() -> None:
        me = await client.get("/v1/me", headers=cookie)
        assert me.status_code == 200, "the session must survive a failed logout"
        assert (await send({})).status_code == 204
        assert (await client.get("/v1/me", headers=cookie)).status_code == 401

    return Scenario(send, still_works)


async def _issue(client: httpx.AsyncClient, service: AuthService) -> Scenario:
    user = service.make_user()
    project = str(uuid.uuid4())

    async def send(headers: dict[str, str]) -> httpx.Response:
        return await client.post(
            "/v1/tokens", json={"project_id": project}, headers={**bearer(user.api_key), **headers}
        )

    async def still_works() -> None:
        token = await issue_token(client, user.api_key, project)
        assert (await consume_token(client, service.service_key, token["token"])).status_code == 200

    return Scenario(send, still_works)


async def _consume(client: httpx.AsyncClient, service: AuthService) -> Scenario:
    user = service.make_user()
    token = (await issue_token(client, user.api_key))["token"]

    async def send(headers: dict[str, str]) -> httpx.Response:
        return await consume_token(client, service.service_key, token, **headers)

    async def still_works() -> None:
        ok = await send({})
        assert ok.status_code == 200, "the token must still be consumable after a failed consume"
        assert ok.json()["user_id"] == user.user_id

    return Scenario(send, still_works)


async def _consume_batch(client: httpx.AsyncClient, service: AuthService) -> Scenario:
    user = service.make_user()
    tokens = [(await issue_token(client, user.api_key))["token"] for _ in range(3)]

    async def send(headers: dict[str, str]) -> httpx.Response:
        return await consume_batch(client, service.service_key, tokens, **headers)

    async def still_works() -> None:
        ok = await send({})
        assert ok.status_code == 200, ok.text
        statuses = [r["status"] for r in ok.json()["results"]]
        assert statuses == ["consumed"] * 3, "the tokens must still be consumable after a failed batch"

    return Scenario(send, still_works)


SCENARIOS: dict[str, Callable[[httpx.AsyncClient, AuthService], Awaitable[Scenario]]] = {
    "login": _login,
    "logout": _logout,
    "issueToken": _issue,
    "consumeToken": _consume,
    "consumeTokenBatch": _consume_batch,
}


@pytest.fixture(scope="module")
def test_mode_auth(module_auth_factory: AuthServiceFactory) -> AuthService:
    return module_auth_factory.start(env={"TETHER_TEST_MODE": "1"})


def test_every_failpoint_of_the_contract_has_a_scenario() -> None:
    assert FAILPOINTS, "the contract declares no x-failpoints"
    missing = sorted({op for op, _ in FAILPOINTS} - set(SCENARIOS))
    assert missing == [], f"operations with failpoints but no scenario here: {missing}"


@pytest.mark.trio
@pytest.mark.parametrize(("operation", "failpoint"), FAILPOINTS, ids=[fp for _, fp in FAILPOINTS])
async def test_F02_armed_failpoint_gives_500_and_leaves_database_unchanged(
    test_mode_auth: AuthService, operation: str, failpoint: str
) -> None:
    service = test_mode_auth
    async with service.client() as client:
        scenario = await SCENARIOS[operation](client, service)
        before = await snapshot(service.dsn)
        failed = await scenario.send({FAILPOINT_HEADER: failpoint})
        assert failed.status_code == 500, failed.text
        body = failed.json()
        assert (body["code"], body["failpoint"]) == ("failpoint", failpoint)
        assert "set-cookie" not in failed.headers
        assert_one_error_line(service.proc, failed.headers["X-Request-ID"], "failpoint", failpoint=failpoint)
        assert await snapshot(service.dsn) == before, f"{failpoint} left a partial write behind"
        await scenario.still_works()


@pytest.mark.trio
@pytest.mark.parametrize(("operation", "failpoint"), FAILPOINTS, ids=[fp for _, fp in FAILPOINTS])
async def test_F02_failpoint_header_refused_outside_test_mode(
    auth_service: AuthService, operation: str, failpoint: str
) -> None:
    async with auth_service.client() as client:
        scenario = await SCENARIOS[operation](client, auth_service)
        before = await snapshot(auth_service.dsn)
        refused = await scenario.send({FAILPOINT_HEADER: failpoint})
        assert refused.status_code == 400, refused.text
        assert refused.json()["code"] == "failpoints_disabled"
        assert_one_error_line(auth_service.proc, refused.headers["X-Request-ID"], "failpoints_disabled")
        assert await snapshot(auth_service.dsn) == before, "a refused request wrote something"
        assert auth_service.proc.events("http_error", code="failpoint") == []
        await scenario.still_works()
