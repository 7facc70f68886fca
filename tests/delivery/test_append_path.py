"""F20, F23 on the append path: the group commit's batches across projects, and the local push.

* Appends to many projects at once are written in one pipelined batch (one statement per
  project, one round trip): each project's seqs stay gapless and each publisher gets its own
  seqs back, while a publish to a project deleted meanwhile fails alone (404), not the batch.
* The replica that committed events hands them to its own sockets without reading them back;
  other replicas read them from the log.  Both must send the same bytes: the event's data
  exactly as published (key order included), on every replica and in the HTTP catch-up read.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from tests.support.auth import bearer
from tests.support.session import Stack, StackFactory, WsClient, check_server_frame
from tests.support.waiting import scaled

from .helpers import log_seqs, note_events


@pytest.fixture(scope="module")
def two(module_stack_factory: StackFactory) -> Stack:
    return module_stack_factory.start(replicas=2)


async def raw_event_frames(client: WsClient, count: int, timeout: float = 20.0) -> list[str]:
    """The next ``count`` ``event`` frames exactly as the server sent them (other frames skipped)."""
    texts: list[str] = []
    with trio.fail_after(scaled(timeout)):
        while len(texts) < count:
            raw = await client.ws.get_message()
            assert isinstance(raw, str), "the server sent a binary frame"
            if check_server_frame(raw)["type"] == "event":
                texts.append(raw)
    return texts


def key_order(text: str) -> list[list[str]]:
    """The key order of every JSON object in ``text``, outermost last."""
    orders: list[list[str]] = []

    def keep(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        orders.append([k for k, _ in pairs])
        return dict(pairs)

    json.loads(text, object_pairs_hook=keep)
    return orders


# Key order, spacing, escapes and big numbers that a normalising store (jsonb) would rewrite.
DATA = {"zeta": 1, "alpha": {"y": [1, 2.5, "é ü ✓"], "b": None}, "text": 'line\u2028sep "q"', "n": 10**20}


@pytest.mark.trio
async def test_F23_an_event_reaches_every_replica_as_the_same_bytes_as_published(two: Stack) -> None:
    user = two.make_user()
    project = await two.create_project(user.api_key, "same bytes")
    events = [{"event_id": f"e-{i}", "kind": "note", "data": {**DATA, "i": i}} for i in range(4)]
    async with (
        two.session_ws(user.api_key, project, replica=0) as (tab0, _r0),
        two.session_ws(user.api_key, project, replica=1) as (tab1, _r1),
    ):
        # published on each replica in turn: each tab gets two by local push, two from the log
        await two.publish(project["id"], events[:2], replica=0)
        await two.publish(project["id"], events[2:], replica=1)
        frames0 = await raw_event_frames(tab0, 4)
        frames1 = await raw_event_frames(tab1, 4)
    assert frames0 == frames1
    published_order = key_order(json.dumps(events[0]["data"]))
    for i, text in enumerate(frames0):
        frame = json.loads(text)
        assert (frame["seq"], frame["event_id"]) == (i + 1, f"e-{i}")
        assert frame["data"] == events[i]["data"]
        data_orders = key_order(json.dumps(frame["data"]))  # dict order = the order in the frame
        assert data_orders == published_order, f"data keys reordered: {text}"
    # the catch-up read serves the same data text
    async with two.http(1) as http:
        response = await http.get(f"/v1/projects/{project['id']}/events", headers=bearer(user.api_key))
    assert response.status_code == 200, response.text
    served = json.loads(response.text)["events"]
    assert [e["data"] for e in served] == [json.loads(t)["data"] for t in frames0]
    for event in served:
        assert key_order(json.dumps(event["data"])) == published_order


@pytest.mark.trio
async def test_F20_appends_to_many_projects_at_once_stay_gapless_and_a_deleted_project_fails_alone(
    two: Stack,
) -> None:
    user = two.make_user()
    projects = [await two.create_project(user.api_key, f"many {i}") for i in range(8)]
    doomed = await two.create_project(user.api_key, "deleted")
    async with two.http(0) as http:
        response = await http.delete(f"/v1/projects/{doomed['id']}", headers=bearer(user.api_key))
        assert response.status_code == 204, response.text
    acked: dict[str, dict[str, int]] = {p["id"]: {} for p in projects}
    refused: list[dict[str, Any]] = []

    async def publish(http: Any, project_id: str, start: int) -> None:
        response = await http.post(
            f"/v1/projects/{project_id}/events",
            json={"events": note_events("n", start, 3)},
            headers=bearer(two.ingest_key),
        )
        if project_id == doomed["id"]:
            assert response.status_code == 404, response.text
            refused.append(response.json())
            return
        assert response.status_code == 200, response.text
        for result in response.json()["results"]:
            assert result["duplicate"] is False
            acked[project_id][result["event_id"]] = result["seq"]

    async with two.http(0) as http:
        for round_ in range(5):  # each round: every project at once, so the appends are grouped
            async with trio.open_nursery() as nursery:
                for project_id in [p["id"] for p in projects] + [doomed["id"]]:
                    nursery.start_soon(publish, http, project_id, 1 + 3 * round_)
    assert len(refused) == 5
    assert all(body["code"] == "not_found" for body in refused)
    for project in projects:
        assert await log_seqs(two, project["id"]) == list(range(1, 16))
        assert sorted(acked[project["id"]].values()) == list(range(1, 16))
        # within a publisher's request, its events got consecutive seqs in the order sent
        for round_ in range(5):
            seqs = [acked[project["id"]][f"n-{1 + 3 * round_ + k}"] for k in range(3)]
            assert seqs == list(range(seqs[0], seqs[0] + 3))
