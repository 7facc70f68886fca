"""The session SDK against an in-process scripted server (no Tether service needed).

Each test scripts what the server does on each connection (tether_fake_server) and checks
what the client does: fresh tokens (F05), resume and dedup (F20-F22), the outbox (F21),
catalogue-driven retry and terminal errors (F32), heartbeats (F24), reauth, URL rotation.
Every wait has a deadline (trio.fail_after) or is a condition (waiting.until); the real clock
is used, with short intervals, where time itself is under test (backoff, heartbeat, reauth).
"""

from __future__ import annotations

import itertools
import socket
from typing import Any

import pytest
import trio
from tether_fake_server import FAST, Conn, FakeServer, Tokens
from waiting import until

from tether_client import Event, TetherClosed, TetherGaveUp, open_session

pytestmark = pytest.mark.trio

PROJECT = "fake"


async def collect(stream: Any, last: int) -> list[int]:
    seqs: list[int] = []
    with trio.fail_after(5):
        async for event in stream:
            assert isinstance(event, Event)
            seqs.append(event.seq)
            if event.seq >= last:
                return seqs
    return seqs


async def test_F05_every_connect_and_reconnect_sends_a_new_token(nursery: trio.Nursery) -> None:
    async def refused(conn: Conn) -> None:
        await conn.fail("token_expired")

    async def drained(conn: Conn) -> None:
        await conn.ready()
        await conn.fail("draining")

    async def stays(conn: Conn) -> None:
        await conn.ready()
        await conn.until_closed()

    server = await FakeServer([refused, drained, stays]).start(nursery)
    tokens = Tokens()
    async with open_session(server.url, PROJECT, tokens, **FAST) as session:
        await until(lambda: len(server.conns) == 3 and session.connected)
        sent = [init["token"] for init in server.inits]
        assert sent == tokens.issued
        assert len(set(sent)) == 3
        assert session.stats.tokens_fetched == 3
        assert session.stats.connects == 3
        assert session.stats.reconnects == 2


async def test_F05_a_token_source_that_repeats_itself_is_refused(nursery: trio.Nursery) -> None:
    async def drained(conn: Conn) -> None:
        await conn.ready()
        await conn.fail("draining")

    server = await FakeServer([drained]).start(nursery)

    async def same_token() -> str:
        return "tok_always_the_same_token_which_is_a_bug_0123456789"

    with pytest.raises(ValueError, match="single-use"):
        async with open_session(server.url, PROJECT, same_token, **FAST):
            await trio.sleep_forever()


async def test_F22_reconnect_resumes_from_the_last_seq_and_drops_duplicates(nursery: trio.Nursery) -> None:
    async def first(conn: Conn) -> None:
        await conn.ready(last_seq=0)
        for seq in (1, 2, 3):
            await conn.event(seq)
        await conn.fail("draining", retry_after_ms=0)

    async def second(conn: Conn) -> None:
        await conn.ready(last_seq=5)
        for seq in (2, 3, 4, 5):  # a replay that overlaps what was delivered
            await conn.event(seq)
        await conn.until_closed()

    server = await FakeServer([first, second]).start(nursery)
    async with open_session(server.url, PROJECT, Tokens(), **FAST) as session:
        assert await collect(session.events(), 5) == [1, 2, 3, 4, 5]
        assert "resume_from" not in server.inits[0]  # a fresh client goes live from now
        assert server.inits[1]["resume_from"] == 3
        assert session.stats.duplicates_dropped == 2
        assert session.last_seq == 5


async def test_F20_a_gap_closes_the_socket_and_resumes_without_delivering_out_of_order(
    nursery: trio.Nursery,
) -> None:
    async def gappy(conn: Conn) -> None:
        await conn.ready(last_seq=0)
        await conn.event(1)
        await conn.event(3)
        await conn.until_closed()

    async def whole(conn: Conn) -> None:
        await conn.ready(last_seq=3)
        await conn.event(2)
        await conn.event(3)
        await conn.until_closed()

    server = await FakeServer([gappy, whole]).start(nursery)
    async with open_session(server.url, PROJECT, Tokens(), **FAST) as session:
        assert await collect(session.events(), 3) == [1, 2, 3]
        assert session.stats.gaps == 1
        assert server.inits[1]["resume_from"] == 1


async def test_F22_resume_from_a_given_seq(nursery: trio.Nursery) -> None:
    async def replay(conn: Conn) -> None:
        await conn.ready(last_seq=12)
        for seq in (11, 12):
            await conn.event(seq)
        await conn.until_closed()

    server = await FakeServer([replay]).start(nursery)
    async with open_session(server.url, PROJECT, Tokens(), resume_from=10, **FAST) as session:
        assert await collect(session.events(), 12) == [11, 12]
        assert server.inits[0]["resume_from"] == 10


