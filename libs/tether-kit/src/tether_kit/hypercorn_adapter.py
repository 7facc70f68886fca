"""Tether's one adapter below ASGI: Hypercorn's WebSocket stream, changed for Tether's own server only.

Written for Hypercorn 0.18.0 and wsproto 1.3.2 (``tests/unit/test_hypercorn_adapter.py`` fails on
any other version: whoever upgrades re-reads this module against the new sources first).  Nothing
here is patched into Hypercorn: :func:`serve` runs Hypercorn's own pieces (lifespan, worker
context, task group, HTTP/1.1 protocol) with :class:`TetherWSStream` in place of ``WSStream``, so
only the sockets :func:`serve` accepts get these changes:

1. **permessage-deflate is refused** unless ``deflate=True``: Hypercorn has no setting and accepts
   it whenever a client offers it (every browser does), with a 32 KB window each way per socket
   (upstream request: pgjones/hypercorn#307).  Refused = answered as if the client offered no
   extension.
2. **The client's close code reaches the app.**  Hypercorn reports every client-initiated close as
   1006 (pgjones/hypercorn#127), so a log could not tell a normal close from a dropped link.  The
   ``websocket.disconnect`` event carries the code of the client's close frame (1005 when the
   frame had none), or 1006 when the TCP connection ended without one.
3. **A frame wsproto cannot parse gets a close frame.**  On a parse failure wsproto yields a
   ``CloseConnection`` without entering REMOTE_CLOSING, and Hypercorn then sent nothing at all
   (TCP EOF: the client saw 1006).  Now the client gets wsproto's close code: 1007 for a text
   frame that is not UTF-8, 1002 for any other protocol violation.
4. **A message above** ``websocket_max_message_size`` is closed with 1009 as before, and its rest
   is discarded (Hypercorn kept buffering it) and the app is told at once (Hypercorn told it
   1006 after the client's reply, or never).

For 3 and 4 the ``websocket.disconnect`` event is sent to the app as soon as the close frame is
out, with the code sent and one key of Tether's own, :data:`TRANSPORT_ERROR_KEY`
(``"invalid_utf8"``, ``"protocol_error"``, ``"frame_too_large"``); the socket then stays open for
the client's close reply, at most :data:`CLOSE_REPLY_S`, so that closing it does not reset the
connection under the close frame while the client's unread data is still arriving.

5. **A lean scope after accept** (memory per idle session): the scope lives as long as the
   connection and Hypercorn builds every value anew per connection.  Once the app has accepted,
   the request headers are dropped but ``Origin`` (the one header a WebSocket app reads after
   accept: the session names it in its ``ws_open`` line; a browser's headers, cookies included,
   are often a kilobyte); the values every connection shares (ASGI version, extensions, HTTP
   version, path, the server's address, an empty state and subprotocol list) become one shared
   object each, the empty state a read-only one; and the stream's handshake object is released
   (after accept Hypercorn reads only its ``accepted`` flag).  Nothing reads or mutates them later.

6. **A request the HTTP parser refuses** (a NUL in a header, a control character in the request
   line) is answered with the service's problem+json body, an ``X-Request-ID`` and one log line
   (:data:`MalformedAnswer`, given by the caller), not Hypercorn's bare empty 400.

Tether's services speak HTTP/1.1 only (TLS and HTTP/2 end at the proxy): an ``Upgrade: h2c``
header is ignored, as RFC 9110 allows, and an HTTP/2 preface is an unknown request.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Awaitable, Callable
from types import MappingProxyType
from typing import Any, Final, cast

import h11
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.lifespan import Lifespan
from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.protocol.events import Request, StreamClosed
from hypercorn.protocol.h11 import STREAM_ID, H11Protocol, H11WSConnection
from hypercorn.protocol.http_stream import HTTPStream
from hypercorn.protocol.ws_stream import FrameTooLargeError, Handshake, WSStream
from hypercorn.typing import AppWrapper, ASGIFramework, ConnectionState, LifespanState, WebsocketAcceptEvent
from hypercorn.utils import parse_socket_addr
from wsproto.connection import ConnectionState as WsState
from wsproto.events import CloseConnection, Message, Ping
from wsproto.frame_protocol import CloseReason

MalformedAnswer = Callable[[int], tuple[list[tuple[bytes, bytes]], bytes]]
"""Given the status Hypercorn would send for a request h11 could not parse: the headers and body to
send instead (the caller writes its log line there)."""

TRANSPORT_ERROR_KEY: Final = "tether.transport_error"
"""Key of the ``websocket.disconnect`` event naming a close the adapter decided (None otherwise)."""

CLOSE_REPLY_S: Final = 2.0
"""After a close the adapter sent: how long the socket waits for the client's close reply."""

