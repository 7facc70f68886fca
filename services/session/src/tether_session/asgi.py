"""The session service's ASGI app: one explicit dispatch by scope type.

* ``http`` and ``lifespan`` scopes go to the Quart app unchanged (routes, error handling,
  ``before_serving``/``after_serving``);
* ``websocket`` scopes never reach Quart: they go to the route registered here for their
  exact path (today only ``/v1/ws``), on :class:`~tether_session.asgi_ws.AsgiWebsocket`.
  This is on purpose, for memory per idle session: Quart's WebSocket path adds a queue,
  a receiver task, a handler task and a request context per connection.  The route is
  listed next to the contract check (``web.RULES``), and a plain ``GET`` of its URL is an
  ordinary Quart route that answers a 400 problem.  An upgrade to any other path is
  refused before accept with a problem+json 404 and one ``ws_rejected`` line.

Hypercorn calls this object for every connection; a wrapper around it would keep one
more coroutine frame alive per session, so the dispatch is the app itself.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from quart import Quart

from tether_kit.errors import Catalogue, TetherError
from tether_kit.logs import JsonLogger

from .asgi_ws import AsgiWebsocket
from .web import Rejection, ws_rejection

WsRoute = Callable[[AsgiWebsocket], Rejection | Coroutine[Any, Any, None]]
"""Called before accept: a :class:`Rejection` refuses the upgrade; a coroutine is the session, which
the dispatch awaits once it has accepted (returned, not awaited, by the route: a frame fewer per session)."""


class Dispatcher:
    """HTTP and lifespan to ``http`` (Quart); WebSocket upgrades to ``ws_routes``."""

    def __init__(self, http: Quart, *, log: JsonLogger, catalogue: Catalogue, ws_routes: Mapping[str, WsRoute]) -> None:
        self.http = http
        self._log = log
        self._catalogue = catalogue
        self._ws_routes = dict(ws_routes)

    @property
    def ws_paths(self) -> frozenset[str]:
        return frozenset(self._ws_routes)

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "websocket":
            await self.http.asgi_app(scope, receive, send)
            return
        log, catalogue = self._log, self._catalogue
        ws = AsgiWebsocket(scope, receive, send)
        route = self._ws_routes.get(scope["path"])
        try:
            if route is None:
                missing = TetherError("http_not_found", f"no WebSocket endpoint at {scope['path'][:100]}")
                await ws.reject(*ws_rejection(log, missing, catalogue))
                return
            session = route(ws)
            if isinstance(session, Rejection):
                await ws.reject(*session)
                return
            try:
                await ws.accept()
            except BaseException:
                session.close()  # never started: no "coroutine was never awaited"
                raise
            await session
        except Exception as exc:  # a bug outside Connection (which logs and closes its own failures)
            log.exception("ws_internal_error", exc, path=scope["path"][:100])
            if not ws.accepted:
                await ws.reject(*ws_rejection(log, TetherError("internal_error", "unexpected server error"), catalogue))
                return
            if not ws.close_sent and not ws.gone:
                await ws.close(1011, "internal_error")
        await ws.finish()


__all__ = ["Dispatcher", "WsRoute"]
