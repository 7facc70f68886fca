"""A resilient session: one logical connection to a project's event log over many sockets.

:func:`open_session` is the entry point::

    async with open_session(ws_urls, "my-project", auth.token_source(project_id)) as session:
        seq = await session.send("hello")
        async for event in session.events():
            ...

What it does (the rules live in :mod:`tether_client.protocol`; this module is the I/O):

* every connect and reconnect fetches a **fresh** token from ``get_token`` (F05) and
  sends INIT with ``resume_from`` = the last seq seen (and ``batch: true`` unless
  ``batch=False``), then waits for ``ready``;
* events are delivered in order, exactly once: duplicates (``seq <= last_seq``) are
  dropped and counted, a gap closes the socket and resumes (F20-F22); the items of an
  ``events`` frame (batched delivery) are handled one by one, exactly like ``event`` frames;
* a lost connection is retried with capped exponential backoff and full jitter,
  honouring ``retry_after_ms`` and reset only by a connection that stayed up; retryable
  vs terminal comes from the close-code catalogue fetched from the service (F32);
  ``urls`` are used in turn;
* ``send()`` keeps each prompt in an outbox, re-sent on every new connection until its
  ``prompt_ack`` (F21);
* heartbeat: a ``ping`` every ``ready.heartbeat.interval_ms``; nothing heard for
  ``timeout_ms`` means the socket is dead: reconnect (F24);
* ``reauth`` with a fresh token before ``ready.session_expires_at``.

Error handling: a terminal end (:class:`~tether_client.errors.TetherClosed`, a refused
token or upgrade :class:`~tether_client.errors.TetherHTTPError`,
:class:`~tether_client.errors.TetherGaveUp`) is raised where the caller waits on the
session: by ``events()`` (after the events received before it), by ``send()``, and by
``open_session`` itself when the first connection cannot be made.  If no task is waiting
on the session, the body of ``async with`` is cancelled and the error is raised from it.

Resource handling: the session's tasks live in a nursery owned by ``open_session``;
leaving the block closes the socket (code 1000) and cancels them.
"""

from __future__ import annotations

import hashlib
import logging
import random as _random
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import trio
import trio_websocket

from .errors import (
    TetherError,
    TetherGaveUp,
    TetherHTTPError,
    TetherProtocolError,
    TetherTransportError,
    connection_failure_reason,
)
from .http import SessionHttp, TokenSource, http_url, problem_error
from .protocol import (
    Backoff,
    CloseCatalogue,
    CloseDecision,
    ErrorFrame,
    Event,
    Events,
    Outbox,
    Pong,
    PromptAck,
    Ready,
    ReauthOk,
    SeqTracker,
    UnknownFrame,
    Verdict,
    check_prompt_text,
    decide_close,
    encode,
    init_frame,
    local_decision,
    new_client_msg_id,
    parse_server_frame,
    ping_frame,
    project_ref,
    prompt_frame,
    reauth_delay_s,
    reauth_frame,
)

log = logging.getLogger("tether_client.session")

__all__ = ["EventStream", "Session", "SessionStats", "open_session"]


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
    reauths: int = 0  # `reauth_ok` frames received


@dataclass
class _Outcome:
    """How one connection attempt ended."""

    decision: CloseDecision
    error: TetherError | None = None  # raised instead of decision.to_error() when terminal
    ready_for_s: float | None = None  # how long the connection was up after `ready`


@dataclass
class _Conn:
    ws: trio_websocket.WebSocketConnection
    generation: int
    ready: Ready
    last_heard: float
    clock_offset: timedelta
    expires_at: datetime
    delivering: bool = False
    ended: _Outcome | None = None  # set by whoever closes the socket on purpose
    reauth_ok: trio.Event = field(default_factory=trio.Event)