async def test_F21_an_unacknowledged_prompt_is_resent_after_reconnect_with_the_same_id(
    nursery: trio.Nursery,
) -> None:
    async def swallow(conn: Conn) -> None:
        await conn.ready()
        await conn.recv("prompt")
        await conn.fail("draining")

    async def ack(conn: Conn) -> None:
        await conn.ready()
        prompt = await conn.recv("prompt")
        await conn.send(
            {"type": "prompt_ack", "v": 1, "client_msg_id": prompt["client_msg_id"], "seq": 7, "duplicate": True}
        )
        await conn.until_closed()

    server = await FakeServer([swallow, ack]).start(nursery)
    async with open_session(server.url, PROJECT, Tokens(), **FAST) as session:
        with trio.fail_after(5):
            seq = await session.send("hello agent")
        assert seq == 7
        first = next(f for f in server.conns[0].received if f["type"] == "prompt")
        second = next(f for f in server.conns[1].received if f["type"] == "prompt")
        assert first["client_msg_id"] == second["client_msg_id"]
        assert first["text"] == second["text"] == "hello agent"
        assert session.pending_prompts == 0
        assert session.stats.prompts_sent == 2


async def test_F21_prompts_are_sent_once_per_connection_in_order(nursery: trio.Nursery) -> None:
    async def acks(conn: Conn) -> None:
        await conn.ready()
        for seq in (1, 2, 3):
            prompt = await conn.recv("prompt")
            await conn.send(
                {"type": "prompt_ack", "v": 1, "client_msg_id": prompt["client_msg_id"], "seq": seq, "duplicate": False}
            )
        await conn.until_closed()

    server = await FakeServer([acks]).start(nursery)
    async with open_session(server.url, PROJECT, Tokens(), **FAST) as session:
        with trio.fail_after(5):
            results = [await session.send(text) for text in ("one", "two", "three")]
        assert results == [1, 2, 3]
        texts = [f["text"] for f in server.conns[0].received if f["type"] == "prompt"]
        assert texts == ["one", "two", "three"]
        with pytest.raises(ValueError, match="1 to 16000"):
            await session.send("")


async def test_F32_a_terminal_close_at_init_raises_and_is_never_retried(nursery: trio.Nursery) -> None:
    async def not_found(conn: Conn) -> None:
        await conn.fail("project_not_found")

    server = await FakeServer([not_found]).start(nursery)
    with pytest.raises(TetherClosed) as info, trio.fail_after(5):
        async with open_session(server.url, PROJECT, Tokens(), **FAST):
            pytest.fail("the session must not open")
    closed = info.value
    assert (closed.code, closed.name, closed.action) == (4040, "project_not_found", "show_message")
    assert closed.message == "Project not found."
    # open_session has returned, so its tasks are gone: nothing can connect again later.
    # A client that retried would not have raised at all (fail_after would have fired).
    assert len(server.conns) == 1


async def test_F32_a_terminal_close_after_ready_ends_events_with_the_error(nursery: trio.Nursery) -> None:
    async def forbidden(conn: Conn) -> None:
        await conn.ready()
        await conn.event(1)
        await conn.fail("forbidden")

    server = await FakeServer([forbidden]).start(nursery)
    async with open_session(server.url, PROJECT, Tokens(), **FAST) as session:
        seen: list[int] = []

        async def read_all() -> None:
            async for event in session.events():
                seen.append(event.seq)  # noqa: PERF401 - keeps what arrived before the error

        with pytest.raises(TetherClosed) as info, trio.fail_after(5):
            await read_all()
        assert seen == [1]  # events received before the close are delivered first
        assert info.value.name == "forbidden"
        with pytest.raises(TetherClosed):
            await session.send("too late")
    assert len(server.conns) == 1


async def test_F32_a_terminal_close_cancels_a_body_that_is_not_waiting(nursery: trio.Nursery) -> None:
    in_body = trio.Event()

    async def forbidden_later(conn: Conn) -> None:
        await conn.ready()
        await in_body.wait()  # the server acts once the client is inside the block
        await conn.fail("forbidden")

    server = await FakeServer([forbidden_later]).start(nursery)

    async def body_not_waiting() -> None:
        async with open_session(server.url, PROJECT, Tokens(), **FAST):
            in_body.set()
            await trio.sleep_forever()

    with pytest.raises(TetherClosed, match="forbidden"), trio.fail_after(5):
        await body_not_waiting()


async def test_F32_retry_after_ms_is_honoured(nursery: trio.Nursery) -> None:
    async def busy(conn: Conn) -> None:
        await conn.ready()
        await conn.fail("overloaded", retry_after_ms=300)

    async def stays(conn: Conn) -> None:
        await conn.ready()
        await conn.until_closed()

    server = await FakeServer([busy, stays]).start(nursery)
    async with open_session(server.url, PROJECT, Tokens(), **FAST):
        await until(lambda: len(server.conns) == 2)
        assert server.connected_at[1] - server.connected_at[0] >= 0.3


