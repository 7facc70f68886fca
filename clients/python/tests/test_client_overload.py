"""The session SDK when a replica sheds load (issue 19): every answer that says when to
come back is pacing, never a terminal error (F32, F05, F21).

* ``overloaded`` (4503) with ``retry_after_ms``: the next attempt waits at least that
  long, with a fresh token, and such attempts never count towards ``max_reconnects``;
* a token answer 503/429 with ``Retry-After``: the same;
* a prompt refused with a request-scoped ``error`` frame: it stays queued, the socket
  stays open, and it is re-sent (same ``client_msg_id``) after ``retry_after_ms``.

The real clock is used with short intervals: time itself is under test.
"""

from __future__ import annotations

import itertools
import json
import secrets
from typing import Any

import httpx
import pytest
import trio
from tether_fake_server import FAST, Conn, FakeServer, Tokens
from waiting import until

from tether_client import AuthClient, TetherGaveUp, TetherHTTPError, TetherRefused, open_session

pytestmark = pytest.mark.trio

PROJECT = "fake"


async def stays(conn: Conn) -> None:
    await conn.ready()
    await conn.until_closed()


async def test_F32_overloaded_is_pacing_with_fresh_tokens_and_never_uses_up_max_reconnects(
    nursery: trio.Nursery,
) -> None:
    async def shed(conn: Conn) -> None:
        await conn.fail("overloaded", retry_after_ms=60)

    refusals = 5
    server = await FakeServer([shed] * refusals + [stays]).start(nursery)
    tokens = Tokens()
    with trio.fail_after(10):
        async with open_session(server.url, PROJECT, tokens, max_reconnects=1, **FAST) as session:
            assert session.connected
            assert session.stats.readies == 1
    assert len(server.conns) == refusals + 1
    gaps = [b - a for a, b in itertools.pairwise(server.connected_at)]
    assert all(gap >= 0.06 for gap in gaps), gaps
    # The jitter stays below the told wait: no attempt waited more than twice it (plus slack).
    assert all(gap < 0.12 + 0.1 for gap in gaps), gaps
    assert len(set(tokens.issued)) == len(tokens.issued) == refusals + 1
    assert [c.init["token"] for c in server.conns] == tokens.issued


def problem(status: int, code: str, retry_after: str) -> httpx.Response:
    body = {"type": "about:blank", "title": code, "status": status, "code": code, "detail": "busy", "request_id": "r"}
    return httpx.Response(
        status,
        content=json.dumps(body).encode(),
        headers={"content-type": "application/problem+json", "retry-after": retry_after},
    )


