"""Run an ASGI app on Hypercorn (through :mod:`tether_kit.hypercorn_adapter`) with Tether's own signal handling.

Hypercorn's own SIGTERM handling closes WebSockets with 1011 and no reason, so the
service installs its own handlers: on SIGTERM/SIGINT it first runs the app's drain
hook (the session service closes every socket with a retryable "draining" code),
then lets Hypercorn stop.  The listening socket is created here so that port 0 works:
the chosen port is written to the log (``event=listening``).

permessage-deflate is off unless asked for (``websocket_deflate``): Hypercorn 0.18 accepts it
whenever a client offers it (every browser does), with a full 32 KB window each way; Tether's
frames are small JSON on loopback or a data-centre network (figures in ``bench/NOTES.md``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import uuid
from collections.abc import Awaitable, Callable

import uvloop
from hypercorn.config import Config
from hypercorn.typing import ASGIFramework

from .http import PROBLEM_JSON, REQUEST_ID_HEADER
from .hypercorn_adapter import MalformedAnswer, serve
from .logs import JsonLogger, LibraryLogHandler

_MALFORMED_CODES = {413: ("http_request_too_large", "Request too large")}


def malformed_answer(log: JsonLogger) -> MalformedAnswer:
    """The problem+json answer (and its one log line) to a request the HTTP parser refused."""

    def answer(status: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
        code, title = _MALFORMED_CODES.get(status, ("http_bad_request", "Bad request"))
        request_id = uuid.uuid4().hex
        detail = "the HTTP parser refused the request (malformed request line or header)"
        log.warning("http_error", code=code, status=status, detail=detail, request_id=request_id)
        body = {"type": f"https://tether.dev/errors/{code}", "title": title, "status": status, "code": code}
        body |= {"detail": detail, "request_id": request_id}
        headers = [(b"content-type", PROBLEM_JSON.encode()), (REQUEST_ID_HEADER.lower().encode(), request_id.encode())]
        return headers, json.dumps(body).encode()

    return answer


def make_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run(
    app: ASGIFramework,
    *,
    host: str,
    port: int,
    log: JsonLogger,
    drain: Callable[[], Awaitable[None]] | None = None,
    graceful_timeout: float = 10.0,
    max_message_size: int = 1 << 20,
    websocket_deflate: bool = False,
) -> None:
    sock = make_socket(host, port)
    config = Config()
    config.accesslog = None
    # Every library's stdlib logging (hypercorn, asyncpg, quart) becomes JSON lines too.
    logging.basicConfig(handlers=[LibraryLogHandler(log)], level=logging.WARNING, force=True)
    config.errorlog = logging.getLogger(f"hypercorn.{log.service}")
    config.graceful_timeout = graceful_timeout
    # The server re-listens the socket with config.backlog (default 100), overriding ours: under a
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
        await serve(
            app,
            config,
            sock,
            shutdown_trigger=shutdown_trigger,
            deflate=websocket_deflate,
            malformed=malformed_answer(log),
        )
        log.info("stopped")

    try:
        uvloop.run(main())
    finally:
        sock.close()  # a no-op once the server has closed it (it does when it stops)
