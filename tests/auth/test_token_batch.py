"""F05, batched: ``POST /v1/tokens/consume-batch`` consumes up to 100 connection tokens in one
request and one statement.  Each token keeps every promise of the single consume: consumed
atomically, at most once across all concurrent callers (batches and single consumes alike),
and unknown / used / expired are three distinct codes, per token, in request order."""

from __future__ import annotations

import random
import uuid
from typing import Any

import httpx
import pytest
import trio

from tests.support.auth import AuthService, bearer, consume_token, issue_token
from tests.support.logs import assert_one_error_line
from tests.support.metrics import scrape
from tests.support.pg import aquery

BATCH_PATH = "/v1/tokens/consume-batch"


async def consume_batch(
    client: httpx.AsyncClient, service_key: str, tokens: list[str], **headers: str
) -> httpx.Response:
    """POST /v1/tokens/consume-batch with the service credential; returns the response."""
    return await client.post(BATCH_PATH, json={"tokens": tokens}, headers={**bearer(service_key), **headers})


def outcomes(response: httpx.Response) -> list[str]:
    """Per token, in request order: ``consumed`` or the error code; checks ``token_index``."""
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    assert [r["token_index"] for r in results] == list(range(len(results)))
    return [r["status"] if r["status"] == "consumed" else r["code"] for r in results]


async def _consumed_by(service: AuthService, token: str) -> str | None:
    rows = await aquery(
        service.dsn,
        "SELECT consumed_by FROM auth.connection_tokens WHERE token_hash = sha256(convert_to($1, 'UTF8'))",
        token,
    )
    assert len(rows) == 1, rows
    value: str | None = rows[0]["consumed_by"]
    return value


async def _expire(service: AuthService, token: str) -> None:
    rows = await aquery(
        service.dsn,
        "UPDATE auth.connection_tokens SET expires_at = now() - interval '1 second' "
        "WHERE token_hash = sha256(convert_to($1, 'UTF8')) RETURNING 1",
        token,
    )
    assert rows, "the token to expire is not in the database"


@pytest.mark.trio
async def test_F05_batch_answers_every_token_in_order_with_its_own_outcome(auth_service: AuthService) -> None:
    user = auth_service.make_user()
    project_id = str(uuid.uuid4())
    async with auth_service.client() as client:
        bound = (await issue_token(client, user.api_key, project_id))["token"]
        unbound = (await issue_token(client, user.api_key))["token"]
        used = (await issue_token(client, user.api_key))["token"]
        assert (await consume_token(client, auth_service.service_key, used)).status_code == 200
        expired = (await issue_token(client, user.api_key))["token"]
        await _expire(auth_service, expired)
        unknown = "tt_" + "x" * 43
        before = await scrape(client)
        tokens = [unknown, bound, used, expired, unbound, bound]
        response = await consume_batch(client, auth_service.service_key, tokens)
        after = await scrape(client)
        # the single consume agrees with what the batch said about each token
        again = await consume_token(client, auth_service.service_key, bound)
        assert (again.status_code, again.json()["code"]) == (409, "token_used")
        still_expired = await consume_token(client, auth_service.service_key, expired)
        assert (still_expired.status_code, still_expired.json()["code"]) == (410, "token_expired")

    assert outcomes(response) == ["token_unknown", "consumed", "token_used", "token_expired", "consumed", "token_used"]
    results = response.json()["results"]
    assert (results[1]["user_id"], results[1]["project_id"]) == (user.user_id, project_id)
    assert (results[4]["user_id"], results[4]["project_id"]) == (user.user_id, None)
    assert await _consumed_by(auth_service, bound) == "session"
    assert await _consumed_by(auth_service, unbound) == "session"
    assert await _consumed_by(auth_service, expired) is None, "an expired token is not consumed by the attempt"
    # one info line for the batch, one warning line per refused token, no http_error line (a 200)
    request_id = response.headers["X-Request-ID"]
    [line] = auth_service.proc.events("tokens_consumed_batch", request_id=request_id)
    assert line["tokens"] == 6
    assert line["outcomes"] == {"token_unknown": 1, "ok": 2, "token_used": 2, "token_expired": 1}
    refused = auth_service.proc.events("token_refused", request_id=request_id)
    assert [(r["token_index"], r["code"], r["level"]) for r in refused] == [
        (0, "token_unknown", "warning"),
        (2, "token_used", "warning"),
        (3, "token_expired", "warning"),
        (5, "token_used", "warning"),
    ]
    assert auth_service.proc.events("http_error", request_id=request_id) == []
    assert after.delta(before, "tether_token_consume_batches_total") == 1
    assert after.delta(before, "tether_token_consume_total", outcome="ok") == 2
    assert after.delta(before, "tether_token_consume_total", outcome="token_used") == 2


