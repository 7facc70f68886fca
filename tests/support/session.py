"""Running the whole system for black-box tests: one auth-token instance and N session replicas.

* :class:`StackFactory` starts a :class:`Stack` on a fresh database (or a given one):
  the auth-token service, then ``replicas`` session services sharing the database, all on
  port 0 in test mode (outgoing frames schema-checked by the server, failpoints armable).
* :class:`Stack` gives contract-checked HTTP clients, users, projects, tokens, publishing
  through the ingest API, and :meth:`Stack.ws` to open a WebSocket on a replica.
* :class:`WsClient` (trio-websocket) validates **every** frame it receives against the
  contract's frame schemas and records the close code, so any test proves both sides.
"""

from __future__ import annotations

import json
import secrets as pysecrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from .auth import AuthService, AuthServiceFactory, UserCredentials, bearer
from .contract import REPO_ROOT, async_client
from .pg import PgServer
from .procs import ServiceProcess, wait_all_ready
from .secrets import remember, remember_from_response
from .waiting import scaled

SESSION_CONTRACT = REPO_ROOT / "contracts" / "session" / "openapi.json"
FRAMES_DIR = REPO_ROOT / "contracts" / "session" / "frames"
CLOSE_CODES_PATH = REPO_ROOT / "contracts" / "session" / "close-codes.json"
SESSION_MODULE = "tether_session"
ALLOWED_ORIGIN = "https://app.tether.test"


def close_catalogue() -> dict[str, dict[str, Any]]:
    """The close-code catalogue by name."""
    data = json.loads(CLOSE_CODES_PATH.read_text())
    return {entry["name"]: entry for entry in data["codes"]}


def _frame_validators() -> dict[str, jsonschema.Draft202012Validator]:
    validators = {}
    for path in FRAMES_DIR.glob("*.json"):
        schema = json.loads(path.read_text())
        if schema.get("x-direction") == "server_to_client":
            validators[schema["properties"]["type"]["const"]] = jsonschema.Draft202012Validator(
                schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
            )
    return validators


SERVER_FRAMES = _frame_validators()


class FrameViolation(AssertionError):
    pass


def check_server_frame(raw: str | bytes) -> dict[str, Any]:
    """Parse a server frame and validate it against its schema (raises FrameViolation)."""
    if isinstance(raw, bytes):
        raise FrameViolation("the server sent a binary frame")
    frame = json.loads(raw)
    validator = SERVER_FRAMES.get(frame.get("type")) if isinstance(frame, dict) else None
    if validator is None:
        raise FrameViolation(f"server frame of unknown type: {raw[:200]}")
    errors = sorted(validator.iter_errors(frame), key=str)
    if errors:
        raise FrameViolation(f"server {frame['type']} frame violates its schema: {errors[0].message}: {raw[:300]}")
    return frame  # type: ignore[no-any-return]


@dataclass
class Closed:
    """How a connection ended: the error frame the server sent (if any) and the close code."""

    code: int | None
    reason: str | None
    error: dict[str, Any] | None
    frames: list[dict[str, Any]]


class WsClient:
    """A test WebSocket client: every received frame is schema-checked and kept in ``received``."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.received: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        await self.ws.send_message(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        with trio.fail_after(scaled(timeout)):
            frame = check_server_frame(await self.ws.get_message())
        self.received.append(frame)
        if frame["type"] == "event":
            self.events.append(frame)
        elif frame["type"] == "events":
            self.events.extend(frame["events"])
        return frame

    async def recv_type(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """Receive frames until one of ``kind`` (other frames are kept in ``received``)."""
        with trio.fail_after(scaled(timeout)):
            while True:
                frame = await self.recv(timeout)
                if frame["type"] == kind:
                    return frame

    async def init(
        self,
        token: str,
        project: dict[str, str],
        *,
        resume_from: int | None = None,
        client_id: str = "test",
        batch: bool | None = None,
    ) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "init", "v": 1, "token": token, "project": project, "client_id": client_id}
        if resume_from is not None:
            frame["resume_from"] = resume_from
        if batch is not None:
            frame["batch"] = batch
        await self.send(frame)
        return await self.recv()

    async def events_until(self, predicate: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Receive until ``predicate(event)`` holds for an event; returns all events seen so far."""
        with trio.fail_after(scaled(timeout)):
            while True:
                frame = await self.recv(timeout)
                if frame["type"] == "event" and predicate(frame):
                    return self.events
                if frame["type"] == "events" and any(predicate(e) for e in frame["events"]):
                    return self.events

    async def closed(self, timeout: float = 10.0) -> Closed:
        """Read until the server closes; returns the error frame and the close code."""
        error: dict[str, Any] | None = None
        with trio.fail_after(scaled(timeout)):
            try:
                while True:
                    frame = await self.recv(timeout)
                    if frame["type"] == "error":
                        error = frame
            except ConnectionClosed as exc:
                return Closed(exc.reason.code, exc.reason.reason, error, self.received)


@dataclass
class SessionReplica:
    proc: ServiceProcess
    env: dict[str, str]

    @property
    def url(self) -> str:
        return self.proc.url

    @property
    def ws_url(self) -> str:
        return self.proc.url.replace("http://", "ws://") + "/v1/ws"


