"""``tether doctor``: the whole connection checklist, run in order (F35).

Each step either passes with a one-line detail, or fails saying what failed, the
catalogue code / HTTP status involved, and what to do.  The first failure stops the run;
later steps are reported as skipped.  A warning (a replica shedding load) gives its
hint too, but the run goes on and can still pass.  A project the doctor created for itself is
deleted at the end, whatever happened.

The steps talk to the services with the same building blocks as the SDK
(:mod:`tether_client.http`, :mod:`tether_client.frames`) but on one raw WebSocket, so
that each failure is attributed to exactly one step.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable

import trio
import trio_websocket

from ..agent import answers
from ..closing import CloseCatalogue
from ..errors import TetherHTTPError, TetherProtocolError, TetherTransportError
from ..frames import Event, PromptAck, Ready, init_frame, new_client_msg_id, project_ref, prompt_frame
from ..http import AuthClient, Project, SessionHttp, User, ws_url
from ..outcome import handshake_reason, rejected_error
from .advice import close_failure, http_failure
from .health import healthz, readyz
from .link import Closed, EventLog, Link, hold_websocket
from .report import STEPS, DoctorConfig, DoctorReport, StepFailed, StepResult
from .shedding import shedding_step


def _token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Doctor:
    def __init__(self, config: DoctorConfig, *, on_step: Callable[[StepResult], None] | None = None) -> None:
        self.config = config
        self.on_step = on_step
        self.report = DoctorReport()
        self.ws_url = config.ws_url or ws_url(config.session_url)
        self.auth = AuthClient(config.auth_url, config.api_key, timeout_s=config.step_timeout_s)
        self.http = SessionHttp(config.session_url, config.api_key, timeout_s=config.step_timeout_s)
        self.client_id = f"tether-doctor-{secrets.token_hex(6)}"
        self.user: User | None = None
        self.project: Project | None = None
        self.created: Project | None = None
        self.catalogue: CloseCatalogue | None = None
        self.token: str | None = None
        self.used_tokens: set[bytes] = set()
        self.link: Link | None = None
        self.ready: Ready | None = None
        self.log = EventLog()
        self.nursery: trio.Nursery | None = None

    async def run(self) -> DoctorReport:
        steps: list[Callable[[], Awaitable[str]]] = [
            self.auth_healthz,
            self.auth_readyz,
            self.session_healthz,
            self.session_readyz,
            self.shedding,
            self.credentials,
            self.resolve_project,
            self.issue_token,
            self.ws_upgrade,
            self.init_ready,
            self.prompt_round_trip,
            self.resume,
        ]
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                failed = False
                for (step_id, title), step in zip(STEPS, steps, strict=True):
                    if failed:
                        self._record(StepResult(step_id, title, "skipped", "an earlier step failed"))
                        continue
                    result = await self._run_step(step_id, title, step)
                    failed = result.status == "failed"
                if self.link is not None:
                    await self.link.close()
                nursery.cancel_scope.cancel()
        finally:
            await self._cleanup()
        return self.report

    async def _run_step(self, step_id: str, title: str, step: Callable[[], Awaitable[str]]) -> StepResult:
        started = time.monotonic()
        limit = (
            self.config.agent_timeout_s if step_id in ("prompt_round_trip", "resume") else self.config.step_timeout_s
        )
        try:
            with trio.fail_after(limit):
                detail = await step()
            result = StepResult(step_id, title, "ok", detail)
        except StepFailed as exc:
            result = exc.result(step_id, title)
        except Closed as exc:
            result = close_failure(exc.decision, f"during {title}").result(step_id, title)
        except TetherProtocolError as exc:
            result = StepFailed(
                f"the server broke the protocol: {exc}",
                code="protocol_error",
                hint="the session service and this client disagree on the protocol: check both versions",
            ).result(step_id, title)
        except trio.TooSlowError:
            result = StepFailed(
                f"no answer within {limit:g}s",
                code="timeout",
                hint="the service is hanging or overloaded: check its log (and the agent, for the prompt steps)",
            ).result(step_id, title)
        result.duration_ms = round((time.monotonic() - started) * 1000)
        self._record(result)
        return result

    def _record(self, result: StepResult) -> None:
        self.report.steps.append(result)
        if self.on_step is not None:
            self.on_step(result)

    async def _cleanup(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(self.config.step_timeout_s):
            try:
                if self.created is not None:
                    started = time.monotonic()
                    try:
                        await self.http.delete_project(self.created.id)
                        result = StepResult("cleanup", "cleanup", "ok", f"deleted project {self.created.slug}")
                    except (TetherHTTPError, TetherTransportError) as exc:
                        failure = http_failure(exc, "session", "--session-url")
                        failure.detail = f"could not delete project {self.created.slug}: {failure.detail}"
                        failure.hint = f"delete it by hand: DELETE /v1/projects/{self.created.id}"
                        result = failure.result("cleanup", "cleanup")
                    result.duration_ms = round((time.monotonic() - started) * 1000)
                    self._record(result)
            finally:
                await self.auth.aclose()
                await self.http.aclose()

    # -- steps 1-5: health, readiness, load shedding ---------------------------------------

    async def auth_healthz(self) -> str:
        return await healthz(self.auth, "auth-token", "--auth-url / TETHER_AUTH_URL")

    async def auth_readyz(self) -> str:
        return await readyz(self.auth, "auth-token", "--auth-url / TETHER_AUTH_URL")

    async def session_healthz(self) -> str:
        return await healthz(self.http, "session", "--session-url / TETHER_SESSION_URL")

    async def session_readyz(self) -> str:
        return await readyz(self.http, "session", "--session-url / TETHER_SESSION_URL")

    async def shedding(self) -> str:
        return await shedding_step(self.auth, self.http)

    # -- steps 6-8: credentials, project, token ----------------------------------------------

    async def credentials(self) -> str:
        if not self.config.api_key:
            raise StepFailed(
                "no API key",
                code="no_api_key",
                hint="run `tether login`, pass --api-key, or set TETHER_API_KEY",
            )
        try:
            self.user = await self.auth.me()
        except (TetherHTTPError, TetherTransportError) as exc:
            raise http_failure(exc, "auth-token", "--auth-url / TETHER_AUTH_URL") from None
        return f"API key accepted: user {self.user.name} ({self.user.id})"

    async def resolve_project(self) -> str:
        wanted = self.config.project
        if wanted is None:
            name = f"doctor-{secrets.token_hex(4)}"
            try:
                self.created = self.project = await self.http.create_project(name)
            except (TetherHTTPError, TetherTransportError) as exc:
                raise http_failure(exc, "session", "--session-url / TETHER_SESSION_URL") from None
            return f"created project {self.project.slug} ({self.project.id}); it is deleted at the end"
        try:
            project_ref(wanted)
        except ValueError as exc:
            raise StepFailed(str(exc), code="invalid_project", hint="give a project id (UUID) or slug") from None
        try:
            self.project = await self.http.resolve_project(wanted)
        except TetherHTTPError as exc:
            if exc.status == 404:
                raise StepFailed(
                    f"project {wanted!r} not found for this user",
                    code=exc.code,
                    http_status=404,
                    hint="`tether projects list` shows your projects; `tether projects create NAME` makes one",
                ) from None
            raise http_failure(exc, "session", "--session-url / TETHER_SESSION_URL") from None
        except TetherTransportError as exc:
            raise http_failure(exc, "session", "--session-url / TETHER_SESSION_URL") from None
        return f"{self.project.slug} ({self.project.id}), last_seq {self.project.last_seq}"

    async def _new_token(self) -> str:
        project = self._project()
        try:
            issued = await self.auth.issue_token(project.id)
        except (TetherHTTPError, TetherTransportError) as exc:
            raise http_failure(exc, "auth-token", "--auth-url / TETHER_AUTH_URL") from None
        digest = _token_digest(issued.token)
        if digest in self.used_tokens:
            raise StepFailed(
                "the auth-token service issued a token it had issued before",
                code="token_reused",
                hint="connection tokens must be single-use (F05): this is an auth-token service bug",
            )
        self.used_tokens.add(digest)
        self.token = issued.token
        return f"single-use token issued (ttl {issued.ttl_s}s, bound to project {project.slug})"

    async def issue_token(self) -> str:
        return await self._new_token()

    # -- steps 9-12: the WebSocket -------------------------------------------------------------

    async def _load_catalogue(self) -> CloseCatalogue:
        if self.catalogue is None:
            try:
                self.catalogue = await self.http.close_codes()
            except (TetherHTTPError, TetherTransportError) as exc:
                failure = http_failure(exc, "session", "--session-url / TETHER_SESSION_URL")
                failure.detail = f"close-code catalogue: {failure.detail}"
                raise failure from None
        return self.catalogue

    async def _connect(self) -> Link:
        catalogue = await self._load_catalogue()
        if self.nursery is None:
            raise RuntimeError("the doctor's nursery is not open")
        headers = [(b"Origin", self.config.origin.encode())] if self.config.origin else None
        done = trio.Event()
        try:
            ws = await self.nursery.start(hold_websocket, self.ws_url, headers, self.config.step_timeout_s, done)
        except trio_websocket.ConnectionRejected as exc:
            error = rejected_error(exc, self.ws_url)
            if exc.status_code == 403:
                sent = f"Origin {self.config.origin!r}" if self.config.origin else "no Origin header"
                raise StepFailed(
                    f"origin refused: the upgrade with {sent} was rejected: {error.detail}",
                    code=error.code,
                    http_status=403,
                    hint="pass --origin (or set TETHER_ORIGIN) to an origin in the session service's "
                    "TETHER_ALLOWED_ORIGINS, or add yours to that list",
                ) from None
            raise http_failure(error, "session", "--session-url / TETHER_SESSION_URL") from None
        except trio_websocket.HandshakeError as exc:
            raise StepFailed(
                f"cannot open {self.ws_url}: {handshake_reason(exc)}",
                code="unreachable",
                hint="start the session service, or point --session-url (or --ws-url) at it",
            ) from None
        return Link(ws, catalogue, done)

    async def ws_upgrade(self) -> str:
        self.link = await self._connect()
        origin = f"Origin {self.config.origin}" if self.config.origin else "no Origin header"
        catalogue = self._catalogue()
        return f"{self.ws_url} upgraded ({origin}); close-code catalogue v{catalogue.version} ({len(catalogue.entries)} codes)"

    async def _init(self, link: Link, token: str, resume_from: int | None) -> Ready:
        await link.send(
            init_frame(token, {"id": self._project().id}, self.client_id, resume_from, batch=self.config.batch)
        )
        frame = await link.receive()
        if not isinstance(frame, Ready):
            raise StepFailed(
                f"expected ready after INIT, got {type(frame).__name__}",
                code="protocol_error",
                hint="the session service broke the protocol: check its version",
            )
        return frame

    async def init_ready(self) -> str:
        link = self._link()
        token = self._take_token()
        self.ready = await self._init(link, token, None)
        self.log.last_seq = self.ready.resume_from
        r = self.ready
        return (
            f"ready: project {r.project.slug}, last_seq {r.last_seq}, heartbeat "
            f"{r.heartbeat_interval_ms}/{r.heartbeat_timeout_ms} ms, connection {r.connection_id}, "
            f"batched delivery {'on' if r.batch else 'off'}"
        )

    async def _prompt(self, link: Link, text: str) -> PromptAck:
        client_msg_id = new_client_msg_id()
        await link.send(prompt_frame(client_msg_id, text))
        while True:
            frame = await link.receive()
            if isinstance(frame, PromptAck) and frame.client_msg_id == client_msg_id:
                return frame
            if isinstance(frame, Event):
                self.log.accept(frame)

    async def _await_answer(self, link: Link, prompt_seq: int) -> Event:
        """Events until ``agent_done`` for the prompt stored at ``prompt_seq``."""
        while (done := self.log.done_for(prompt_seq)) is None:
            frame = await link.receive()
            if not isinstance(frame, Event):
                continue
            self.log.accept(frame)
            if frame.kind == "agent_error" and answers(frame, prompt_seq):
                raise StepFailed(
                    f"the agent failed: {json.dumps(frame.data)[:200]}",
                    code="agent_error",
                    hint="check the agent (TETHER_AGENT_URL) and the session service log",
                )
        return done

    async def prompt_round_trip(self) -> str:
        link = self._link()
        started = time.monotonic()
        ack = await self._prompt(link, f"tether doctor check {secrets.token_hex(3)}")
        done = await self._await_answer(link, ack.seq)
        chunks = sum(1 for e in self.log.seen if e.kind == "agent_chunk" and answers(e, ack.seq))
        elapsed = round((time.monotonic() - started) * 1000)
        return (
            f"prompt stored at seq {ack.seq}; the agent answered in {chunks} chunk(s), "
            f"agent_done at seq {done.seq} ({elapsed} ms)"
        )

    async def resume(self) -> str:
        # A second prompt, then drop the socket at once: the answer goes on into the log
        # while no socket is open, and must all arrive, in order, after resuming.
        ack = await self._prompt(self._link(), f"tether doctor resume check {secrets.token_hex(3)}")
        await self._link().close()
        self.link = None
        resume_from = self.log.last_seq
        await self._new_token()
        link = self.link = await self._connect()
        ready = await self._init(link, self._take_token(), resume_from)
        if ready.resume_from != resume_from:
            raise StepFailed(
                f"sent resume_from {resume_from}, ready says resume_from {ready.resume_from}",
                code="resume_mismatch",
                hint="the session service did not honour resume_from (F22)",
            )
        if ready.last_seq < resume_from:
            raise StepFailed(
                f"ready.last_seq {ready.last_seq} is behind the last seq seen ({resume_from})",
                code="resume_behind",
                hint="the session service lost events from its log (F22); check its database",
            )
        done = await self._await_answer(link, ack.seq)
        span = f"seq {resume_from + 1}..{self.log.last_seq}" if self.log.last_seq > resume_from else "nothing new"
        return (
            f"new token; resume_from {resume_from}, ready.last_seq {ready.last_seq}; then {span} "
            f"(replay, then live) with no gap and no duplicate, up to agent_done at seq {done.seq}"
        )

    # -- helpers -------------------------------------------------------------------------------

    def _project(self) -> Project:
        if self.project is None:
            raise RuntimeError("no project resolved")
        return self.project

    def _catalogue(self) -> CloseCatalogue:
        if self.catalogue is None:
            raise RuntimeError("no catalogue loaded")
        return self.catalogue

    def _link(self) -> Link:
        if self.link is None:
            raise RuntimeError("no WebSocket open")
        return self.link

    def _take_token(self) -> str:
        token, self.token = self.token, None
        if token is None:
            raise RuntimeError("no fresh token: each INIT needs its own")
        return token


async def run_doctor(config: DoctorConfig, on_step: Callable[[StepResult], None] | None = None) -> DoctorReport:
    """Run every step; ``on_step`` sees each result as soon as it is known."""
    return await Doctor(config, on_step=on_step).run()