@pytest.mark.trio
async def test_F05_concurrent_batches_sharing_tokens_consume_each_exactly_once(auth_service: AuthService) -> None:
    """30 batches and 20 single consumes at once, every batch holding all 20 tokens in its own
    order: each token is consumed exactly once, every other attempt is token_used, and no
    attempt fails (two batches locking shared rows in different orders would deadlock)."""
    user = auth_service.make_user()
    async with auth_service.client(limits=httpx.Limits(max_connections=60)) as client:
        tokens = [(await issue_token(client, user.api_key))["token"] for _ in range(20)]
        rng = random.Random(5)
        orders = [rng.sample(tokens, len(tokens)) for _ in range(30)]
        batches: list[tuple[list[str], httpx.Response]] = []
        singles: list[tuple[str, httpx.Response]] = []
        start = trio.Event()

        async def batch(order: list[str]) -> None:
            await start.wait()
            batches.append((order, await consume_batch(client, auth_service.service_key, order)))

        async def single(token: str) -> None:
            await start.wait()
            singles.append((token, await consume_token(client, auth_service.service_key, token)))

        async with trio.open_nursery() as nursery:
            for order in orders:
                nursery.start_soon(batch, order)
            for token in tokens:
                nursery.start_soon(single, token)
            start.set()

    wins: dict[str, int] = dict.fromkeys(tokens, 0)
    for order, response in batches:
        for token, outcome in zip(order, outcomes(response), strict=True):
            assert outcome in ("consumed", "token_used"), outcome
            wins[token] += outcome == "consumed"
    for token, response in singles:
        assert response.status_code in (200, 409), response.text
        if response.status_code == 409:
            assert response.json()["code"] == "token_used"
        wins[token] += response.status_code == 200
    assert wins == dict.fromkeys(tokens, 1)
    for token in tokens:
        assert await _consumed_by(auth_service, token) == "session"


@pytest.mark.trio
async def test_F05_batch_size_and_body_are_enforced_and_a_refused_batch_consumes_nothing(
    auth_service: AuthService,
) -> None:
    user = auth_service.make_user()
    key = auth_service.service_key
    async with auth_service.client() as client:
        token = (await issue_token(client, user.api_key))["token"]
        refused = {
            "no tokens": await consume_batch(client, key, []),
            "101 tokens": await consume_batch(client, key, [token] + [f"tt_{i:043d}" for i in range(100)]),
            "empty token": await consume_batch(client, key, [token, ""]),
            "token too long": await consume_batch(client, key, [token, "t" * 257]),
            "not a string": await client.post(BATCH_PATH, json={"tokens": [token, 7]}, headers=bearer(key)),
            "no tokens field": await client.post(BATCH_PATH, json={"token": token}, headers=bearer(key)),
            "extra field": await client.post(BATCH_PATH, json={"tokens": [token], "x": 1}, headers=bearer(key)),
        }
        for label, response in refused.items():
            assert (response.status_code, response.json()["code"]) == (422, "validation_failed"), label
            assert_one_error_line(auth_service.proc, response.headers["X-Request-ID"], "validation_failed")
            assert token not in response.text, f"{label}: the refusal repeats a token"
        not_json = await client.post(
            BATCH_PATH, content=b"{tokens", headers={**bearer(key), "Content-Type": "application/json"}
        )
        assert (not_json.status_code, not_json.json()["code"]) == (400, "invalid_body")
        wrong_type = await client.post(
            BATCH_PATH, content=b'{"tokens": ["a"]}', headers={**bearer(key), "Content-Type": "text/plain"}
        )
        assert (wrong_type.status_code, wrong_type.json()["code"]) == (415, "unsupported_media_type")
        too_big = await consume_batch(client, key, ["t" * 256] * 100)  # contract-valid, over the 16 KiB body limit
        assert (too_big.status_code, too_big.json()["code"]) == (413, "body_too_large")
        assert await _consumed_by(auth_service, token) is None, "a refused batch consumed a token"
        # 1 and 100 are both accepted
        assert outcomes(await consume_batch(client, key, [token])) == ["consumed"]
        full = [f"tt_{i:043d}" for i in range(100)]
        assert outcomes(await consume_batch(client, key, full)) == ["token_unknown"] * 100


@pytest.mark.trio
async def test_F05_batch_requires_service_credential(auth_service: AuthService) -> None:
    user = auth_service.make_user()
    async with auth_service.client() as client:
        token = (await issue_token(client, user.api_key))["token"]
        attempts: dict[str, dict[str, str]] = {
            "missing": {},
            "not bearer": {"Authorization": f"Basic {auth_service.service_key}"},
            "user api key": bearer(user.api_key),
            "wrong secret": bearer(auth_service.service_key + "x"),
            "the token itself": bearer(token),
        }
        for label, headers in attempts.items():
            response = await client.post(BATCH_PATH, json={"tokens": [token]}, headers=headers)
            assert response.status_code == 401, f"{label}: {response.status_code} {response.text}"
            assert response.json()["code"] == "service_unauthenticated", label
            assert_one_error_line(auth_service.proc, response.headers["X-Request-ID"], "service_unauthenticated")
        assert await _consumed_by(auth_service, token) is None
        assert outcomes(await consume_batch(client, auth_service.service_key, [token])) == ["consumed"]
