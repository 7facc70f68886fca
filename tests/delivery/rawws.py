"""A raw WebSocket client on a plain trio socket (wsproto does the framing).

Unlike trio-websocket it has no background reader: bytes are read from the socket only
when the test calls :meth:`RawWs.read_frames`, so a test can stop reading altogether (a
stalled tab, F25) while still writing (its heartbeats keep going).  The receive buffer
can be made small so the server's send path fills up fast.  Every frame read is still
checked against the contract's frame schemas.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from typing import Any

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, RejectConnection, Request, TextMessage

from tests.support.session import ALLOWED_ORIGIN, check_server_frame
from tests.support.waiting import scaled


@dataclass
class RawWs:
    stream: trio.SocketStream
    conn: WSConnection
    frames: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    eof: bool = False
    _text: list[str] = field(default_factory=list)

    @classmethod
    async def connect(cls, host: str, port: int, *, rcvbuf: int | None = None) -> RawWs:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        with trio.fail_after(scaled(10)):
            await sock.connect((host, port))
        raw = cls(trio.SocketStream(sock), WSConnection(ConnectionType.CLIENT))
        request = Request(host=f"{host}:{port}", target="/v1/ws", extra_headers=[(b"origin", ALLOWED_ORIGIN.encode())])
        await raw.stream.send_all(raw.conn.send(request))
        with trio.fail_after(scaled(10)):
            while True:
                data = await raw.stream.receive_some(65536)
                if not data:
                    raise AssertionError("the server closed the socket during the handshake")
                raw.conn.receive_data(data)
                for event in raw.conn.events():
                    if isinstance(event, AcceptConnection):
                        return raw
                    if isinstance(event, RejectConnection):
                        raise AssertionError(f"handshake rejected: {event.status_code}")

    async def send(self, frame: dict[str, Any]) -> None:
        await self.stream.send_all(self.conn.send(Message(data=json.dumps(frame))))

    async def read_frames(self, *, until: Any = None, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Read until ``until(frame)`` holds, the server closes, or EOF; return all frames so far."""
        with trio.fail_after(scaled(timeout)):
            while not self.eof and self.close_code is None:
                data = await self.stream.receive_some(1 << 20)
                if not data:
                    self.eof = True
                    break
                self.conn.receive_data(data)
                for event in self.conn.events():
                    if isinstance(event, TextMessage):
                        self._text.append(event.data)
                        if event.message_finished:
                            frame = check_server_frame("".join(self._text))
                            self._text.clear()
                            self.frames.append(frame)
                            if until is not None and until(frame):
                                return self.frames
                    elif isinstance(event, CloseConnection):
                        self.close_code = event.code
        return self.frames

    @property
    def event_seqs(self) -> list[int]:
        return [f["seq"] for f in self.frames if f["type"] == "event"]

    async def aclose(self) -> None:
        await self.stream.aclose()
