"""A tiny resilient test client for the chaos tests (deliberately not ``clients/python``).

:class:`ResilientClient` keeps one project's stream alive across whatever the test does to
the system: on every close it fetches a *fresh* connection token, reconnects (to the next
replica in its list) with ``resume_from`` = the last seq it holds, and drops any seq it
already has.  It records everything a verdict needs:

* ``raw`` — every event seq received, in arrival order, duplicates included;
* ``seqs`` — the deduplicated stream (what an app would show);
* ``duplicates`` / ``gaps`` — seqs seen twice, and jumps over a missing seq;
* ``closes`` — every close: replica, close code, the ``error`` frame before it (if any);
* ``acks`` — prompt acks by client_msg_id (prompts are re-sent until acked: idempotent).

Every received frame is schema-checked (it uses :class:`tests.support.session.WsClient`).
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from trio_websocket import ConnectionClosed, HandshakeError

from tests.delivery.helpers import TokenSource
from tests.support.session import Stack, WsClient, close_catalogue
from tests.support.waiting import pace

RETRYABLE = {entry["code"]: bool(entry["retryable"]) for entry in close_catalogue().values()}
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 1.0
RETRY_AFTER_CAP_S = 5.0


NETWORK_ERRORS = (HandshakeError, OSError, trio.BrokenResourceError, trio.TooSlowError)


def _network_leaf(group: BaseExceptionGroup[Any]) -> BaseException | None:
    """The close (or network failure) inside a nursery's exception group; None if it holds
    anything else (a test failure, a cancellation), which must propagate unchanged."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    if not all(isinstance(leaf, (ConnectionClosed, *NETWORK_ERRORS)) for leaf in leaves):
        return None
    closed = [leaf for leaf in leaves if isinstance(leaf, ConnectionClosed)]
    return closed[0] if closed else leaves[0]


class TerminalClose(AssertionError):
    """The server closed with a non-retryable code: the client stops (and the test fails)."""


@dataclass
class Close:
    replica: int
    code: int | None  # None: the connection could not be opened, or broke without a close frame
    error: dict[str, Any] | None  # the error frame sent before the close, if any
    during: str  # "connect", "init" or "stream"
    at: float = field(default_factory=trio.current_time)


