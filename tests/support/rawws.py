"""The one raw-socket WebSocket client of the suite (wsproto does the framing, trio the socket).

Unlike trio-websocket it has no background reader: bytes are read from the socket only when
the test asks (:meth:`RawWs.recv_frame`, :meth:`RawWs.read_frames`,
:meth:`RawWs.read_until_closed`), so a test can stop reading altogether (a stalled tab, F25)
while still writing, and the receive buffer is small (set before connect) so the server's
send path fills up fast.  It can also send what a library would refuse to (``raw.conn`` and
``raw._send`` for hand-made frames).  Every frame read is checked against the contract's frame
schemas.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, RejectConnection, Request, TextMessage

from tests.support.session import ALLOWED_ORIGIN, Closed, check_server_frame
from tests.support.waiting import scaled


@dataclass
class RawClosed:
    frames: list[dict[str, Any]]
    code: int | None
    reason: str | None

    def as_closed(self) -> Closed:
        errors = [f for f in self.frames if f["type"] == "error"]
        return Closed(self.code, self.reason, errors[-1] if errors else None, self.frames)


class RawWs:
    """A WebSocket client on a raw socket (wsproto) whose receive buffer is tiny, and which
    reads from the socket only inside :meth:`recv_frame` / :meth:`read_until_closed`."""

    def __init__(self, sock: trio.socket.SocketType, conn: WSConnection) -> None:
        self.sock = sock
        self.conn = conn
        self._pending: list[Any] = []
        self._text: list[str] = []
        self.frames: list[dict[str, Any]] = []  # what read_frames collected
        self.close_code: int | None = None
        self.eof = False

    @classmethod
    async def connect(cls, url: str, *, origin: str = ALLOWED_ORIGIN, rcvbuf: int = 4096) -> RawWs:
        parts = urlsplit(url)
        assert parts.hostname is not None
        assert parts.port is not None
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: fixes the window
        with trio.fail_after(scaled(10)):
            await sock.connect((parts.hostname, parts.port))
        conn = WSConnection(ConnectionType.CLIENT)
        raw = cls(sock, conn)
        request = Request(
            host=f"{parts.hostname}:{parts.port}", target=parts.path, extra_headers=[(b"origin", origin.encode())]
        )
        await raw._send(conn.send(request))
        event = await raw._next_event()
        if isinstance(event, RejectConnection):
            raise AssertionError(f"handshake rejected with {event.status_code}")
        assert isinstance(event, AcceptConnection), event
        return raw

    async def _send(self, data: bytes) -> None:
        with trio.fail_after(scaled(10)):
            view = memoryview(data)
            while view:
                sent = await self.sock.send(view)
                view = view[sent:]

    async def _next_event(self, timeout: float = 10.0) -> Any:
        with trio.fail_after(scaled(timeout)):
            while not self._pending:
                self._pending.extend(self.conn.events())
                if self._pending:
                    break
                data = await self.sock.recv(65536)
                if not data:
                    raise AssertionError("the server ended the TCP connection without a close frame")
                self.conn.receive_data(data)
        return self._pending.pop(0)

    async def send(self, frame: dict[str, Any]) -> None:
        await self._send(self.conn.send(TextMessage(data=json.dumps(frame))))

    async def _next_frame_or_close(self, timeout: float) -> dict[str, Any] | CloseConnection:
        """The next complete text frame (schema-checked), or the server's close."""
        while True:
            event = await self._next_event(timeout)
            if isinstance(event, CloseConnection):
                return event
            if not isinstance(event, TextMessage):
                raise AssertionError(f"unexpected WebSocket event {event!r}")
            self._text.append(event.data)
            if event.message_finished:
                text, self._text = "".join(self._text), []
                return check_server_frame(text)

    async def recv_frame(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next complete text frame (schema-checked); raises on a close."""
        got = await self._next_frame_or_close(timeout)
        if isinstance(got, CloseConnection):
            raise AssertionError(f"closed with {got.code} {got.reason!r} while a frame was expected")
        return got

    async def read_until_closed(self, timeout: float = 30.0) -> RawClosed:
        """Read (and schema-check) every frame until the server's close frame."""
        frames: list[dict[str, Any]] = []
        with trio.fail_after(scaled(timeout)):
            while True:
                got = await self._next_frame_or_close(timeout)
                if isinstance(got, CloseConnection):
                    return RawClosed(frames, got.code, got.reason)
                frames.append(got)

    async def read_frames(self, *, until: Any = None, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Read until ``until(frame)`` holds, the server closes, or EOF; return every frame read so far."""
        with trio.fail_after(scaled(timeout)):
            while not self.eof and self.close_code is None:
                while not self._pending:
                    self._pending.extend(self.conn.events())
                    if self._pending:
                        break
                    data = await self.sock.recv(1 << 20)
                    if not data:
                        self.eof = True
                        return self.frames
                    self.conn.receive_data(data)
                event = self._pending.pop(0)
                if isinstance(event, TextMessage):
                    self._text.append(event.data)
                    if event.message_finished:
                        text, self._text = "".join(self._text), []
                        self.frames.append(check_server_frame(text))
                        if until is not None and until(self.frames[-1]):
                            return self.frames
                elif isinstance(event, CloseConnection):
                    self.close_code = event.code
        return self.frames

    @property
    def event_seqs(self) -> list[int]:
        return [f["seq"] for f in self.frames if f["type"] == "event"]

    def close(self) -> None:
        self.sock.close()

    async def aclose(self) -> None:
        self.sock.close()
