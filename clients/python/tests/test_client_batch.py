"""Batched delivery in the session SDK, against the in-process scripted server.

INIT asks for it (``batch: true``, unless ``batch=False``); the items of an ``events``
frame are handled exactly as if each had arrived alone in an ``event`` frame: dedup by seq
(F21), gap detection and resume (F20, F22), the resume cursor, one delivered Event each.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from test_client_session import FAST, PROJECT, Tokens, collect
from tether_fake_server import Conn, FakeServer, event_frame
from waiting import until

from tether_client import Event, TetherProtocolError, open_session

pytestmark = pytest.mark.trio


async def stays(conn: Conn) -> None:
    await conn.ready()
    await conn.until_closed()


async def test_init_asks_for_batched_delivery_by_default_and_batch_false_leaves_it_out(nursery: trio.Nursery) -> None:
    server = await FakeServer([stays]).start(nursery)
    async with open_session(server.url, PROJECT, Tokens(), **FAST) as session:
        assert server.inits[0]["batch"] is True
        assert session.ready.batch is True
    async with open_session(server.url, PROJECT, Tokens(), batch=False, **FAST) as session:
        assert "batch" not in server.inits[1]
        assert session.ready.batch is False


async def test_F21_batched_events_are_delivered_once_in_order_and_duplicates_dropped(nursery: trio.Nursery) -> None:
    async def batches(conn: Conn) -> None:
        await conn.ready(last_seq=0)
        await conn.events(1, 2, 3)
        await conn.event(4, n=4)
        await conn.events(3, 4, 5, 6)  # overlaps what was delivered: 3 and 4 are dropped
        await conn.until_closed()

    server = await FakeServer([batches]).start(nursery)
    async with open_session(server.url, PROJECT, Tokens(), **FAST) as session:
        seen: list[Event] = []
        with trio.fail_after(5):
            async for event in session.events():
                seen.append(event)
                if event.seq == 6:
                    break
        assert [e.seq for e in seen] == [1, 2, 3, 4, 5, 6]
        assert [e.data["n"] for e in seen] == [1, 2, 3, 4, 5, 6]
        assert [e.event_id for e in seen] == ["e1", "e2", "e3", "e4", "e5", "e6"]
        await until(lambda: session.stats.events_delivered == 6)  # counted once the send returns
        stats = session.stats
        assert (stats.batches, stats.events_delivered, stats.duplicates_dropped, stats.gaps) == (2, 6, 2, 0)
        assert session.last_seq == 6
        assert len(server.conns) == 1


async def test_F20_a_gap_inside_a_batch_delivers_what_came_before_it_and_resumes(nursery: trio.Nursery) -> None:
    async def gappy(conn: Conn) -> None:
        await conn.ready(last_seq=0)
        await conn.events(1, 2, 4, 5)  # 3 is missing
        await conn.until_closed()

    async def whole(conn: Conn) -> None:
        await conn.ready(last_seq=5)
        await conn.events(3, 4, 5)
        await conn.until_closed()

    server = await FakeServer([gappy, whole]).start(nursery)
    async with open_session(server.url, PROJECT, Tokens(), **FAST) as session:
        assert await collect(session.events(), 5) == [1, 2, 3, 4, 5]
        assert session.stats.gaps == 1
        assert server.inits[1]["resume_from"] == 2
        assert server.inits[1]["batch"] is True


async def test_F22_after_a_batch_the_resume_cursor_is_its_last_seq(nursery: trio.Nursery) -> None:
    async def drained(conn: Conn) -> None:
        await conn.ready(last_seq=0)
        await conn.events(*range(1, 8))
        await conn.fail("draining", retry_after_ms=0)

    server = await FakeServer([drained, stays]).start(nursery)
    async with open_session(server.url, PROJECT, Tokens(), **FAST) as session:
        assert await collect(session.events(), 7) == list(range(1, 8))
        await until(lambda: len(server.conns) == 2 and session.connected)
        assert server.inits[1]["resume_from"] == 7


@pytest.mark.parametrize(
    ("items", "match"),
    [
        ([], r"events frame: events: \[\] has less than 1 item"),
        ([event_frame(2), {"type": "prompt", "v": 1}], r"events frame: events\.1"),
        ([event_frame(2), {**event_frame(3), "v": 2}], r"events frame: events\.1\.v"),
        ([event_frame(2), {**event_frame(3), "seq": "3"}], r"events frame: events\.1\.seq"),
    ],
)
async def test_a_malformed_events_frame_delivers_nothing_and_ends_the_session(
    nursery: trio.Nursery, items: list[dict[str, Any]], match: str
) -> None:
    async def malformed(conn: Conn) -> None:
        await conn.ready(last_seq=0)
        await conn.event(1)
        await conn.send({"type": "events", "v": 1, "events": items})
        await conn.until_closed()

    server = await FakeServer([malformed]).start(nursery)
    async with open_session(server.url, PROJECT, Tokens(), **FAST) as session:
        seen: list[int] = []

        async def read_all() -> None:
            async for event in session.events():
                seen.append(event.seq)  # noqa: PERF401 - keeps what arrived before the error

        with pytest.raises(TetherProtocolError, match=match), trio.fail_after(5):
            await read_all()
        assert seen == [1]  # nothing of the malformed batch
    assert len(server.conns) == 1


async def test_an_events_frame_before_ready_is_a_protocol_error(nursery: trio.Nursery) -> None:
    async def early(conn: Conn) -> None:
        await conn.events(1)
        await conn.until_closed()

    server = await FakeServer([early]).start(nursery)
    with pytest.raises(TetherProtocolError, match="Events before ready"), trio.fail_after(5):
        async with open_session(server.url, PROJECT, Tokens(), **FAST):
            pytest.fail("the session must not open")
