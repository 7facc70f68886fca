"""F22: the durable log, resume_from, replay then live, on any replica.

The seam between replay and live is where events get lost or doubled: the tests reconnect
while a background task keeps publishing, hop between replicas, and compare what the
client saw with the log itself.
"""

from __future__ import annotations

import time

import pytest
import trio

from tests.support.auth import bearer
from tests.support.session import Stack, StackFactory, close_catalogue
from tests.support.waiting import await_until, pace, scaled, wait_until

from .helpers import Publisher, describe_gaps, log_seqs, note_events


@pytest.fixture(scope="module")
def two(module_stack_factory: StackFactory) -> Stack:
    """Two replicas on one database."""
    return module_stack_factory.start(replicas=2)


@pytest.mark.trio
async def test_F22_resume_replays_after_seq_then_live_without_gap_or_duplicate(two: Stack) -> None:
    user = two.make_user()
    project = await two.create_project(user.api_key, "seam")
    total, batch = 1200, 4
    received: list[int] = []  # every seq of every connection, duplicates included
    hops: list[tuple[int, int, int]] = []  # (replica, resume_from, ready.last_seq)

    async def publish_continuously() -> None:
        for start in range(1, total + 1, batch):
            await publisher.publish(note_events("seam", start, batch))

    async with Publisher(two, project["id"], "seam", replicas=[0, 1]) as publisher, trio.open_nursery() as nursery:
        nursery.start_soon(publish_continuously)
        replica, last = 0, 0
        with trio.fail_after(scaled(90)):
            while last < total:
                # Read a stretch (different lengths, so the cut lands in replay and in live),
                # then drop the socket and resume on the other replica.
                stretch = 37 + 61 * (len(hops) % 3)
                async with two.session_ws(user.api_key, project, replica=replica, resume_from=last) as (ws, ready):
                    assert ready["resume_from"] == last, ready
                    hops.append((replica, last, ready["last_seq"]))
                    target = min(total, last + stretch)
                    while last < target:
                        frame = await ws.recv()
                        if frame["type"] == "event":
                            received.append(frame["seq"])
                            last = frame["seq"]
                replica = 1 - replica
    log = await log_seqs(two, project["id"])
    assert log == list(range(1, total + 1)), describe_gaps(log, total)
    assert received == list(range(1, total + 1)), describe_gaps(received, total)
    assert publisher.sent == total
    # The cut landed both where the client was behind the log (replay) and where it was
    # level with it (live), on both replicas.
    assert {r for r, _, _ in hops} == {0, 1}
    assert any(ready_last > resume for _, resume, ready_last in hops), hops
    assert len(hops) >= 10, hops


@pytest.mark.trio
async def test_F22_resume_from_last_seq_replays_nothing_then_goes_live(two: Stack) -> None:
    user = two.make_user()
    project = await two.create_project(user.api_key, "level")
    first = await two.publish(project["id"], note_events("level", 1, 10))
    assert first["last_seq"] == 10
    async with two.session_ws(user.api_key, project, replica=1, resume_from=10) as (ws, ready):
        assert ready["last_seq"] == 10
        assert ready["resume_from"] == 10
        await two.publish(project["id"], note_events("level", 11, 3), replica=0)
        events = await ws.events_until(lambda e: e["seq"] == 13)
    assert [e["seq"] for e in events] == [11, 12, 13]
    assert [e["event_id"] for e in events] == ["level-11", "level-12", "level-13"]


@pytest.mark.trio
async def test_F22_resume_from_beyond_last_seq_is_resume_unavailable(two: Stack) -> None:
    user = two.make_user()
    project = await two.create_project(user.api_key, "beyond")
    await two.publish(project["id"], note_events("beyond", 1, 5))
    catalogue = close_catalogue()["resume_unavailable"]
    for replica, resume_from in ((0, 6), (1, 10_000)):
        token = await two.token(user.api_key)
        async with two.ws(replica) as ws:
            error = await ws.init(token, {"id": project["id"]}, resume_from=resume_from)
            closed = await ws.closed()
        assert error["type"] == "error", error
        assert error["code"] == "resume_unavailable"
        assert error["close_code"] == catalogue["code"] == 4041
        assert error["retryable"] is False
        assert error["action"] == "reload"
        assert closed.code == 4041
        assert not ws.events, "no event may be sent before a refused resume"
        proc = two.replicas[replica].proc
        lines = wait_until(
            lambda proc=proc: [
                line
                for line in proc.events("ws_close", reason="resume_unavailable")
                if line.get("project_id") == project["id"]
            ],
            timeout=10,
            what=f"a ws_close line for the refused resume on replica {replica}",
        )
        assert lines[-1]["level"] == "warning"
        assert lines[-1]["code"] == 4041
    # resume_from == last_seq is not "beyond": it is accepted.
    async with two.session_ws(user.api_key, project, resume_from=5) as (_ws, ready):
        assert ready["last_seq"] == 5


