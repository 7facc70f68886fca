"""One WebSocket connection: the Quart handler around :class:`~tether_session.protocol.SessionMachine`.

Error handling: every failure, on every path, ends in :meth:`Connection._fail`, which
sends the catalogue's ``error`` frame, closes with its code, and leaves the reason for
the single ``ws_close`` log line written in ``finally`` (F01).  A client that goes away
cancels the handler (Quart does); ``finally`` still runs.

Resource handling: the reader runs in an ``asyncio.TaskGroup`` owned by the handler and
the writer in the handler's own task, inside that group; when one fails the other is
cancelled.  The session-lifetime timer is the reader's receive deadline (no task).
The connection's registrations (hub subscription, per-user count, replica registry)
are released in ``finally`` on every path (F13).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
import uuid
from typing import TYPE_CHECKING, Any

from tether_kit import logs
from tether_kit.errors import DependencyUnavailable, TetherError

from . import store
from .asgi_ws import AsgiWebsocket
from .auth_client import Consumed
from .fanout import chunk_frames
from .protocol import SessionError, SessionMachine, State, TokenBucket

if TYPE_CHECKING:
    from .app import State as AppState
    from .fanout import Feed, Subscriber


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def jitter_ms(low: int, high: int) -> int:
    return random.randint(low, max(low, high))


class Connection:
    def __init__(self, st: AppState, ws: AsgiWebsocket) -> None:
        self.st = st
        self.ws = ws
        self.id = "c" + uuid.uuid4().hex[:20]
        self.machine = SessionMachine(st.close_catalogue)
        self.user_id: uuid.UUID | None = None
        self.project: store.Project | None = None
        self.cursor = 0
        self.acked = 0
        self.expires_at = 0.0
        self.forced: SessionError | None = None
        self.task: asyncio.Task[Any] | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self.close_level = "info"
        self.delivered = 0
        self.replayed = 0
        self.batch = False  # INIT's batch: deliver consecutive events in one ``events`` frame
        self._feed: Feed | None = None
        self._sub: Subscriber | None = None
        self._counted_user = False
        self.bucket: TokenBucket | None = None  # the prompt rate limit, made at the first prompt

    # -- entry point ---------------------------------------------------------------------
    async def run(self) -> None:
        st = self.st
        started = time.perf_counter()
        self.task = asyncio.current_task()
        st.connections[self.id] = self
        st.metrics.connections_open.inc()
        log_context = logs.enter(connection_id=self.id, replica=st.config.replica)
        try:
            st.log.info("ws_open", origin=self.ws.headers.get("Origin"), remote=self.ws.headers.get("Remote-Addr"))
            try:
                await self._guarded()
            finally:
                self._release()
                st.connections.pop(self.id, None)
                st.metrics.connections_open.dec()
                code = self.close_code
                st.metrics.closes.labels(str(code) if code else "client", self.close_reason or "client_closed").inc()
                st.log.log(
                    "warning" if self.ws.transport_error and not self.close_reason else self.close_level,
                    "ws_close",
                    code=code,
                    reason=self.close_reason or self.ws.transport_error or "client_closed",
                    client_close_code=self.ws.client_close_code,
                    state=self.machine.state.value,
                    duration_ms=round((time.perf_counter() - started) * 1000, 1),
                    delivered=self.delivered,
                    replayed=self.replayed,
                    **(self.machine.failure.log_fields if self.machine.failure else {}),
                )
        finally:
            logs.leave(log_context)

    async def _guarded(self) -> None:
        try:
            try:
                await self._session()
            except* SessionError as group:
                raise self._first(group) from None
            except* DependencyUnavailable as group:
                raise self._first(group) from None
        except SessionError as err:
            await self._fail(err)
        except DependencyUnavailable as err:
            await self._fail(
                SessionError(
                    "database_unavailable" if err.dependency == "postgres" else "auth_unavailable",
                    err.detail,
                    retry_after_ms=jitter_ms(500, 2000),
                    log_fields={"dependency": err.dependency},
                )
            )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self.forced is not None and task is not None and task.cancelling() <= 1 and self.machine.is_live:
                task.uncancel()
                await self._fail(self.forced)
                return
            self.machine.client_closed()
            raise
        except Exception as exc:
            self.st.log.exception("ws_internal_error", exc)
            if self.machine.is_live:
                await self._fail(SessionError("internal_error", "unexpected server error"))

    def _first(self, group: ExceptionGroup[Exception]) -> Exception:
        """The error that closes the socket; any other one of the group still reaches the log."""
        leaves: list[Exception] = []
        pending: list[Exception] = [group]
        while pending:
            exc = pending.pop(0)
            if isinstance(exc, ExceptionGroup):
                pending[:0] = exc.exceptions
            else:
                leaves.append(exc)
        for other in leaves[1:]:
            self.st.log.warning("ws_concurrent_error", error=f"{type(other).__name__}: {other}"[:300])
        return leaves[0]

    def force_close(self, error: SessionError) -> None:
        """Close this connection from outside (drain): cancels the handler, which then fails with ``error``."""
        if self.forced is None and self.task is not None and self.machine.is_live:
            self.forced = error
            self.task.cancel()

    async def _fail(self, error: SessionError) -> None:
        plan = self.machine.fail(error)
        plan.frame["connection_id"] = self.id  # lets a client quote the id the server logged
        self.close_code = plan.close_code
        self.close_reason = error.name
        self.close_level = plan.level
        if self.project is None:
            self.st.metrics.connects.labels(f"refused:{error.name}").inc()
        # Two steps, each bounded: a frame that times out behind data the peer has not read
        # (slow_consumer) is still queued, and the close with our code must follow it; without
        # the second step Quart would close with 1000 once the handler returns.
        for step in ("error_frame", "close"):
            try:
                async with asyncio.timeout(1.0):
                    if step == "error_frame":
                        await self._send(plan.frame)
                    else:
                        await self.ws.close(plan.close_code, error.name)
            except (TimeoutError, OSError) as exc:
                self.st.log.warning("ws_close_send_failed", code=plan.close_code, reason=type(exc).__name__, step=step)
        self.machine.close_sent()

    def _release(self) -> None:
        if self._feed is not None and self._sub is not None:
            self.st.hub.unsubscribe(self._feed, self._sub)
            self._feed = self._sub = None
        if self._counted_user and self.user_id is not None:
            left = self.st.user_connections.get(self.user_id, 1) - 1
            if left > 0:
                self.st.user_connections[self.user_id] = left
            else:
                self.st.user_connections.pop(self.user_id, None)
            self._counted_user = False

    # -- I/O helpers --------------------------------------------------------------------
    async def _send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(self.st.frames.encode(frame))
        self.st.metrics.frames_out.labels(frame["type"]).inc()

    async def _receive(self) -> dict[str, Any]:
        deadline = self.machine.deadline_ms(
            init_timeout_ms=self.st.config.init_timeout_ms, heartbeat_timeout_ms=self.st.config.heartbeat_timeout_ms
        )
        timeout = deadline / 1000 if deadline else None
        expiring = False
        if self.machine.state is State.READY:
            # The session lifetime shares this timer (no task of its own: memory per session).
            remaining = self.expires_at - time.monotonic()
            if timeout is None or remaining < timeout:
                timeout, expiring = max(0.0, remaining), True
        try:
            async with asyncio.timeout(timeout):
                raw = await self.ws.receive()
        except TimeoutError:
            if expiring:
                raise SessionError(
                    "session_expired", "the session was not renewed with a reauth frame in time"
                ) from None
            raise self.machine.timeout_error() from None
        frame = self.st.frames.parse(raw, max_bytes=self.st.config.max_frame_bytes)
        self.st.metrics.frames_in.labels(frame["type"]).inc()
        self.machine.receive(frame["type"])
        return frame

    # -- the session --------------------------------------------------------------------
    async def _session(self) -> None:
        st = self.st
        if not st.startup.is_ready:
            try:
                async with asyncio.timeout(st.config.startup_wait_ms / 1000):
                    await st.startup.ready.wait()
            except TimeoutError:
                raise SessionError("starting_up", retry_after_ms=jitter_ms(500, 2000)) from None
        if st.draining:
            raise SessionError("draining", retry_after_ms=jitter_ms(100, st.config.drain_window_ms))
        if len(st.connections) > st.config.max_connections:
            raise SessionError(
                "overloaded",
                f"replica holds {st.config.max_connections} connections",
                retry_after_ms=jitter_ms(1000, 5000),
            )
        if not st.ip_bucket(self.ws.headers.get("Remote-Addr", "?")).take(time.monotonic()):
            st.metrics.rate_limited.labels("connects_per_ip").inc()
            raise SessionError(
                "rate_limited", "too many connection attempts from this address", retry_after_ms=jitter_ms(1000, 5000)
            )
        await self._authenticate(await self._receive())  # the INIT dict is not kept for the session
        async with asyncio.TaskGroup() as group:
            group.create_task(self._reader(), name=f"{self.id}-reader")
            await self._writer()  # in the handler's own task: one task fewer per session

    async def _consume(self, token: str) -> Consumed:
        request_id = f"{self.id}-{uuid.uuid4().hex[:8]}"
        return await self.st.auth.consume(token, request_id=request_id)

    async def _authenticate(self, init: dict[str, Any]) -> None:
        st = self.st
        consumed = await self._consume(init["token"])
        user_id = self.user_id = consumed.user_id
        logs.bind(user_id=str(user_id), client_id=init["client_id"])
        if st.user_connections.get(user_id, 0) >= st.config.max_connections_per_user:
            raise SessionError("too_many_connections", retry_after_ms=jitter_ms(1000, 5000))
        st.user_connections[user_id] = st.user_connections.get(user_id, 0) + 1
        self._counted_user = True
        wanted = init["project"]
        async with st.db.connection() as conn:
            if "id" in wanted:
                project = await store.project_by_id(conn, user_id, uuid.UUID(wanted["id"]))
            else:
                project = await store.project_by_slug(conn, user_id, wanted["slug"])
            if project is None:
                raise SessionError("project_not_found", log_fields={"requested": wanted})
            logs.bind(project_id=str(project.id))
            if consumed.project_id is not None and consumed.project_id != project.id:
                raise SessionError("forbidden", "this token is bound to another project")
            resume_from = init.get("resume_from")
            if resume_from is not None:
                if resume_from > project.last_seq:
                    raise SessionError(
                        "resume_unavailable",
                        f"resume_from {resume_from} is beyond the log's last seq {project.last_seq}",
                    )
                first = await store.first_seq(conn, project.id)
                if first is not None and resume_from < first - 1:
                    raise SessionError("resume_unavailable", f"events before seq {first} are no longer retained")
        self.project = project
        self.batch = bool(init.get("batch", False))
        self._feed, self._sub = st.hub.subscribe(project.id, self.id)
        self.cursor = resume_from if resume_from is not None else project.last_seq
        self.expires_at = time.monotonic() + st.config.session_lifetime_s
        self.machine.authenticated()
        st.metrics.connects.labels("ready").inc()
        if resume_from is not None:
            st.metrics.resumes.inc()
        await self._send(
            {
                "type": "ready",
                "v": 1,
                "session_id": str(uuid.uuid4()),
                "connection_id": self.id,
                "project": {"id": str(project.id), "slug": project.slug, "name": project.name},
                "last_seq": project.last_seq,
                "resume_from": self.cursor,
                "batch": self.batch,
                "heartbeat": {
                    "interval_ms": st.config.heartbeat_interval_ms,
                    "timeout_ms": st.config.heartbeat_timeout_ms,
                },
                "session_expires_at": self._expires_iso(),
                "server_time": _now_iso(),
                "limits": {
                    "max_frame_bytes": st.config.max_frame_bytes,
                    "prompts_per_minute": st.config.prompts_per_minute,
                },
            }
        )
        st.log.info("ws_ready", resume_from=resume_from, last_seq=project.last_seq)

    def _expires_iso(self) -> str:
        remaining = self.expires_at - time.monotonic()
        return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=remaining)).isoformat()

    async def _reader(self) -> None:
        st = self.st
        assert self.project is not None
        while True:
            frame = await self._receive()
            kind = frame["type"]
            if kind == "ping":
                pong: dict[str, Any] = {"type": "pong", "v": 1, "server_time": _now_iso()}
                if "nonce" in frame:
                    pong["nonce"] = frame["nonce"]
                await self._send(pong)
            elif kind == "ack":
                self.acked = max(self.acked, min(frame["seq"], self.cursor))
            elif kind == "prompt":
                await self._prompt(frame)
            elif kind == "reauth":
                consumed = await self._consume(frame["token"])
                if consumed.user_id != self.user_id or consumed.project_id not in (None, self.project.id):
                    raise SessionError("forbidden", "the reauth token is for another user or project")
                self.expires_at = time.monotonic() + st.config.session_lifetime_s
                await self._send({"type": "reauth_ok", "v": 1, "session_expires_at": self._expires_iso()})
                st.log.info("ws_reauth")

    async def _prompt(self, frame: dict[str, Any]) -> None:
        st = self.st
        assert self.project is not None
        if self.bucket is None:
            per_minute = st.config.prompts_per_minute
            self.bucket = TokenBucket(per_minute / 60, max(1.0, per_minute / 6))
        if not self.bucket.take(time.monotonic()):
            st.metrics.rate_limited.labels("prompts").inc()
            raise SessionError("rate_limited", retry_after_ms=self.bucket.retry_after_ms())
        msg_id = frame["client_msg_id"]
        event = store.NewEvent(
            f"prompt-{msg_id}", "prompt", {"text": frame["text"], "client_msg_id": msg_id, "user_id": str(self.user_id)}
        )
        result = await st.publish_prompt(self.project.id, event, frame["text"])
        await self._send(
            {"type": "prompt_ack", "v": 1, "client_msg_id": msg_id, "seq": result.seq, "duplicate": result.duplicate}
        )

    async def _writer(self) -> None:
        """Deliver the log after ``cursor``: from the feed's shared cache, or from the log while catching up.

        Frames are encoded once per event (and once per batch for every subscriber at the
        same cursor); each round of frames is written under one send deadline.
        """
        st = self.st
        assert self._feed is not None
        assert self._sub is not None
        assert self.project is not None
        feed, sub, batch = self._feed, self._sub, self.batch
        send_timeout = st.config.send_timeout_ms / 1000
        frames_out = st.metrics.frames_out.labels("events" if batch else "event")
        send = self.ws.send
        while True:
            sub.wake.clear()
            chunks = feed.chunks_after(self.cursor) if batch else feed.frames_after(self.cursor)
            replay = chunks is None
            if chunks is None:
                async with st.db.connection() as conn:
                    events = await store.read_events(conn, self.project.id, self.cursor, st.config.replay_page)
                if events and (events[0].seq != self.cursor + 1 or events[-1].seq != self.cursor + len(events)):
                    raise SessionError("internal_error", f"log gap after seq {self.cursor}")
                chunks = [(e.seq, st.frames.encode_event(e)) for e in events]
                if batch and chunks:
                    chunks = chunk_frames(chunks, st.frames.encode_batch)
            if not chunks:
                await sub.wake.wait()
                continue
            before = self.cursor
            try:
                async with asyncio.timeout(send_timeout):
                    for last_seq, text in chunks:
                        await send(text)
                        self.cursor = last_seq
            except TimeoutError:
                st.metrics.slow_consumers.inc()
                raise SessionError(
                    "slow_consumer", f"a send blocked for more than {st.config.send_timeout_ms} ms"
                ) from None
            count = self.cursor - before
            self.delivered += count
            frames_out.inc(len(chunks))
            st.metrics.delivered.inc(count)
            if replay:
                self.replayed += count
                st.metrics.replayed.inc(count)


def origin_refusal(st: AppState, origin: str | None) -> TetherError | None:
    """The Origin check done before accept (F07): None when the origin may connect."""
    if origin is None:
        if st.config.require_origin:
            return TetherError("origin_not_allowed", "an Origin header is required")
        return None
    if origin in st.config.allowed_origins:
        return None
    return TetherError("origin_not_allowed", f"origin {origin[:100]} is not allowed")


__all__ = ["Connection", "State", "origin_refusal"]
