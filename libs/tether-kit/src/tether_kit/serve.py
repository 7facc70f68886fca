"""Run a Quart app on Hypercorn with Tether's own signal handling.

Hypercorn's own SIGTERM handling closes WebSockets with 1011 and no reason, so the
service installs its own handlers: on SIGTERM/SIGINT it first runs the app's drain
hook (the session service closes every socket with a retryable "draining" code),
then lets Hypercorn stop.  The listening socket is created here so that port 0 works:
the chosen port is written to the log (``event=listening``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop
from hypercorn.asyncio import serve
from hypercorn.config import Config
from hypercorn.protocol import ws_stream
from hypercorn.typing import Framework

from .logs import JsonLogger, LibraryLogHandler

_hypercorn_accept = ws_stream.Handshake.accept


def _accept_without_extensions(self: ws_stream.Handshake, *args: Any, **kwargs: Any) -> Any:
    self.extensions = None  # as if the client had offered none: permessage-deflate is never negotiated
    return _hypercorn_accept(self, *args, **kwargs)


def set_websocket_deflate(enabled: bool) -> None:
    """Whether WebSocket handshakes may negotiate permessage-deflate (Hypercorn has no setting).

    Hypercorn 0.18 accepts permessage-deflate whenever a client offers it (every browser
    does), with a full 32 KB window each way: measured +103 KB of RSS per idle session
    (148 vs 44 KB) and 1.7x the CPU per delivered event.  Tether's frames are small JSON
    on loopback or a data-centre network, so it is off unless asked for
    (upstream request: pgjones/hypercorn#307).
    """
    ws_stream.Handshake.accept = _hypercorn_accept if enabled else _accept_without_extensions  # type: ignore[method-assign]


def make_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run(
    app: Framework,
    *,
    host: str,
    port: int,
    log: JsonLogger,
    drain: Callable[[], Awaitable[None]] | None = None,
    graceful_timeout: float = 10.0,
    max_message_size: int = 1 << 20,
    websocket_deflate: bool = False,
) -> None:
    set_websocket_deflate(websocket_deflate)
    sock = make_socket(host, port)
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    # Every library's stdlib logging (hypercorn, asyncpg, quart) becomes JSON lines too.
    logging.basicConfig(handlers=[LibraryLogHandler(log)], level=logging.WARNING, force=True)
    config.errorlog = logging.getLogger(f"hypercorn.{log.service}")
    config.graceful_timeout = graceful_timeout
    # Hypercorn re-listens the socket with its own backlog (default 100), overriding ours: under a
    # connect storm the kernel then dropped thousands of connections at the accept queue.
    config.backlog = 2048
    config.websocket_max_message_size = max_message_size
    config.websocket_ping_interval = None
    config.keep_alive_timeout = 30

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        async def shutdown_trigger() -> None:
            await stop.wait()
            log.info("shutdown_requested")
            if drain is not None:
                await drain()

        log.info("listening", host=host, port=sock.getsockname()[1])
        await serve(app, config, shutdown_trigger=shutdown_trigger)
        log.info("stopped")

    try:
        uvloop.run(main())
    finally:
        # Hypercorn (bind fd://) closes the descriptor itself when it stops; closing it here
        # again raised EBADF (exit code 1 on every SIGTERM) or could close an unrelated file
        # that reused the number.  Give up our claim on it instead.
        sock.detach()
