"""Projects over HTTP, black-box: concurrency (F12), idempotency, atomicity at every failpoint
(F02), ownership (F03), dependency outages (F06), metrics (F41) and the served contract.

Every response goes through the contract check of ``Stack.http()`` (status, content type,
body schema, ``X-Request-ID``).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import pytest
import trio

from tests.support.auth import AuthServiceFactory, UserCredentials, bearer
from tests.support.contract import async_client, load_contract
from tests.support.logs import assert_one_error_line
from tests.support.metrics import Metrics, scrape
from tests.support.pg import PgServer, aquery
from tests.support.session import CLOSE_CODES_PATH, SESSION_CONTRACT, SessionReplica, Stack, new_client_msg_id
from tests.support.waiting import await_until, scaled

from .helpers import init_frame, ws_to

SESSION_TABLES = ("projects", "project_idempotency", "events")
FAILPOINTS = load_contract(SESSION_CONTRACT).failpoints()
FAILPOINT_HEADER = "X-Tether-Failpoint"


async def snapshot(dsn: str) -> dict[str, tuple[int, str]]:
    """Row count and content checksum of every session table."""
    result: dict[str, tuple[int, str]] = {}
    for table in SESSION_TABLES:
        rows = await aquery(
            dsn,
            "SELECT count(*) AS n, md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) AS sum "
            f"FROM session.{table} t",
        )
        result[table] = (rows[0]["n"], rows[0]["sum"])
    return result


async def _orphans(dsn: str) -> dict[str, int]:
    rows = await aquery(
        dsn,
        """SELECT
             (SELECT count(*) FROM session.project_idempotency i
               WHERE NOT EXISTS (SELECT 1 FROM session.projects p WHERE p.id = i.project_id)) AS idempotency,
             (SELECT count(*) FROM session.events e
               WHERE NOT EXISTS (SELECT 1 FROM session.projects p WHERE p.id = e.project_id)) AS events,
             (SELECT count(*) FROM session.project_idempotency i JOIN session.projects p ON p.id = i.project_id
               WHERE p.owner_id <> i.owner_id) AS cross_owner""",
    )
    return dict(rows[0])


# -- F12 ----------------------------------------------------------------------------------------------


async def _concurrent_creates(
    stack: Stack, user: UserCredentials, name: str, keys: list[str | None]
) -> list[httpx.Response]:
    results: list[httpx.Response] = []
    start = trio.Event()
    async with stack.http(limits=httpx.Limits(max_connections=len(keys) + 5)) as http:

        async def create(key: str | None) -> None:
            headers = bearer(user.api_key)
            if key is not None:
                headers["Idempotency-Key"] = key
            await start.wait()
            results.append(await http.post("/v1/projects", json={"name": name}, headers=headers))

        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(create, key)
            start.set()
    return results


@pytest.mark.trio
async def test_F12_fifty_concurrent_creates_same_name_distinct_slugs(stack: Stack) -> None:
    user = stack.make_user()
    errors_before = len(stack.session.proc.events("http_error"))
    responses = await _concurrent_creates(stack, user, "Same Name", [None] * 50)
    assert [r.status_code for r in responses] == [201] * 50, [r.text for r in responses if r.status_code != 201]
    bodies = [r.json() for r in responses]
    assert len({b["id"] for b in bodies}) == 50
    slugs = {b["slug"] for b in bodies}
    assert slugs == {"same-name", *(f"same-name-{n}" for n in range(2, 51))}
    assert {b["name"] for b in bodies} == {"Same Name"}
    assert len(stack.session.proc.events("http_error")) == errors_before, "no error anywhere"

    rows = await aquery(
        stack.dsn, "SELECT count(*) AS n FROM session.projects WHERE owner_id = $1", uuid.UUID(user.user_id)
    )
    assert rows[0]["n"] == 50
    keyed = await aquery(
        stack.dsn, "SELECT count(*) AS n FROM session.project_idempotency WHERE owner_id = $1", uuid.UUID(user.user_id)
    )
    assert keyed[0]["n"] == 0, "no Idempotency-Key was sent: no idempotency rows"
    events = await aquery(
        stack.dsn,
        "SELECT count(*) AS n FROM session.events e JOIN session.projects p ON p.id = e.project_id WHERE p.owner_id = $1",
        uuid.UUID(user.user_id),
    )
    assert events[0]["n"] == 0
    assert await _orphans(stack.dsn) == {"idempotency": 0, "events": 0, "cross_owner": 0}
    async with stack.http() as http:
        listed = (await http.get("/v1/projects", headers=bearer(user.api_key))).json()["projects"]
    assert {p["slug"] for p in listed} == slugs


@pytest.mark.trio
async def test_F12_fifty_concurrent_creates_with_one_idempotency_key_make_one_project(stack: Stack) -> None:
    user = stack.make_user()
    responses = await _concurrent_creates(stack, user, "Once", ["k-once"] * 50)
    assert [r.status_code for r in responses] == [201] * 50
    assert len({r.json()["id"] for r in responses}) == 1
    replayed = [r for r in responses if r.headers.get("Idempotent-Replayed") == "true"]
    assert len(replayed) == 49
    rows = await aquery(
        stack.dsn, "SELECT count(*) AS n FROM session.projects WHERE owner_id = $1", uuid.UUID(user.user_id)
    )
    assert rows[0]["n"] == 1
    # and fifty distinct keys: fifty projects, fifty idempotency rows, each pointing at its own
    responses = await _concurrent_creates(stack, user, "Keyed", [f"k-{i}" for i in range(50)])
    assert [r.status_code for r in responses] == [201] * 50
    assert len({r.json()["slug"] for r in responses}) == 50
    keyed = await aquery(
        stack.dsn,
        "SELECT count(DISTINCT project_id) AS n FROM session.project_idempotency WHERE owner_id = $1",
        uuid.UUID(user.user_id),
    )
    assert keyed[0]["n"] == 51
    assert await _orphans(stack.dsn) == {"idempotency": 0, "events": 0, "cross_owner": 0}


# -- idempotency -----------------------------------------------------------------------------------------


@pytest.mark.trio
async def test_idempotency_key_replay_returns_the_same_project_and_a_different_name_conflicts(stack: Stack) -> None:
    user, other = stack.make_user(), stack.make_user()
    key = "create-" + uuid.uuid4().hex
    async with stack.http() as http:
        first = await http.post(
            "/v1/projects", json={"name": "Replay me"}, headers={**bearer(user.api_key), "Idempotency-Key": key}
        )
        assert first.status_code == 201
        assert "Idempotent-Replayed" not in first.headers
        again = await http.post(
            "/v1/projects", json={"name": "Replay me"}, headers={**bearer(user.api_key), "Idempotency-Key": key}
        )
        assert again.status_code == 201
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json() == first.json()

        conflict = await http.post(
            "/v1/projects", json={"name": "Another name"}, headers={**bearer(user.api_key), "Idempotency-Key": key}
        )
        assert conflict.status_code == 409
        assert conflict.json()["code"] == "idempotency_conflict"
        assert_one_error_line(stack.session.proc, conflict.headers["X-Request-ID"], "idempotency_conflict")

        # keys are per user: another user's identical key creates that user's own project
        theirs = await http.post(
            "/v1/projects", json={"name": "Replay me"}, headers={**bearer(other.api_key), "Idempotency-Key": key}
        )
        assert theirs.status_code == 201
        assert theirs.json()["id"] != first.json()["id"]
        assert "Idempotent-Replayed" not in theirs.headers

        # a malformed key is refused before anything is written
        before = await snapshot(stack.dsn)
        for bad in ("", "has space", "x" * 129, "ünïcode".encode()):
            refused = await http.post(
                "/v1/projects", json={"name": "Bad key"}, headers={**bearer(user.api_key), "Idempotency-Key": bad}
            )
            assert refused.status_code == 422, (bad, refused.text)
            assert refused.json()["code"] == "validation_failed"
        assert await snapshot(stack.dsn) == before

        listed = (await http.get("/v1/projects", headers=bearer(user.api_key))).json()["projects"]
    assert [p["id"] for p in listed] == [first.json()["id"]]


# -- names ---------------------------------------------------------------------------------------------


@pytest.mark.trio
async def test_F12_project_names_are_stored_in_nfc_and_need_a_visible_character(stack: Stack) -> None:
    """ "Café" typed precomposed or with a combining accent is one name; a name that would show as
    blank (variation selectors, zero-width and format characters, fillers, combining marks only)
    is refused with 422 before anything is written."""
    user = stack.make_user()
    headers = bearer(user.api_key)
    composed, decomposed = "Caf\u00e9", "Cafe\u0301"
    async with stack.http() as http:
        first = await http.post("/v1/projects", json={"name": composed}, headers=headers)
        second = await http.post("/v1/projects", json={"name": f" {decomposed} "}, headers=headers)
        assert (first.status_code, second.status_code) == (201, 201), (first.text, second.text)
        assert first.json()["name"] == second.json()["name"] == composed
        assert (first.json()["slug"], second.json()["slug"]) == ("cafe", "cafe-2")

        # an Idempotency-Key replay spelled in the other form is the same request, not a conflict
        key = "create-" + uuid.uuid4().hex
        keyed = await http.post("/v1/projects", json={"name": decomposed}, headers={**headers, "Idempotency-Key": key})
        replay = await http.post("/v1/projects", json={"name": composed}, headers={**headers, "Idempotency-Key": key})
        assert (keyed.status_code, replay.status_code) == (201, 201), (keyed.text, replay.text)
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert replay.json() == keyed.json()
        # a key whose row holds the name as it was sent before names were normalised still replays
        old_key = "create-" + uuid.uuid4().hex
        old = await http.post("/v1/projects", json={"name": "Old"}, headers={**headers, "Idempotency-Key": old_key})
        await aquery(
            stack.dsn,
            "UPDATE session.project_idempotency SET name = $1 WHERE owner_id = $2 AND key = $3",
            decomposed,
            uuid.UUID(user.user_id),
            old_key,
        )
        old_replay = await http.post(
            "/v1/projects", json={"name": decomposed}, headers={**headers, "Idempotency-Key": old_key}
        )
        assert old_replay.status_code == 201, old_replay.text
        assert old_replay.json() == old.json()

        before = await snapshot(stack.dsn)
        blanks = [
            "\ufe0f",
            " \ufe0f\ufe0e ",
            "\u200b\u2060\u00ad",
            "\u3164",
            "\u2800",
            "\u0301\u20dd",
            "\U000e0100\U000e0041",
            "\u200e\u202e\u3000",
        ]
        for blank in blanks:
            refused = await http.post("/v1/projects", json={"name": blank}, headers=headers)
            assert refused.status_code == 422, (blank, refused.text)
            assert refused.json()["code"] == "validation_failed"
            assert_one_error_line(stack.session.proc, refused.headers["X-Request-ID"], "validation_failed")
        assert await snapshot(stack.dsn) == before

        # one visible character is enough, and what is around it is kept as sent
        heart = await http.post("/v1/projects", json={"name": "\u2764\ufe0f"}, headers=headers)
        assert heart.status_code == 201, heart.text
        assert heart.json()["name"] == "\u2764\ufe0f"

    rows = await aquery(stack.dsn, "SELECT name FROM session.projects WHERE owner_id = $1", uuid.UUID(user.user_id))
    assert sorted(r["name"] for r in rows) == sorted([composed, composed, composed, "Old", "\u2764\ufe0f"])


# -- failpoints (F02) ---------------------------------------------------------------------------------


@dataclass
class Scenario:
    send: Callable[[dict[str, str]], Awaitable[httpx.Response]]
    still_works: Callable[[], Awaitable[None]]


async def _create(http: httpx.AsyncClient, stack: Stack) -> Scenario:
    user = stack.make_user()
    key = "fp-" + uuid.uuid4().hex

    async def send(headers: dict[str, str]) -> httpx.Response:
        return await http.post(
            "/v1/projects",
            json={"name": "Failpoint"},
            headers={**bearer(user.api_key), "Idempotency-Key": key, **headers},
        )

    async def still_works() -> None:
        created = await send({})
        assert created.status_code == 201
        assert "Idempotent-Replayed" not in created.headers, "the failed create must not have stored its key"
        assert created.json()["slug"] == "failpoint"

    return Scenario(send, still_works)


async def _delete(http: httpx.AsyncClient, stack: Stack) -> Scenario:
    user = stack.make_user()
    project = await stack.create_project(user.api_key, "Delete me")
    await stack.publish(project["id"], [{"event_id": "e1", "kind": "note", "data": {}}])

    async def send(headers: dict[str, str]) -> httpx.Response:
        return await http.delete(f"/v1/projects/{project['id']}", headers={**bearer(user.api_key), **headers})

    async def still_works() -> None:
        got = await http.get(f"/v1/projects/{project['id']}", headers=bearer(user.api_key))
        assert got.status_code == 200, "the project must survive a failed delete"
        assert got.json()["last_seq"] == 1
        assert (await send({})).status_code == 204

    return Scenario(send, still_works)


async def _publish(http: httpx.AsyncClient, stack: Stack) -> Scenario:
    user = stack.make_user()
    project = await stack.create_project(user.api_key, "Publish")

    async def send(headers: dict[str, str]) -> httpx.Response:
        body = {
            "events": [
                {"event_id": "a", "kind": "note", "data": {"n": 1}},
                {"event_id": "b", "kind": "note", "data": {}},
            ]
        }
        return await http.post(
            f"/v1/projects/{project['id']}/events", json=body, headers={**bearer(stack.ingest_key), **headers}
        )

    async def still_works() -> None:
        ok = await send({})
        assert ok.status_code == 200
        assert [(r["seq"], r["duplicate"]) for r in ok.json()["results"]] == [(1, False), (2, False)]

    return Scenario(send, still_works)


SCENARIOS: dict[str, Callable[[httpx.AsyncClient, Stack], Awaitable[Scenario]]] = {
    "createProject": _create,
    "deleteProject": _delete,
    "publishEvents": _publish,
}


def test_every_failpoint_of_the_contract_has_a_scenario() -> None:
    assert {op for op, _ in FAILPOINTS} == set(SCENARIOS)
    assert ("createProject", "projects.create.after_insert_project") in FAILPOINTS
    assert ("createProject", "projects.create.after_insert_idempotency") in FAILPOINTS


@pytest.mark.trio
@pytest.mark.parametrize(("operation", "failpoint"), FAILPOINTS, ids=[fp for _, fp in FAILPOINTS])
async def test_F02_failpoint_leaves_nothing_behind(stack: Stack, operation: str, failpoint: str) -> None:
    async with stack.http() as http:
        scenario = await SCENARIOS[operation](http, stack)
        before = await snapshot(stack.dsn)
        failed = await scenario.send({FAILPOINT_HEADER: failpoint})
        assert failed.status_code == 500, failed.text
        problem = failed.json()
        assert problem["code"] == "failpoint"
        assert problem["failpoint"] == failpoint
        assert_one_error_line(stack.session.proc, failed.headers["X-Request-ID"], "failpoint", failpoint=failpoint)
        assert await snapshot(stack.dsn) == before, f"{failpoint} left a partial write behind"
        await scenario.still_works()
    assert await _orphans(stack.dsn) == {"idempotency": 0, "events": 0, "cross_owner": 0}


# -- list / get / slug / delete ----------------------------------------------------------------------


@pytest.mark.trio
async def test_projects_list_get_by_slug_delete(stack: Stack) -> None:
    user = stack.make_user()
    headers = bearer(user.api_key)
    async with stack.http() as http:
        assert (await http.get("/v1/projects", headers=headers)).json() == {"projects": []}
        created = []
        for name in ("  Héllo Wörld!  ", "!!!", "x" * 100, "Héllo Wörld"):
            response = await http.post("/v1/projects", json={"name": name}, headers=headers)
            assert response.status_code == 201, response.text
            created.append(response.json())
        assert [p["slug"] for p in created] == ["hello-world", "project", "x" * 50, "hello-world-2"]
        assert created[0]["name"] == "Héllo Wörld!", "names are trimmed, not otherwise changed"
        assert all(p["last_seq"] == 0 for p in created)

        listed = (await http.get("/v1/projects", headers=headers)).json()["projects"]
        assert [p["id"] for p in listed] == [p["id"] for p in reversed(created)], "newest first"
        for project in created:
            by_id = await http.get(f"/v1/projects/{project['id']}", headers=headers)
            assert by_id.json() == project
            by_slug = await http.get(f"/v1/projects/by-slug/{project['slug']}", headers=headers)
            assert by_slug.json() == project

        gone = created[0]
        await stack.publish(gone["id"], [{"event_id": "e", "kind": "note", "data": {}}])
        deleted = await http.delete(f"/v1/projects/{gone['id']}", headers=headers)
        assert deleted.status_code == 204
        assert deleted.content == b""
        for response in (
            await http.get(f"/v1/projects/{gone['id']}", headers=headers),
            await http.get(f"/v1/projects/by-slug/{gone['slug']}", headers=headers),
            await http.delete(f"/v1/projects/{gone['id']}", headers=headers),
            await http.get(f"/v1/projects/{gone['id']}/events", headers=headers),
        ):
            assert response.status_code == 404
            assert response.json()["code"] == "not_found"
        rows = await aquery(
            stack.dsn, "SELECT count(*) AS n FROM session.events WHERE project_id = $1", uuid.UUID(gone["id"])
        )
        assert rows[0]["n"] == 0, "a deleted project's events go with it"
        # the freed slug is reused by the next project of that name
        again = await http.post("/v1/projects", json={"name": "Héllo Wörld!"}, headers=headers)
        assert again.json()["slug"] == "hello-world"

        # not a uuid: 404 like any missing project (never a 500)
        assert (await http.get("/v1/projects/not-a-uuid", headers=headers)).status_code == 404
        # bad bodies are 4xx
        assert (await http.post("/v1/projects", json={"name": "   "}, headers=headers)).status_code == 422
        assert (await http.post("/v1/projects", json={}, headers=headers)).status_code == 422
        assert (await http.post("/v1/projects", json={"name": "a", "x": 1}, headers=headers)).status_code == 422
        assert (
            await http.post("/v1/projects", content=b"{", headers={**headers, "Content-Type": "application/json"})
        ).status_code == 400
        assert (
            await http.post("/v1/projects", content=b"name=a", headers={**headers, "Content-Type": "text/plain"})
        ).status_code == 415
        # credentials are checked by the auth-token service
        for bad in ({}, bearer("tk_" + "0" * 40), {"Authorization": "Basic abc"}):
            response = await http.get("/v1/projects", headers=bad)
            assert response.status_code == 401, response.text
            assert response.json()["code"] == "unauthenticated"


@pytest.mark.trio
async def test_event_log_pages_and_resume_point(stack: Stack) -> None:
    user = stack.make_user()
    project = await stack.create_project(user.api_key, "Events")
    published = await stack.publish(
        project["id"], [{"event_id": f"e{i}", "kind": "note", "data": {"i": i}} for i in range(5)]
    )
    assert published["last_seq"] == 5
    async with stack.http() as http:
        page = await http.get(f"/v1/projects/{project['id']}/events?after=2&limit=2", headers=bearer(user.api_key))
        assert [e["seq"] for e in page.json()["events"]] == [3, 4]
        assert page.json()["last_seq"] == 5
        for query in ("after=-1", "limit=0", "limit=1001", "after=x"):
            bad = await http.get(f"/v1/projects/{project['id']}/events?{query}", headers=bearer(user.api_key))
            assert bad.status_code == 422, query


# -- F06 -----------------------------------------------------------------------------------------------


@pytest.mark.trio
async def test_F06_auth_token_down_gives_503_dependency_unavailable(
    stack: Stack, auth_factory: AuthServiceFactory, pg_server: PgServer
) -> None:
    own = auth_factory.start(stack.dsn, service_key=stack.auth.service_key)
    port = own.proc.port
    replica = stack.add_replica({"TETHER_AUTH_URL": own.url})
    user = stack.make_user()
    project = await stack.create_project(user.api_key, "F06")
    headers = bearer(user.api_key)
    try:
        own.proc.stop()
        # No keep-alive: a POST answered before its body is read (503 from the auth check) makes
        # Hypercorn drop the connection without "Connection: close" (reported separately).
        fresh = httpx.Limits(max_keepalive_connections=0)
        async with stack.http(stack.replicas.index(replica), limits=fresh) as http:
            calls = [
                await http.get("/v1/projects", headers=headers),
                await http.post("/v1/projects", json={"name": "x"}, headers=headers),
                await http.get(f"/v1/projects/{project['id']}", headers=headers),
                await http.get(f"/v1/projects/by-slug/{project['slug']}", headers=headers),
                await http.delete(f"/v1/projects/{project['id']}", headers=headers),
            ]
            for response in calls:
                assert response.status_code == 503, response.text
                body = response.json()
                assert body["code"] == "dependency_unavailable"
                assert body["dependency"] == "auth-token"
                assert int(response.headers["Retry-After"]) >= 1
                assert_one_error_line(
                    replica.proc, response.headers["X-Request-ID"], "dependency_unavailable", dependency="auth-token"
                )
                # expected while the outage lasts: warning; the outage itself is one error line (below)
                assert [
                    line["level"]
                    for line in replica.proc.events("http_error", request_id=response.headers["X-Request-ID"])
                ] == ["warning"]
            lost = replica.proc.events("dependency_lost")
            assert [(line["level"], line["dependency"]) for line in lost] == [("error", "auth-token")], lost
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["auth_token"] is False
            assert (await http.get("/healthz")).status_code == 200

            # the same replica recovers when auth-token is back (same address)
            auth_factory.start(stack.dsn, env={"TETHER_AUTH_PORT": str(port)}, service_key=stack.auth.service_key)
            await await_until(lambda: _ok(http, "/readyz"), timeout=30, what="readiness after auth-token returned")
            assert (await http.get(f"/v1/projects/{project['id']}", headers=headers)).status_code == 200
            back = replica.proc.events("dependency_restored")
            assert [(line["level"], line["dependency"]) for line in back] == [("info", "auth-token")], back
    finally:
        replica.proc.stop()
        stack.replicas.remove(replica)

    # PostgreSQL down: the session service's own database path answers 503 naming postgres
    pg_server.require_restartable()
    async with stack.http() as http:
        pg_server.stop()
        try:
            down = await http.post(
                f"/v1/projects/{project['id']}/events",
                json={"events": [{"event_id": "x", "kind": "note", "data": {}}]},
                headers=bearer(stack.ingest_key),
            )
            assert down.status_code == 503, down.text
            assert down.json()["dependency"] == "postgres"
            assert int(down.headers["Retry-After"]) >= 1
            assert_one_error_line(
                stack.session.proc, down.headers["X-Request-ID"], "dependency_unavailable", dependency="postgres"
            )
            assert (await http.get("/readyz")).status_code == 503
        finally:
            pg_server.start()
        for proc in stack.procs():
            await proc.wait_ready_async(30)
        assert (await http.get(f"/v1/projects/{project['id']}", headers=headers)).status_code == 200


async def _ok(http: httpx.AsyncClient, path: str) -> bool:
    return (await http.get(path)).status_code == 200


# -- F41 -----------------------------------------------------------------------------------------------


async def _scrape(replica: SessionReplica) -> Metrics:
    async with async_client(SESSION_CONTRACT, replica.url, timeout=scaled(10)) as http:
        return await scrape(http)


@pytest.mark.trio
async def test_F41_metrics_move_for_the_right_reasons(stack: Stack) -> None:
    replica = stack.add_replica()  # its own counters: only this test touches them
    try:
        user = stack.make_user()
        project = await stack.create_project(user.api_key, "Metrics")
        before = await _scrape(replica)
        assert before.value("tether_ws_connections_open") == 0
        assert before.value("tether_startup_phase_seconds", phase="total") > 0

        # one session: init, ping, a prompt and its 5-chunk answer, then the client leaves
        token = await stack.token(user.api_key)
        async with ws_to(replica) as client:
            ready = await client.init(token, {"id": project["id"]})
            assert ready["type"] == "ready"
            during = await _scrape(replica)
            assert during.value("tether_ws_connections_open") == 1
            assert during.value("tether_fanout_subscribers") == 1
            await client.send({"type": "ping", "v": 1})
            await client.recv_type("pong")
            await client.send({"type": "prompt", "v": 1, "client_msg_id": new_client_msg_id(), "text": "count me"})
            await client.events_until(lambda e: e["kind"] == "agent_done")
        # one refused connect (unknown token) and one resume that replays 7 events
        async with ws_to(replica) as client:
            await client.send(init_frame("tt_" + "q" * 43, {"id": project["id"]}))
            assert (await client.closed()).code == 4010
        token = await stack.token(user.api_key)
        async with ws_to(replica) as client:
            assert (await client.init(token, {"id": project["id"]}, resume_from=0))["type"] == "ready"
            await client.events_until(lambda e: e["kind"] == "agent_done")
            await client.ws.aclose()

        async def settled() -> Metrics | None:
            m = await _scrape(replica)
            return (
                m if m.value("tether_ws_connections_open") == 0 and m.value("tether_fanout_subscribers") == 0 else None
            )

        after = await await_until(settled, timeout=10, what="every connection released")
        delta = after.delta
        assert delta(before, "tether_ws_connects_total", outcome="ready") == 2
        assert delta(before, "tether_ws_connects_total", outcome="refused:token_unknown") == 1
        assert delta(before, "tether_ws_closes_total", code="4010", reason="token_unknown") == 1
        assert delta(before, "tether_ws_closes_total", code="client", reason="client_closed") == 2
        assert delta(before, "tether_ws_frames_in_total", type="init") == 3
        assert delta(before, "tether_ws_frames_in_total", type="ping") == 1
        assert delta(before, "tether_ws_frames_in_total", type="prompt") == 1
        assert delta(before, "tether_ws_frames_out_total", type="ready") == 2
        assert delta(before, "tether_ws_frames_out_total", type="pong") == 1
        assert delta(before, "tether_ws_frames_out_total", type="prompt_ack") == 1
        assert delta(before, "tether_ws_frames_out_total", type="error") == 1
        assert delta(before, "tether_ws_frames_out_total", type="event") == 14  # 7 live + 7 replayed
        assert delta(before, "tether_events_published_total", source="prompt") == 1
        assert delta(before, "tether_events_published_total", source="agent") == 6  # 5 chunks + done
        assert delta(before, "tether_events_delivered_total") == 14
        assert delta(before, "tether_resumes_total") == 1
        # the resume replays all 7 from the log; a live event can count as replayed too if the
        # feed's first read raced the prompt (it then reads the log): never fewer than 7
        assert 7 <= delta(before, "tether_replayed_events_total") <= 14
        assert after.value("tether_ws_connections_open") == 0
        assert after.value("tether_fanout_feeds") == 0
    finally:
        replica.proc.stop()
        stack.replicas.remove(replica)


# -- the served contract -----------------------------------------------------------------------------


@pytest.mark.trio
async def test_openapi_json_and_close_codes_are_the_contract_files_byte_for_byte(stack: Stack) -> None:
    async with stack.http() as http:
        openapi = await http.get("/openapi.json")
        close_codes = await http.get("/v1/protocol/close-codes")
    assert openapi.status_code == 200
    assert openapi.content == SESSION_CONTRACT.read_bytes()
    assert close_codes.status_code == 200
    assert close_codes.headers["content-type"].startswith("application/json")
    assert close_codes.content == CLOSE_CODES_PATH.read_bytes()
    assert stack.auth.proc.is_running()
