"""F24 heartbeats, F25 slow consumers, F05 reauth: every way a live socket is ended by the
server is documented, retryable where it should be, cleaned up, and loses nothing."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio

from tests.support.rawws import RawWs
from tests.support.session import Stack, StackFactory, close_catalogue
from tests.support.waiting import await_until, pace, scaled

from .helpers import Publisher, describe_gaps, log_seqs, note_events, replica_metrics

HEARTBEAT_TIMEOUT_MS = 800
HEARTBEAT_INTERVAL_MS = 200
SEND_TIMEOUT_MS = 300


@pytest.fixture(scope="module")
def tight(module_stack_factory: StackFactory) -> Stack:
    """One replica with short heartbeat and send timeouts."""
    return module_stack_factory.start(
        session_env={
            "TETHER_HEARTBEAT_TIMEOUT_MS": str(HEARTBEAT_TIMEOUT_MS),
            "TETHER_HEARTBEAT_INTERVAL_MS": str(HEARTBEAT_INTERVAL_MS),
            "TETHER_SEND_TIMEOUT_MS": str(SEND_TIMEOUT_MS),
        }
    )


async def pinger(send: Any, interval_ms: int = HEARTBEAT_INTERVAL_MS) -> None:
    """Heartbeats at the advertised interval (a pacing loop, not a synchronisation)."""
    n = 0
    while True:
        n += 1
        await send({"type": "ping", "v": 1, "nonce": f"n{n}"})
        await pace(interval_ms / 1000)  # the heartbeat interval itself


async def released(stack: Stack, replica: int = 0) -> None:
    """Wait until the replica holds no connection, subscription or feed."""

    async def clean() -> Any:
        m = await replica_metrics(stack, replica)
        names = ("tether_ws_connections_open", "tether_fanout_subscribers", "tether_fanout_feeds")
        values = {n: m.value(n) for n in names}
        return values if not any(values.values()) else None

    await await_until(clean, timeout=10, what="connections, subscribers and feeds back to 0")


def close_lines(stack: Stack, connection_id: str, replica: int = 0) -> list[dict[str, Any]]:
    return [
        line for line in stack.replicas[replica].proc.events("ws_close") if line.get("connection_id") == connection_id
    ]


async def close_line(stack: Stack, connection_id: str) -> list[dict[str, Any]]:
    """The connection's ws_close line(s), once written (the client may see the close first)."""
    return await await_until(
        lambda: trio.to_thread.run_sync(close_lines, stack, connection_id),
        timeout=10,
        what=f"the ws_close line of {connection_id}",
    )


# -- F24 ---------------------------------------------------------------------------------------


@pytest.mark.trio
async def test_F24_missed_heartbeats_close_with_heartbeat_timeout_and_clean_up(tight: Stack) -> None:
    user = tight.make_user()
    project = await tight.create_project(user.api_key, "heartbeat")
    entry = close_catalogue()["heartbeat_timeout"]
    await released(tight)

    # A peer that pings keeps its socket well past the timeout ...
    async with tight.session_ws(user.api_key, project) as (ws, ready):
        assert ready["heartbeat"] == {"interval_ms": HEARTBEAT_INTERVAL_MS, "timeout_ms": HEARTBEAT_TIMEOUT_MS}
        started = time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pinger, ws.send)
            pongs: list[dict[str, Any]] = []
            while time.monotonic() - started < 3 * HEARTBEAT_TIMEOUT_MS / 1000:
                frame = await ws.recv()
                assert frame["type"] == "pong", frame
                pongs.append(frame)
            # ... and once it goes quiet (a half-open peer looks the same), it is closed.
            nursery.cancel_scope.cancel()
        quiet_since = time.monotonic()
        closed = await ws.closed(timeout=10)
        quiet_for = time.monotonic() - quiet_since
    assert [p["nonce"] for p in pongs] == [f"n{i}" for i in range(1, len(pongs) + 1)]
    assert closed.code == entry["code"] == 4080
    assert closed.error is not None
    assert closed.error["code"] == "heartbeat_timeout"
    assert closed.error["retryable"] is True
    assert closed.error["action"] == "resume"
    assert HEARTBEAT_TIMEOUT_MS / 1000 * 0.5 <= quiet_for <= scaled(HEARTBEAT_TIMEOUT_MS / 1000 + 3)
    (line,) = await close_line(tight, ready["connection_id"])
    assert line["reason"] == "heartbeat_timeout"
    assert line["code"] == 4080
    assert line["level"] == "warning"
    assert line["user_id"] == user.user_id
    assert line["project_id"] == project["id"]

    # A peer that never sends anything after INIT.
    async with tight.session_ws(user.api_key, project) as (silent, ready):
        closed = await silent.closed(timeout=10)
    assert closed.code == 4080
    assert (await close_line(tight, ready["connection_id"]))[0]["reason"] == "heartbeat_timeout"
    await released(tight)
    metrics = await replica_metrics(tight, 0)
    assert metrics.value("tether_ws_closes_total", code="4080", reason="heartbeat_timeout") == 2