async def test_F32_gives_up_after_max_reconnects_when_nothing_listens() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tokens = Tokens()
    with pytest.raises(TetherGaveUp) as info, trio.fail_after(5):
        async with open_session(f"ws://127.0.0.1:{port}/v1/ws", PROJECT, tokens, max_reconnects=2, **FAST):
            pytest.fail("the session must not open")
    assert info.value.attempts == 3
    assert "connection refused" in str(info.value)
    assert tokens.issued == []  # no token is spent on a socket that never opened


async def test_F24_a_silent_server_is_detected_by_the_heartbeat(nursery: trio.Nursery) -> None:
    async def silent(conn: Conn) -> None:
        await conn.ready(interval_ms=50, timeout_ms=300)
        await conn.until_closed()  # reads pings, never answers

    async def stays(conn: Conn) -> None:
        await conn.ready()
        await conn.until_closed()

    server = await FakeServer([silent, stays]).start(nursery)
    async with open_session(server.url, PROJECT, Tokens(), **FAST) as session:
        await until(lambda: len(server.conns) == 2 and session.connected)
        pings = [f for f in server.conns[0].received if f["type"] == "ping"]
        assert len(pings) >= 3
        assert server.inits[1]["resume_from"] == 0


async def test_urls_are_used_in_turn_on_reconnect(nursery: trio.Nursery) -> None:
    async def drained(conn: Conn) -> None:
        await conn.ready()
        await conn.fail("draining")

    async def stays(conn: Conn) -> None:
        await conn.ready()
        await conn.until_closed()

    a = await FakeServer([drained]).start(nursery)
    b = await FakeServer([stays]).start(nursery)
    async with open_session([a.url, b.url], PROJECT, Tokens(), **FAST) as session:
        await until(lambda: len(b.conns) == 1 and session.connected)
        assert len(a.conns) == 1


async def test_reauth_before_expiry_uses_a_fresh_token(nursery: trio.Nursery) -> None:
    async def expiring(conn: Conn) -> None:
        await conn.ready(expires_in_s=1.0)
        await conn.recv("reauth")
        await conn.send({"type": "reauth_ok", "v": 1, "session_expires_at": "2999-01-01T00:00:00+00:00"})
        await conn.until_closed()

    server = await FakeServer([expiring]).start(nursery)
    tokens = Tokens()
    async with open_session(server.url, PROJECT, tokens, **FAST) as session:
        await until(lambda: session.stats.reauths == 1)
        reauth = next(f for f in server.conns[0].received if f["type"] == "reauth")
        assert reauth["token"] != server.inits[0]["token"]
        assert [server.inits[0]["token"], reauth["token"]] == tokens.issued
        assert len(server.conns) == 1


async def test_reconnect_and_aclose(nursery: trio.Nursery) -> None:
    async def stays(conn: Conn) -> None:
        await conn.ready()
        await conn.until_closed()

    server = await FakeServer([stays]).start(nursery)
    async with open_session(server.url, PROJECT, Tokens(), **FAST) as session:
        await session.reconnect()
        await until(lambda: len(server.conns) == 2 and session.connected)
        await session.aclose()
        with trio.fail_after(5):
            remaining = [event async for event in session.events()]
        assert remaining == []
        assert not session.connected


async def test_F32_a_server_that_drops_every_connection_after_ready_is_backed_off(nursery: trio.Nursery) -> None:
    """`ready` alone does not reset the backoff: only a connection that stayed up does."""

    async def flaky(conn: Conn) -> None:
        await conn.ready()
        await conn.fail("internal_error")

    server = await FakeServer([flaky]).start(nursery)
    options = {**FAST, "backoff_base_s": 0.01, "backoff_cap_s": 1.0, "backoff_reset_s": 5.0, "random": lambda: 0.99}
    async with open_session(server.url, PROJECT, Tokens(), **options):
        await until(lambda: len(server.conns) >= 6)
    gaps = [b - a for a, b in itertools.pairwise(server.connected_at[:6])]
    assert gaps[-1] >= 0.15  # 0.01 * 2**4 * 0.99: the waits doubled
    assert gaps[-1] > 4 * gaps[0]


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"client_id": "has space"}, ValueError, r"init frame: client_id"),
        ({"resume_from": -1}, ValueError, r"init frame: resume_from"),
        ({"no_such_option": 1}, TypeError, "no_such_option"),
    ],
)
async def test_options_are_checked_before_connecting(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    tokens = Tokens()
    with pytest.raises(error, match=match), trio.fail_after(5):
        async with open_session("ws://127.0.0.1:9/v1/ws", PROJECT, tokens, **FAST, **options):
            pytest.fail("the session must not open")
    assert tokens.issued == []
