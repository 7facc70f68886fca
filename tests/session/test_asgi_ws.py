"""The WebSocket endpoint served on ASGI in front of Quart (``tether_session.asgi_ws``).

WebSocket scopes never reach Quart (memory per idle session); these tests hold what that
dispatch must keep or add:

* HTTP is still Quart's, unchanged: the routes, their problem+json errors, and a plain
  ``GET /v1/ws`` without the upgrade (400, as before);
* an upgrade to any other path is refused before accept with a problem+json 404 and one
  ``ws_rejected`` line (through Quart it was an empty 500, with no line);
* a client that goes away is noticed by whichever task is reading (the handler before
  ``ready``, the session's reader after it) and the connection is released;
* a client that keeps sending after the server's close does not pin the connection:
  Hypercorn's queue towards the app is bounded, and returning while it is full would block
  Hypercorn's final disconnect event forever (a socket left open on the server).
"""

from __future__ import annotations

import json

import httpx
import psutil
import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url
from wsproto.events import CloseConnection, TextMessage

from tests.support.contract import PROBLEM_JSON, async_client
from tests.support.metrics import Metrics, scrape
from tests.support.rawws import RawWs
from tests.support.session import ALLOWED_ORIGIN, SESSION_CONTRACT, SessionReplica, Stack
from tests.support.waiting import await_until, scaled, wait_until

from .helpers import CATALOGUE, NewConnection, close_lines, ws_to


async def _metrics(replica: SessionReplica) -> Metrics:
    async with async_client(SESSION_CONTRACT, replica.url, timeout=scaled(10)) as http:
        return await scrape(http)


async def _released(replica: SessionReplica) -> None:
    async def settled() -> Metrics | None:
        m = await _metrics(replica)
        gauges = ("tether_ws_connections_open", "tether_fanout_subscribers")
        return m if all(m.value(g) == 0 for g in gauges) else None

    await await_until(settled, timeout=10, what=f"{replica.proc.name} to release every connection")


def _server_sockets_to(pid: int, server_port: int, client_port: int) -> list[str]:
    """The replica's own sockets (file descriptors) for one client connection, with their TCP state."""
    return [
        c.status
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.laddr and c.laddr.port == server_port and c.raddr and c.raddr.port == client_port
    ]


# -- F11: HTTP is served through the dispatch unchanged ---------------------------------------------


@pytest.mark.trio
async def test_F11_http_routes_are_still_served_by_quart_behind_the_websocket_dispatch(stack: Stack) -> None:
    replica = stack.session
    async with async_client(SESSION_CONTRACT, replica.url, timeout=scaled(10)) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        served = await http.get("/openapi.json")
        assert served.content == SESSION_CONTRACT.read_bytes()
    async with httpx.AsyncClient(base_url=replica.url, timeout=scaled(10)) as raw:
        plain = await raw.get("/v1/ws")  # the WebSocket URL without the upgrade: a 400 problem, as before
    assert plain.status_code == 400
    assert plain.headers["content-type"] == PROBLEM_JSON
    assert plain.json()["code"] == "http_bad_request"
    assert plain.json()["request_id"] == plain.headers["x-request-id"]


# -- F01/F40: an upgrade to a path with no WebSocket endpoint ---------------------------------------


@pytest.mark.trio
async def test_F40_websocket_upgrade_to_an_unknown_path_is_a_logged_404_problem(stack: Stack) -> None:
    replica = stack.session
    opens_before = len(replica.proc.events("ws_open"))
    base = replica.url.replace("http://", "ws://")
    origin = [("Origin", ALLOWED_ORIGIN)]
    for path in ("/nope", "/v1/ws/", "/v1/wsx", "/healthz"):
        with pytest.raises(ConnectionRejected) as raised:
            async with open_websocket_url(base + path, extra_headers=origin, connect_timeout=scaled(10)):  # type: ignore[arg-type]
                pass
        rejected = raised.value
        assert rejected.status_code == 404, path
        headers = {k.decode().lower(): v.decode() for k, v in rejected.headers}
        assert headers["content-type"] == PROBLEM_JSON
        assert rejected.body is not None
        body = json.loads(rejected.body)
        assert (body["code"], body["status"]) == ("http_not_found", 404)
        assert path in body["detail"]
        assert body["request_id"] == headers["x-request-id"]
        lines = replica.proc.events("ws_rejected", request_id=body["request_id"])
        assert len(lines) == 1, lines
        assert (lines[0]["level"], lines[0]["code"], lines[0]["status"]) == ("warning", "http_not_found", 404)
    assert len(replica.proc.events("ws_open")) == opens_before, "a refused upgrade never reaches a session"
    assert replica.proc.events("ws_internal_error") == []