# -- F25 ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.trio
async def test_F25_slow_consumer_is_closed_retryable_and_resumes_without_loss(stack_factory: StackFactory) -> None:
    # Default heartbeats (45 s): the stalled tab below neither reads nor writes.
    tight = stack_factory.start(session_env={"TETHER_SEND_TIMEOUT_MS": str(SEND_TIMEOUT_MS)})
    user = tight.make_user()
    project = await tight.create_project(user.api_key, "slow")
    url = urlsplit(tight.session.url)
    assert url.hostname is not None
    assert url.port is not None
    pad = 8000
    async with (
        tight.session_ws(user.api_key, project) as (fast, _fast_ready),
        Publisher(tight, project["id"], "big") as publisher,
        trio.open_nursery() as nursery,
    ):
        fast_seqs: list[int] = []

        async def read_fast() -> None:
            while True:
                frame = await fast.recv(timeout=60)
                if frame["type"] == "event":
                    fast_seqs.append(frame["seq"])

        nursery.start_soon(read_fast)
        stalled = await RawWs.connect(f"ws://{url.hostname}:{url.port}/v1/ws", rcvbuf=4096)
        token = await tight.token(user.api_key)
        await stalled.send(
            {"type": "init", "v": 1, "token": token, "project": {"id": project["id"]}, "client_id": "slow"}
        )
        (ready,) = await stalled.read_frames(until=lambda f: f["type"] == "ready")
        assert ready["type"] == "ready"
        # From here on the stalled tab reads nothing (and sends nothing).

        async def found_slow() -> bool:
            # Counted the moment a send blocks past the timeout (the close line comes later:
            # the error frame and the close each get their own bounded attempt).
            return (await replica_metrics(tight, 0)).value("tether_slow_consumers_total") >= 1

        n = 1
        with trio.fail_after(scaled(60)):
            while not await found_slow():
                await publisher.publish(note_events("big", n, 50, pad=pad))
                n += 50
                if n > 10_000:
                    raise AssertionError(f"{n * pad >> 20} MB published and the stalled socket is still open")
        last = (await log_seqs(tight, project["id"]))[-1]

        # The fast tab on the same replica was not held back by the slow one.
        async def fast_caught_up() -> bool:
            return bool(fast_seqs) and fast_seqs[-1] >= last

        await await_until(fast_caught_up, timeout=30, what="the fast tab to receive every event")
        assert fast_seqs == list(range(1, last + 1)), describe_gaps(fast_seqs, last)
        # The stalled tab reads again: what it gets is a prefix of the log, then the
        # documented retryable close.
        frames = await stalled.read_frames(timeout=30)
        await stalled.aclose()
        nursery.cancel_scope.cancel()
    got = stalled.event_seqs
    assert got == list(range(1, len(got) + 1)), describe_gaps(got, len(got))
    assert len(got) < last, "the stalled socket cannot have received everything"
    assert frames[-1]["type"] == "error", frames[-1]
    assert frames[-1]["code"] == "slow_consumer"
    assert frames[-1]["retryable"] is True
    assert frames[-1]["action"] == "resume"
    assert stalled.close_code == close_catalogue()["slow_consumer"]["code"] == 4081
    (line,) = await close_line(tight, ready["connection_id"])
    assert line["reason"] == "slow_consumer"
    assert line["code"] == 4081
    assert line["level"] == "warning"
    assert (await replica_metrics(tight, 0)).value("tether_slow_consumers_total") == 1  # not the fast tab

    # It resumes from the last seq it saw and loses nothing.
    async with tight.session_ws(user.api_key, project, resume_from=got[-1] if got else 0) as (again, resumed):
        assert resumed["resume_from"] == (got[-1] if got else 0)
        rest = await again.events_until(lambda e: e["seq"] == last, timeout=30)
    union = got + [e["seq"] for e in rest]
    assert union == list(range(1, last + 1)), describe_gaps(union, last)
    await released(tight)


