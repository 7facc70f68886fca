"""F05: connection tokens are single-use, short-lived, consumed atomically, and their three
failure modes (unknown, used, expired) are distinct, logged errors."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import httpx
import pytest
import trio

from tests.support.auth import AuthService, AuthServiceFactory, bearer, consume_token, issue_token
from tests.support.logs import assert_one_error_line
from tests.support.pg import aquery
from tests.support.waiting import await_until


async def _token_expired_in_db(service: AuthService, token: str) -> bool:
    rows = await aquery(
        service.dsn,
        "SELECT expires_at <= now() AS expired FROM auth.connection_tokens WHERE token_hash = sha256(convert_to($1, 'UTF8'))",
        token,
    )
    assert len(rows) == 1, f"token row missing: {rows}"
    return bool(rows[0]["expired"])


def _problem(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.trio
async def test_F05_unknown_used_expired_tokens_are_three_distinct_errors(
    auth_service: AuthService, auth_factory: AuthServiceFactory
) -> None:
    short = auth_factory.start(auth_service.dsn, env={"TETHER_TOKEN_TTL_S": "1"}, service_key=auth_service.service_key)
    user = auth_service.make_user()
    async with auth_service.client() as client, short.client() as short_client:
        # unknown
        unknown = await consume_token(client, auth_service.service_key, "tt_" + "x" * 43)
        assert unknown.status_code == 404
        assert _problem(unknown)["code"] == "token_unknown"
        assert_one_error_line(auth_service.proc, unknown.headers["X-Request-ID"], "token_unknown")

        # used: the first consume wins, the second is told the token was used
        issued = await issue_token(client, user.api_key)
        assert issued["ttl_s"] == 60
        first = await consume_token(client, auth_service.service_key, issued["token"])
        assert first.status_code == 200, first.text
        assert first.json()["user_id"] == user.user_id
        used = await consume_token(client, auth_service.service_key, issued["token"])
        assert used.status_code == 409
        assert _problem(used)["code"] == "token_used"
        assert_one_error_line(auth_service.proc, used.headers["X-Request-ID"], "token_used")

        # expired: a 1 s token from the short-TTL replica, consumed (on the other replica)
        # once the database itself says its time has passed
        short_lived = await issue_token(short_client, user.api_key)
        assert short_lived["ttl_s"] == 1
        await await_until(
            lambda: _token_expired_in_db(short, short_lived["token"]), timeout=10, what="the 1 s token to expire"
        )
        expired = await consume_token(client, auth_service.service_key, short_lived["token"])
        assert expired.status_code == 410
        assert _problem(expired)["code"] == "token_expired"
        assert_one_error_line(auth_service.proc, expired.headers["X-Request-ID"], "token_expired")
        # an expired token stays expired (it is not turned into "used" by the attempt)
        again = await consume_token(client, auth_service.service_key, short_lived["token"])
        assert _problem(again)["code"] == "token_expired"

    codes = {_problem(r)["code"] for r in (unknown, used, expired)}
    statuses = {r.status_code for r in (unknown, used, expired)}
    assert codes == {"token_unknown", "token_used", "token_expired"}
    assert statuses == {404, 409, 410}


@pytest.mark.trio
async def test_F05_fifty_concurrent_consumes_exactly_one_wins(auth_service: AuthService) -> None:
    user = auth_service.make_user()
    async with auth_service.client(limits=httpx.Limits(max_connections=60)) as client:
        token = (await issue_token(client, user.api_key))["token"]
        results: list[Any] = []
        start = trio.Event()

        async def consume_once() -> None:
            await start.wait()
            results.append(await consume_token(client, auth_service.service_key, token))

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(consume_once)
            start.set()

    statuses = sorted(r.status_code for r in results)
    assert len(results) == 50
    assert statuses.count(200) == 1, statuses
    losers = [r for r in results if r.status_code != 200]
    assert {r.status_code for r in losers} == {409}
    assert {r.json()["code"] for r in losers} == {"token_used"}
    rows = await aquery(
        auth_service.dsn,
        "SELECT consumed_at IS NOT NULL AS consumed, consumed_by FROM auth.connection_tokens "
        "WHERE token_hash = sha256(convert_to($1, 'UTF8'))",
        token,
    )
    assert rows == [{"consumed": True, "consumed_by": "session"}]


@pytest.mark.trio
async def test_F05_consume_requires_service_credential(auth_service: AuthService) -> None:
    user = auth_service.make_user()
    async with auth_service.client() as client:
        token = (await issue_token(client, user.api_key))["token"]
        attempts: dict[str, dict[str, str]] = {
            "missing": {},
            "bare scheme": {"Authorization": "Bearer"},
            "not bearer": {"Authorization": f"Basic {auth_service.service_key}"},
            "no scheme": {"Authorization": auth_service.service_key},
            "user api key": bearer(user.api_key),
            "wrong secret": bearer(auth_service.service_key + "x"),
            "the token itself": bearer(token),
        }
        for label, headers in attempts.items():
            response = await client.post("/v1/tokens/consume", json={"token": token}, headers=headers)
            assert response.status_code == 401, f"{label}: {response.status_code} {response.text}"
            assert response.json()["code"] == "service_unauthenticated", label
            assert_one_error_line(auth_service.proc, response.headers["X-Request-ID"], "service_unauthenticated")
        # none of the refused attempts touched the token
        ok = await consume_token(client, auth_service.service_key, token)
        assert ok.status_code == 200, ok.text
        assert ok.json()["user_id"] == user.user_id


@pytest.mark.trio
async def test_F05_token_bound_to_project_comes_back_in_consume(auth_service: AuthService) -> None:
    user = auth_service.make_user()
    project_id = str(uuid.uuid4())
    async with auth_service.client() as client:
        bound = await issue_token(client, user.api_key, project_id)
        assert bound["project_id"] == project_id
        unbound = await issue_token(client, user.api_key)
        assert unbound["project_id"] is None
        consumed = await consume_token(client, auth_service.service_key, bound["token"])
        assert consumed.status_code == 200, consumed.text
        assert consumed.json()["project_id"] == project_id
        assert consumed.json()["user_id"] == user.user_id
        consumed_unbound = await consume_token(client, auth_service.service_key, unbound["token"])
        assert consumed_unbound.json()["project_id"] is None


@pytest.mark.trio
async def test_F05_tokens_are_single_use_random_and_stored_only_hashed(auth_service: AuthService) -> None:
    user = auth_service.make_user()
    async with auth_service.client() as client:
        tokens = [(await issue_token(client, user.api_key))["token"] for _ in range(5)]
    assert len(set(tokens)) == 5
    rows = await aquery(
        auth_service.dsn,
        "SELECT t.token_hash, t::text AS whole_row FROM auth.connection_tokens t "
        "JOIN auth.users u ON u.id = t.user_id WHERE u.id = $1::uuid",
        user.user_id,
    )
    assert sorted(bytes(r["token_hash"]) for r in rows) == sorted(hashlib.sha256(t.encode()).digest() for t in tokens)
    for row in rows:
        assert not any(t in row["whole_row"] for t in tokens), "a token is stored in clear"
