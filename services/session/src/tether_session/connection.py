"""One WebSocket connection: the I/O around :class:`~tether_session.protocol.SessionMachine`.

This layer only feeds what happened into the machine and the rules
(:mod:`tether_session.protocol`) and carries out their answers; every decision (admission,
per-user cap, token binding, resume cursor, lifetime, which close for which failure) is
made there.  What the connection uses of its replica is the narrow :class:`~tether_session.host.SessionHost`.

Error handling: every failure, on every path, ends in :meth:`Connection._fail`, which
sends the catalogue's ``error`` frame, closes with its code, and leaves the reason for
the single ``ws_close`` log line written in ``finally`` (F01).  A client that goes away
cancels the handler; ``finally`` still runs.

Resource handling: the reader runs in an ``asyncio.TaskGroup`` owned by the handler and
the writer in the handler's own task, inside that group; when one fails the other is
cancelled.  The session-lifetime timer is the reader's receive deadline (no task).
The connection's registrations (hub subscription, per-user count, replica registry)
are released in ``finally`` on every path (F13).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from typing import Any

from tether_kit import logs
from tether_kit.errors import DependencyUnavailable

from . import store
from .asgi_ws import AsgiWebsocket
from .auth_client import Consumed
from .fanout import Feed, Subscriber, chunk_frames
from .host import SessionHost
from .protocol import SessionError, SessionMachine, SessionState, Shed, TokenBucket
from .rules import resume_cursor


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


class Connection:
    def __init__(self, host: SessionHost, ws: AsgiWebsocket) -> None:
        self.host = host
        self.ws = ws
        self.id = "c" + uuid.uuid4().hex[:20]
        self.machine = SessionMachine(host.rules.catalogue)
        self.user_id: uuid.UUID | None = None
        self.project: store.Project | None = None
        self.cursor = 0
        self.forced: SessionError | None = None
        self.task: asyncio.Task[None] | None = None
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
        host = self.host
        started = time.perf_counter()
        self.task = asyncio.current_task()
        shed = host.replica.shed(self.id)
        if shed is not None:
            await self._shed(shed)
            return
        host.replica.register(self)
        host.metrics.connections_open.inc()
        log_context = logs.enter(connection_id=self.id, replica=host.config.replica)
        try:
            host.log.info("ws_open", origin=self.ws.headers.get("Origin"), remote=self.ws.headers.get("Remote-Addr"))
            try:
                await self._guarded()
            finally:
                self._release()
                host.replica.unregister(self)
                host.metrics.connections_open.dec()
                code = self.close_code
                reason = self.close_reason or self.ws.transport_error or "client_closed"
                host.metrics.closes.labels(str(code) if code else "client", reason).inc()
                host.log.log(
                    "warning" if self.ws.transport_error and not self.close_reason else self.close_level,
                    "ws_close",
                    code=code,
                    reason=reason,
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
            logs.DEPENDENCIES.lost(err.dependency, err.detail, self.host.log)  # one error line per outage
            await self._fail(self.host.rules.dependency_failure(err.dependency, err.detail))
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self.forced is not None and task is not None and task.cancelling() <= 1 and self.machine.is_live:
                task.uncancel()
                await self._fail(self.forced)
                return
            self.machine.client_closed()
            raise
        except Exception as exc:
            self.host.log.exception("ws_internal_error", exc)
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
            self.host.log.warning("ws_concurrent_error", error=f"{type(other).__name__}: {other}"[:300])
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
            self.host.metrics.connects.labels(f"refused:{error.name}").inc()
        # Two steps, each bounded: a frame that times out behind data the peer has not read
        # (slow_consumer) is still queued, and the close with our code must follow it; without
        # the second step the dispatch would close with 1000 once the handler returns.
        for step in ("error_frame", "close"):
            try:
                async with asyncio.timeout(1.0):
                    if step == "error_frame":
                        await self._send(plan.frame)
                    else:
                        await self.ws.close(plan.close_code, error.name)
            except (TimeoutError, OSError) as exc:
                self.host.log.warning(
                    "ws_close_send_failed", code=plan.close_code, reason=type(exc).__name__, step=step
                )
        self.machine.close_sent()

    async def _shed(self, shed: Shed) -> None:
        """Refuse at once under overload: the error frame and the close, no per-connection log lines
        (the shed was counted and is logged at a bounded rate)."""
        plan = self.machine.fail(shed)
        plan.frame["connection_id"] = self.id
        try:
            async with asyncio.timeout(1.0):
                await self._send(plan.frame)
                await self.ws.close(plan.close_code, shed.name)
        except (TimeoutError, OSError) as exc:  # the client left within the shed: rare, so one line each
            self.host.log.warning("ws_shed_send_failed", code=plan.close_code, reason=type(exc).__name__)
        self.machine.close_sent()
        self.host.metrics.connects.labels("refused:overloaded").inc()
        self.host.metrics.closes.labels(str(plan.close_code), shed.name).inc()

    def _release(self) -> None:
        if self._feed is not None and self._sub is not None:
            self.host.hub.unsubscribe(self._feed, self._sub)
            self._feed = self._sub = None
        if self._counted_user and self.user_id is not None:
            self.host.replica.remove_user(self.user_id)
            self._counted_user = False

    # -- I/O helpers --------------------------------------------------------------------
    async def _send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(self.host.frames.encode(frame))
        self.host.metrics.frames_out.labels(frame["type"]).inc()

    async def _receive(self) -> dict[str, Any]:
        timeout, expiring = self.machine.receive_deadline(time.monotonic(), self.host.rules.limits)
        try:
            async with asyncio.timeout(timeout):
                raw = await self.ws.receive()
        except TimeoutError:
            raise self.machine.timeout_error(expiring) from None
        frame = self.host.frames.parse(raw, max_bytes=self.host.config.max_frame_bytes)
        self.host.metrics.frames_in.labels(frame["type"]).inc()
        self.machine.receive(frame["type"])
        return frame

    # -- the session --------------------------------------------------------------------
    async def _session(self) -> None:
        host = self.host
        await host.replica.admit(self.ws.headers.get("Remote-Addr", "?"))
        host.load.handshakes += 1  # until ready or closed: a load signal
        try:
            await self._authenticate(await self._receive())  # the INIT dict is not kept for the session
        finally:
            host.load.handshakes -= 1
        async with asyncio.TaskGroup() as group:
            group.create_task(self._reader(), name=f"{self.id}-reader")
            await self._writer()  # in the handler's own task: one task fewer per session

    async def _consume(self, token: str) -> Consumed:
        request_id = f"{self.id}-{uuid.uuid4().hex[:8]}"
        return await self.host.auth.consume(token, request_id=request_id)

    async def _authenticate(self, init: dict[str, Any]) -> None:
        host, rules = self.host, self.host.rules
        consumed = await self._consume(init["token"])
        user_id = self.user_id = consumed.user_id
        logs.bind(user_id=str(user_id), client_id=init["client_id"])
        host.replica.add_user(user_id)
        self._counted_user = True
        wanted = init["project"]
        resume_from: int | None = init.get("resume_from")
        async with host.db.connection() as conn:
            if "id" in wanted:
                project = await store.project_by_id(conn, user_id, uuid.UUID(wanted["id"]))
            else:
                project = await store.project_by_slug(conn, user_id, wanted["slug"])
            if project is None:
                raise SessionError("project_not_found", log_fields={"requested": wanted})
            logs.bind(project_id=str(project.id))
            refusal = rules.token_binding(consumed.project_id, project.id)
            if refusal is not None:
                raise refusal
            first = await store.first_seq(conn, project.id) if resume_from is not None else None
        self.cursor = resume_cursor(resume_from, project.last_seq, first)
        self.project = project
        self.batch = bool(init.get("batch", False))
        self._feed, self._sub = host.hub.subscribe(project.id, self.id)
        self.machine.authenticated(time.monotonic(), host.config.session_lifetime_s)
        host.metrics.connects.labels("ready").inc()
        if resume_from is not None:
            host.metrics.resumes.inc()
        await self._send(self._ready_frame(project))
        host.log.info("ws_ready", resume_from=resume_from, last_seq=project.last_seq)

    def _ready_frame(self, project: store.Project) -> dict[str, Any]:
        config = self.host.config
        return {
            "type": "ready",
            "v": 1,
            "session_id": str(uuid.uuid4()),
            "connection_id": self.id,
            "project": {"id": str(project.id), "slug": project.slug, "name": project.name},
            "last_seq": project.last_seq,
            "resume_from": self.cursor,
            "batch": self.batch,
            "heartbeat": {"interval_ms": config.heartbeat_interval_ms, "timeout_ms": config.heartbeat_timeout_ms},
            "session_expires_at": self._expires_iso(),
            "server_time": _now_iso(),
            "limits": {"max_frame_bytes": config.max_frame_bytes, "prompts_per_minute": config.prompts_per_minute},
        }

    def _expires_iso(self) -> str:
        remaining = self.machine.expires_at - time.monotonic()
        return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=remaining)).isoformat()

    async def _reader(self) -> None:
        host = self.host
        assert self.project is not None
        while True:
            frame = await self._receive()
            kind = frame["type"]
            if kind == "ping":
                pong: dict[str, Any] = {"type": "pong", "v": 1, "server_time": _now_iso()}
                if "nonce" in frame:
                    pong["nonce"] = frame["nonce"]
                await self._send(pong)
            elif kind == "prompt":
                await self._prompt(frame)
            elif kind == "reauth":
                assert self.user_id is not None
                consumed = await self._consume(frame["token"])
                refusal = host.rules.reauth(consumed.user_id, consumed.project_id, self.user_id, self.project.id)
                if refusal is not None:
                    raise refusal
                self.machine.renewed(time.monotonic(), host.config.session_lifetime_s)
                await self._send({"type": "reauth_ok", "v": 1, "session_expires_at": self._expires_iso()})
                host.log.info("ws_reauth")
            # an ``ack`` is counted in frames_in and needs nothing else (see frames/ack.json)

    async def _prompt(self, frame: dict[str, Any]) -> None:
        host = self.host
        assert self.project is not None
        if self.bucket is None:
            self.bucket = TokenBucket.per_minute(host.config.prompts_per_minute)
        if not self.bucket.take(time.monotonic()):
            host.metrics.rate_limited.labels("prompts").inc()
            raise SessionError("rate_limited", retry_after_ms=self.bucket.retry_after_ms())
        msg_id = frame["client_msg_id"]
        shed = host.load.write_refusal("prompt", self.id)
        if shed is not None:  # refused, not failed: the session goes on and the client re-sends it
            await self._send(self.machine.refuse_request(host.rules.overloaded(*shed), msg_id))
            return
        event = store.NewEvent(
            f"prompt-{msg_id}", "prompt", {"text": frame["text"], "client_msg_id": msg_id, "user_id": str(self.user_id)}
        )
        result = await host.publisher.publish_prompt(self.project.id, event, frame["text"])
        if result.conflict:  # v1 has no request-scoped errors: the catalogue entry closes the session
            raise SessionError(
                "idempotency_conflict",
                f"client_msg_id {msg_id} was used for a different prompt (seq {result.seq})",
                log_fields={"client_msg_id": msg_id, "stored_seq": result.seq},
            )
        await self._send(
            {"type": "prompt_ack", "v": 1, "client_msg_id": msg_id, "seq": result.seq, "duplicate": result.duplicate}
        )

    async def _writer(self) -> None:
        """Deliver the log after ``cursor``: from the feed's shared cache, or from the log while catching up.

        Frames are encoded once per event (and once per batch for every subscriber at the
        same cursor); each round of frames is written under one send deadline.
        """
        host = self.host
        assert self._feed is not None
        assert self._sub is not None
        assert self.project is not None
        feed, sub, batch = self._feed, self._sub, self.batch
        send_timeout = host.config.send_timeout_ms / 1000
        frames_out = host.metrics.frames_out.labels("events" if batch else "event")
        send = self.ws.send
        while True:
            sub.wake.clear()
            chunks = feed.chunks_after(self.cursor) if batch else feed.frames_after(self.cursor)
            replay = chunks is None
            if chunks is None:
                chunks = await self._read_log()
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
                host.metrics.slow_consumers.inc()
                raise SessionError(
                    "slow_consumer", f"a send blocked for more than {host.config.send_timeout_ms} ms"
                ) from None
            count = self.cursor - before
            self.delivered += count
            frames_out.inc(len(chunks))
            host.metrics.delivered.inc(count)
            if replay:
                self.replayed += count
                host.metrics.replayed.inc(count)

    async def _read_log(self) -> list[tuple[int, str]]:
        """The next page of the log after the cursor, as frames (catch-up, or a feed cache miss)."""
        host = self.host
        assert self.project is not None
        async with host.db.connection() as conn:
            events = await store.read_events(conn, self.project.id, self.cursor, host.config.replay_page)
        if events and (events[0].seq != self.cursor + 1 or events[-1].seq != self.cursor + len(events)):
            raise SessionError("internal_error", f"log gap after seq {self.cursor}")
        chunks = [(e.seq, host.frames.encode_event(e)) for e in events]
        if self.batch and chunks:
            chunks = chunk_frames(chunks, host.frames.encode_batch)
        return chunks


__all__ = ["Connection", "SessionHost", "SessionState"]