@dataclass
class Stack:
    auth: AuthService
    replicas: list[SessionReplica]
    dsn: str
    ingest_key: str
    factory: StackFactory
    session_env: dict[str, str] = field(default_factory=dict)

    @property
    def session(self) -> SessionReplica:
        return self.replicas[0]

    def procs(self) -> list[ServiceProcess]:
        return [self.auth.proc, *(r.proc for r in self.replicas)]

    def make_user(self, name: str | None = None) -> UserCredentials:
        return self.auth.make_user(name)

    def http(self, replica: int = 0, **kwargs: Any) -> httpx.AsyncClient:
        """A contract-checking client on a session replica."""
        return async_client(
            SESSION_CONTRACT,
            self.replicas[replica].url,
            timeout=scaled(10),
            on_response=remember_from_response,
            **kwargs,
        )

    async def create_project(self, api_key: str, name: str = "Test project", replica: int = 0) -> dict[str, Any]:
        async with self.http(replica) as http:
            response = await http.post("/v1/projects", json={"name": name}, headers=bearer(api_key))
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def token(self, api_key: str, project_id: str | None = None) -> str:
        async with self.auth.client() as http:
            body: dict[str, Any] = {} if project_id is None else {"project_id": project_id}
            response = await http.post("/v1/tokens", json=body, headers=bearer(api_key))
        assert response.status_code == 201, response.text
        token: str = response.json()["token"]
        remember(token)
        return token

    async def publish(self, project_id: str, events: list[dict[str, Any]], replica: int = 0) -> dict[str, Any]:
        async with self.http(replica) as http:
            response = await http.post(
                f"/v1/projects/{project_id}/events", json={"events": events}, headers=bearer(self.ingest_key)
            )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    @asynccontextmanager
    async def ws(
        self, replica: int = 0, *, origin: str | None = ALLOWED_ORIGIN, connect_timeout: float = 10.0
    ) -> AsyncIterator[WsClient]:
        headers = [("Origin", origin)] if origin is not None else []
        async with open_websocket_url(
            self.replicas[replica].ws_url, extra_headers=headers, connect_timeout=scaled(connect_timeout)
        ) as ws:
            yield WsClient(ws)

    @asynccontextmanager
    async def session_ws(
        self,
        api_key: str,
        project: dict[str, Any],
        *,
        replica: int = 0,
        resume_from: int | None = None,
        batch: bool | None = None,
    ) -> AsyncIterator[tuple[WsClient, dict[str, Any]]]:
        """A socket past INIT: yields ``(client, ready_frame)``."""
        token = await self.token(api_key)
        async with self.ws(replica) as client:
            ready = await client.init(token, {"id": project["id"]}, resume_from=resume_from, batch=batch)
            assert ready["type"] == "ready", ready
            yield client, ready

    def add_replica(self, env: dict[str, str] | None = None, *, wait: bool = True) -> SessionReplica:
        replica = self.factory.spawn_session(self, env)
        if wait:
            replica.proc.wait_ready(30)
        return replica


def session_env(dsn: str, auth_url: str, service_key: str, ingest_key: str, **overrides: str) -> dict[str, str]:
    env = {
        "DATABASE_URL": dsn,
        "TETHER_SESSION_HOST": "127.0.0.1",
        "TETHER_SESSION_PORT": "0",
        "TETHER_AUTH_URL": auth_url,
        "TETHER_AUTH_SERVICE_KEY": service_key,
        "TETHER_INGEST_KEYS": f"agent={ingest_key}",
        "TETHER_ALLOWED_ORIGINS": ALLOWED_ORIGIN,
        "TETHER_CORS_ORIGINS": ALLOWED_ORIGIN,
        "TETHER_TEST_MODE": "1",
        "TETHER_AGENT_DELAY_MS": "5",
        "TETHER_AGENT_CHUNKS": "5",
    }
    env.update(overrides)
    return env


class StackFactory:
    """Starts stacks; :meth:`close` stops every process it started (by PID)."""

    def __init__(self, pg: PgServer, log_dir: Path) -> None:
        self.pg = pg
        self.log_dir = log_dir
        self.auth_factory = AuthServiceFactory(pg, log_dir, db_prefix="stack")
        self.sessions: list[SessionReplica] = []

    def spawn_session(self, stack: Stack, env: dict[str, str] | None = None) -> SessionReplica:
        full = session_env(
            stack.dsn, stack.auth.url, stack.auth.service_key, stack.ingest_key, **{**stack.session_env, **(env or {})}
        )
        proc = ServiceProcess(SESSION_MODULE, full, name="session", log_dir=self.log_dir)
        replica = SessionReplica(proc, full)
        self.sessions.append(replica)
        stack.replicas.append(replica)
        proc.start()
        return replica

    def start(
        self,
        replicas: int = 1,
        *,
        session_env: dict[str, str] | None = None,
        auth_env: dict[str, str] | None = None,
        dsn: str | None = None,
        wait: bool = True,
    ) -> Stack:
        dsn = dsn or self.pg.fresh_database("stack")
        auth = self.auth_factory.start(dsn, env={"TETHER_TOKEN_ISSUE_PER_MINUTE": "100000", **(auth_env or {})})
        ingest_key = "ing_" + pysecrets.token_urlsafe(24)
        remember(ingest_key)
        stack = Stack(auth, [], dsn, ingest_key, self, dict(session_env or {}))
        for _ in range(replicas):
            self.spawn_session(stack)
        if wait:
            wait_all_ready([r.proc for r in stack.replicas], 30)
        return stack

    def close(self) -> None:
        errors: list[BaseException] = []
        for replica in reversed(self.sessions):
            try:
                replica.proc.stop()
            except Exception as exc:  # keep stopping the others; re-raised below
                errors.append(exc)
        self.sessions.clear()
        self.auth_factory.close()
        if errors:
            raise errors[0]


def new_client_msg_id() -> str:
    return uuid.uuid4().hex