# -- F05: reauth ---------------------------------------------------------------------------------


def _parse(ts: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ts)


@pytest.mark.trio
async def test_F05_reauth_before_session_expiry_keeps_the_socket_and_without_it_session_expired(
    stack_factory: StackFactory,
) -> None:
    lifetime = 3
    stack = stack_factory.start(session_env={"TETHER_SESSION_LIFETIME_S": str(lifetime)})
    user = stack.make_user()
    project = await stack.create_project(user.api_key, "reauth")
    other = await stack.create_project(user.api_key, "elsewhere")
    results: dict[str, Any] = {}

    async def renewing() -> None:
        async with stack.session_ws(user.api_key, project) as (ws, ready):
            expires = _parse(ready["session_expires_at"])
            assert 0 < (expires - _parse(ready["server_time"])).total_seconds() <= lifetime + 0.5
            n = 0

            async def traffic_until(moment: dt.datetime) -> None:
                # Events flow on this socket until the wall clock passes ``moment``.
                nonlocal n
                while dt.datetime.now(dt.UTC) < moment:
                    n += 1
                    await stack.publish(project["id"], [{"event_id": f"tick-{n}", "kind": "tick", "data": {}}])
                    await ws.events_until(lambda e, tick=f"tick-{n}": e["event_id"] == tick)

            await traffic_until(expires - dt.timedelta(seconds=lifetime / 2))
            await ws.send({"type": "reauth", "v": 1, "token": await stack.token(user.api_key)})
            renewed = await ws.recv_type("reauth_ok")
            assert _parse(renewed["session_expires_at"]) > expires + dt.timedelta(seconds=lifetime / 4)
            # The same socket keeps working past the original expiry ...
            await traffic_until(expires + dt.timedelta(seconds=lifetime / 8))
            # ... until the renewed one.
            results["renewed"] = (renewed, await ws.closed(timeout=lifetime + 5))
            results["renewed_at"] = dt.datetime.now(dt.UTC)

    async def lapsing() -> None:
        async with stack.session_ws(user.api_key, project) as (ws, ready):
            results["lapsed"] = (ready, await ws.closed(timeout=lifetime + 5))
            results["lapsed_at"] = dt.datetime.now(dt.UTC)

    async def wrong_project() -> None:
        async with stack.session_ws(user.api_key, project) as (ws, _ready):
            await ws.send({"type": "reauth", "v": 1, "token": await stack.token(user.api_key, other["id"])})
            results["forbidden"] = await ws.closed()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(renewing)
        nursery.start_soon(lapsing)
        nursery.start_soon(wrong_project)

    renewed, closed = results["renewed"]
    assert closed.code == 4013
    assert closed.error is not None
    assert closed.error["code"] == "session_expired"
    assert closed.error["retryable"] is True
    assert closed.error["action"] == "refresh_token"
    assert results["renewed_at"] >= _parse(renewed["session_expires_at"]) - dt.timedelta(seconds=0.2)

    ready, lapsed = results["lapsed"]
    assert lapsed.code == 4013
    assert lapsed.error is not None
    assert lapsed.error["code"] == "session_expired"
    assert results["lapsed_at"] >= _parse(ready["session_expires_at"]) - dt.timedelta(seconds=0.2)
    assert results["lapsed_at"] < _parse(renewed["session_expires_at"])

    forbidden = results["forbidden"]
    assert forbidden.code == 4030
    assert forbidden.error is not None
    assert forbidden.error["code"] == "forbidden"
    assert forbidden.error["retryable"] is False
    lines = stack.session.proc.events("ws_reauth")
    assert len(lines) == 1
    assert lines[0]["user_id"] == user.user_id
    assert uuid.UUID(lines[0]["project_id"]) == uuid.UUID(project["id"])
