"""Connection set-up: accept, then INIT within a deadline, auth on INIT (F03, F04, F05, F07, F10, F40).

Black-box against real processes.  Every received frame is schema-checked by the test
client; the server validates its own outgoing frames in test mode (checked here too).
"""

from __future__ import annotations

import datetime as dt
import json
import secrets as pysecrets
import uuid
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from tests.support.auth import AuthServiceFactory, UserCredentials, bearer, make_user
from tests.support.contract import PROBLEM_JSON, async_client
from tests.support.logs import assert_one_error_line
from tests.support.pg import PgServer, aquery
from tests.support.procs import ServiceProcess
from tests.support.secrets import remember
from tests.support.session import (
    ALLOWED_ORIGIN,
    FRAMES_DIR,
    SESSION_CONTRACT,
    SessionReplica,
    Stack,
    new_client_msg_id,
    session_env,
)
from tests.support.waiting import await_until, scaled
from tether_dev.pg import free_port
from tether_session.frames import Frames
from tether_session.store import StoredEvent

from .helpers import CATALOGUE, NewConnection, assert_closed_as, close_lines, init_frame, ws_to


@pytest.fixture(scope="module")
def short_init(stack: Stack) -> SessionReplica:
    """A replica of the module stack with a 300 ms INIT deadline."""
    return stack.add_replica({"TETHER_INIT_TIMEOUT_MS": "300"})


async def _user_project(stack: Stack, name: str = "handshake") -> tuple[UserCredentials, dict[str, Any]]:
    user = stack.make_user()
    return user, await stack.create_project(user.api_key, name)


# -- F04 ---------------------------------------------------------------------------------------------


@pytest.mark.trio
async def test_F04_init_deadline_and_first_frame_must_be_init(stack: Stack, short_init: SessionReplica) -> None:
    user, project = await _user_project(stack)

    # Accepted, then silence: the server sends nothing before INIT, and closes at the deadline.
    tracker = NewConnection(short_init.proc)
    started = trio.current_time()
    async with ws_to(short_init) as client:
        closed = await client.closed()
    waited = trio.current_time() - started
    assert [f["type"] for f in closed.frames] == ["error"], "nothing but the error frame before INIT"
    _error, line = assert_closed_as(closed, short_init.proc, tracker.id(), "init_timeout")
    assert waited >= 0.3, waited
    assert line["duration_ms"] >= 300, line
    assert line["state"] == "closed"

    # The first frame must be INIT: any other client frame, even schema-valid, is refused
    # before any authentication happens (the token below is never consumed).
    token = await stack.token(user.api_key)
    for first in (
        {"type": "prompt", "v": 1, "client_msg_id": "m", "text": "hi"},
        {"type": "ping", "v": 1},
        {"type": "reauth", "v": 1, "token": token},
    ):
        tracker = NewConnection(stack.session.proc)
        async with ws_to(stack.session) as client:
            await client.send(first)
            closed = await client.closed()
        assert_closed_as(closed, stack.session.proc, tracker.id(), "unexpected_frame")
    rows = await aquery(
        stack.dsn,
        "SELECT consumed_at IS NULL AS fresh FROM auth.connection_tokens WHERE token_hash = sha256(convert_to($1, 'UTF8'))",
        token,
    )
    assert rows == [{"fresh": True}], "a reauth before INIT must not consume the token"

    # An INIT within the deadline authenticates (the token is consumed on INIT, not on upgrade)
    async with ws_to(short_init) as client:
        ready = await client.init(token, {"id": project["id"]})
        assert ready["type"] == "ready"
        assert ready["heartbeat"]["timeout_ms"] > 0
        await client.send({"type": "ping", "v": 1, "nonce": "n1"})
        pong = await client.recv_type("pong")
        assert pong["nonce"] == "n1"
    rows = await aquery(
        stack.dsn,
        "SELECT consumed_at IS NOT NULL AS used FROM auth.connection_tokens WHERE token_hash = sha256(convert_to($1, 'UTF8'))",
        token,
    )
    assert rows == [{"used": True}]


