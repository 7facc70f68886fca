"""``tether_session.asgi_ws.AsgiWebsocket`` on scripted ASGI callables (in-process, asyncio).

The black-box side (a real Hypercorn, real sockets) is ``tests/session/test_asgi_ws.py``;
here: what the adapter promises :class:`~tether_session.connection.Connection`.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from tether_kit.hypercorn_adapter import TRANSPORT_ERROR_KEY
from tether_session import asgi_ws
from tether_session.asgi_ws import AsgiWebsocket


class Peer:
    """The server side of the ASGI callables: a queue of events in, a list of messages out."""

    def __init__(self, *events: dict[str, Any]) -> None:
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for event in events:
            self.inbox.put_nowait(event)
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


def _scope(port: int = 50000, headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {
        "type": "websocket",
        "asgi": {"spec_version": "2.3", "version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": "/v1/ws",
        "raw_path": b"/v1/ws",
        "query_string": b"",
        "root_path": "",
        "headers": headers
        if headers is not None
        else [
            (b"host", b"127.0.0.1:8000"),
            (b"origin", b"https://app.tether.test"),
            (b"remote-addr", b"6.6.6.6"),
            (b"cookie", b"tether_session=" + b"x" * 500),
        ],
        "client": ("127.0.0.1", port),
        "server": ("127.0.0.1", 8000),
        "state": {},
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}},
    }


def _ws(peer: Peer, scope: dict[str, Any]) -> AsgiWebsocket:
    return AsgiWebsocket(cast(Any, scope), cast(Any, peer.receive), cast(Any, peer.send))


def test_headers_are_case_insensitive_and_remote_addr_is_the_peer_never_a_header() -> None:
    ws = _ws(Peer(), _scope())
    assert ws.headers.get("Origin") == ws.headers.get("ORIGIN") == "https://app.tether.test"
    assert ws.headers.get("Remote-Addr") == "127.0.0.1"  # the client's own "remote-addr" header is ignored
    assert ws.headers.get("X-Missing") is None
    assert ws.headers.get("X-Missing", "?") == "?"
    scope = _scope()
    scope["client"] = None
    assert _ws(Peer(), scope).headers.get("Remote-Addr") == "<local>"


def test_receive_returns_text_and_bytes_and_skips_the_connect_event() -> None:
    peer = Peer(
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": "hello", "bytes": None},
        {"type": "websocket.receive", "text": None, "bytes": b""},
    )
    ws = _ws(peer, _scope())

    async def main() -> list[str | bytes]:
        return [await ws.receive(), await ws.receive()]

    assert asyncio.run(main()) == ["hello", b""]  # an empty binary frame stays bytes (invalid_frame later)


def test_a_disconnect_cancels_the_handler_from_the_reader_and_records_the_close_code() -> None:
    peer = Peer({"type": "websocket.connect"})
    scope = _scope()
    ws = _ws(peer, scope)
    seen: dict[str, Any] = {}

    async def reader() -> None:
        await ws.receive()

    async def handler() -> None:
        await ws.accept()
        task = asyncio.create_task(reader())
        peer.inbox.put_nowait({"type": "websocket.disconnect", "code": 1009, TRANSPORT_ERROR_KEY: "frame_too_large"})
        try:
            await asyncio.Event().wait()  # the writer, waiting for events: only a cancel ends it
        except asyncio.CancelledError:
            seen["handler_cancelled"] = True
            with pytest.raises(asyncio.CancelledError):
                await task
            seen["reader_cancelled"] = task.cancelled()
            raise

    async def main() -> None:
        with pytest.raises(asyncio.CancelledError):
            await asyncio.create_task(handler())

    asyncio.run(main())
    assert seen == {"handler_cancelled": True, "reader_cancelled": True}
    assert (ws.client_close_code, ws.transport_error) == (1009, "frame_too_large")
    assert ws.gone


def test_finish_waits_for_the_close_reply_draining_what_the_client_still_sends() -> None:
    peer = Peer(
        {"type": "websocket.connect"},
        *({"type": "websocket.receive", "text": "late", "bytes": None} for _ in range(50)),
        {"type": "websocket.disconnect", "code": 1000},
    )
    ws = _ws(peer, _scope())

    async def main() -> None:
        await ws.accept()
        await ws.close(4001, "unexpected_frame")
        await ws.finish()

    asyncio.run(main())
    assert peer.inbox.empty()
    assert ws.gone
    assert [m["type"] for m in peer.sent] == ["websocket.accept", "websocket.close"]
    assert peer.sent[1]["code"] == 4001


def test_finish_closes_with_1000_when_the_session_did_not_and_gives_up_on_a_silent_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(asgi_ws, "CLOSE_HANDSHAKE_S", 0.01)
    peer = Peer({"type": "websocket.connect"})
    ws = _ws(peer, _scope())

    async def main() -> None:
        await ws.accept()
        await ws.finish()  # no reply ever comes: bounded

    asyncio.run(main())
    assert peer.sent[-1] == {"type": "websocket.close", "code": 1000, "reason": ""}
    assert not ws.gone
    with pytest.raises(RuntimeError):
        asyncio.run(ws.close(1000))  # a second close is a bug, as in Quart