@pytest.mark.trio
async def test_F22_resume_from_older_than_retention_is_resume_unavailable(stack_factory: StackFactory) -> None:
    """Events pruned by retention are gone: a partial replay would lose them silently."""
    keep = 10
    stack = stack_factory.start(
        session_env={"TETHER_RETENTION_EVENTS": str(keep), "TETHER_RETENTION_INTERVAL_S": "0.2"}
    )
    user = stack.make_user()
    project = await stack.create_project(user.api_key, "pruned")
    await stack.publish(project["id"], note_events("pruned", 1, 30))

    async def pruned() -> bool:
        return (await log_seqs(stack, project["id"]))[0] == 30 - keep + 1

    await await_until(pruned, timeout=15, what=f"retention to keep only the last {keep} events")
    assert stack.session.proc.events("events_pruned")
    for resume_from in (0, 5, 30 - keep - 1):
        token = await stack.token(user.api_key)
        async with stack.ws() as ws:
            error = await ws.init(token, {"id": project["id"]}, resume_from=resume_from)
            closed = await ws.closed()
        assert error["type"] == "error", error
        assert error["code"] == "resume_unavailable"
        assert error["retryable"] is False
        assert closed.code == 4041
        assert not ws.events
    async with stack.http() as http:
        page = await http.get(f"/v1/projects/{project['id']}/events", params={"after": 5}, headers=bearer(user.api_key))
    assert page.status_code == 410
    assert page.json()["code"] == "resume_unavailable"
    # Resuming exactly at the retained edge loses nothing and is allowed.
    async with stack.session_ws(user.api_key, project, resume_from=30 - keep) as (ws, _ready):
        events = await ws.events_until(lambda e: e["seq"] == 30)
    assert [e["seq"] for e in events] == list(range(30 - keep + 1, 31))


@pytest.mark.slow
@pytest.mark.trio
async def test_F22_catch_up_100k_events(stack_factory: StackFactory) -> None:
    stack = stack_factory.start()
    user = stack.make_user()
    project = await stack.create_project(user.api_key, "catch-up")
    total, batch = 100_000, 500
    acked: dict[str, int] = {}
    started = time.perf_counter()
    async with stack.http() as http:
        for start in range(1, total + 1, batch):
            response = await http.post(
                f"/v1/projects/{project['id']}/events",
                json={"events": note_events("bulk", start, batch)},
                headers=bearer(stack.ingest_key),
            )
            assert response.status_code == 200, response.text
            acked.update((r["event_id"], r["seq"]) for r in response.json()["results"])
    ingest_s = time.perf_counter() - started
    assert len(acked) == total
    assert acked["bulk-1"] == 1
    assert acked[f"bulk-{total}"] == total

    seqs: list[int] = []
    started = time.perf_counter()
    async with stack.session_ws(user.api_key, project, resume_from=0) as (ws, ready), trio.open_nursery() as nursery:
        assert ready["last_seq"] == total

        async def heartbeat() -> None:  # as every real client does while it reads (a long catch-up included)
            while True:
                await pace(ready["heartbeat"]["interval_ms"] / 1000)
                await ws.send({"type": "ping", "v": 1})

        nursery.start_soon(heartbeat)
        with trio.fail_after(scaled(150)):
            while not seqs or seqs[-1] < total:
                frame = await ws.recv()
                if frame["type"] == "event":
                    seqs.append(frame["seq"])
                    ws.received.clear()  # keep the client's memory flat; the frame was checked
                    ws.events.clear()
        nursery.cancel_scope.cancel()
    catch_up_s = time.perf_counter() - started
    assert seqs == list(range(1, total + 1)), describe_gaps(seqs, total)
    print(
        f"\nF22 catch-up: {total} events ingested in {ingest_s:.1f}s ({total / ingest_s:,.0f} events/s); "
        f"replayed to one socket in {catch_up_s:.1f}s ({total / catch_up_s:,.0f} events/s, "
        "every frame schema-checked on both ends)"
    )