_PARSE_ERRORS: Final = {CloseReason.INVALID_FRAME_PAYLOAD_DATA: "invalid_utf8"}

# Values equal on every connection, one object each (5.); Hypercorn's own values are compared
# with these before they are replaced, so a Hypercorn that built others keeps its own.
_ASGI: Final = {"spec_version": "2.3", "version": "3.0"}
_EXTENSIONS: Final[dict[str, dict[str, Any]]] = {"websocket.http.response": {}}
# read-only: an app that writes to its scope's state fails loudly instead of leaking into other sockets
_NO_STATE: Final[MappingProxyType[str, Any]] = MappingProxyType({})
_NO_SUBPROTOCOLS: Final = ()
# After accept a stream reads only ``handshake.accepted``: one accepted handshake stands in for each.
_ACCEPTED: Final = Handshake([], "1.1")
_ACCEPTED.accepted = True


class TetherWSStream(WSStream):
    """Hypercorn's WebSocket stream with changes 1-5 of the module docstring."""

    # set per server by :func:`serve` (a subclass), never on this class
    deflate = False
    server_address: tuple[str, int] | None = None  # the listening address, one tuple for all sockets

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client_code: int | None = None  # the code of the client's close frame
        self.transport_error: str | None = None  # a close this adapter decided
        self.disconnect_sent = False
        self.reply_window: asyncio.Event | None = None  # set when the socket closes after a transport error

    async def handle(self, event: Any) -> None:
        if isinstance(event, StreamClosed) and not self.closed and self.app_put is not None:
            self.closed = True
            if self.reply_window is not None:
                self.reply_window.set()
            if not self.disconnect_sent:
                code = self.client_code if self.client_code is not None else CloseReason.ABNORMAL_CLOSURE.value
                await self._tell_app(code)
            return
        await super().handle(event)

    async def app_send(self, message: Any) -> None:
        if message is None and self.transport_error is not None and not self.closed:
            # the app is done; the socket closes on the client's close reply or after CLOSE_REPLY_S
            self.reply_window = asyncio.Event()
            self.task_group.spawn(self._close_after_reply_window, self.reply_window)
            return
        await super().app_send(message)

    async def _accept(self, message: WebsocketAcceptEvent) -> None:
        if not self.deflate:
            self.handshake.extensions = None  # as if the client had offered none
        await super()._accept(message)
        self._lean_scope()

    def _lean_scope(self) -> None:
        self.handshake = _ACCEPTED
        scope = cast(dict[str, Any], self.scope)
        scope["headers"] = [h for h in scope["headers"] if h[0].lower() == b"origin"][:1]
        for key, shared in (("asgi", _ASGI), ("extensions", _EXTENSIONS), ("server", self.server_address)):
            if scope[key] == shared:
                scope[key] = shared
        if not scope["state"]:
            scope["state"] = _NO_STATE
        if not scope["subprotocols"]:
            scope["subprotocols"] = _NO_SUBPROTOCOLS
        scope["http_version"] = sys.intern(scope["http_version"])
        scope["path"] = sys.intern(scope["path"])

    async def _handle_events(self) -> None:
        for event in self.connection.events():
            if isinstance(event, CloseConnection):
                await self._on_close_event(event)
                return
            if self.transport_error is not None:
                continue  # the rest of a refused message, or anything after it: dropped
            if isinstance(event, Message):
                try:
                    self.buffer.extend(event)
                except FrameTooLargeError:
                    self.buffer.clear()
                    await self._fail(CloseReason.MESSAGE_TOO_BIG, "frame_too_large")
                    continue
                if event.message_finished:
                    await self._put(self.buffer.to_message())
                    self.buffer.clear()
            elif isinstance(event, Ping):
                await self._send_wsproto_event(event.response())

    async def _on_close_event(self, event: CloseConnection) -> None:
        state = self.connection.state
        if state in (WsState.REMOTE_CLOSING, WsState.CLOSED):  # the client's close frame
            self.client_code = event.code
            if state is WsState.REMOTE_CLOSING:
                await self._send_wsproto_event(event.response())
            await self.send(StreamClosed(stream_id=self.stream_id))
        elif state is WsState.OPEN:  # wsproto could not parse a frame
            name = _PARSE_ERRORS.get(CloseReason(event.code), "protocol_error")
            await self._fail(CloseReason(event.code), name)
        else:  # unparsable bytes after our own close frame: nothing more to say
            await self.send(StreamClosed(stream_id=self.stream_id))

    async def _fail(self, code: CloseReason, name: str) -> None:
        self.transport_error = name
        await self._send_wsproto_event(CloseConnection(code=code, reason=name))
        await self._tell_app(code.value)

    async def _tell_app(self, code: int) -> None:
        self.disconnect_sent = True
        await self._put({"type": "websocket.disconnect", "code": code, TRANSPORT_ERROR_KEY: self.transport_error})

    async def _put(self, message: dict[str, Any]) -> None:
        app_put = self.app_put
        assert app_put is not None  # frames arrive only after the app was spawned and accepted
        await app_put(message)

    async def _close_after_reply_window(self, closed: asyncio.Event) -> None:
        try:
            async with asyncio.timeout(CLOSE_REPLY_S):
                await closed.wait()
        except TimeoutError:
            await self.send(StreamClosed(stream_id=self.stream_id))


