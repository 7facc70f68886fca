"""One session's connections, one at a time: upgrade, INIT, ``ready``, then live.

:class:`Connector` runs a connection attempt to the end and returns its :class:`Outcome`;
:class:`~tether_client.session.Session` decides what follows (retry, give up).  The
connector also owns what outlives any one socket: the resume cursor, the outbox, the
acknowledgements awaited by ``send()``, the channel of delivered events and the counters.

While a connection is live, four tasks share it: the reader (the only consumer of
frames), the heartbeat (F24), the reauth timer and the outbox writer (F21).  Whoever
closes the socket on purpose records why in ``_Conn.ended``; the reader returns it.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import trio
import trio_websocket

from .closing import decide_close, local_decision
from .errors import TetherHTTPError, TetherProtocolError, TetherRefused, TetherTransportError
from .frames import (
    ErrorFrame,
    Event,
    Events,
    Pong,
    PromptAck,
    Ready,
    ReauthOk,
    UnknownFrame,
    encode,
    init_frame,
    parse_server_frame,
    ping_frame,
    prompt_frame,
    reauth_frame,
)
from .http import TokenSource
from .options import SessionOptions
from .outcome import Outcome, close_code_of, failed_request, handshake_reason, protocol_failure, rejected_error
from .protocol import Backoff, Outbox, SeqTracker, Verdict, reauth_delay_s

log = logging.getLogger("tether_client.session")


@dataclass
class SessionStats:
    """Counters of one session (all connections)."""

    connects: int = 0  # WebSocket upgrades that succeeded (an INIT was sent on each)
    tokens_fetched: int = 0  # tokens fetched from get_token (one per INIT and per reauth)
    reconnects: int = 0  # connection attempts after the first one
    readies: int = 0  # `ready` frames received
    duplicates_dropped: int = 0  # events with seq <= last_seq, dropped
    gaps: int = 0  # gaps detected (each one caused a resume)
    events_delivered: int = 0
    batches: int = 0  # `events` frames received (batched delivery)
    prompts_sent: int = 0  # prompt frames written (re-sends included)
    prompts_requeued: int = 0  # prompts the server refused for now (request-scoped error), queued again
    reauths: int = 0  # `reauth_ok` frames received


@dataclass
class _Conn:
    ws: trio_websocket.WebSocketConnection
    generation: int
    ready: Ready
    last_heard: float
    clock_offset: timedelta
    expires_at: datetime
    delivering: bool = False
    ended: Outcome | None = None  # set by whoever closes the socket on purpose
    reauth_ok: trio.Event = field(default_factory=trio.Event)


class Connector:
    def __init__(
        self,
        project: dict[str, str],
        get_token: TokenSource,
        options: SessionOptions,
        on_ready: Callable[[Ready], None],
    ) -> None:
        self.options = options
        self._project = project
        self._get_token = get_token
        self._on_ready = on_ready
        self.stats = SessionStats()
        self.tracker = SeqTracker(last_seq=options.resume_from)
        self.outbox = Outbox()
        self.outbox_wakeup = trio.Event()
        self.acks: dict[str, trio.Event] = {}
        self.ack_frames: dict[str, PromptAck] = {}
        self.refusals: dict[str, TetherRefused] = {}  # prompts the server refused for good
        self.events_send, self.events_recv = trio.open_memory_channel[Event](options.event_buffer)
        self.conn: _Conn | None = None
        self._used_tokens: deque[bytes] = deque(maxlen=1024)
        self._generation = 0

    async def attempt(self, url: str) -> Outcome:
        """One connection: upgrade, token, INIT, ready, then live until it ends.

        The token is fetched once the socket is open, so a failed upgrade wastes none.
        """
        outcome: Outcome | None = None
        try:
            async with trio_websocket.open_websocket_url(
                url,
                extra_headers=self.options.headers,
                connect_timeout=self.options.connect_timeout_s,
                disconnect_timeout=self.options.close_timeout_s,
                message_queue_size=64,
            ) as ws:
                outcome = await self._converse(ws)
        except trio_websocket.ConnectionRejected as exc:
            return failed_request("WebSocket upgrade", rejected_error(exc, url))
        except trio_websocket.HandshakeError as exc:
            if outcome is not None:  # closing handshake timed out after a normal end
                return outcome
            return Outcome(local_decision("connect_failed", f"cannot open {url}: {handshake_reason(exc)}"))
        if outcome is None:  # pragma: no cover - the block above either sets it or raises
            raise RuntimeError("connection ended without an outcome")
        return outcome

    async def fetch_token(self) -> str:
        token = await self._get_token()
        if not isinstance(token, str) or not token:
            raise TypeError("get_token must return a non-empty str")
        digest = hashlib.sha256(token.encode()).digest()
        if digest in self._used_tokens:
            raise ValueError("get_token returned a token this session already used; tokens are single-use (F05)")
        self._used_tokens.append(digest)
        self.stats.tokens_fetched += 1
        return token

    async def _converse(self, ws: trio_websocket.WebSocketConnection) -> Outcome:
        self.stats.connects += 1
        try:
            token = await self.fetch_token()
        except (TetherHTTPError, TetherTransportError) as exc:
            return failed_request("connection token", exc)
        init = init_frame(token, self._project, self.options.client_id, self.tracker.last_seq, batch=self.options.batch)
        try:
            await ws.send_message(encode(init))
        except trio_websocket.ConnectionClosed as exc:
            return Outcome(decide_close(self.options.catalogue, close_code_of(exc), None))
        ready = await self._await_ready(ws)
        if isinstance(ready, Outcome):
            return ready
        return await self._live(ws, ready)

    async def _await_ready(self, ws: trio_websocket.WebSocketConnection) -> Ready | Outcome:
        error: ErrorFrame | None = None
        with trio.move_on_after(self.options.ready_timeout_s):
            while True:
                try:
                    raw = await ws.get_message()
                except trio_websocket.ConnectionClosed as exc:
                    return Outcome(decide_close(self.options.catalogue, close_code_of(exc), error))
                try:
                    frame = parse_server_frame(raw)
                except TetherProtocolError as exc:
                    return protocol_failure(exc)
                if isinstance(frame, Ready):
                    return frame
                if isinstance(frame, ErrorFrame):
                    error = frame
                elif not isinstance(frame, UnknownFrame | Pong):
                    return protocol_failure(TetherProtocolError(f"the server sent {type(frame).__name__} before ready"))
        return Outcome(local_decision("ready_timeout", f"no ready within {self.options.ready_timeout_s:g}s of INIT"))

    async def _live(self, ws: trio_websocket.WebSocketConnection, ready: Ready) -> Outcome:
        self.tracker.on_ready(ready.resume_from)
        self.stats.readies += 1
        self._on_ready(ready)
        ready_at = trio.current_time()
        self._generation += 1
        conn = _Conn(
            ws=ws,
            generation=self._generation,
            ready=ready,
            last_heard=ready_at,
            clock_offset=ready.server_time - datetime.now(UTC),
            expires_at=ready.session_expires_at,
        )
        self.conn = conn
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeat, conn)
                nursery.start_soon(self._reauth, conn)
                nursery.start_soon(self._send_outbox, conn)
                outcome = await self._read(conn)
                nursery.cancel_scope.cancel()
        finally:
            self.conn = None
        outcome.ready_for_s = trio.current_time() - ready_at
        return outcome

    # -- per-connection tasks --------------------------------------------------------------

    async def _read(self, conn: _Conn) -> Outcome:
        error: ErrorFrame | None = None
        while True:
            try:
                raw = await conn.ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                if conn.ended is not None:
                    return conn.ended
                return Outcome(decide_close(self.options.catalogue, close_code_of(exc), error))
            conn.last_heard = trio.current_time()
            try:
                frame = parse_server_frame(raw)
            except TetherProtocolError as exc:
                return await self.close(conn, protocol_failure(exc), code=1002)
            if isinstance(frame, Event | Events):
                if isinstance(frame, Events):
                    self.stats.batches += 1
                for event in frame.events if isinstance(frame, Events) else (frame,):
                    gap = await self._on_event(conn, event)
                    if gap is not None:
                        return gap
            elif isinstance(frame, PromptAck):
                self._on_ack(frame)
            elif isinstance(frame, ErrorFrame) and frame.request_scoped:
                refused = self._on_refused(frame)
                if refused is not None:
                    return await self.close(conn, refused, code=1002)
            elif isinstance(frame, ErrorFrame):
                error = frame
                log.warning("server error frame: %s (%d): %s", frame.code, frame.close_code, frame.message)
            elif isinstance(frame, ReauthOk):
                conn.expires_at = frame.session_expires_at
                self.stats.reauths += 1
                conn.reauth_ok.set()
            elif isinstance(frame, Ready):
                twice = TetherProtocolError("the server sent a second ready on one connection")
                return await self.close(conn, protocol_failure(twice), code=1002)
            # Pong: hearing it is all that counts.  UnknownFrame: ignored (newer server).

    async def _on_event(self, conn: _Conn, event: Event) -> Outcome | None:
        """Deliver, drop (duplicate) or resume (gap: the socket is closed and the outcome
        returned).  Each item of an ``events`` frame comes here as if it had arrived alone."""
        verdict = self.tracker.accept(event.seq)
        if verdict is Verdict.DELIVER:
            conn.delivering = True
            try:
                await self.events_send.send(event)
            finally:
                conn.delivering = False
                conn.last_heard = trio.current_time()
            self.stats.events_delivered += 1
        elif verdict is Verdict.DUPLICATE:
            self.stats.duplicates_dropped += 1
            log.debug("dropped duplicate event seq %d (last_seq %s)", event.seq, self.tracker.last_seq)
        else:
            self.stats.gaps += 1
            reason = f"expected seq {(self.tracker.last_seq or 0) + 1}, got {event.seq}"
            return await self.close(conn, Outcome(local_decision("gap", reason)))
        return None

    def _on_ack(self, ack: PromptAck) -> None:
        self.outbox.ack(ack.client_msg_id)
        waiter = self.acks.get(ack.client_msg_id)
        if waiter is not None:
            self.ack_frames[ack.client_msg_id] = ack
            waiter.set()

    def _on_refused(self, frame: ErrorFrame) -> Outcome | None:
        """The server refused one prompt and keeps the socket: queue it again, paced; or,
        when the refusal is terminal, fail that prompt alone.  An outcome means the frame
        broke the protocol (the connection is closed and resumed)."""
        msg_id = frame.client_msg_id
        if msg_id is None:
            return Outcome(
                local_decision("protocol_error", "the server refused a request without naming its client_msg_id")
            )
        item = self.outbox.defer(msg_id, 0.0) if frame.retryable else self.outbox.ack(msg_id)
        if item is None:
            log.debug("refusal of prompt %s ignored: it is no longer pending", msg_id)
            return None
        if not frame.retryable:
            log.warning("prompt %s refused for good: %s: %s", msg_id, frame.code, frame.message)
            waiter = self.acks.get(msg_id)
            if waiter is not None:  # else the caller stopped waiting: nobody to tell
                self.refusals[msg_id] = TetherRefused(msg_id, frame.code, frame.message, frame.action)
                waiter.set()
            return None
        o = self.options
        pacing = Backoff(o.backoff_base_s, o.backoff_cap_s, item.refusals - 1, o.max_retry_after_s)
        delay = pacing.next_delay(o.random, (frame.retry_after_ms or 0) / 1000)
        item.not_before = trio.current_time() + delay
        self.stats.prompts_requeued += 1
        log.info("prompt %s refused for now (%s); re-sending in %.2fs", msg_id, frame.code, delay)
        self.outbox_wakeup.set()
        return None

    async def _send_outbox(self, conn: _Conn) -> None:
        """The only writer of prompts: everything due and not yet sent on this connection,
        in order; a prompt the server refused for now is held until its time."""
        while True:
            self.outbox_wakeup = trio.Event()
            for item in self.outbox.unsent(conn.generation, trio.current_time()):
                if not await self._write(conn, prompt_frame(item.client_msg_id, item.text)):
                    return
                self.outbox.mark_sent(item.client_msg_id, conn.generation)
                self.stats.prompts_sent += 1
            held = self.outbox.held_until(conn.generation)
            with trio.move_on_at(held if held is not None else math.inf):
                await self.outbox_wakeup.wait()

    async def _heartbeat(self, conn: _Conn) -> None:
        interval = conn.ready.heartbeat_interval_ms / 1000
        timeout = conn.ready.heartbeat_timeout_ms / 1000
        next_ping = trio.current_time() + interval
        while True:
            now = trio.current_time()
            # Time spent handing events to a slow consumer is not silence from the server.
            heard = now if conn.delivering else conn.last_heard
            if now - heard >= timeout:
                reason = f"nothing heard from the server for {timeout:g}s"
                await self.close(conn, Outcome(local_decision("heartbeat_timeout", reason)))
                return
            if now >= next_ping:
                if not await self._write(conn, ping_frame()):
                    return
                next_ping = now + interval
            await trio.sleep_until(min(next_ping, heard + timeout))

    async def _reauth(self, conn: _Conn) -> None:
        margin_s, answer_s = self.options.reauth_margin_s, self.options.ready_timeout_s
        while True:
            server_now = datetime.now(UTC) + conn.clock_offset
            await trio.sleep(reauth_delay_s(server_now, conn.expires_at, margin_s))
            try:
                token = await self.fetch_token()
            except (TetherHTTPError, TetherTransportError) as exc:
                if not exc.retryable:
                    await self.close(conn, failed_request("reauth token", exc))
                    return
                log.warning("reauth: could not get a token (%s); trying again", exc)
                # Told when to ask again: not sooner, even if the session runs out meanwhile
                # (the server then closes with session_expired; the reconnect is paced too).
                told = exc.retry_after_s if isinstance(exc, TetherHTTPError) else None
                soon = min(5.0, max(0.5, (conn.expires_at - server_now).total_seconds() / 4))
                await trio.sleep(max(soon, min(told or 0.0, self.options.max_retry_after_s)))
                continue
            conn.reauth_ok = trio.Event()
            if not await self._write(conn, reauth_frame(token)):
                return
            with trio.move_on_after(answer_s) as scope:
                await conn.reauth_ok.wait()
            if scope.cancelled_caught:
                # The server closes with session_expired when the session runs out; the
                # reconnect that follows uses a new token.  Nothing more to do here.
                log.warning("reauth: no reauth_ok within %gs", answer_s)
                return

    async def _write(self, conn: _Conn, frame: dict[str, Any]) -> bool:
        """Send one frame; ``False`` when the socket is closed (the reader reports why)."""
        try:
            await conn.ws.send_message(encode(frame))
        except trio_websocket.ConnectionClosed:
            log.debug("not sent (%s): the socket is closed", frame.get("type"))
            return False
        return True

    async def close(self, conn: _Conn, ended: Outcome, code: int = 1000) -> Outcome:
        """Close the socket on purpose; the reader returns ``ended`` (returned here too)."""
        if conn.ended is None:
            conn.ended = ended
        with trio.CancelScope(shield=True), trio.move_on_after(self.options.close_timeout_s):
            await conn.ws.aclose(code, ended.decision.name)
        return ended
