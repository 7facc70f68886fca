"""The WebSocket endpoint straight on ASGI: Hypercorn hands ``/v1/ws`` to the session, not to Quart.

Memory per idle session is the budget here (bench scenario 4).  Quart's WebSocket path cost
about 14 KB per connection on top of Hypercorn's own (measured: 45.5 -> 31.6 KB/session): a
second queue, a receiver task and a handler task, a request context, a ``Headers`` copy of
every header.  :class:`~tether_session.connection.Connection` needs none of it; it uses:

* ``headers.get(name)`` (``Origin``, and Quart's ``Remote-Addr``: the peer address from the
  scope's ``client``, never a header the client sent);
* ``client_close_code`` and ``transport_error`` for the ``ws_close`` log line: what the
  server's ``websocket.disconnect`` said (Tether's Hypercorn adapter,
  :mod:`tether_kit.hypercorn_adapter`, reports the code of the client's close frame, and names
  the closes it decided itself: 1007 ``invalid_utf8``, 1009 ``frame_too_large``);
* ``await send(text)``, ``await receive()`` (-> ``str | bytes``), ``await close(code, reason)``.

:class:`AsgiWebsocket` provides exactly that on the ASGI callables: ``receive()`` awaits
Hypercorn's own per-connection queue (no queue or task of ours).  A client that goes away
cancels the handler task, as Quart did: ``receive()`` raises :class:`asyncio.CancelledError`
in whichever task was reading, after cancelling the handler when that was another task (the
session's reader).  Until a task reads, a departure is not noticed (e.g. during INIT's token
check): the session then ends at its next read.

:mod:`tether_session.asgi` dispatches WebSocket scopes here.  After the session,
:meth:`AsgiWebsocket.finish` completes the closing handshake (Hypercorn's queue towards the
app is bounded: see there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any, cast, overload

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope

from tether_kit.hypercorn_adapter import TRANSPORT_ERROR_KEY

# After the session closed the socket: how long to wait for the client's close reply (the
# closing handshake) while draining what it still sends.  Hypercorn's queue towards the app
# is bounded; returning while it is full would block Hypercorn on the final disconnect event.
CLOSE_HANDSHAKE_S = 2.0


class ScopeHeaders:
    """A read-only view of the scope's request headers (case-insensitive ``get``), built on demand."""

    __slots__ = ("_scope",)

    def __init__(self, scope: Mapping[str, Any]) -> None:
        self._scope = scope

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...
    def get(self, name: str, default: str | None = None) -> str | None:
        key = name.lower()
        if key == "remote-addr":  # as Quart: the peer's address, whatever headers the client sent
            client = self._scope.get("client")
            return str(client[0]) if client else "<local>"
        wanted = key.encode("latin-1")
        headers: Iterable[tuple[bytes, bytes]] = self._scope["headers"]
        for raw_name, value in headers:
            if raw_name.lower() == wanted:
                return value.decode("latin-1")
        return default


class AsgiWebsocket:
    """One WebSocket on the ASGI callables: what :class:`Connection` uses, nothing per message kept."""

    __slots__ = (
        "_client_close_code",
        "_handler",
        "_receive",
        "_send",
        "_transport_error",
        "accepted",
        "close_sent",
        "gone",
        "scope",
    )

    def __init__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        self.scope = cast(dict[str, Any], scope)
        self._receive = receive
        self._send = send
        self._handler: asyncio.Task[Any] | None = None
        self.accepted = False
        self.close_sent = False
        self.gone = False  # the client's side is closed (websocket.disconnect received)
        self._client_close_code: int | None = None
        self._transport_error: str | None = None

    @property
    def client_close_code(self) -> int | None:
        """The code of the client's close frame, or of the close the server decided (1007, 1009), from
        ``websocket.disconnect``: 1006 when the link dropped without one; None while the socket is open."""
        return self._client_close_code

    @property
    def transport_error(self) -> str | None:
        """Why the server closed below the app (``invalid_utf8``, ``frame_too_large``, ...), else None."""
        return self._transport_error

    @property
    def headers(self) -> ScopeHeaders:
        return ScopeHeaders(self.scope)

    async def accept(self) -> None:
        """Accept the upgrade; the calling task becomes the handler a client disconnect cancels.

        The server keeps only ``Origin`` of the request headers from here on (the adapter's lean
        scope): ``headers`` serves ``Origin`` and ``Remote-Addr`` after accept.
        """
        if not self.accepted:
            self._handler = asyncio.current_task()
            self.accepted = True
            await self._send({"type": "websocket.accept", "subprotocol": None, "headers": []})

    async def send(self, data: str | bytes) -> None:
        if isinstance(data, str):
            await self._send({"type": "websocket.send", "bytes": None, "text": data})
        else:
            await self._send({"type": "websocket.send", "bytes": data, "text": None})

    async def receive(self) -> str | bytes:
        """The next message; when the client has gone: cancel the handler, raise CancelledError."""
        while not self.gone:
            event = cast(dict[str, Any], await self._receive())
            kind = event["type"]
            if kind == "websocket.receive":
                # an empty binary frame is b"" (falsy): keep it bytes, never None (invalid_frame, not a crash)
                data = event.get("bytes")
                return cast(str | bytes, data if data is not None else event["text"])
            if kind == "websocket.disconnect":
                self.gone = True
                self._client_close_code = event.get("code")
                self._transport_error = event.get(TRANSPORT_ERROR_KEY)
            # websocket.connect (before accept) is skipped
        handler = self._handler
        if handler is not None and handler is not asyncio.current_task() and not handler.done():
            handler.cancel()
        raise asyncio.CancelledError

    async def close(self, code: int, reason: str = "") -> None:
        if self.close_sent:
            raise RuntimeError("Cannot close websocket multiple times")
        self.close_sent = True
        await self._send({"type": "websocket.close", "code": code, "reason": reason})

    async def reject(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Answer the upgrade with an HTTP response instead (before accept)."""
        extensions = self.scope.get("extensions") or {}
        if "websocket.http.response" not in extensions:  # the server cannot: a bare 403
            await self._send({"type": "websocket.close", "code": 1000, "reason": None})
            return
        await self._send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await self._send({"type": "websocket.http.response.body", "body": body, "more_body": False})

    async def finish(self) -> None:
        """After the session: close if it did not (1000, as Quart did), then wait (bounded) for the
        client's close reply, reading and dropping what it still sends.

        Hypercorn's queue towards the app holds 10 events and its reader waits for room: had the
        app returned with the queue full (a client still sending when the session failed), that
        reader task would wait forever, and Hypercorn would hang on it at shutdown.  Waiting for
        the reply also lets Hypercorn close the socket after the handshake, not under the client.
        """
        if not self.accepted or self.gone:
            return
        if not self.close_sent:
            await self.close(1000)
        try:
            async with asyncio.timeout(CLOSE_HANDSHAKE_S):
                while True:
                    event = await self._receive()
                    if event["type"] == "websocket.disconnect":
                        self.gone = True
                        return
        except TimeoutError:
            return  # the client never answered; Hypercorn closes the socket when the app returns


__all__ = ["CLOSE_HANDSHAKE_S", "AsgiWebsocket", "ScopeHeaders"]
