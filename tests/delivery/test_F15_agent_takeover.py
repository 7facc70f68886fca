"""F15: an agent's answer survives the death of the replica that was producing it.

The prompt's job row is stored with the prompt; each chunk advances it in the chunk's own
transaction.  When the replica is killed (SIGKILL: no drain, no goodbye) its job's
heartbeat goes stale and another replica claims it and continues from the next chunk, so
the log ends with every chunk exactly once, in order, and one ``agent_done``.
"""

from __future__ import annotations

import json

import pytest

from tests.support.pg import aquery
from tests.support.session import Stack, StackFactory
from tests.support.waiting import await_until

CHUNKS = 40


async def _log(stack: Stack, project_id: str) -> list[dict[str, object]]:
    return await aquery(
        stack.dsn,
        "SELECT seq, kind, data::text AS data FROM session.events WHERE project_id = $1 ORDER BY seq",
        project_id,
    )


@pytest.mark.trio
@pytest.mark.slow
async def test_F15_answer_of_killed_replica_is_finished_by_another(stack_factory: StackFactory) -> None:
    stack = stack_factory.start(
        replicas=2,
        session_env={"TETHER_AGENT_CHUNKS": str(CHUNKS), "TETHER_AGENT_DELAY_MS": "50", "TETHER_AGENT_STALE_S": "1"},
    )
    user = stack.make_user()
    project = await stack.create_project(user.api_key)
    async with stack.session_ws(user.api_key, project, replica=0) as (ws, _ready):
        await ws.send({"type": "prompt", "v": 1, "client_msg_id": "takeover-1", "text": "survive a crash"})
        ack = await ws.recv_type("prompt_ack")
        await ws.events_until(lambda e: e["kind"] == "agent_chunk" and e["data"]["index"] >= 5)
        stack.replicas[0].proc.kill()

    async def finished() -> bool:
        return any(row["kind"] == "agent_done" for row in await _log(stack, project["id"]))

    await await_until(finished, timeout=30, what="the other replica finishing the answer")
    rows = await _log(stack, project["id"])
    chunk_rows = [r for r in rows if r["kind"] == "agent_chunk"]
    indices = [json.loads(str(r["data"]))["index"] for r in chunk_rows]
    assert indices == list(range(CHUNKS)), f"chunks lost, doubled or out of order: {indices}"
    assert [r["kind"] for r in rows].count("agent_done") == 1
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    assert rows[0]["seq"] == ack["seq"]
    claimed = stack.replicas[1].proc.events("agent_job_claimed")
    assert len(claimed) == 1, claimed
    assert claimed[0]["next_index"] > 5
    jobs = await aquery(stack.dsn, "SELECT count(*) AS n FROM session.agent_jobs")
    assert jobs[0]["n"] == 0

    # A client resuming on the surviving replica sees the whole answer once.
    async with stack.session_ws(user.api_key, project, replica=1, resume_from=0) as (ws2, _):
        events = await ws2.events_until(lambda e: e["kind"] == "agent_done")
    assert [e["seq"] for e in events] == [r["seq"] for r in rows]