class Session:
    """One session; made by :func:`open_session` (do not construct it yourself)."""

    def __init__(
        self,
        urls: str | Sequence[str],
        project: str,
        get_token: TokenSource,
        *,
        client_id: str | None = None,
        origin: str | None = None,
        resume_from: int | None = None,
        catalogue: CloseCatalogue | None = None,
        backoff_base_s: float = 0.25,
        backoff_cap_s: float = 15.0,
        backoff_reset_s: float = 5.0,
        max_reconnects: int | None = None,
        connect_timeout_s: float = 10.0,
        ready_timeout_s: float = 10.0,
        close_timeout_s: float = 2.0,
        reauth_margin_s: float = 60.0,
        event_buffer: int = 10_000,
        http_timeout_s: float = 10.0,
        batch: bool = True,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self._urls = [urls] if isinstance(urls, str) else list(urls)
        if not self._urls:
            raise ValueError("open_session needs at least one WebSocket URL")
        for url in self._urls:
            http_url(url)  # validates the scheme (ws/wss) now rather than on first connect
        self._project = project_ref(project)
        self._get_token = get_token
        self.client_id = client_id or f"py-{uuid.uuid4().hex[:16]}"
        self._headers = [(b"Origin", origin.encode())] if origin else None
        self._catalogue = catalogue
        self._backoff = Backoff(backoff_base_s, backoff_cap_s)
        self._backoff_reset_s = backoff_reset_s
        self._max_reconnects = max_reconnects
        self._connect_timeout_s = connect_timeout_s
        self._ready_timeout_s = ready_timeout_s
        self._close_timeout_s = close_timeout_s
        self._reauth_margin_s = reauth_margin_s
        self._http_timeout_s = http_timeout_s
        self._random = random
        self._batch = batch

        self.stats = SessionStats()
        self._tracker = SeqTracker(last_seq=resume_from)
        self._outbox = Outbox()
        self._outbox_wakeup = trio.Event()
        self._acks: dict[str, trio.Event] = {}
        self._ack_frames: dict[str, PromptAck] = {}
        self._events_send, self._events_recv = trio.open_memory_channel[Event](event_buffer)
        self._used_tokens: deque[bytes] = deque(maxlen=1024)

        self._ready: Ready | None = None
        self._conn: _Conn | None = None
        self._generation = 0
        self._started = False
        self._closing_event = trio.Event()
        self._failure: TetherError | None = None
        self._failure_raised = False
        self._waiters = 0  # tasks blocked in events() / send()
        self._body_scope: trio.CancelScope | None = None
        self._manager_scope: trio.CancelScope | None = None
        self._task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED

    # -- public API ------------------------------------------------------------------------

    @property
    def ready(self) -> Ready:
        """The latest ``ready`` frame (project, heartbeat, limits, expiry)."""
        if self._ready is None:
            raise RuntimeError("the session has not received ready yet")
        return self._ready

    @property
    def last_seq(self) -> int | None:
        """The last sequence number delivered (the resume cursor)."""
        return self._tracker.last_seq

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def pending_prompts(self) -> int:
        """Prompts sent but not yet acknowledged."""
        return len(self._outbox)

    @property
    def catalogue(self) -> CloseCatalogue | None:
        return self._catalogue

    def events(self) -> EventStream:
        """The project's events, in order, each once: ``async for event in session.events()``.

        Ends when the session is closed; raises the terminal error, if there is one, after
        the events received before it.  Several iterators share one stream.
        """
        return EventStream(self)

    async def send(self, text: str) -> int:
        """Send a prompt and return the seq it was stored at (after its ``prompt_ack``).

        The prompt carries a new ``client_msg_id`` and stays in the outbox, re-sent after
        every reconnect, until acknowledged; the server stores it once.  If the caller is
        cancelled while waiting, the prompt is still delivered.
        """
        check_prompt_text(text)
        self._raise_if_failed()
        client_msg_id = new_client_msg_id()
        self._outbox.add(client_msg_id, text)
        acked = self._acks[client_msg_id] = trio.Event()
        self._outbox_wakeup.set()
        self._waiters += 1
        try:
            await acked.wait()
        finally:
            self._waiters -= 1
            self._acks.pop(client_msg_id, None)
        ack = self._ack_frames.pop(client_msg_id, None)
        if ack is None:
            self._raise_failure()
        return ack.seq

    async def reconnect(self) -> None:
        """Close the current socket; the session reconnects (new token) and resumes."""
        conn = self._conn
        if conn is not None:
            await self._close_conn(conn, _Outcome(local_decision("client_reconnect", "reconnect requested")))

    async def aclose(self) -> None:
        """Close the session: the socket with code 1000, then the session's tasks.
        ``events()`` iterators end.  Idempotent."""
        self._closing_event.set()
        conn = self._conn
        if conn is not None:
            await self._close_conn(conn, _Outcome(local_decision("client_closed", "closed", retry=False)))
        if self._manager_scope is not None:
            self._manager_scope.cancel()

    # -- failure delivery ------------------------------------------------------------------

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            self._raise_failure()
        if self._closing_event.is_set():
            raise trio.ClosedResourceError("the session is closed")

    def _raise_failure(self) -> NoReturn:
        if self._failure is None:
            raise trio.ClosedResourceError("the session is closed")
        self._failure_raised = True
        raise self._failure

    def _fail(self, error: TetherError) -> None:
        """Record a terminal error, wake everyone waiting; cancel the body if nobody is."""
        log.warning("session ended: %s", error)
        self._failure = error
        for event in self._acks.values():
            event.set()
        self._events_send.close()
        if self._waiters == 0 and self._body_scope is not None:
            self._body_scope.cancel()

    # -- the connection loop ---------------------------------------------------------------

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._task_status = task_status
        try:
            with trio.CancelScope() as self._manager_scope:
                await self._loop()
        except TetherError as exc:
            if not self._started:
                raise  # open_session raises it: the first connection failed for good
            self._fail(exc)
        finally:
            self._events_send.close()
            for event in self._acks.values():
                event.set()

    async def _loop(self) -> None:
        failures = 0  # consecutive attempts that did not reach `ready`
        attempt = 0
        while not self._closing_event.is_set():
            if attempt:
                self.stats.reconnects += 1
            url = self._urls[attempt % len(self._urls)]
            attempt += 1
            outcome = await self._attempt(url)
            if self._closing_event.is_set():
                return
            decision = outcome.decision
            if not decision.retry:
                raise outcome.error or decision.to_error()
            failures = 0 if outcome.ready_for_s is not None else failures + 1
            if self._max_reconnects is not None and failures > self._max_reconnects:
                raise TetherGaveUp(failures, decision.describe())
            if decision.name == "client_reconnect":
                log.info("reconnecting to %s as asked", url)
                continue
            # Only a connection that stayed up a while resets the backoff: a server that
            # says ready and then drops every connection must not be hammered.
            if outcome.ready_for_s is not None and outcome.ready_for_s >= self._backoff_reset_s:
                self._backoff.reset()
            delay = self._backoff.next_delay(self._random, decision.retry_after_s)
            log.warning("connection to %s ended (%s); reconnecting in %.2fs", url, decision.describe(), delay)
            with trio.move_on_after(delay):
                await self._closing_event.wait()

    async def _attempt(self, url: str) -> _Outcome:
        """One connection: catalogue (once), upgrade, token, INIT, ready, then live.

        The token is fetched once the socket is open, so a failed upgrade wastes none.
        """
        if self._catalogue is None:
            try:
                async with SessionHttp(http_url(url), timeout_s=self._http_timeout_s) as http:
                    self._catalogue = await http.close_codes()
            except (TetherHTTPError, TetherTransportError) as exc:
                return _failed_request("close-code catalogue", exc)
        outcome: _Outcome | None = None
        try:
            async with trio_websocket.open_websocket_url(
                url,
                extra_headers=self._headers,
                connect_timeout=self._connect_timeout_s,
                disconnect_timeout=self._close_timeout_s,
                message_queue_size=64,
            ) as ws:
                outcome = await self._converse(ws)
        except trio_websocket.ConnectionRejected as exc:
            rejected = problem_error(exc.status_code, exc.body or b"", _headers(exc.headers), url)
            return _failed_request("WebSocket upgrade", rejected)
        except trio_websocket.HandshakeError as exc:
            if outcome is not None:  # closing handshake timed out after a normal end
                return outcome
            reason = f"cannot open {url}: {handshake_reason(exc)}"
            return _Outcome(local_decision("connect_failed", reason))
        if outcome is None:  # pragma: no cover - the block above either sets it or raises
            raise RuntimeError("connection ended without an outcome")
        return outcome

    async def _fetch_token(self) -> str:
        token = await self._get_token()
        if not isinstance(token, str) or not token:
            raise TypeError("get_token must return a non-empty str")
        digest = hashlib.sha256(token.encode()).digest()
        if digest in self._used_tokens:
            raise ValueError("get_token returned a token this session already used; tokens are single-use (F05)")
        self._used_tokens.append(digest)
        self.stats.tokens_fetched += 1
        return token

    async def _converse(self, ws: trio_websocket.WebSocketConnection) -> _Outcome:
        catalogue = self._require_catalogue()
        self.stats.connects += 1
        try:
            token = await self._fetch_token()
        except (TetherHTTPError, TetherTransportError) as exc:
            return _failed_request("connection token", exc)
        resume_from = self._tracker.last_seq
        try:
            init = init_frame(token, self._project, self.client_id, resume_from, batch=self._batch)
            await ws.send_message(encode(init))
        except trio_websocket.ConnectionClosed as exc:
            return _Outcome(decide_close(catalogue, _code(exc), None))
        error: ErrorFrame | None = None
        ready: Ready | None = None
        with trio.move_on_after(self._ready_timeout_s):
            while ready is None:
                try:
                    raw = await ws.get_message()
                except trio_websocket.ConnectionClosed as exc:
                    return _Outcome(decide_close(catalogue, _code(exc), error))
                try:
                    frame = parse_server_frame(raw)
                except TetherProtocolError as exc:
                    return _Outcome(local_decision("protocol_error", str(exc), retry=False), error=exc)
                if isinstance(frame, Ready):
                    ready = frame
                elif isinstance(frame, ErrorFrame):
                    error = frame
                elif not isinstance(frame, UnknownFrame | Pong):
                    early = TetherProtocolError(f"the server sent {type(frame).__name__} before ready")
                    return _Outcome(local_decision("protocol_error", str(early), retry=False), error=early)
        if ready is None:
            reason = f"no ready within {self._ready_timeout_s:g}s of INIT"
            return _Outcome(local_decision("ready_timeout", reason))

        self._on_ready(ready)
        ready_at = trio.current_time()
        self._generation += 1
        now = datetime.now(UTC)
        conn = _Conn(
            ws=ws,
            generation=self._generation,
            ready=ready,
            last_heard=trio.current_time(),
            clock_offset=ready.server_time - now,
            expires_at=ready.session_expires_at,
        )
        self._conn = conn
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeat, conn)
                nursery.start_soon(self._reauth, conn)
                nursery.start_soon(self._send_outbox, conn)
                outcome = await self._read(conn, catalogue)
                nursery.cancel_scope.cancel()
        finally:
            self._conn = None
        outcome.ready_for_s = trio.current_time() - ready_at
        return outcome

    def _on_ready(self, ready: Ready) -> None:
        self._tracker.on_ready(ready.resume_from)
        self._ready = ready
        self.stats.readies += 1
        log.info(
            "ready: project %s, connection %s, last_seq %d, resume_from %d, batch %s",
            ready.project.slug,
            ready.connection_id,
            ready.last_seq,
            ready.resume_from,
            ready.batch,
        )
        if not self._started:
            self._started = True
            self._task_status.started()

    def _require_catalogue(self) -> CloseCatalogue:
        if self._catalogue is None:
            raise RuntimeError("close-code catalogue not loaded")
        return self._catalogue

    # -- per-connection tasks --------------------------------------------------------------

    async def _read(self, conn: _Conn, catalogue: CloseCatalogue) -> _Outcome:
        error: ErrorFrame | None = None
        while True:
            try:
                raw = await conn.ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                if conn.ended is not None:
                    return conn.ended
                return _Outcome(decide_close(catalogue, _code(exc), error))
            conn.last_heard = trio.current_time()
            try:
                frame = parse_server_frame(raw)
            except TetherProtocolError as exc:
                ended = _Outcome(local_decision("protocol_error", str(exc), retry=False), error=exc)
                await self._close_conn(conn, ended, code=1002)
                return ended
            if isinstance(frame, Event | Events):
                if isinstance(frame, Events):
                    self.stats.batches += 1
                for event in frame.events if isinstance(frame, Events) else (frame,):
                    gap = await self._on_event(conn, event)
                    if gap is not None:
                        return gap
            elif isinstance(frame, PromptAck):
                self._on_ack(frame)
            elif isinstance(frame, ErrorFrame):
                error = frame
                log.warning("server error frame: %s (%d): %s", frame.code, frame.close_code, frame.message)
            elif isinstance(frame, ReauthOk):
                conn.expires_at = frame.session_expires_at
                self.stats.reauths += 1
                conn.reauth_ok.set()
            elif isinstance(frame, Ready):
                twice = TetherProtocolError("the server sent a second ready on one connection")
                ended = _Outcome(local_decision("protocol_error", str(twice), retry=False), error=twice)
                await self._close_conn(conn, ended, code=1002)
                return ended
            # Pong: hearing it is all that counts.  UnknownFrame: ignored (newer server).

    async def _on_event(self, conn: _Conn, event: Event) -> _Outcome | None:
        """Deliver, drop (duplicate) or resume (gap: the socket is closed and the outcome
        returned).  Each item of an ``events`` frame comes here as if it had arrived alone."""
        verdict = self._tracker.accept(event.seq)
        if verdict is Verdict.DELIVER:
            conn.delivering = True
            try:
                await self._events_send.send(event)
            finally:
                conn.delivering = False
                conn.last_heard = trio.current_time()
            self.stats.events_delivered += 1
        elif verdict is Verdict.DUPLICATE:
            self.stats.duplicates_dropped += 1
            log.debug("dropped duplicate event seq %d (last_seq %s)", event.seq, self._tracker.last_seq)
        else:
            self.stats.gaps += 1
            reason = f"expected seq {(self._tracker.last_seq or 0) + 1}, got {event.seq}"
            ended = _Outcome(local_decision("gap", reason))
            await self._close_conn(conn, ended)
            return ended
        return None

    def _on_ack(self, ack: PromptAck) -> None:
        self._outbox.ack(ack.client_msg_id)
        waiter = self._acks.get(ack.client_msg_id)
        if waiter is not None:
            self._ack_frames[ack.client_msg_id] = ack
            waiter.set()

    async def _send_outbox(self, conn: _Conn) -> None:
        """The only writer of prompts: everything not yet sent on this connection, in order."""
        while True:
            self._outbox_wakeup = trio.Event()
            for item in self._outbox.unsent(conn.generation):
                if not await self._write(conn, prompt_frame(item.client_msg_id, item.text)):
                    return
                self._outbox.mark_sent(item.client_msg_id, conn.generation)
                self.stats.prompts_sent += 1
            await self._outbox_wakeup.wait()

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
                await self._close_conn(conn, _Outcome(local_decision("heartbeat_timeout", reason)))
                return
            if now >= next_ping:
                if not await self._write(conn, ping_frame()):
                    return
                next_ping = now + interval
            await trio.sleep_until(min(next_ping, heard + timeout))

    async def _reauth(self, conn: _Conn) -> None:
        while True:
            server_now = datetime.now(UTC) + conn.clock_offset
            await trio.sleep(reauth_delay_s(server_now, conn.expires_at, self._reauth_margin_s))
            try:
                token = await self._fetch_token()
            except (TetherHTTPError, TetherTransportError) as exc:
                if not exc.retryable:
                    ended = _failed_request("reauth token", exc)
                    await self._close_conn(conn, ended)
                    return
                log.warning("reauth: could not get a token (%s); trying again", exc)
                await trio.sleep(min(5.0, max(0.5, (conn.expires_at - server_now).total_seconds() / 4)))
                continue
            conn.reauth_ok = trio.Event()
            if not await self._write(conn, reauth_frame(token)):
                return
            with trio.move_on_after(self._ready_timeout_s) as scope:
                await conn.reauth_ok.wait()
            if scope.cancelled_caught:
                # The server closes with session_expired when the session runs out; the
                # reconnect that follows uses a new token.  Nothing more to do here.
                log.warning("reauth: no reauth_ok within %gs", self._ready_timeout_s)
                return

    async def _write(self, conn: _Conn, frame: dict[str, Any]) -> bool:
        """Send one frame; ``False`` when the socket is closed (the reader reports why)."""
        try:
            await conn.ws.send_message(encode(frame))
        except trio_websocket.ConnectionClosed:
            log.debug("not sent (%s): the socket is closed", frame.get("type"))
            return False
        return True

    async def _close_conn(self, conn: _Conn, ended: _Outcome, code: int = 1000) -> None:
        """Close the socket on purpose; the reader returns ``ended``."""
        if conn.ended is None:
            conn.ended = ended
        with trio.CancelScope(shield=True), trio.move_on_after(self._close_timeout_s):
            await conn.ws.aclose(code, ended.decision.name)