# -- F13: a client that goes away, whichever task is reading ----------------------------------------


@pytest.mark.trio
async def test_F13_a_client_that_goes_away_is_released_before_and_after_ready(stack: Stack) -> None:
    replica = stack.add_replica()  # its own gauges
    try:
        user = stack.make_user()
        project = await stack.create_project(user.api_key, "Goes away")
        new = NewConnection(replica.proc)
        async with ws_to(replica) as client:  # before INIT: the handler itself is reading
            await client.ws.aclose()
        before_ready = new.id()
        new = NewConnection(replica.proc)
        token = await stack.token(user.api_key)
        async with ws_to(replica) as client:  # after ready: the session's reader task is reading
            assert (await client.init(token, {"id": project["id"]}))["type"] == "ready"
            await client.ws.aclose()
        after_ready = new.id()
        for connection_id, was_ready in ((before_ready, False), (after_ready, True)):
            [line] = close_lines(replica.proc, connection_id)
            assert (line["reason"], line["level"], line["code"]) == ("client_closed", "info", None), line
            assert ("project_id" in line) is was_ready, line
            assert isinstance(line["client_close_code"], int), line  # recorded (Hypercorn: 1000 or 1006)
        await _released(replica)
        assert replica.proc.events("ws_internal_error") == []
    finally:
        replica.proc.stop()
        stack.replicas.remove(replica)


# -- F13: frames still arriving after the server's close --------------------------------------------


@pytest.mark.trio
async def test_F13_a_client_still_sending_after_the_close_leaves_nothing_behind(stack: Stack) -> None:
    """300 frames in one write: the first fails the session (a ping before INIT); the rest are
    queued towards the app while the server closes.  Hypercorn's queue is bounded (10): had the
    session returned with it full, Hypercorn's reader for that socket would wait forever for
    room, and the replica would then hang on SIGTERM for its whole graceful timeout (60 s here)
    waiting for that task.  The server reads and drops them, then answers the closing handshake."""
    replica = stack.add_replica({"TETHER_DRAIN_TIMEOUT_S": "60"})
    try:
        new = NewConnection(replica.proc)
        raw = await RawWs.connect(replica.ws_url, rcvbuf=65536)
        try:
            client_port = raw.sock.getsockname()[1]
            seen = _server_sockets_to(replica.proc.pid, replica.proc.port, client_port)
            assert seen == ["ESTABLISHED"], f"the probe must see the replica's socket first: {seen}"
            ping = json.dumps({"type": "ping", "v": 1})
            await raw._send(b"".join(raw.conn.send(TextMessage(data=ping)) for _ in range(300)))
            closed = await raw.read_until_closed()
            assert closed.code == CATALOGUE["unexpected_frame"]["code"]
            assert [f["code"] for f in closed.frames if f["type"] == "error"] == ["unexpected_frame"]
            await raw._send(raw.conn.send(CloseConnection(code=1000)))  # the closing handshake, answered
            with trio.fail_after(scaled(10)):
                rest = await raw.sock.recv(65536)
            assert rest == b"", rest  # then the server ends the TCP connection
            wait_until(
                lambda: not _server_sockets_to(replica.proc.pid, replica.proc.port, client_port),
                timeout=10,
                what=f"the replica to close its socket to client port {client_port}",
            )
        finally:
            raw.close()
        [line] = close_lines(replica.proc, new.id())
        assert line["reason"] == "unexpected_frame"
        await _released(replica)
        # no Hypercorn task is left waiting on that connection: SIGTERM ends the replica at once
        # (a hang would last the 60 s graceful timeout; ServiceFailed after 20 s)
        assert replica.proc.terminate(timeout=20) == 0
    finally:
        replica.proc.stop()
        stack.replicas.remove(replica)
