"""F20/F22 with batched delivery: a client that sends ``batch: true`` in INIT gets
``events`` frames (several consecutive events each), live and while catching up, with
the same guarantees as single ``event`` frames: every seq once, in order, none missing.
A client that does not ask keeps getting one ``event`` frame per event."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.session import Stack, StackFactory, WsClient

from .helpers import describe_gaps, note_events


@pytest.fixture(scope="module")
def two(module_stack_factory: StackFactory) -> Stack:
    return module_stack_factory.start(replicas=2)


def frame_types(client: WsClient) -> set[str]:
    return {f["type"] for f in client.received}


def batch_sizes(client: WsClient) -> list[int]:
    return [len(f["events"]) for f in client.received if f["type"] == "events"]


async def publish_all(stack: Stack, project_id: str, prefix: str, total: int, *, replica: int = 0) -> None:
    for start in range(1, total + 1, 100):
        await stack.publish(project_id, note_events(prefix, start, min(100, total + 1 - start)), replica=replica)


async def receive_through(client: WsClient, last: int) -> list[int]:
    events = await client.events_until(lambda e: e["seq"] >= last)
    return [e["seq"] for e in events]


@pytest.mark.trio
async def test_F20_batched_and_single_clients_get_every_event_once_in_order_on_both_replicas(two: Stack) -> None:
    user = two.make_user()
    project = await two.create_project(user.api_key, "batched live")
    total = 600
    async with (
        two.session_ws(user.api_key, project, replica=0, batch=True) as (batched_here, ready_batched),
        two.session_ws(user.api_key, project, replica=1, batch=True) as (batched_there, _),
        two.session_ws(user.api_key, project, replica=0) as (single, ready_single),
    ):
        assert ready_batched["batch"] is True
        assert ready_single["batch"] is False
        # appended on replica 0: pushed into its feed at commit, read from the log on replica 1
        await publish_all(two, project["id"], "live", total, replica=0)
        for client in (batched_here, batched_there, single):
            seqs = await receive_through(client, total)
            assert seqs == list(range(1, total + 1)), describe_gaps(seqs, total)
    assert frame_types(single) == {"ready", "event"}
    for client in (batched_here, batched_there):
        assert frame_types(client) == {"ready", "events"}
        sizes = batch_sizes(client)
        # one ingest request of 100 events commits at once and is delivered together
        assert max(sizes) > 1, sizes
        assert sum(sizes) == total


@pytest.mark.trio
async def test_F22_batched_catch_up_from_zero_is_complete_ordered_and_bounded(two: Stack) -> None:
    user = two.make_user()
    project = await two.create_project(user.api_key, "batched replay")
    total = 2500  # more than the feed cache (2,048) and more than a replay page (1,000)
    await publish_all(two, project["id"], "old", total, replica=1)
    async with two.session_ws(user.api_key, project, replica=0, resume_from=0, batch=True) as (client, ready):
        assert ready["last_seq"] == total
        assert ready["resume_from"] == 0
        seqs = await receive_through(client, total)
        assert seqs == list(range(1, total + 1)), describe_gaps(seqs, total)
        sizes = batch_sizes(client)
        assert max(sizes) <= 500, sizes  # the server's bound per events frame
        assert len(sizes) < total / 10, f"catch-up in {len(sizes)} frames for {total} events"
        # then live, continuing the same seq line
        await two.publish(project["id"], note_events("new", 1, 3), replica=1)
        seqs = await receive_through(client, total + 3)
        assert seqs == list(range(1, total + 4)), describe_gaps(seqs, total + 3)


@pytest.mark.trio
async def test_F22_batched_client_resumes_mid_log_without_gap_or_duplicate(two: Stack) -> None:
    user = two.make_user()
    project = await two.create_project(user.api_key, "batched resume")
    await publish_all(two, project["id"], "a", 300, replica=0)
    received: list[dict[str, Any]] = []
    async with two.session_ws(user.api_key, project, replica=1, resume_from=0, batch=True) as (client, _):
        received = await client.events_until(lambda e: e["seq"] >= 120)
    cursor = received[-1]["seq"]  # whatever the last frame delivered, the client resumes after it
    await publish_all(two, project["id"], "b", 200, replica=1)
    async with two.session_ws(user.api_key, project, replica=0, resume_from=cursor, batch=True) as (client, _):
        seqs = await receive_through(client, 500)
    assert seqs == list(range(cursor + 1, 501)), describe_gaps([*range(1, cursor + 1), *seqs], 500)
