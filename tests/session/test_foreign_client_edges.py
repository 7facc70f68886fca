"""Edge cases a foreign client finds (issue 12), driven over real sockets against a real stack.

* F01: a frame with a duplicate key (``{"type":"prompt","type":"init",…}``) is ``invalid_frame``
  (error frame, close 4000, one ``ws_close`` line), before INIT and after ready; a request
  body with a duplicate key is 400 ``invalid_body`` on both services.
* F22: ``resume_from`` spelled ``1.0`` / ``1e0`` is the integer 1: replay starts after seq 1
  and ``ready.resume_from`` is echoed as ``1`` (never ``1.0``); ``1.5`` is ``invalid_frame``.
* F40: a path that Werkzeug would redirect (``//``: merged slashes) or that ends in a slash
  is a problem+json 404, never a 3xx with an HTML body.
* F07: a connection token sent as ``client_id`` and an API key sent as a URL path segment
  never reach a log line (redacted by shape, ``http_error.path`` included).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.support.auth import UserCredentials, bearer
from tests.support.secrets import find_leaks, remember
from tests.support.session import Stack, StackFactory

from .helpers import NewConnection, assert_closed_as, init_frame, ws_to


@pytest.fixture(scope="module")
def edge_stack(module_stack_factory: StackFactory) -> Stack:
    return module_stack_factory.start()


@pytest.fixture(scope="module")
def user(edge_stack: Stack) -> UserCredentials:
    return edge_stack.make_user("edges")


def _no_float(text: str) -> Any:
    raise AssertionError(f"the server sent a JSON number with a fraction or exponent: {text}")


# -- F01: duplicate keys ------------------------------------------------------------------------------


# An INIT text and what it is: a duplicated "type" whose last value says init (a last-key-wins
# parser answers ready), and a resume_from with a fraction (no integer reading of it exists).
RAW_INITS = {
    "duplicate-type": lambda init: '{"type":"prompt",' + init[1:],
    "resume-from-fraction": lambda init: init[:-1] + ',"resume_from":1.5}',
}


@pytest.mark.trio
@pytest.mark.parametrize("variant", sorted(RAW_INITS))
async def test_F01_raw_init_text_is_invalid_frame(edge_stack: Stack, user: UserCredentials, variant: str) -> None:
    project = await edge_stack.create_project(user.api_key, f"raw init {variant}")
    token = await edge_stack.token(user.api_key)
    tracker = NewConnection(edge_stack.session.proc)
    async with ws_to(edge_stack.session) as client:
        await client.send(RAW_INITS[variant](json.dumps(init_frame(token, {"id": project["id"]}))))
        closed = await client.closed()
    assert_closed_as(closed, edge_stack.session.proc, tracker.id(), "invalid_frame")


@pytest.mark.trio
async def test_F01_duplicate_key_frame_after_ready_is_invalid_frame(edge_stack: Stack, user: UserCredentials) -> None:
    project = await edge_stack.create_project(user.api_key, "dup keys ready")
    token = await edge_stack.token(user.api_key)
    tracker = NewConnection(edge_stack.session.proc)
    async with ws_to(edge_stack.session) as client:
        ready = await client.init(token, {"id": project["id"]})
        assert ready["type"] == "ready", ready
        await client.send('{"type":"prompt","v":1,"client_msg_id":"m-1","text":"a","text":"b"}')
        closed = await client.closed()
    assert_closed_as(
        closed,
        edge_stack.session.proc,
        tracker.id(),
        "invalid_frame",
        user_id=user.user_id,
        project_id=project["id"],
    )


@pytest.mark.trio
async def test_F01_duplicate_key_body_is_invalid_body_on_both_services(
    edge_stack: Stack, user: UserCredentials
) -> None:
    project = await edge_stack.create_project(user.api_key, "dup keys http")
    json_type = {"Content-Type": "application/json"}
    async with edge_stack.http() as session:
        cases = [
            (session, "/v1/projects", '{"name":"a","name":"b"}', bearer(user.api_key)),
            (
                session,
                f"/v1/projects/{project['id']}/events",
                '{"events":[{"event_id":"e-1","kind":"k","data":{"x":1,"x":2}}]}',
                bearer(edge_stack.ingest_key),
            ),
        ]
        async with edge_stack.auth.client() as auth:
            cases += [
                (auth, "/v1/tokens", '{"project_id":"' + project["id"] + '","project_id":null}', bearer(user.api_key)),
                (auth, "/v1/login", '{"api_key":"x","api_key":"' + user.api_key + '"}', {}),
            ]
            for client, path, text, headers in cases:
                response = await client.post(path, content=text.encode(), headers={**headers, **json_type})
                assert response.status_code == 400, f"{path}: {response.status_code} {response.text[:300]}"
                problem = response.json()
                assert problem["code"] == "invalid_body", problem
                assert "duplicate key" in problem["detail"], problem
    after = await edge_stack.publish(project["id"], [{"event_id": "e-2", "kind": "k", "data": {}}])
    assert after["last_seq"] == 1, "the refused batch stored nothing"


# -- F22: resume_from as an integral float ------------------------------------------------------------


@pytest.mark.trio
@pytest.mark.parametrize("spelling", ["1.0", "1e0", "10E-1"])
async def test_F22_resume_from_spelled_as_float_is_the_integer(
    edge_stack: Stack, user: UserCredentials, spelling: str
) -> None:
    project = await edge_stack.create_project(user.api_key, f"resume {spelling}")
    events = [{"event_id": f"e-{i}", "kind": "k", "data": {"i": i}} for i in (1, 2, 3)]
    await edge_stack.publish(project["id"], events)
    token = await edge_stack.token(user.api_key)
    tracker = NewConnection(edge_stack.session.proc)
    async with ws_to(edge_stack.session) as client:
        text = json.dumps(init_frame(token, {"id": project["id"]}))[:-1] + f',"resume_from":{spelling}}}'
        await client.send(text)
        raw = await client.ws.get_message()
        ready = json.loads(raw, parse_float=_no_float)
        assert ready["type"] == "ready", ready
        assert ready["resume_from"] == 1, raw
        assert type(ready["resume_from"]) is int, raw
        replayed = await client.events_until(lambda e: e["seq"] == 3)
    assert [e["seq"] for e in replayed] == [2, 3], "replay starts right after seq 1"
    connection_id = tracker.id()
    (line,) = edge_stack.session.proc.events("ws_ready", connection_id=connection_id)
    assert line["resume_from"] == 1, line
    assert type(line["resume_from"]) is int, line


# -- F40: no redirect, no HTML ------------------------------------------------------------------------


@pytest.mark.trio
async def test_F40_slash_variants_are_problem_json_never_a_redirect(edge_stack: Stack, user: UserCredentials) -> None:
    project = await edge_stack.create_project(user.api_key, "slashes")
    pid, slug = project["id"], project["slug"]
    paths = [
        f"/v1/projects/by-slug//{slug}",
        f"/v1/projects//{pid}",
        f"/v1/projects/{pid}//events",
        f"/v1/projects/{pid}/",
        "/v1/projects/",
        "/v1//projects",
        "/healthz/",
        "/demo//app.js",
        "/p//x",
    ]
    async with edge_stack.http() as http:
        for path in paths:
            response = await http.get(path, headers=bearer(user.api_key))
            kind = response.headers.get("content-type", "")
            assert not 300 <= response.status_code < 400, (
                f"{path}: redirect {response.status_code} to {response.headers}"
            )
            assert response.status_code == 404, f"{path}: {response.status_code} {response.text[:200]}"
            assert kind == "application/problem+json", f"{path}: {kind}"
            assert response.json()["code"] in ("http_not_found", "not_found"), response.text


# -- F07: secrets by shape ----------------------------------------------------------------------------


@pytest.mark.trio
async def test_F07_token_as_client_id_and_key_in_path_never_logged(edge_stack: Stack, user: UserCredentials) -> None:
    project = await edge_stack.create_project(user.api_key, "secrets by shape")
    misused = await edge_stack.token(user.api_key)  # a real token, sent where an id belongs
    remember(misused, user.api_key)
    token = await edge_stack.token(user.api_key)
    tracker = NewConnection(edge_stack.session.proc)
    async with ws_to(edge_stack.session) as client:
        ready = await client.init(token, {"id": project["id"]}, client_id=misused)
        assert ready["type"] == "ready", ready
        await client.send({"type": "prompt", "v": 1, "client_msg_id": "m-secret", "text": "hello"})
        await client.recv_type("prompt_ack")
    connection_id = tracker.id()
    async with edge_stack.http() as http:
        response = await http.get(f"/v1/projects/by-slug/{user.api_key}", headers=bearer(user.api_key))
        assert response.status_code == 404, response.text
        request_id = response.headers["X-Request-ID"]
    async with httpx.AsyncClient(base_url=edge_stack.auth.url, timeout=10) as auth:
        await auth.get(f"/v1/tokens/{misused}")  # not a route: 404, its path logged by auth-token

    lines = edge_stack.session.proc.events("ws_ready", connection_id=connection_id)
    assert len(lines) == 1, lines
    assert lines[0]["client_id"] == "[redacted]", lines
    (error,) = edge_stack.session.proc.events("http_error", request_id=request_id)
    assert error["path"] == "/v1/projects/by-slug/[redacted]", error
    files = [proc.log_path for proc in edge_stack.procs()] + [proc.out_path for proc in edge_stack.procs()]
    assert find_leaks(files, [misused, user.api_key]) == []