class EventStream:
    """Async iterator over a session's events (see :meth:`Session.events`)."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        session = self._session
        session._waiters += 1
        try:
            return await session._events_recv.receive()
        except trio.EndOfChannel:
            if session._failure is not None:
                session._raise_failure()
            raise StopAsyncIteration from None
        finally:
            session._waiters -= 1


def _failed_request(what: str, exc: TetherHTTPError | TetherTransportError) -> _Outcome:
    """The outcome of a failed HTTP step (catalogue, token, upgrade): retry when it may help."""
    if isinstance(exc, TetherTransportError):
        return _Outcome(local_decision("service_unreachable", f"{what}: {exc}"))
    decision = CloseDecision(
        retry=exc.retryable,
        name=exc.code,
        message=f"{what}: {exc}",
        action="backoff" if exc.retryable else "show_message",
        retry_after_s=exc.retry_after_s,
    )
    return _Outcome(decision, error=None if exc.retryable else exc)


def _code(exc: trio_websocket.ConnectionClosed) -> int | None:
    return exc.reason.code if exc.reason is not None else None


def _headers(raw: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}


def handshake_reason(exc: trio_websocket.HandshakeError) -> str:
    """Why a WebSocket could not be opened, in a few words."""
    if isinstance(exc, trio_websocket.ConnectionTimeout):
        return "timed out"
    return connection_failure_reason(exc)


@asynccontextmanager
async def open_session(
    urls: str | Sequence[str],
    project: str,
    get_token: TokenSource,
    **options: Any,
) -> AsyncIterator[Session]:
    """Open a session and wait for the first ``ready``; see :class:`Session` for options.

    ``urls``: one or more ``ws(s)://…/v1/ws`` URLs, used in turn on reconnect.
    ``project``: the project's id (UUID) or slug.  ``get_token``: an async callable that
    returns a NEW connection token on every call (:meth:`AuthClient.token_source`).
    Options: ``client_id``, ``origin`` (sent as the ``Origin`` header), ``resume_from``
    (start after this seq; default: live from now), ``catalogue`` (default: fetched from
    the service), ``backoff_base_s``, ``backoff_cap_s``, ``backoff_reset_s`` (a connection up
    this long resets the backoff), ``max_reconnects`` (consecutive
    failed attempts before :class:`TetherGaveUp`; default: never give up),
    ``connect_timeout_s``, ``ready_timeout_s``, ``close_timeout_s``, ``reauth_margin_s``,
    ``event_buffer``, ``batch`` (ask for batched delivery in ``events`` frames; default
    True), ``random``.

    Raises the terminal error (:class:`TetherClosed`, :class:`TetherHTTPError`,
    :class:`TetherGaveUp`) when the session cannot be established or ends for good.
    """
    session = Session(urls, project, get_token, **options)
    body = trio.CancelScope()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(session._run)
            try:
                with body:
                    session._body_scope = body
                    yield session
            finally:
                session._body_scope = None
                await session.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Only the body can raise into the nursery (the session's tasks hand their errors
        # to the body), so the group holds one real exception: raise it bare.
        real = [e for e in _leaves(group) if not isinstance(e, trio.Cancelled)]
        if len(real) != 1:
            raise
        single = real[0]
        context = single.__context__
        try:
            raise single
        finally:
            single.__context__ = context
    if session._failure is not None and (body.cancelled_caught or not session._failure_raised):
        session._raise_failure()


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found