MALFORMED_INITS: dict[str, tuple[str | bytes, str]] = {
    "not_json": ('{"type": "init", "v": 1,', "invalid_frame"),
    "binary": (b'{"type": "init"}', "invalid_frame"),
    "not_an_object": ('"init"', "invalid_frame"),
    "wrong_type_field": ('{"type": ["init"], "v": 1}', "invalid_frame"),
    "server_frame_type": ('{"type": "ready", "v": 1}', "invalid_frame"),
    "missing_token": ('{"type": "init", "v": 1, "project": {"slug": "a"}, "client_id": "c"}', "invalid_frame"),
    "token_not_a_string": (
        '{"type": "init", "v": 1, "token": 5, "project": {"slug": "a"}, "client_id": "c"}',
        "invalid_frame",
    ),
    "empty_token": (
        '{"type": "init", "v": 1, "token": "", "project": {"slug": "a"}, "client_id": "c"}',
        "invalid_frame",
    ),
    "project_id_and_slug": (
        json.dumps(init_frame("t" * 20, {"id": str(uuid.uuid4()), "slug": "a"})),
        "invalid_frame",
    ),
    "bad_slug": (json.dumps(init_frame("t" * 20, {"slug": "Not A Slug"})), "invalid_frame"),
    "negative_resume": (json.dumps(init_frame("t" * 20, {"slug": "a"}, resume_from=-1)), "invalid_frame"),
    "nul_in_client_id": (
        '{"type":"init","v":1,"token":"tttttttt","project":{"slug":"a"},"client_id":"a\\u0000"}',
        "invalid_frame",
    ),
    "version_2": (json.dumps(init_frame("t" * 20, {"slug": "a"}, v=2)), "unsupported_version"),
    "huge_frame": (json.dumps(init_frame("t" * 20, {"slug": "a"}, client_id="x" * 70_000)), "frame_too_large"),
    "deep_nesting": ('{"type": "init", "v": 1, "x": ' + "[" * 50 + "]" * 50 + "}", "frame_too_large"),
}


@pytest.mark.trio
@pytest.mark.parametrize("case", sorted(MALFORMED_INITS))
async def test_F04_malformed_init_is_refused_with_its_catalogue_code(stack: Stack, case: str) -> None:
    payload, name = MALFORMED_INITS[case]
    tracker = NewConnection(stack.session.proc)
    async with ws_to(stack.session) as client:
        await client.send(payload)
        closed = await client.closed()
    error, _line = assert_closed_as(closed, stack.session.proc, tracker.id(), name)
    assert error["retryable"] is False


@pytest.mark.trio
async def test_F01_a_frame_above_the_server_message_cap_is_closed_with_1009_and_logged_as_frame_too_large(
    stack: Stack,
) -> None:
    """Above the server's message cap (``websocket_max_message_size``) the WebSocket layer refuses the
    message before reading all of it: no error frame (the session never sees it), but close 1009, which
    the clients map to the catalogue's ``frame_too_large``, and the ``ws_close`` line says so."""
    tracker = NewConnection(stack.session.proc)
    async with ws_to(stack.session) as client:
        await client.send("x" * (2 << 20))
        closed = await client.closed()
    assert (closed.code, closed.error) == (1009, None), closed
    (line,) = close_lines(stack.session.proc, tracker.id())
    assert (line["reason"], line["client_close_code"], line["level"]) == ("frame_too_large", 1009, "warning"), line
    assert len(stack.session.proc.events("ws_open", connection_id=tracker.id())) == 1


# -- F03 ---------------------------------------------------------------------------------------------


