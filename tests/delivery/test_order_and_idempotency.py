"""F20, F21, F23: gapless per-project seqs under concurrent publishers, idempotent prompts and
ingest, and fan-out of every event to every tab on every replica in the same order."""

from __future__ import annotations

import contextlib
import json
import random
import uuid
from typing import Any

import pytest
import trio

from tests.support.auth import bearer
from tests.support.logs import lines_for_request
from tests.support.pg import aquery
from tests.support.session import Stack, StackFactory, WsClient, close_catalogue
from tests.support.waiting import await_until, wait_until

from .helpers import Publisher, describe_gaps, log_event_ids, log_seqs, note_events, replica_metrics


@pytest.fixture(scope="module")
def two(module_stack_factory: StackFactory) -> Stack:
    return module_stack_factory.start(replicas=2, session_env={"TETHER_PROMPTS_PER_MINUTE": "6000"})


async def agents_idle(stack: Stack) -> None:
    async def idle() -> bool:
        for replica in range(len(stack.replicas)):
            if (await replica_metrics(stack, replica)).value("tether_agent_tasks") != 0:
                return False
        return True

    await await_until(idle, timeout=20, what="no agent answer in progress on any replica")


async def read_until_seq(ws: WsClient, last: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    if ws.events and ws.events[-1]["seq"] >= last:
        return ws.events
    return await ws.events_until(lambda e: e["seq"] >= last, timeout=timeout)


def prompt(msg_id: str, text: str) -> dict[str, Any]:
    return {"type": "prompt", "v": 1, "client_msg_id": msg_id, "text": text}


# -- F21 -------------------------------------------------------------------------------------


@pytest.mark.trio
async def test_F21_retried_prompt_is_stored_once_and_acked_with_original_seq(two: Stack) -> None:
    user = two.make_user()
    project = await two.create_project(user.api_key, "retry")
    async with two.session_ws(user.api_key, project, replica=0) as (ws, _ready):
        await ws.send(prompt("m-1", "hello"))
        first = await ws.recv_type("prompt_ack")
        await ws.send(prompt("m-1", "hello"))  # the same send, retried on the same socket
        again = await ws.recv_type("prompt_ack")
        await ws.events_until(lambda e: e["kind"] == "agent_done" and e["data"]["prompt_seq"] == first["seq"])
    assert first["duplicate"] is False
    assert again["duplicate"] is True
    assert again["seq"] == first["seq"]
    assert again["client_msg_id"] == "m-1"

    # After a reconnect to the other replica (resuming), the retry is still the same message.
    async with two.session_ws(user.api_key, project, replica=1, resume_from=first["seq"]) as (ws, _ready):
        await ws.send(prompt("m-1", "hello"))
        across = await ws.recv_type("prompt_ack")
        await ws.send(prompt("m-2", "second"))
        second = await ws.recv_type("prompt_ack")
        await ws.events_until(lambda e: e["kind"] == "agent_done" and e["data"]["prompt_seq"] == second["seq"])
    assert across["duplicate"] is True
    assert across["seq"] == first["seq"]
    assert second["duplicate"] is False
    assert second["seq"] > first["seq"]

    # A send whose ack never arrived (the socket died right after it), retried elsewhere.  The
    # replica may have stored it (and its answer) before it noticed the socket was gone, or not:
    # the retry resumes from the last event seen, as a client does, and sees the answer either way.
    last_seen = ws.events[-1]["seq"]
    token = await two.token(user.api_key)
    async with two.ws(0) as ws:
        ready = await ws.init(token, {"id": project["id"]})
        assert ready["type"] == "ready"
        await ws.send(prompt("m-3", "lost ack"))
    async with two.session_ws(user.api_key, project, replica=1, resume_from=last_seen) as (ws, _ready):
        await ws.send(prompt("m-3", "lost ack"))
        third = await ws.recv_type("prompt_ack")

        def answered(e: dict[str, Any]) -> bool:
            return e["kind"] == "agent_done" and e["data"]["prompt_seq"] == third["seq"]

        if not any(answered(e) for e in ws.events):  # the replay may have brought it before the ack
            await ws.events_until(answered)

    await agents_idle(two)
    ids = await log_event_ids(two, project["id"])
    seqs = await log_seqs(two, project["id"])
    assert seqs == list(range(1, len(seqs) + 1))
    for msg_id in ("m-1", "m-2", "m-3"):
        assert ids.count(f"prompt-{msg_id}") == 1, ids
    assert ids.index("prompt-m-3") + 1 == third["seq"]
    for prompt_seq in (first["seq"], second["seq"], third["seq"]):
        assert ids.count(f"agent-{prompt_seq}-done") == 1, ids
        chunks = [i for i in ids if i.startswith(f"agent-{prompt_seq}-") and not i.endswith("-done")]
        assert len(chunks) == 5, ids
    assert len(ids) == 3 * (1 + 5 + 1)


@pytest.mark.trio
async def test_F21_ingest_is_idempotent_by_event_id(two: Stack) -> None:
    user = two.make_user()
    project = await two.create_project(user.api_key, "ingest")
    batch = note_events("idem", 1, 5)
    async with two.session_ws(user.api_key, project, replica=1, resume_from=0) as (ws, _ready):
        first = await two.publish(project["id"], batch, replica=0)
        assert [r["seq"] for r in first["results"]] == [1, 2, 3, 4, 5]
        assert not any(r["duplicate"] for r in first["results"])
        for replica in (0, 1):  # the same batch again, through either replica
            again = await two.publish(project["id"], batch, replica=replica)
            assert again["results"] == [{**r, "duplicate": True} for r in first["results"]]
            assert again["last_seq"] == 5
        # Duplicates inside one batch, and a batch mixing stored and new ids.
        mixed = await two.publish(
            project["id"], [batch[0], *note_events("idem", 6, 1), batch[0], *note_events("idem", 6, 1)]
        )
        assert [(r["event_id"], r["seq"], r["duplicate"]) for r in mixed["results"]] == [
            ("idem-1", 1, True),
            ("idem-6", 6, False),
            ("idem-1", 1, True),
            ("idem-6", 6, True),
        ]
        # The same new batch from ten concurrent callers on both replicas: stored once.
        racing = note_events("race", 1, 20)
        answers: list[dict[str, Any]] = []

        async def racer(i: int) -> None:
            answers.append(await two.publish(project["id"], racing, replica=i % 2))

        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(racer, i)
        seq_sets = {tuple(r["seq"] for r in a["results"]) for a in answers}
        assert seq_sets == {tuple(range(7, 27))}, seq_sets
        assert sum(1 for a in answers if not a["results"][0]["duplicate"]) == 1
        events = await read_until_seq(ws, 26)
    assert [e["seq"] for e in events] == list(range(1, 27))
    assert await log_event_ids(two, project["id"]) == [f"idem-{n}" for n in range(1, 7)] + [
        f"race-{n}" for n in range(1, 21)
    ]


async def stored_event(stack: Stack, project_id: str, event_id: str) -> tuple[int, str, Any]:
    """(seq, kind, data) of one event, straight from the log."""
    rows = await aquery(
        stack.dsn,
        "SELECT seq, kind, data::text AS data FROM session.events WHERE project_id = $1 AND event_id = $2",
        uuid.UUID(project_id),
        event_id,
    )
    assert len(rows) == 1, rows
    return int(rows[0]["seq"]), str(rows[0]["kind"]), json.loads(rows[0]["data"])


@pytest.mark.trio
async def test_F21_prompt_reusing_a_client_msg_id_for_other_text_is_an_idempotency_conflict(two: Stack) -> None:
    """A retry (same id, same text) is a duplicate; the same id with other text is a client bug:
    error frame + close ``idempotency_conflict``, one log line, and the new text is not stored
    (no second prompt, no second answer) — on the replica that stored it and on the other one."""
    user = two.make_user()
    project = await two.create_project(user.api_key, "conflicting prompts")
    async with two.session_ws(user.api_key, project, replica=0) as (ws, _ready):
        await ws.send(prompt("m-1", "hello"))
        first = await ws.recv_type("prompt_ack")
        await ws.events_until(lambda e: e["kind"] == "agent_done" and e["data"]["prompt_seq"] == first["seq"])
        await ws.send(prompt("m-1", "hello"))
        again = await ws.recv_type("prompt_ack")
        await ws.send(prompt("m-1", "hello, but different"))
        closed = await ws.closed()
    assert (first["duplicate"], again["duplicate"], again["seq"]) == (False, True, first["seq"])
    assert closed.code == 4090 == close_catalogue()["idempotency_conflict"]["code"]
    assert closed.error is not None
    assert closed.frames[-1] == closed.error
    assert (closed.error["code"], closed.error["retryable"], closed.error["action"]) == (
        "idempotency_conflict",
        False,
        "fix_client",
    )
    assert "m-1" in closed.error["message"]
    assert f"seq {first['seq']}" in closed.error["message"]
    assert [f for f in closed.frames if f["type"] == "prompt_ack"] == [first, again]

    # the other replica knows the id from the log alone: a retry is still a duplicate, other text a conflict
    async with two.session_ws(user.api_key, project, replica=1, resume_from=first["seq"]) as (ws, _ready):
        await ws.send(prompt("m-1", "hello"))
        across = await ws.recv_type("prompt_ack")
        await ws.send(prompt("m-1", "HELLO"))
        closed_across = await ws.closed()
    assert (across["duplicate"], across["seq"]) == (True, first["seq"])
    assert closed_across.code == 4090

    await agents_idle(two)
    ids = await log_event_ids(two, project["id"])
    assert ids == ["prompt-m-1", *(f"agent-{first['seq']}-{i}" for i in range(5)), f"agent-{first['seq']}-done"]
    _seq, kind, data = await stored_event(two, project["id"], "prompt-m-1")
    assert (kind, data["text"]) == ("prompt", "hello")
    for replica in two.replicas:
        lines = replica.proc.events("ws_close", reason="idempotency_conflict", project_id=project["id"])
        assert len(lines) == 1, lines
        assert (lines[0]["code"], lines[0]["level"], lines[0]["client_msg_id"]) == (4090, "warning", "m-1")
        assert lines[0]["stored_seq"] == first["seq"]


@pytest.mark.trio
async def test_F21_ingest_reusing_an_event_id_for_other_content_reports_a_conflict_per_event(two: Stack) -> None:
    """Per event: same kind and data (as JSON values: key order, spacing, 2 vs 2.0 do not matter)
    is a duplicate; another kind or data is ``idempotency_conflict`` and stores nothing; the rest of
    the batch is stored.  One warning line for the request names the conflicting ids."""
    user = two.make_user()
    project = await two.create_project(user.api_key, "conflicting events")
    original = [
        {"event_id": "c-1", "kind": "note", "data": {"a": 1, "b": [1, 2], "s": "x"}},
        {"event_id": "c-2", "kind": "note", "data": {"n": 2}},
    ]
    first = await two.publish(project["id"], original)
    assert [(r["seq"], r["duplicate"]) for r in first["results"]] == [(1, False), (2, False)]
    # a raw body, so that the retry of c-1 really differs in key order, spacing and number spelling
    body = (
        '{"events":[{"event_id":"c-1","kind":"note","data":{ "s" : "x", "b":[1, 2.0],"a":1 }},'
        '{"event_id":"c-2","kind":"other","data":{"n":2}},'
        '{"event_id":"c-1","kind":"note","data":{"a":1,"b":[1,2],"s":"y"}},'
        '{"event_id":"c-3","kind":"note","data":{"n":3}},'
        '{"event_id":"c-3","kind":"note","data":{"n":4}}]}'
    )
    async with two.session_ws(user.api_key, project, replica=1, resume_from=0) as (ws, _ready):
        async with two.http(0) as http:
            response = await http.post(
                f"/v1/projects/{project['id']}/events",
                content=body.encode(),
                headers={**bearer(two.ingest_key), "Content-Type": "application/json"},
            )
        events = await read_until_seq(ws, 3)
    assert response.status_code == 200, response.text
    conflict = {"duplicate": False, "error": "idempotency_conflict"}
    assert response.json() == {
        "results": [
            {"event_id": "c-1", "seq": 1, "duplicate": True},
            {"event_id": "c-2", "seq": 2, **conflict},
            {"event_id": "c-1", "seq": 1, **conflict},
            {"event_id": "c-3", "seq": 3, "duplicate": False},
            {"event_id": "c-3", "seq": 3, **conflict},
        ],
        "last_seq": 3,
    }
    assert [(e["event_id"], e["data"]) for e in events] == [
        ("c-1", original[0]["data"]),
        ("c-2", {"n": 2}),
        ("c-3", {"n": 3}),
    ]
    assert await log_event_ids(two, project["id"]) == ["c-1", "c-2", "c-3"]
    assert await stored_event(two, project["id"], "c-1") == (1, "note", original[0]["data"])
    assert await stored_event(two, project["id"], "c-2") == (2, "note", {"n": 2})
    assert await stored_event(two, project["id"], "c-3") == (3, "note", {"n": 3})

    request_id = response.headers["X-Request-ID"]
    proc = two.replicas[0].proc
    lines = wait_until(
        lambda: [line for line in lines_for_request(proc, request_id) if line["event"] == "idempotency_conflict"],
        timeout=5,
        what="the idempotency_conflict line of the request",
    )
    assert len(lines) == 1, lines
    assert (lines[0]["level"], lines[0]["conflicts"], lines[0]["event_ids"]) == ("warning", 3, ["c-2", "c-1", "c-3"])
    assert lines[0]["project_id"] == project["id"]
    assert [line for line in lines_for_request(proc, request_id) if line["event"] == "http_error"] == []


@pytest.mark.trio
async def test_F21_agent_event_id_stored_with_other_data_fails_the_answer_loudly(
    module_stack_factory: StackFactory,
) -> None:
    """The built-in agent's chunk ids are derived from its job (``agent-<prompt seq>-<index>``): one
    already stored with other data is a bug, not a retry.  The step fails (nothing of it is stored),
    each attempt logs it, and after the last one the answer ends with ``agent_error``."""
    stack = module_stack_factory.start(session_env={"TETHER_AGENT_STALE_S": "0.5"})
    user = stack.make_user()
    project = await stack.create_project(user.api_key, "taken agent id")
    # the prompt below gets seq 2, so the agent's first chunk is agent-2-0: take that id first
    await stack.publish(project["id"], [{"event_id": "agent-2-0", "kind": "note", "data": {"taken": True}}])
    async with stack.session_ws(user.api_key, project, resume_from=0) as (ws, _ready):
        await ws.send(prompt("m-1", "hello"))
        ack = await ws.recv_type("prompt_ack")
        events = await ws.events_until(lambda e: e["kind"] in ("agent_error", "agent_done"))
    assert ack["seq"] == 2
    assert [e["event_id"] for e in events] == ["agent-2-0", "prompt-m-1", "agent-2-error"]
    assert await log_event_ids(stack, project["id"]) == ["agent-2-0", "prompt-m-1", "agent-2-error"]
    failed = [line for line in stack.session.proc.events("agent_failed") if "idempotency_conflict" in line["exc"]]
    assert len(failed) == 3, failed  # MAX_ATTEMPTS
    assert all("agent-2-0" in line["exc"] for line in failed), failed


# -- F20 -------------------------------------------------------------------------------------


@pytest.mark.trio
async def test_F20_per_project_seq_is_gapless_under_concurrent_publishers(two: Stack) -> None:
    user = two.make_user()
    project = await two.create_project(user.api_key, "gapless")
    rng = random.Random(20)
    publishers = [Publisher(two, project["id"], f"pub{i}", replicas=[i % 2]) for i in range(8)]
    plans = [[rng.randint(1, 25) for _ in range(20)] for _ in publishers]
    prompt_acks: list[dict[str, Any]] = []
    async with contextlib.AsyncExitStack() as resources:
        for publisher in publishers:
            await resources.enter_async_context(publisher)
        tab0, _r0 = await resources.enter_async_context(two.session_ws(user.api_key, project, replica=0))
        tab1, _r1 = await resources.enter_async_context(two.session_ws(user.api_key, project, replica=1))

        async def run(publisher: Publisher, sizes: list[int]) -> None:
            n = 1
            for size in sizes:
                await publisher.publish(note_events(publisher.prefix, n, size))
                n += size

        async def prompts(ws: WsClient, name: str) -> None:
            for i in range(10):
                await ws.send(prompt(f"{name}-{i}", f"prompt {i}"))

        async with trio.open_nursery() as nursery:
            for publisher, sizes in zip(publishers, plans, strict=True):
                nursery.start_soon(run, publisher, sizes)
            nursery.start_soon(prompts, tab0, "t0")
            nursery.start_soon(prompts, tab1, "t1")
        await agents_idle(two)
        total = sum(map(sum, plans)) + 20 * (1 + 5 + 1)  # a prompt, 5 chunks, done
        for ws in (tab0, tab1):
            await read_until_seq(ws, total)
            prompt_acks.extend(f for f in ws.received if f["type"] == "prompt_ack")
    log = await log_seqs(two, project["id"])
    assert log == list(range(1, total + 1)), describe_gaps(log, total)
    ids = await log_event_ids(two, project["id"])
    assert len(set(ids)) == len(ids) == total
    for publisher, sizes in zip(publishers, plans, strict=True):
        assert publisher.sent == sum(sizes)
        own = [publisher.acked[f"{publisher.prefix}-{n}"] for n in range(1, sum(sizes) + 1)]
        assert own == sorted(own), f"{publisher.prefix}: a later publish got a smaller seq"
        assert all(ids[seq - 1] == event_id for event_id, seq in publisher.acked.items())
    assert len(prompt_acks) == 20
    assert all(ids[a["seq"] - 1] == f"prompt-{a['client_msg_id']}" for a in prompt_acks)
    for ws in (tab0, tab1):
        seen = [e["seq"] for e in ws.events]
        assert seen == list(range(1, total + 1)), describe_gaps(seen, total)


# -- F23 -------------------------------------------------------------------------------------


@pytest.mark.trio
async def test_F23_two_tabs_on_two_replicas_see_every_event_in_the_same_order(two: Stack) -> None:
    user = two.make_user()
    project = await two.create_project(user.api_key, "two tabs")
    async with (
        two.session_ws(user.api_key, project, replica=0) as (tab_a, ready_a),
        two.session_ws(user.api_key, project, replica=1) as (tab_b, ready_b),
    ):
        assert ready_a["connection_id"] != ready_b["connection_id"]

        async def publish_from(replica: int) -> None:
            for start in range(1, 201, 10):
                await two.publish(project["id"], note_events(f"r{replica}", start, 10), replica=replica)

        async def prompts_from(ws: WsClient, name: str) -> None:
            for i in range(3):
                await ws.send(prompt(f"{name}-{i}", f"from {name}"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish_from, 0)
            nursery.start_soon(publish_from, 1)
            nursery.start_soon(prompts_from, tab_a, "a")
            nursery.start_soon(prompts_from, tab_b, "b")
        await agents_idle(two)
        total = 400 + 6 * 7
        seen_a = [(e["seq"], e["event_id"]) for e in await read_until_seq(tab_a, total)]
        seen_b = [(e["seq"], e["event_id"]) for e in await read_until_seq(tab_b, total)]
    log = list(enumerate(await log_event_ids(two, project["id"]), start=1))
    assert len(log) == total
    assert seen_a == log
    assert seen_b == log
    # Each tab also got its own acks, and only its own.
    acks_a = {f["client_msg_id"] for f in tab_a.received if f["type"] == "prompt_ack"}
    acks_b = {f["client_msg_id"] for f in tab_b.received if f["type"] == "prompt_ack"}
    assert acks_a == {"a-0", "a-1", "a-2"}
    assert acks_b == {"b-0", "b-1", "b-2"}


@pytest.mark.trio
async def test_F23_events_of_other_projects_never_reach_a_socket(two: Stack) -> None:
    user = two.make_user()
    mine = await two.create_project(user.api_key, "mine")
    other = await two.create_project(user.api_key, "other")
    async with two.session_ws(user.api_key, mine, replica=1) as (ws, _ready):
        await two.publish(other["id"], note_events("other", 1, 50))
        await two.publish(mine["id"], note_events("mine", 1, 3))
        # The other project's 50 events were committed first: a leak would come before mine-3.
        events = await read_until_seq(ws, 3)
    assert [e["event_id"] for e in events] == ["mine-1", "mine-2", "mine-3"]
    async with two.http(1) as http:
        page = await http.get(f"/v1/projects/{other['id']}/events", headers=bearer(user.api_key))
    assert page.json()["last_seq"] == 50