@dataclass
class ResilientClient:
    stack: Stack
    tokens: TokenSource
    api_key: str
    project_id: str
    name: str
    replicas: list[int]  # preference order: the first is where it starts
    alive: Callable[[int], bool] = lambda _replica: True
    raw: list[int] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    duplicates: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)
    closes: list[Close] = field(default_factory=list)
    connections: list[int] = field(default_factory=list)  # replica of each session that reached ready
    acks: dict[str, dict[str, Any]] = field(default_factory=dict)
    done_prompts: set[int] = field(default_factory=set)  # prompt seqs whose answer ended (done/error)
    current: int | None = None  # replica of the live session, None between sessions
    _outbox: dict[str, str] = field(default_factory=dict)
    _ws: WsClient | None = None
    _cancel: trio.CancelScope = field(default_factory=trio.CancelScope)
    _progress: trio.Event = field(default_factory=trio.Event)
    _failures: int = 0
    _next: int = 0
    _during: str = "connect"
    _error: dict[str, Any] | None = None
    _scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def last_seq(self) -> int:
        return self.seqs[-1] if self.seqs else 0

    # -- the connection loop -------------------------------------------------------------------
    async def run(self) -> None:
        """Stay connected until :meth:`stop`; raises :class:`TerminalClose` on a terminal close."""
        with self._cancel:
            while True:
                replica = self._pick()
                delay = await self._session(replica)
                self.current = None
                self._ws = None
                self._next += 1  # after any close, try the next replica first
                await pace(delay)  # the reconnect backoff

    def stop(self) -> None:
        self._cancel.cancel()

    def _pick(self) -> int:
        for i in range(len(self.replicas)):
            replica = self.replicas[(self._next + i) % len(self.replicas)]
            if self.alive(replica):
                self._next = (self._next + i) % len(self.replicas)
                return replica
        return self.replicas[self._next % len(self.replicas)]

    def _backoff(self, error: dict[str, Any] | None) -> float:
        if error is not None and "retry_after_ms" in error:
            return min(error["retry_after_ms"] / 1000, RETRY_AFTER_CAP_S)
        self._failures += 1
        return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**self._failures))  # full jitter

    async def _session(self, replica: int) -> float:
        """One connection: returns how long to wait before the next one."""
        self._during, self._error = "connect", None
        self._scope = trio.CancelScope()
        try:
            try:
                with self._scope:
                    await self._stream(replica)
                self.closes.append(Close(replica, None, None, "dropped"))  # drop() cancelled it
                return self._backoff(None)
            except BaseExceptionGroup as group:  # from a nursery: unwrap network failures
                leaf = _network_leaf(group)
                if leaf is None:
                    raise
                raise leaf from group
        except ConnectionClosed as exc:
            error = self._error
            self.closes.append(Close(replica, exc.reason.code, error, self._during))
            if error is not None and error["close_code"] != exc.reason.code:
                raise AssertionError(f"{self.name}: error frame {error} but close code {exc.reason.code}") from exc
            if exc.reason.code in RETRYABLE and not RETRYABLE[exc.reason.code]:
                raise TerminalClose(f"{self.name}: terminal close {exc.reason.code}: {error}") from exc
            return self._backoff(error)
        except NETWORK_ERRORS:
            self.closes.append(Close(replica, None, None, self._during))
            return self._backoff(None)
        raise AssertionError("unreachable: a session only ends with a close or a drop")

    async def _stream(self, replica: int) -> None:
        token = await self.tokens.token(self.api_key)
        async with self.stack.ws(replica, connect_timeout=5) as ws:
            self._during = "init"
            ready = await ws.init(token, {"id": self.project_id}, resume_from=self.last_seq, client_id=self.name)
            if ready["type"] != "ready":
                self._error = ready
                await ws.closed()
                raise AssertionError(f"{self.name}: INIT refused without a close: {ready}")
            assert ready["resume_from"] == self.last_seq, ready
            self._during = "stream"
            self._ws, self.current = ws, replica
            self.connections.append(replica)
            self._failures = 0
            for msg_id, text in list(self._outbox.items()):  # re-send what was never acked
                await ws.send(_prompt(msg_id, text))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pinger, ws, ready["heartbeat"]["interval_ms"])
                expected = self.last_seq + 1  # this connection's events start right after resume_from
                while True:
                    frame = await ws.recv(timeout=3600)
                    ws.received.clear()
                    ws.events.clear()
                    if frame["type"] == "event":
                        if frame["seq"] != expected:
                            self.gaps.append((expected, frame["seq"]))
                        expected = frame["seq"] + 1
                        self._on_event(frame)
                    elif frame["type"] == "prompt_ack":
                        self.acks[frame["client_msg_id"]] = frame
                        self._outbox.pop(frame["client_msg_id"], None)
                        self._wake()
                    elif frame["type"] == "error":
                        self._error = frame

    async def _pinger(self, ws: WsClient, interval_ms: int) -> None:
        n = 0
        while True:
            await pace(interval_ms / 1000)  # the advertised heartbeat interval
            n += 1
            await ws.send({"type": "ping", "v": 1, "nonce": f"{self.name}-{n}"})

    def _on_event(self, frame: dict[str, Any]) -> None:
        seq = frame["seq"]
        self.raw.append(seq)
        if seq <= self.last_seq:
            self.duplicates += 1
            return
        self.seqs.append(seq)
        if frame["kind"] in ("agent_done", "agent_error"):
            self.done_prompts.add(frame["data"]["prompt_seq"])
        self._wake()

    def _wake(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    # -- what tests drive ---------------------------------------------------------------------
    async def wait_for(self, condition: Callable[[], bool], *, timeout: float, what: str) -> None:
        with trio.move_on_after(timeout) as scope:
            while not condition():
                await self._progress.wait()
        if scope.cancelled_caught:
            raise AssertionError(f"{self.name}: timed out after {timeout:.0f}s waiting for {what}")

    async def prompt(self, msg_id: str, text: str, *, timeout: float) -> dict[str, Any]:
        """Send a prompt (re-sent on every reconnect until acked); return its ack."""
        self._outbox[msg_id] = text
        if self._ws is not None:
            # A closed socket is fine: the connection loop re-sends the outbox after reconnecting.
            with contextlib.suppress(ConnectionClosed):
                await self._ws.send(_prompt(msg_id, text))
        await self.wait_for(lambda: msg_id in self.acks, timeout=timeout, what=f"the ack of {msg_id}")
        return self.acks[msg_id]

    def drop(self) -> None:
        """The client's own network blip: abandon the live socket; the loop reconnects."""
        if self._ws is not None:
            self._scope.cancel()

    def summary(self) -> dict[str, Any]:
        return {
            "received": len(self.seqs),
            "raw": len(self.raw),
            "duplicates": self.duplicates,
            "gaps": len(self.gaps),
            "closes": [(c.replica, c.code) for c in self.closes],
        }


def _prompt(msg_id: str, text: str) -> dict[str, Any]:
    return {"type": "prompt", "v": 1, "client_msg_id": msg_id, "text": text}


def dump(clients: list[ResilientClient]) -> str:
    return json.dumps({c.name: c.summary() for c in clients})[:4000]