def _problem_shape(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    return {k: v for k, v in body.items() if k != "request_id"}


@pytest.mark.trio
async def test_F03_other_users_project_is_not_found_and_logged(stack: Stack) -> None:
    owner, theirs = await _user_project(stack, "Owner's secret project")
    intruder, _mine = await _user_project(stack, "Intruder's project")
    missing_id = str(uuid.uuid4())

    # WebSocket: by id and by slug, exactly like a project that does not exist
    frames: dict[str, dict[str, Any]] = {}
    for label, project in {
        "their_id": {"id": theirs["id"]},
        "their_slug": {"slug": theirs["slug"]},
        "missing_id": {"id": missing_id},
        "missing_slug": {"slug": "no-such-project-here"},
    }.items():
        token = await stack.token(intruder.api_key)
        tracker = NewConnection(stack.session.proc)
        async with ws_to(stack.session) as client:
            await client.send(init_frame(token, project))
            closed = await client.closed()
        error, line = assert_closed_as(
            closed, stack.session.proc, tracker.id(), "project_not_found", user_id=intruder.user_id
        )
        assert line["requested"] == project, "the log says what was asked for"
        assert error.pop("connection_id") == tracker.id()  # per connection, so a client can quote it
        frames[label] = error
    assert frames["their_id"] == frames["missing_id"] == frames["their_slug"] == frames["missing_slug"]
    assert frames["their_id"]["retryable"] is False

    # HTTP: GET / DELETE by id, GET by slug, the event log: 404s identical to missing ones
    headers = bearer(intruder.api_key)
    async with stack.http() as http:
        pairs = [
            (
                await http.get(f"/v1/projects/{theirs['id']}", headers=headers),
                await http.get(f"/v1/projects/{missing_id}", headers=headers),
            ),
            (
                await http.delete(f"/v1/projects/{theirs['id']}", headers=headers),
                await http.delete(f"/v1/projects/{missing_id}", headers=headers),
            ),
            (
                await http.get(f"/v1/projects/by-slug/{theirs['slug']}", headers=headers),
                await http.get("/v1/projects/by-slug/no-such-project-here", headers=headers),
            ),
            (
                await http.get(f"/v1/projects/{theirs['id']}/events", headers=headers),
                await http.get(f"/v1/projects/{missing_id}/events", headers=headers),
            ),
        ]
        for theirs_response, missing_response in pairs:
            assert theirs_response.status_code == missing_response.status_code == 404
            assert theirs_response.headers["content-type"] == missing_response.headers["content-type"] == PROBLEM_JSON
            assert _problem_shape(theirs_response) == _problem_shape(missing_response)
            assert _problem_shape(theirs_response)["code"] == "not_found"
            assert_one_error_line(
                stack.session.proc, theirs_response.headers["X-Request-ID"], "not_found", user_id=intruder.user_id
            )
        listed = await http.get("/v1/projects", headers=headers)
        assert theirs["id"] not in [p["id"] for p in listed.json()["projects"]]
        # the owner's project survived the intruder's DELETE
        still = await http.get(f"/v1/projects/{theirs['id']}", headers=bearer(owner.api_key))
        assert still.status_code == 200


# -- F05 ---------------------------------------------------------------------------------------------


async def _expired(dsn: str, token: str) -> bool:
    rows = await aquery(
        dsn,
        "SELECT expires_at <= now() AS expired FROM auth.connection_tokens WHERE token_hash = sha256(convert_to($1, 'UTF8'))",
        token,
    )
    return bool(rows and rows[0]["expired"])


@pytest.mark.trio
async def test_F05_expired_used_unknown_tokens_distinct_codes(stack: Stack, auth_factory: AuthServiceFactory) -> None:
    user, project = await _user_project(stack)
    target = {"id": project["id"]}

    # used: it opened one session already
    used = await stack.token(user.api_key)
    async with ws_to(stack.session) as client:
        assert (await client.init(used, target))["type"] == "ready"
    # expired: issued by an auth-token replica with a 1 s TTL (same database), used once expired
    short = auth_factory.start(stack.dsn, env={"TETHER_TOKEN_TTL_S": "1"}, service_key=stack.auth.service_key)
    async with short.client() as http:
        response = await http.post("/v1/tokens", json={}, headers=bearer(user.api_key))
    short.proc.stop()
    expired = response.json()["token"]
    await await_until(lambda: _expired(stack.dsn, expired), timeout=10, what="the 1 s token to expire")
    unknown = "tt_" + pysecrets.token_urlsafe(32)
    remember(unknown)

    seen: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for name, token in (("token_unknown", unknown), ("token_used", used), ("token_expired", expired)):
        tracker = NewConnection(stack.session.proc)
        async with ws_to(stack.session) as client:
            await client.send(init_frame(token, target))
            closed = await client.closed()
        error, line = assert_closed_as(closed, stack.session.proc, tracker.id(), name)
        assert error["retryable"] is True
        assert error["action"] == "refresh_token"
        # the auth-token service logged the same refusal under the request id the session sent
        [refused] = stack.auth.proc.events("token_refused", request_id=line["auth_request_id"])
        assert (refused["code"], refused["level"]) == (name, "warning")
        assert line["auth_request_id"].startswith(line["connection_id"])
        seen[name] = (error, line)
    codes = {error["close_code"] for error, _ in seen.values()}
    assert codes == {CATALOGUE[n]["code"] for n in seen}
    assert len(codes) == 3
    assert len({error["message"] for error, _ in seen.values()}) == 3, "three different explanations"


# -- F07 ---------------------------------------------------------------------------------------------


async def _rejected(replica: SessionReplica, origin: str | None) -> ConnectionRejected:
    headers = [("Origin", origin)] if origin is not None else []
    with pytest.raises(ConnectionRejected) as raised:
        async with open_websocket_url(replica.ws_url, extra_headers=headers, connect_timeout=scaled(10)):  # type: ignore[arg-type]
            pass
    return raised.value


@pytest.mark.trio
async def test_F07_origin_not_allowed_is_http_403_problem_json_and_logged(stack: Stack) -> None:
    proc = stack.session.proc
    opens_before = len(proc.events("ws_open"))
    for origin in ("https://evil.example", "null", ALLOWED_ORIGIN + ".evil.example", ALLOWED_ORIGIN.upper()):
        rejected = await _rejected(stack.session, origin)
        assert rejected.status_code == 403
        headers = {k.decode().lower(): v.decode() for k, v in rejected.headers}
        assert headers["content-type"] == PROBLEM_JSON
        assert rejected.body is not None
        body = json.loads(rejected.body)
        assert body["code"] == "origin_not_allowed"
        assert body["status"] == 403
        assert body["request_id"] == headers["x-request-id"]
        lines = [line for line in proc.events("ws_rejected") if line.get("request_id") == body["request_id"]]
        assert len(lines) == 1, lines
        assert lines[0]["level"] == "warning"
        assert lines[0]["code"] == "origin_not_allowed"
        assert lines[0]["status"] == 403
    assert len(proc.events("ws_open")) == opens_before, "a refused upgrade never reaches accept"

    # no Origin (a non-browser client) is allowed unless TETHER_REQUIRE_ORIGIN is set
    async with ws_to(stack.session, origin=None) as client:
        await client.send({"type": "ping", "v": 1})
        closed = await client.closed()
    assert closed.error is not None
    assert closed.error["code"] == "unexpected_frame"
    strict = stack.add_replica({"TETHER_REQUIRE_ORIGIN": "1"})
    rejected = await _rejected(strict, None)
    assert rejected.status_code == 403
    assert rejected.body is not None
    assert json.loads(rejected.body)["detail"] == "an Origin header is required"
    assert len(strict.proc.events("ws_rejected")) == 1
    async with ws_to(strict) as client:  # the allowed origin still gets in
        await client.send({"type": "ping", "v": 1})
        assert (await client.closed()).error is not None


# -- F10 ---------------------------------------------------------------------------------------------


async def _readyz(replica: SessionReplica) -> httpx.Response:
    async with async_client(SESSION_CONTRACT, replica.url, timeout=scaled(10)) as http:
        return await http.get("/readyz")


async def _is_ready(replica: SessionReplica) -> bool:
    return (await _readyz(replica)).status_code == 200


@pytest.mark.trio
async def test_F10_connection_before_readiness_waits_then_starting_up(
    pg_server: PgServer, auth_factory: AuthServiceFactory, spawn_service: Any
) -> None:
    dsn = pg_server.fresh_database("f10")
    auth_port = free_port()
    service_key = "svc_" + pysecrets.token_urlsafe(24)
    ingest_key = "ing_" + pysecrets.token_urlsafe(24)
    remember(service_key, ingest_key)
    auth_url = f"http://127.0.0.1:{auth_port}"

    def spawn(wait_ms: int) -> SessionReplica:
        env = session_env(dsn, auth_url, service_key, ingest_key, TETHER_STARTUP_WAIT_MS=str(wait_ms))
        proc: ServiceProcess = spawn_service("tether_session", env, name="session")
        return SessionReplica(proc, env)

    quick, patient = spawn(400), spawn(60_000)
    for replica in (quick, patient):
        await trio.to_thread.run_sync(replica.proc.wait_listening)
    await await_until(
        lambda: _has(quick.proc, "startup_waiting", phase="auth_token"),
        timeout=20,
        what="start-up waiting on auth-token",
    )

    # not ready: readyz says why, healthz is liveness only
    not_ready = await _readyz(quick)
    assert not_ready.status_code == 503
    assert not_ready.json()["code"] == "not_ready"
    assert not_ready.json()["checks"]["auth_token"] is False
    async with async_client(SESSION_CONTRACT, quick.url, timeout=scaled(10)) as http:
        assert (await http.get("/healthz")).status_code == 200

    # a socket on the quick replica waits TETHER_STARTUP_WAIT_MS, then gets starting_up
    tracker = NewConnection(quick.proc)
    started = trio.current_time()
    async with ws_to(quick) as client:
        closed = await client.closed()
    waited = trio.current_time() - started
    error, line = assert_closed_as(closed, quick.proc, tracker.id(), "starting_up")
    assert waited >= 0.4, f"refused after {waited:.3f}s, before the start-up wait"
    assert error["retry_after_ms"] > 0
    assert error["retryable"] is True
    assert line["duration_ms"] >= 400

    # a socket on the patient replica is accepted and waits; auth-token comes up meanwhile
    async with ws_to(patient) as early:
        tracker_quick = NewConnection(quick.proc)
        auth = auth_factory.start(dsn, env={"TETHER_AUTH_PORT": str(auth_port)}, service_key=service_key)
        assert auth.url == auth_url
        await await_until(lambda: _is_ready(patient), timeout=30, what="the patient replica to become ready")
        await await_until(lambda: _is_ready(quick), timeout=30, what="the quick replica to become ready")
        user = await trio.to_thread.run_sync(make_user, dsn)
        async with async_client(SESSION_CONTRACT, patient.url, timeout=scaled(10)) as http:
            created = await http.post("/v1/projects", json={"name": "F10"}, headers=bearer(user.api_key))
        project = created.json()
        async with auth.client() as http:
            tokens = [
                (await http.post("/v1/tokens", json={}, headers=bearer(user.api_key))).json()["token"] for _ in range(2)
            ]
        ready = await early.init(tokens[0], {"id": project["id"]})
        assert ready["type"] == "ready", "the early socket must work once the replica is ready"
        # and a new connection on the formerly refusing replica works too
        async with ws_to(quick) as late:
            assert (await late.init(tokens[1], {"id": project["id"]}))["type"] == "ready"
    assert len(quick.proc.events("ws_ready")) == 1
    assert tracker_quick.id()  # exactly one new connection on the quick replica


async def _has(proc: ServiceProcess, event: str, **match: Any) -> bool:
    return bool(proc.events(event, **match))


# -- F40 ---------------------------------------------------------------------------------------------


@pytest.mark.trio
async def test_F40_one_open_and_one_close_line_per_connection_with_code_and_duration(stack: Stack) -> None:
    user, project = await _user_project(stack)
    proc = stack.session.proc
    before = {line["connection_id"] for line in proc.events("ws_open")}
    expected: dict[str, str] = {}  # connection id -> how it ended

    for i in range(12):
        token = await stack.token(user.api_key)
        async with ws_to(stack.session) as client:
            ready = await client.init(token, {"id": project["id"]})
            cid = ready["connection_id"]
            if i % 3 == 0:  # the client closes
                await client.send({"type": "ping", "v": 1})
                await client.recv_type("pong")
                await client.ws.aclose(code=1000, reason="bye")
                expected[cid] = "client_closed"
            elif i % 3 == 1:  # the server closes (protocol violation)
                await client.send(init_frame(token, {"id": project["id"]}))
                closed = await client.closed()
                assert closed.code == CATALOGUE["unexpected_frame"]["code"]
                expected[cid] = "unexpected_frame"
            else:  # a prompt and its answer, then the client goes
                await client.send({"type": "prompt", "v": 1, "client_msg_id": new_client_msg_id(), "text": f"p{i}"})
                await client.events_until(lambda e: e["kind"] == "agent_done")
                expected[cid] = "client_closed"

    for cid, how in expected.items():
        opens = proc.events("ws_open", connection_id=cid)
        assert len(opens) == 1, opens
        assert opens[0]["origin"] == ALLOWED_ORIGIN
        closes = close_lines(proc, cid)
        assert len(closes) == 1, closes
        line = closes[0]
        assert line["reason"] == how
        assert line["user_id"] == user.user_id
        assert line["project_id"] == project["id"]
        assert line["duration_ms"] > 0
        assert "code" in line
        assert "client_close_code" in line
        assert "delivered" in line
        if how == "client_closed":
            assert line["code"] is None
            assert line["level"] == "info"
            assert isinstance(line["client_close_code"], int), line
        else:
            assert line["code"] == CATALOGUE[how]["code"]
            assert line["level"] == "warning"
        assert len(proc.events("ws_ready", connection_id=cid)) == 1
    new = {line["connection_id"] for line in proc.events("ws_open")} - before
    assert new == set(expected), "every connection opened here has exactly its own lines"


@pytest.mark.trio
async def test_F40_client_close_code_is_logged_as_sent(stack: Stack) -> None:
    user, project = await _user_project(stack)
    token = await stack.token(user.api_key)
    async with ws_to(stack.session) as client:
        ready = await client.init(token, {"id": project["id"]})
        await client.ws.aclose(code=1000, reason="bye")
    (line,) = close_lines(stack.session.proc, ready["connection_id"])
    assert line["client_close_code"] == 1000


# -- outgoing frames are validated on both sides -------------------------------------------------------


@pytest.mark.trio
async def test_every_outgoing_frame_is_validated_by_the_server_in_test_mode(stack: Stack) -> None:
    # black-box: the stack's replicas run in test mode (the server validates what it sends)
    for replica in stack.replicas:
        starting = replica.proc.events("starting")
        assert starting, replica.proc.tail()
        assert starting[0]["test_mode"] is True, starting
    # ... and in that mode Frames.encode refuses a frame outside the contract (in-process)
    frames = Frames(FRAMES_DIR, validate_outgoing=True)
    with pytest.raises(Exception, match="server_time"):
        frames.encode({"type": "pong", "v": 1})
    with pytest.raises(Exception, match="not in the contract"):
        frames.encode({"type": "init", "v": 1})
    with pytest.raises(Exception, match="does not match"):
        frames.encode_event(StoredEvent(1, "e1", "Bad Kind", "{}", dt.datetime.now(dt.UTC)))
    lenient = Frames(FRAMES_DIR, validate_outgoing=False)
    assert json.loads(lenient.encode({"type": "pong", "v": 1})) == {"type": "pong", "v": 1}
    # and a whole session's worth of frames passed both checks (the client validates all)
    user, project = await _user_project(stack)
    async with stack.session_ws(user.api_key, project) as (client, _ready):
        await client.send({"type": "prompt", "v": 1, "client_msg_id": "v-1", "text": "validate me"})
        await client.events_until(lambda e: e["kind"] == "agent_done")
        await client.send({"type": "ping", "v": 1, "nonce": "x"})
        await client.recv_type("pong")
        types = {f["type"] for f in client.received}
    assert {"ready", "prompt_ack", "event", "pong"} <= types
    assert not stack.session.proc.events("ws_internal_error")