async def test_F05_token_answers_503_and_429_with_retry_after_are_paced_not_terminal(nursery: trio.Nursery) -> None:
    answers = [
        problem(503, "overloaded", "1"),
        problem(429, "rate_limited", "0.2"),
        problem(503, "dependency_unavailable", "0.1"),
    ]
    asked_at: list[float] = []

    def auth_token_service(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/tokens"
        asked_at.append(trio.current_time())
        if len(asked_at) <= len(answers):
            return answers[len(asked_at) - 1]
        body = {"token": "tok_" + secrets.token_urlsafe(32), "expires_at": "2030-01-01T00:00:00Z", "ttl_s": 60}
        return httpx.Response(201, json=body)

    server = await FakeServer([stays]).start(nursery)
    http = httpx.AsyncClient(transport=httpx.MockTransport(auth_token_service))
    async with AuthClient("http://127.0.0.1:1", "tk_test", client=http) as auth:
        with trio.fail_after(10):
            async with open_session(server.url, PROJECT, auth.token_source(), max_reconnects=1, **FAST) as session:
                assert session.connected
    await http.aclose()
    assert len(asked_at) == 4
    for waited, told in zip([b - a for a, b in itertools.pairwise(asked_at)], (1.0, 0.2, 0.1), strict=True):
        assert told <= waited < 2 * told + 0.2, (waited, told)


async def test_F05_a_token_refusal_without_retry_after_still_counts_towards_max_reconnects(
    nursery: trio.Nursery,
) -> None:
    async def refused() -> str:
        raise TetherHTTPError(503, "dependency_unavailable", "database down", None)

    server = await FakeServer([stays]).start(nursery)
    with trio.fail_after(5), pytest.raises(TetherGaveUp) as info:
        async with open_session(server.url, PROJECT, refused, max_reconnects=1, **FAST):
            pytest.fail("the session must not open")
    assert info.value.attempts == 2
    assert "dependency_unavailable" in info.value.last_reason


async def test_F21_a_prompt_refused_for_now_stays_queued_and_is_resent_on_the_same_socket(
    nursery: trio.Nursery,
) -> None:
    prompts: list[dict[str, Any]] = []
    seen_at: list[float] = []

    async def busy_once(conn: Conn) -> None:
        await conn.ready()
        first = await conn.recv("prompt")
        prompts.append(first)
        seen_at.append(trio.current_time())
        await conn.refuse(first["client_msg_id"], retry_after_ms=150)
        again = await conn.recv("prompt")
        prompts.append(again)
        seen_at.append(trio.current_time())
        await conn.ack(again, 9)
        await conn.until_closed()

    server = await FakeServer([busy_once, stays]).start(nursery)
    async with open_session(server.url, PROJECT, Tokens(), **FAST) as session:
        with trio.fail_after(5):
            seq = await session.send("hello")
        assert seq == 9
        assert session.stats.prompts_requeued == 1
        assert session.stats.prompts_sent == 2
        assert session.pending_prompts == 0
        assert len(server.conns) == 1, "the socket stayed open"
    assert prompts[0]["client_msg_id"] == prompts[1]["client_msg_id"]
    assert prompts[0]["text"] == prompts[1]["text"] == "hello"
    assert seen_at[1] - seen_at[0] >= 0.15


async def test_F21_prompts_behind_a_refused_one_wait_for_it(nursery: trio.Nursery) -> None:
    order: list[str] = []

    async def script(conn: Conn) -> None:
        await conn.ready()
        first = await conn.recv("prompt")
        order.append(first["text"])
        await conn.refuse(first["client_msg_id"], retry_after_ms=100)
        for seq in (1, 2):
            prompt = await conn.recv("prompt")
            order.append(prompt["text"])
            await conn.ack(prompt, seq)
        await conn.until_closed()

    server = await FakeServer([script]).start(nursery)
    async with open_session(server.url, PROJECT, Tokens(), **FAST) as session:
        with trio.fail_after(5):
            async with trio.open_nursery() as senders:
                senders.start_soon(session.send, "first")
                await until(lambda: session.stats.prompts_requeued == 1)
                senders.start_soon(session.send, "second")
    assert order == ["first", "first", "second"]


async def test_F21_a_prompt_refused_for_good_fails_alone_and_the_session_goes_on(nursery: trio.Nursery) -> None:
    async def script(conn: Conn) -> None:
        await conn.ready()
        bad = await conn.recv("prompt")
        await conn.refuse(bad["client_msg_id"], "invalid_frame")
        good = await conn.recv("prompt")
        await conn.ack(good, 4)
        await conn.until_closed()

    server = await FakeServer([script]).start(nursery)
    async with open_session(server.url, PROJECT, Tokens(), **FAST) as session:
        with trio.fail_after(5):
            with pytest.raises(TetherRefused, match="invalid_frame"):
                await session.send("refused")
            assert await session.send("accepted") == 4
        assert session.pending_prompts == 0
    assert len(server.conns) == 1


async def test_F05_a_reauth_token_answered_with_retry_after_is_asked_for_again_no_sooner(
    nursery: trio.Nursery,
) -> None:
    async def expiring(conn: Conn) -> None:
        await conn.ready(expires_in_s=4.0)
        await conn.recv("reauth")
        await conn.send({"type": "reauth_ok", "v": 1, "session_expires_at": "2999-01-01T00:00:00+00:00"})
        await conn.until_closed()

    asked_at: list[float] = []
    tokens = Tokens()

    async def busy_once() -> str:
        asked_at.append(trio.current_time())
        if len(asked_at) == 2:  # the first reauth token
            raise TetherHTTPError(503, "overloaded", "busy", None, retry_after_s=1.5)
        return await tokens()

    server = await FakeServer([expiring]).start(nursery)
    async with open_session(server.url, PROJECT, busy_once, reauth_margin_s=1.0, **FAST) as session:
        await until(lambda: session.stats.reauths == 1, timeout=10)
        assert len(server.conns) == 1
    # The first reauth came 3 s in; the old rule asked again after 0.5 s (a quarter of the
    # remaining second); told 1.5 s, the session waits that long.
    assert asked_at[2] - asked_at[1] >= 1.5
