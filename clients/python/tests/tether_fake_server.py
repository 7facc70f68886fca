"""An in-process, scripted WebSocket server for the session SDK's unit tests.

It speaks just enough of the protocol to drive the client: each accepted connection
reads INIT, records it, and hands the socket to the test's script for that connection
(``scripts[n]`` for the n-th connection; the last script repeats).  Port 0; every
frame the client sends is recorded in ``received``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from tether_client.closing import CloseCatalogue

CONTRACTS = Path(__file__).resolve().parents[3] / "contracts" / "session"
PROJECT_ID = "0b9e4c7e-3f7a-4d55-9d0c-8f6f0e9b1a2c"


def catalogue_json() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CONTRACTS / "close-codes.json").read_text())
    return data


def catalogue() -> CloseCatalogue:
    return CloseCatalogue.from_json(catalogue_json())


def entry(name: str) -> dict[str, Any]:
    for item in catalogue_json()["codes"]:
        if item["name"] == name:
            return dict(item)
    raise KeyError(name)


# Session options for tests: the contract's catalogue, short backoff and timeouts.
FAST: dict[str, Any] = {
    "catalogue": catalogue(),
    "backoff_base_s": 0.01,
    "backoff_cap_s": 0.05,
    "close_timeout_s": 0.5,
    "ready_timeout_s": 5.0,
}


class Tokens:
    """A get_token that issues a new random token per call and remembers them."""

    def __init__(self) -> None:
        self.issued: list[str] = []

    async def __call__(self) -> str:
        token = "tok_" + secrets.token_urlsafe(32)
        self.issued.append(token)
        return token


@dataclass
class Conn:
    """One accepted connection, as the script sees it."""

    ws: WebSocketConnection
    index: int
    init: dict[str, Any]
    received: list[dict[str, Any]] = field(default_factory=list)

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_message(json.dumps(frame))

    async def ready(
        self,
        *,
        last_seq: int = 0,
        resume_from: int | None = None,
        interval_ms: int = 15000,
        timeout_ms: int = 45000,
        expires_in_s: float = 3600,
    ) -> None:
        """Answer INIT with ``ready``; batched delivery is granted when INIT asked for it."""
        now = datetime.now(UTC)
        cursor = self.init.get("resume_from", last_seq) if resume_from is None else resume_from
        await self.send(
            {
                "type": "ready",
                "v": 1,
                "session_id": "0b9e4c7e-3f7a-4d55-9d0c-8f6f0e9b1a2d",
                "connection_id": f"fake-{self.index}",
                "project": {"id": PROJECT_ID, "slug": "fake", "name": "Fake"},
                "last_seq": last_seq,
                "resume_from": cursor,
                "heartbeat": {"interval_ms": interval_ms, "timeout_ms": timeout_ms},
                "session_expires_at": (now + timedelta(seconds=expires_in_s)).isoformat(),
                "server_time": now.isoformat(),
                "limits": {"max_frame_bytes": 65536, "prompts_per_minute": 120},
                "batch": self.init.get("batch") is True,
            }
        )

    async def event(self, seq: int, kind: str = "note", **data: Any) -> None:
        await self.send(event_frame(seq, kind, **data))

    async def events(self, *seqs: int) -> None:
        """One ``events`` frame (batched delivery) with an event per seq, in this order."""
        await self.send({"type": "events", "v": 1, "events": [event_frame(seq, n=seq) for seq in seqs]})

    async def fail(self, name: str, *, retry_after_ms: int | None = None) -> None:
        """The server's way to end a connection: an error frame, then the close code."""
        await self.send(error_frame(name, retry_after_ms))
        await self.ws.aclose(entry(name)["code"], name)

    async def refuse(self, client_msg_id: str, name: str = "overloaded", *, retry_after_ms: int | None = None) -> None:
        """Refuse one prompt and keep the socket: a request-scoped error frame, no close."""
        await self.send(error_frame(name, retry_after_ms, scope="request", client_msg_id=client_msg_id))

    async def ack(self, prompt: dict[str, Any], seq: int) -> None:
        await self.send(
            {"type": "prompt_ack", "v": 1, "client_msg_id": prompt["client_msg_id"], "seq": seq, "duplicate": False}
        )

    async def recv(self, kind: str | None = None) -> dict[str, Any]:
        """The next client frame (of ``kind``, skipping pings unless asked for)."""
        while True:
            frame: dict[str, Any] = json.loads(await self.ws.get_message())
            self.received.append(frame)
            if kind is None and frame["type"] != "ping":
                return frame
            if frame["type"] == kind:
                return frame

    async def until_closed(self) -> None:
        try:
            while True:
                self.received.append(json.loads(await self.ws.get_message()))
        except ConnectionClosed:
            return


def error_frame(name: str, retry_after_ms: int | None = None, **extra: str) -> dict[str, Any]:
    """An ``error`` frame for the catalogue entry ``name``."""
    item = entry(name)
    frame: dict[str, Any] = {
        "type": "error",
        "v": 1,
        "code": name,
        "close_code": item["code"],
        "message": item["message"],
        "retryable": item["retryable"],
        "action": item["action"],
        **extra,
    }
    if retry_after_ms is not None:
        frame["retry_after_ms"] = retry_after_ms
    return frame


def event_frame(seq: int, kind: str = "note", **data: Any) -> dict[str, Any]:
    return {
        "type": "event",
        "v": 1,
        "seq": seq,
        "event_id": f"e{seq}",
        "kind": kind,
        "data": data,
        "ts": datetime.now(UTC).isoformat(),
    }


Script = Callable[[Conn], Awaitable[None]]


class FakeServer:
    """``max_message_size``: a bigger client message is refused with close 1009 before the
    script sees it (trio-websocket's own limit, as a real server's message cap)."""

    def __init__(self, scripts: list[Script], *, max_message_size: int = 2**20) -> None:
        self.scripts = scripts
        self.max_message_size = max_message_size
        self.conns: list[Conn] = []
        self.port = 0
        self.connected_at: list[float] = []

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    @property
    def inits(self) -> list[dict[str, Any]]:
        return [c.init for c in self.conns]

    async def _handler(self, request: WebSocketRequest) -> None:
        ws = await request.accept()
        self.connected_at.append(trio.current_time())
        try:
            init = json.loads(await ws.get_message())
        except ConnectionClosed:
            return
        conn = Conn(ws, len(self.conns), init)
        self.conns.append(conn)
        script = self.scripts[min(conn.index, len(self.scripts) - 1)]
        try:
            await script(conn)
        except ConnectionClosed:
            return  # the client went away mid-script: that is what some tests do

    async def start(self, nursery: trio.Nursery) -> FakeServer:
        server = await nursery.start(
            partial(serve_websocket, max_message_size=self.max_message_size), self._handler, "127.0.0.1", 0, None
        )
        self.port = server.port
        return self
