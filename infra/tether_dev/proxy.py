"""A small reverse proxy for the container-less multi-replica run (``./dev up --replicas N``).

It stands in for the Caddy / nginx / cloud load balancer of a real deployment, so that a
browser sees one URL for N session replicas:

* **HTTP and WebSocket on one port.**  The proxy reads the request head (request line and
  headers), picks a backend, forwards the head and then splices bytes both ways at the TCP
  level.  A WebSocket upgrade therefore passes through untouched (frames, pings, close
  codes such as 4502 "draining").  A plain HTTP request is forwarded with
  ``Connection: close``, so every request is balanced on its own and keep-alive cannot pin
  a client to a replica that has since gone away.
* **Round robin over healthy backends only.**  Every backend's ``GET /readyz`` is polled
  (default every 0.5 s); only a 200 makes it healthy.  A replica that is starting (503
  ``not_ready``), draining after SIGTERM (503 ``draining``) or dead (connection refused) is
  skipped.  A failed connect marks the backend down at once (passive check) and the next
  healthy backend is tried, so a replica that died between two polls costs no request.
* **No healthy backend** gives ``503`` ``application/problem+json`` with ``Retry-After``.

It logs JSON lines through :mod:`tether_kit.logs` (``TETHER_LOG_FILE`` works as for the
services): ``listening`` (with the port; port 0 picks a free one), ``backend_up``,
``backend_down`` (with the reason), ``no_backend``.

    python -m tether_dev.proxy --port 8080 --backend 127.0.0.1:8002 --backend 127.0.0.1:8003

Resource handling: every connection the proxy opens belongs to the client connection that
caused it and is closed with it; on SIGTERM/SIGINT the proxy stops listening, closes every
open connection and exits 0.  Not a production proxy: no TLS, no HTTP/2, no pipelining.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from tether_kit.logs import JsonLogger
from tether_kit.logs import from_env as log_from_env

SERVICE = "dev-proxy"
MAX_HEAD_BYTES = 64 * 1024
CHUNK = 64 * 1024
# Dropped from a plain (non-upgrade) request, which is sent on with ``Connection: close``.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection"})


@dataclass
class Backend:
    host: str
    port: int
    healthy: bool = False
    reason: str = "not checked yet"
    connections: int = 0

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, spec: str) -> Backend:
        host, sep, port = spec.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"backend must be host:port, got {spec!r}")
        return cls(host, int(port))


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]

    @classmethod
    def parse(cls, raw: bytes) -> RequestHead:
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise ValueError(f"bad request line {lines[0][:100]!r}")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise ValueError(f"bad header line {line[:100]!r}")
            headers.append((name, value.strip()))
        return cls(parts[0], parts[1], parts[2], headers)

    def get(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)

    @property
    def is_upgrade(self) -> bool:
        tokens = {t.strip().lower() for t in (self.get("Connection") or "").split(",")}
        return "upgrade" in tokens and self.get("Upgrade") is not None

    def forwarded(self, client_ip: str) -> bytes:
        """The head to send upstream: X-Forwarded-* added; a plain request gets ``Connection: close``."""
        upgrade = self.is_upgrade
        dropped = {"x-forwarded-for", "x-forwarded-proto"} | (set() if upgrade else HOP_BY_HOP)
        headers = [(k, v) for k, v in self.headers if k.lower() not in dropped]
        previous = self.get("X-Forwarded-For")
        headers.append(("X-Forwarded-For", f"{previous}, {client_ip}" if previous else client_ip))
        headers.append(("X-Forwarded-Proto", "http"))
        if not upgrade:
            headers.append(("Connection", "close"))
        lines = [f"{self.method} {self.target} {self.version}", *(f"{k}: {v}" for k, v in headers), "", ""]
        return "\r\n".join(lines).encode("latin-1")


@dataclass
class Proxy:
    backends: list[Backend]
    log: JsonLogger
    health_interval: float = 0.5
    health_timeout: float = 1.0
    connect_timeout: float = 2.0
    head_timeout: float = 30.0
    _next: int = 0
    _clients: set[asyncio.Task[None]] = field(default_factory=set)

    # -- choosing a backend ----------------------------------------------------------------
    def pick(self, tried: set[str]) -> Backend | None:
        """The next healthy backend in round-robin order that was not tried yet."""
        count = len(self.backends)
        for offset in range(count):
            backend = self.backends[(self._next + offset) % count]
            if backend.healthy and backend.name not in tried:
                self._next = (self._next + offset + 1) % count
                return backend
        return None

    def _mark(self, backend: Backend, healthy: bool, reason: str) -> None:
        if healthy != backend.healthy:
            self.log.info("backend_up" if healthy else "backend_down", backend=backend.name, reason=reason)
        backend.healthy = healthy
        backend.reason = reason

    # -- active health checks ----------------------------------------------------------------
    async def check(self, backend: Backend) -> None:
        """One ``GET /readyz``: healthy only on 200."""
        try:
            async with asyncio.timeout(self.health_timeout):
                reader, writer = await asyncio.open_connection(backend.host, backend.port)
                try:
                    writer.write(
                        f"GET /readyz HTTP/1.1\r\nHost: {backend.name}\r\nUser-Agent: tether-dev-proxy\r\n"
                        "Connection: close\r\n\r\n".encode("latin-1")
                    )
                    await writer.drain()
                    status_line = await reader.readline()
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (OSError, TimeoutError) as exc:
            self._mark(backend, False, f"{type(exc).__name__}: {exc}"[:200])
            return
        parts = status_line.decode("latin-1").split(" ", 2)
        status = parts[1] if len(parts) > 1 else "no status line"
        self._mark(backend, status == "200", f"/readyz {status}")

    async def check_all(self) -> None:
        async with asyncio.TaskGroup() as group:
            for backend in self.backends:
                group.create_task(self.check(backend))

    async def health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            await self.check_all()

    # -- one client connection --------------------------------------------------------------------
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            await self._handle(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client went away: nothing left to answer
        except asyncio.CancelledError:
            # Only serve() cancels a connection task, at shutdown, and nothing awaits it but
            # asyncio's own callback, which on Python 3.11 logs a cancelled handler as an
            # error: end the task normally instead.
            pass
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.head_timeout):
                raw = await reader.readuntil(b"\r\n\r\n")
            head = RequestHead.parse(raw[:-4])
        except asyncio.LimitOverrunError:
            await _respond(writer, 431, "request_head_too_large", "the request head is larger than 64 KiB")
            return
        except (ValueError, TimeoutError):
            await _respond(writer, 400, "bad_request", "not an HTTP/1.x request")
            return
        peer = writer.get_extra_info("peername")
        client_ip = str(peer[0]) if isinstance(peer, tuple) else "unknown"
        tried: set[str] = set()
        while (backend := self.pick(tried)) is not None:
            tried.add(backend.name)
            try:
                async with asyncio.timeout(self.connect_timeout):
                    up_reader, up_writer = await asyncio.open_connection(backend.host, backend.port)
            except (OSError, TimeoutError) as exc:
                self._mark(backend, False, f"connect failed: {type(exc).__name__}: {exc}"[:200])
                continue
            backend.connections += 1
            try:
                up_writer.write(head.forwarded(client_ip))
                await up_writer.drain()
                await _splice(reader, writer, up_reader, up_writer)
            finally:
                backend.connections -= 1
                up_writer.close()
                with contextlib.suppress(OSError):
                    await up_writer.wait_closed()
            return
        self.log.warning(
            "no_backend",
            method=head.method,
            path=head.target.split("?", 1)[0],
            backends={b.name: b.reason for b in self.backends},
        )
        await _respond(writer, 503, "no_backend", "no healthy session replica", retry_after=1)

    # -- serving ----------------------------------------------------------------------------------
    async def serve(self, host: str, port: int, stop: asyncio.Event) -> None:
        await self.check_all()  # the first round before accepting: "listening" means the pool is known
        server = await asyncio.start_server(self.handle, host, port, limit=MAX_HEAD_BYTES, reuse_address=True)
        bound = server.sockets[0].getsockname()[1]
        self.log.info(
            "listening",
            host=host,
            port=bound,
            backends=[b.name for b in self.backends],
            healthy=[b.name for b in self.backends if b.healthy],
        )
        health = asyncio.create_task(self.health_loop(), name="health")
        try:
            await stop.wait()
        finally:
            health.cancel()
            server.close()
            for task in list(self._clients):
                task.cancel()
            await asyncio.gather(health, *self._clients, return_exceptions=True)
            await server.wait_closed()
            self.log.info("stopped")


async def _splice(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    """Copy bytes both ways until the backend is done (or either side fails).

    A client half-close is passed on to the backend (which then finishes and closes); the
    backend closing ends the whole exchange.  Errors on either side end both.
    """

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(CHUNK):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()

    upstream = asyncio.create_task(pipe(client_reader, up_writer))
    downstream = asyncio.create_task(pipe(up_reader, client_writer))
    try:
        done, _ = await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        if upstream in done and upstream.exception() is None and not downstream.done():
            await asyncio.wait({downstream})  # client half-closed: let the backend finish
    finally:
        for task in (upstream, downstream):
            task.cancel()
        await asyncio.gather(upstream, downstream, return_exceptions=True)


async def _respond(
    writer: asyncio.StreamWriter, status: int, code: str, detail: str, *, retry_after: int | None = None
) -> None:
    titles = {400: "Bad Request", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}
    body = json.dumps(
        {
            "type": f"https://tether.dev/errors/{code}",
            "title": titles[status],
            "status": status,
            "code": code,
            "detail": detail,
        }
    ).encode()
    extra = f"Retry-After: {retry_after}\r\n" if retry_after is not None else ""
    writer.write(
        f"HTTP/1.1 {status} {titles[status]}\r\nContent-Type: application/problem+json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n".encode("latin-1")
        + body
    )
    await writer.drain()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tether_dev.proxy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    env = os.environ.get
    parser.add_argument("--host", default=env("TETHER_PROXY_HOST", "127.0.0.1"), help="listen address")
    parser.add_argument(
        "--port", type=int, default=int(env("TETHER_PROXY_PORT", "8080")), help="listen port (0: any free port)"
    )
    parser.add_argument(
        "--backend",
        action="append",
        default=None,
        help="host:port of a session replica (repeat; default: $TETHER_PROXY_BACKENDS, comma-separated)",
    )
    parser.add_argument(
        "--health-interval-ms",
        type=int,
        default=int(env("TETHER_PROXY_HEALTH_INTERVAL_MS", "500")),
        help="how often every backend's /readyz is polled",
    )
    args = parser.parse_args(argv)
    if args.backend is None:
        args.backend = [b for b in env("TETHER_PROXY_BACKENDS", "").split(",") if b.strip()]
    if not args.backend:
        parser.error("at least one --backend host:port is required")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        backends = [Backend.parse(spec) for spec in args.backend]
    except ValueError as exc:
        print(f"proxy: {exc}", file=sys.stderr)
        return 2
    log = log_from_env(SERVICE)
    proxy = Proxy(backends, log, health_interval=args.health_interval_ms / 1000)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await proxy.serve(args.host, args.port, stop)

    try:
        asyncio.run(run())
    finally:
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