class TetherH11Protocol(H11Protocol):
    """Hypercorn's HTTP/1.1 protocol making a :class:`TetherWSStream` for each WebSocket upgrade."""

    ws_stream_class: type[TetherWSStream] = TetherWSStream
    malformed: MalformedAnswer | None = None

    async def _send_error_response(self, status_code: int) -> None:
        answer = type(self).malformed
        if answer is None:
            await super()._send_error_response(status_code)
            return
        headers, body = answer(status_code)
        length = [(b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        await self._send_h11_event(h11.Response(status_code=status_code, headers=[*length, *headers]))
        await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())

    async def _check_protocol(self, event: h11.Request) -> None:
        return  # HTTP/1.1 only: no switch to HTTP/2 (module docstring)

    async def _create_stream(self, request: h11.Request) -> None:
        # Hypercorn's own _create_stream (the same upgrade test and Request), with this protocol's WebSocket stream.
        upgrade = connection = ""
        for name, value in request.headers:
            lowered = name.decode("latin1").strip().lower()
            if lowered == "upgrade":
                upgrade = value.decode("latin1").strip()
            elif lowered == "connection":
                connection = value.decode("latin1").strip()
        tokens = {token.strip() for token in connection.lower().split(",")}
        is_ws = "upgrade" in tokens and upgrade.lower() == "websocket" and request.method.upper() == b"GET"
        args = (self.app, self.config, self.context, self.task_group, self.ssl, self.client, self.server)
        if is_ws:
            self.stream = self.ws_stream_class(*args, self.stream_send, STREAM_ID)
            self.connection = H11WSConnection(cast(h11.Connection, self.connection))
        else:
            self.stream = HTTPStream(*args, self.stream_send, STREAM_ID)
        headers = request.headers.raw_items() if self.config.h11_pass_raw_headers else list(request.headers)
        await self.stream.handle(
            Request(
                stream_id=STREAM_ID,
                headers=headers,
                http_version=request.http_version.decode(),
                method=request.method.decode("ascii").upper(),
                raw_path=request.target,
                state=self.connection_state,
            )
        )
        self.keep_alive_requests += 1
        await self.context.mark_request()


class _TetherTCPServer(TCPServer):
    """Hypercorn's TCP server (plain TCP) speaking :class:`TetherH11Protocol`."""

    protocol_class: type[TetherH11Protocol] = TetherH11Protocol

    async def run(self) -> None:
        sock = self.writer.get_extra_info("socket")
        try:
            client = parse_socket_addr(sock.family, sock.getpeername())
            server = parse_socket_addr(sock.family, sock.getsockname())
            async with TaskGroup(self.loop) as task_group:
                self._task_group = task_group
                protocol = self.protocol_class(
                    self.app,
                    self.config,
                    self.context,
                    task_group,
                    ConnectionState(self.state),
                    False,
                    client,
                    server,
                    self.protocol_send,
                )
                self.protocol = cast(Any, protocol)  # used through handle(), as ProtocolWrapper
                await protocol.initiate()
                await self.idle_task.restart(task_group, self._idle_timeout)
                await self._read_data()
        except OSError:
            pass
        finally:
            await self._close()


def _server_class(
    deflate: bool, address: tuple[str, int] | None, malformed: MalformedAnswer | None
) -> type[_TetherTCPServer]:
    stream = type("TetherWSStream", (TetherWSStream,), {"deflate": deflate, "server_address": address})
    protocol = type(
        "TetherH11Protocol",
        (TetherH11Protocol,),
        {"ws_stream_class": stream, "malformed": staticmethod(malformed) if malformed else None},
    )
    return type("TetherTCPServer", (_TetherTCPServer,), {"protocol_class": protocol})


async def serve(
    app: ASGIFramework,
    config: Config,
    sock: socket.socket,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    deflate: bool = False,
    malformed: MalformedAnswer | None = None,
) -> None:
    """Serve ``app`` on the listening ``sock`` (plain TCP, HTTP/1.1) until ``shutdown_trigger`` returns.

    Hypercorn's ``serve`` without the parts Tether does not use (TLS, QUIC, several sockets,
    Hypercorn's signal handling, statsd): lifespan start-up, one server, then on shutdown the
    same graceful stop (stop accepting, wait ``config.graceful_timeout`` for the connections,
    lifespan shut-down).
    """
    loop = asyncio.get_running_loop()
    wrapped: AppWrapper = ASGIWrapper(app)
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrapped, config, loop, lifespan_state)
    lifespan_task = loop.create_task(lifespan.handle_lifespan())
    await lifespan.wait_for_startup()
    if lifespan_task.done() and lifespan_task.exception() is not None:
        raise cast(BaseException, lifespan_task.exception())

    context = WorkerContext(None)
    server_class = _server_class(deflate, parse_socket_addr(sock.family, sock.getsockname()), malformed)
    connections: set[asyncio.Task[None]] = set()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = cast(asyncio.Task[None], asyncio.current_task())
        connections.add(task)
        task.add_done_callback(connections.discard)
        await server_class(wrapped, loop, config, context, lifespan_state, reader, writer)

    server = await asyncio.start_server(on_connection, backlog=config.backlog, sock=sock)
    try:
        await shutdown_trigger()
    finally:
        await context.terminated.set()
        server.close()
        await server.wait_closed()
        if connections:
            _done, pending = await asyncio.wait(connections, timeout=config.graceful_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await lifespan.wait_for_shutdown()
        lifespan_task.cancel()
        await asyncio.gather(lifespan_task, return_exceptions=True)


__all__ = ["CLOSE_REPLY_S", "TRANSPORT_ERROR_KEY", "TetherH11Protocol", "TetherWSStream", "serve"]
