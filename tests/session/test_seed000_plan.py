"""Seed 000's test plan, end to end, against both real services and Postgres.

create a project → see it listed → resolve it by slug after a "refresh" (a new client) →
connect → INIT completes → send a prompt → the agent's answer streams in.
"""

from __future__ import annotations

import pytest

from tests.support.auth import bearer
from tests.support.session import Stack


@pytest.mark.trio
async def test_F33_seed000_plan_create_list_slug_connect_prompt_stream(stack: Stack) -> None:
    user = stack.make_user()
    async with stack.http() as http:
        created = await http.post("/v1/projects", json={"name": "Seed 000 app"}, headers=bearer(user.api_key))
        assert created.status_code == 201
        project = created.json()
        listed = await http.get("/v1/projects", headers=bearer(user.api_key))
        assert project["id"] in [p["id"] for p in listed.json()["projects"]]
    async with stack.http() as refreshed:  # a new client: the "refresh"
        by_slug = await refreshed.get(f"/v1/projects/by-slug/{project['slug']}", headers=bearer(user.api_key))
        assert by_slug.status_code == 200
        assert by_slug.json()["id"] == project["id"]
    token = await stack.token(user.api_key)
    async with stack.ws() as ws:
        ready = await ws.init(token, {"slug": project["slug"]})
        assert ready["type"] == "ready"
        assert ready["project"]["id"] == project["id"]
        await ws.send({"type": "prompt", "v": 1, "client_msg_id": "m-1", "text": "build me a todo app"})
        ack = await ws.recv_type("prompt_ack")
        assert ack["duplicate"] is False
        events = await ws.events_until(lambda e: e["kind"] == "agent_done")
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "prompt"
    assert kinds[-1] == "agent_done"
    chunks = [e["data"]["text"] for e in events if e["kind"] == "agent_chunk"]
    assert len(chunks) == 5
    assert "".join(chunks) == "You said: build me a todo app"
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(ack["seq"], ack["seq"] + len(seqs)))
