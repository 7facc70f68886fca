"""F23: fan-out survives a lost LISTEN connection; agents elsewhere publish through the
ingest contract (the webhook adapter), and an unreachable agent is visible in the log."""

from __future__ import annotations

import functools
import json
import secrets
import socket
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest
import trio

from tests.support.auth import bearer
from tests.support.contract import async_client
from tests.support.pg import PgServer, aquery
from tests.support.secrets import remember
from tests.support.session import SESSION_CONTRACT, Stack, StackFactory
from tests.support.waiting import await_until, scaled, wait_until

from .helpers import log_event_ids, note_events, replica_metrics


@pytest.fixture(scope="module")
def one(module_stack_factory: StackFactory) -> Stack:
    return module_stack_factory.start(replicas=1)


def _database(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/")


async def listen_backends(stack: Stack, replica: int, admin_dsn: str) -> list[int]:
    """Backend pids of the replica's LISTEN connection (its pool connections are named
    ``tether-session``; the LISTEN one is not)."""
    pg_port = urlsplit(stack.dsn).port
    process = psutil.Process(stack.replicas[replica].proc.pid)
    ports = {c.laddr.port for c in process.net_connections(kind="tcp") if c.raddr and c.raddr.port == pg_port}
    rows = await aquery(
        admin_dsn,
        "SELECT pid, client_port, application_name FROM pg_stat_activity WHERE datname = $1",
        _database(stack.dsn),
    )
    return [r["pid"] for r in rows if r["client_port"] in ports and r["application_name"] != "tether-session"]


@pytest.mark.trio
async def test_F23_lost_listen_connection_is_reestablished_and_events_still_delivered(
    module_stack_factory: StackFactory, pg_server: PgServer
) -> None:
    # Events are published through replica 1 and watched on replica 0: a replica hands its own
    # appends to its sockets without LISTEN (the local push), so only another writer's commits
    # show that replica 0 re-reads, on reconnect, what was committed while it did not listen.
    one = module_stack_factory.start(replicas=2)
    replica = one.replicas[0].proc
    user = one.make_user()
    project = await one.create_project(user.api_key, "listen")
    admin = pg_server.admin_dsn
    database = _database(one.dsn)
    async with one.session_ws(user.api_key, project) as (ws, _ready):
        await one.publish(project["id"], note_events("before", 1, 5), replica=1)
        await ws.events_until(lambda e: e["seq"] == 5)
        backends = await listen_backends(one, 0, admin)
        assert len(backends) == 1, f"expected one LISTEN backend for the replica, found {backends}"
        lost_before = len(replica.events("listen_lost"))
        # Keep the replica from listening again until the test allows it, so the events below
        # are committed while nobody listens: only the re-read on reconnect can deliver them.
        await aquery(admin, f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        try:
            await aquery(admin, "SELECT pg_terminate_backend($1)", backends[0])
            await await_until(
                lambda: trio.to_thread.run_sync(lambda: len(replica.events("listen_lost")) > lost_before),
                timeout=10,
                what="a listen_lost log line",
            )
            async with one.http() as http:
                response = await http.get("/readyz")
            assert response.status_code == 503
            assert response.json()["checks"]["listen"] is False
            await one.publish(project["id"], note_events("during", 6, 20), replica=1)
        finally:
            await aquery(admin, f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        events = await ws.events_until(lambda e: e["seq"] == 25)
        # And live delivery works again on the new LISTEN connection.
        await one.publish(project["id"], note_events("after", 26, 5), replica=1)
        events = await ws.events_until(lambda e: e["seq"] == 30)
    assert [e["seq"] for e in events] == list(range(1, 31))
    assert [e["event_id"] for e in events] == await log_event_ids(one, project["id"])
    lines = [line for line in replica.log_lines() if line["event"] in ("listen_lost", "listen_connected")]
    kinds = [line["event"] for line in lines]
    first_lost = kinds.index("listen_lost")
    assert "listen_connected" in kinds[first_lost:], kinds
    assert lines[first_lost]["level"] == "warning"
    assert lines[-1]["event"] == "listen_connected"
    assert lines[-1]["reconnects"] >= 1
    assert (await replica_metrics(one, 0)).value("tether_listen_reconnects") >= 1
    await replica.wait_ready_async(10)


# -- the webhook agent adapter -------------------------------------------------------------------


class AgentServer:
    """A minimal agent over HTTP/1.1: takes the prompt POST, answers 202, then calls back the
    ingest endpoint (``callback_url``) with the ingest key, like a serverless function would."""

    def __init__(self, key: str, ingest_key: str) -> None:
        self.key = key
        self.ingest_key = ingest_key
        self.requests: list[dict[str, Any]] = []
        self.callbacks: list[dict[str, Any]] = []
        self.port = 0
        self._nursery: trio.Nursery | None = None

    async def serve(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        listeners = await nursery.start(functools.partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/agent"

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            with trio.fail_after(scaled(10)):
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _version = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
                length = int(headers.get("content-length", "0"))
                while len(body) < length:
                    body += await stream.receive_some(65536)
                request = {"method": method, "path": path, "headers": headers, "body": json.loads(body or b"null")}
                self.requests.append(request)
                status = "202 Accepted"
                if headers.get("authorization") != f"Bearer {self.key}":
                    status = "401 Unauthorized"
                elif request["body"]["text"] == "please fail":
                    status = "503 Service Unavailable"
                await stream.send_all(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        if status.startswith("202"):
            assert self._nursery is not None
            self._nursery.start_soon(self._answer, request["body"])

    async def _answer(self, prompt: dict[str, Any]) -> None:
        callback = urlsplit(prompt["callback_url"])
        seq = prompt["prompt_seq"]
        words = prompt["text"].split()
        events = [
            {"event_id": f"wh-{seq}-{i}", "kind": "agent_chunk", "data": {"text": w, "index": i, "prompt_seq": seq}}
            for i, w in enumerate(words)
        ]
        events.append({"event_id": f"wh-{seq}-done", "kind": "agent_done", "data": {"prompt_seq": seq}})
        async with async_client(SESSION_CONTRACT, f"{callback.scheme}://{callback.netloc}", timeout=scaled(10)) as http:
            for event in events:  # one call per chunk, as a streaming agent does
                response = await http.post(callback.path, json={"events": [event]}, headers=bearer(self.ingest_key))
                assert response.status_code == 200, response.text
                self.callbacks.append(response.json())


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.trio
async def test_F23_webhook_agent_adapter(one: Stack) -> None:
    agent_key = "agk_" + secrets.token_urlsafe(24)
    remember(agent_key)
    user = one.make_user()
    project = await one.create_project(user.api_key, "webhook")
    async with trio.open_nursery() as nursery:
        agent = AgentServer(agent_key, one.ingest_key)
        await agent.serve(nursery)
        # The webhook replica's public URL is the other replica (a load balancer in front of
        # them would do the same): the agent's callback lands there and reaches this replica's
        # socket through the log and NOTIFY.
        hooked = one.add_replica(
            {"TETHER_AGENT_URL": agent.url, "TETHER_AGENT_KEY": agent_key, "TETHER_PUBLIC_URL": one.replicas[0].url}
        )
        index = one.replicas.index(hooked)
        async with one.session_ws(user.api_key, project, replica=index) as (ws, _ready):
            await ws.send({"type": "prompt", "v": 1, "client_msg_id": "w-1", "text": "make it blue"})
            ack = await ws.recv_type("prompt_ack")
            events = await ws.events_until(lambda e: e["kind"] == "agent_done")
            # An agent that answers 5xx every time: after the retries, agent_error in the log.
            await ws.send({"type": "prompt", "v": 1, "client_msg_id": "w-2", "text": "please fail"})
            failing = await ws.recv_type("prompt_ack")
            events = await ws.events_until(lambda e: e["kind"] == "agent_error", timeout=20)
        nursery.cancel_scope.cancel()
    ok = [r for r in agent.requests if r["body"]["text"] == "make it blue"]
    assert len(ok) == 1, agent.requests
    request = ok[0]
    assert request["method"] == "POST"
    assert request["path"] == "/agent"
    assert request["headers"]["authorization"] == f"Bearer {agent_key}"
    assert request["body"] == {
        "project_id": project["id"],
        "prompt_seq": ack["seq"],
        "text": "make it blue",
        "callback_url": f"{one.replicas[0].url}/v1/projects/{project['id']}/events",
    }
    answer = [e for e in events if e["event_id"].startswith(f"wh-{ack['seq']}-")]
    assert [e["data"].get("text") for e in answer] == ["make", "it", "blue", None]
    assert answer[-1]["kind"] == "agent_done"
    assert len([r for r in agent.requests if r["body"]["text"] == "please fail"]) == 3
    error = events[-1]
    assert error["event_id"] == f"agent-{failing['seq']}-error"
    assert error["data"] == {"prompt_seq": failing["seq"], "reason": "agent answered 503"}
    seen = [e["event_id"] for e in events]
    assert seen == await log_event_ids(one, project["id"])
    assert len(hooked.proc.events("agent_webhook_failed")) == 3


@pytest.mark.trio
async def test_F23_unreachable_webhook_agent_gives_agent_error_event(one: Stack) -> None:
    user = one.make_user()
    project = await one.create_project(user.api_key, "no agent")
    dead = one.add_replica(
        {"TETHER_AGENT_URL": f"http://127.0.0.1:{closed_port()}/agent", "TETHER_AGENT_KEY": "k" * 32}
    )
    index = one.replicas.index(dead)
    async with one.session_ws(user.api_key, project, replica=index) as (ws, _ready):
        await ws.send({"type": "prompt", "v": 1, "client_msg_id": "d-1", "text": "anyone there?"})
        ack = await ws.recv_type("prompt_ack")
        events = await ws.events_until(lambda e: e["kind"] == "agent_error", timeout=20)
    assert [e["kind"] for e in events] == ["prompt", "agent_error"]
    assert events[-1]["data"] == {"prompt_seq": ack["seq"], "reason": "ConnectError"}
    failures = wait_until(
        lambda: dead.proc.events("agent_webhook_failed"), timeout=5, what="agent_webhook_failed lines"
    )
    assert [f["attempt"] for f in failures] == [1, 2, 3]
    assert all(f["level"] == "warning" and f["project_id"] == project["id"] for f in failures)
    assert (await replica_metrics(one, index)).value("tether_agent_tasks") == 0
