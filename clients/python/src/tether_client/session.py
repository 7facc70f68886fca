"""A resilient session: one logical connection to a project's event log over many sockets.

:func:`open_session` is the entry point::

    async with open_session(ws_urls, "my-project", auth.token_source(project_id)) as session:
        seq = await session.send("hello")
        async for event in session.events():
            ...

What it does (the rules live in :mod:`.protocol`, :mod:`.frames` and :mod:`.closing`; one
connection's I/O in :mod:`.connection`; this module is the session around them):

* every connect and reconnect fetches a **fresh** token from ``get_token`` (F05) and
  sends INIT with ``resume_from`` = the last seq seen (and ``batch: true`` unless
  ``batch=False``), then waits for ``ready``;
* events are delivered in order, exactly once: duplicates (``seq <= last_seq``) are
  dropped and counted, a gap closes the socket and resumes (F20-F22); the items of an
  ``events`` frame (batched delivery) are handled one by one, exactly like ``event`` frames;
* a lost connection is retried with capped exponential backoff and full jitter, reset
  only by a connection that stayed up; retryable vs terminal comes from the contract's
  close-code catalogue (F32); ``urls`` are used in turn;
* a refusal that says when to come back (``overloaded`` with ``retry_after_ms``, a token
  answer 503/429 with ``Retry-After``) is pacing: that wait plus jitter, and it never
  counts towards ``max_reconnects``: however long a replica sheds, the session waits;
* ``send()`` keeps each prompt in an outbox, re-sent on every new connection until its
  ``prompt_ack`` (F21); a prompt refused with a request-scoped ``error`` frame stays
  queued and is re-sent, same ``client_msg_id``, after its ``retry_after_ms``;
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

import dataclasses
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import trio

from .closing import CloseCatalogue, local_decision
from .connection import Connector, SessionStats
from .errors import TetherError, TetherGaveUp, exception_leaves
from .frames import Event, Ready, check_prompt_text, init_frame, new_client_msg_id, project_ref
from .http import TokenSource, http_url
from .options import SessionOptions
from .outcome import Outcome
from .protocol import Backoff

log = logging.getLogger("tether_client.session")

__all__ = ["EventStream", "Session", "SessionOptions", "SessionStats", "open_session"]


class Session:
    """One session; made by :func:`open_session` (do not construct it yourself)."""

    def __init__(
        self, urls: str | Sequence[str], project: str, get_token: TokenSource, options: SessionOptions
    ) -> None:
        self._urls = [urls] if isinstance(urls, str) else list(urls)
        if not self._urls:
            raise ValueError("open_session needs at least one WebSocket URL")
        for url in self._urls:
            http_url(url)  # validates the scheme (ws/wss) now rather than on first connect
        self.options = options
        self.client_id = options.client_id
        ref = project_ref(project)
        # A client_id or resume_from the INIT schema refuses fails here, not at the first connect.
        init_frame("not-a-token", ref, options.client_id, options.resume_from)
        self._link = Connector(ref, get_token, options, self._on_ready)
        self.stats: SessionStats = self._link.stats
        self._backoff = Backoff(
            options.backoff_base_s, options.backoff_cap_s, max_retry_after_s=options.max_retry_after_s
        )
        self._ready: Ready | None = None
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
        return self._link.tracker.last_seq

    @property
    def connected(self) -> bool:
        return self._link.conn is not None

    @property
    def pending_prompts(self) -> int:
        """Prompts sent but not yet acknowledged."""
        return len(self._link.outbox)

    @property
    def catalogue(self) -> CloseCatalogue:
        return self.options.catalogue

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
        cancelled while waiting, the prompt is still delivered.  A prompt the server refuses
        for now stays queued (``stats.prompts_requeued`` counts it); one it refuses for good
        raises :class:`~tether_client.errors.TetherRefused`.
        """
        check_prompt_text(text)
        self._raise_if_failed()
        link = self._link
        client_msg_id = new_client_msg_id()
        link.outbox.add(client_msg_id, text)
        acked = link.acks[client_msg_id] = trio.Event()
        link.outbox_wakeup.set()
        self._waiters += 1
        try:
            await acked.wait()
        finally:
            self._waiters -= 1
            link.acks.pop(client_msg_id, None)
        ack = link.ack_frames.pop(client_msg_id, None)
        refused = link.refusals.pop(client_msg_id, None)
        if refused is not None:
            raise refused
        if ack is None:
            self._raise_failure()
        return ack.seq

    async def reconnect(self) -> None:
        """Close the current socket; the session reconnects (new token) and resumes."""
        conn = self._link.conn
        if conn is not None:
            await self._link.close(conn, Outcome(local_decision("client_reconnect", "reconnect requested")))

    async def aclose(self) -> None:
        """Close the session: the socket with code 1000, then the session's tasks.
        ``events()`` iterators end.  Idempotent."""
        self._closing_event.set()
        conn = self._link.conn
        if conn is not None:
            await self._link.close(conn, Outcome(local_decision("client_closed", "closed", retry=False)))
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

    def _wake_waiters(self) -> None:
        self._link.events_send.close()
        for event in self._link.acks.values():
            event.set()

    def _fail(self, error: TetherError) -> None:
        """Record a terminal error, wake everyone waiting; cancel the body if nobody is."""
        log.warning("session ended: %s", error)
        self._failure = error
        self._wake_waiters()
        if self._waiters == 0 and self._body_scope is not None:
            self._body_scope.cancel()

    # -- the connection loop ---------------------------------------------------------------

    def _on_ready(self, ready: Ready) -> None:
        self._ready = ready
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
            self._wake_waiters()

    async def _loop(self) -> None:
        failures = 0  # consecutive attempts that did not reach `ready`
        attempt = 0
        while not self._closing_event.is_set():
            if attempt:
                self.stats.reconnects += 1
            url = self._urls[attempt % len(self._urls)]
            attempt += 1
            outcome = await self._link.attempt(url)
            if self._closing_event.is_set():
                return
            decision = outcome.decision
            if not decision.retry:
                raise outcome.error or decision.to_error()
            # Told when to come back: pacing, not a failure.
            paced = bool(decision.retry_after_s)
            if outcome.ready_for_s is not None:
                failures = 0
            elif not paced:
                failures += 1
            if self.options.max_reconnects is not None and failures > self.options.max_reconnects:
                raise TetherGaveUp(failures, decision.describe())
            if decision.name == "client_reconnect":
                log.info("reconnecting to %s as asked", url)
                continue
            # Only a connection that stayed up a while resets the backoff: a server that
            # says ready and then drops every connection must not be hammered.
            if outcome.ready_for_s is not None and outcome.ready_for_s >= self.options.backoff_reset_s:
                self._backoff.reset()
            delay = self._backoff.next_delay(self.options.random, decision.retry_after_s)
            log.warning("connection to %s ended (%s); reconnecting in %.2fs", url, decision.describe(), delay)
            with trio.move_on_after(delay):
                await self._closing_event.wait()


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
            return await session._link.events_recv.receive()
        except trio.EndOfChannel:
            if session._failure is not None:
                session._raise_failure()
            raise StopAsyncIteration from None
        finally:
            session._waiters -= 1


@asynccontextmanager
async def open_session(
    urls: str | Sequence[str],
    project: str,
    get_token: TokenSource,
    options: SessionOptions | None = None,
    **overrides: Any,
) -> AsyncIterator[Session]:
    """Open a session and wait for the first ``ready``.

    ``urls``: one or more ``ws(s)://…/v1/ws`` URLs, used in turn on reconnect.
    ``project``: the project's id (UUID) or slug.  ``get_token``: an async callable that
    returns a NEW connection token on every call (:meth:`AuthClient.token_source`).
    ``options``: a :class:`SessionOptions`; keyword arguments override its fields
    (``open_session(url, "p", tokens, origin=..., max_reconnects=5)``).

    Raises the terminal error (:class:`TetherClosed`, :class:`TetherHTTPError`,
    :class:`TetherGaveUp`) when the session cannot be established or ends for good.
    """
    session = Session(urls, project, get_token, dataclasses.replace(options or SessionOptions(), **overrides))
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
        real = [e for e in exception_leaves(group) if not isinstance(e, trio.Cancelled)]
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
