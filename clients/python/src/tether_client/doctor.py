"""``tether doctor``: the whole connection checklist, run in order (F35).

Each step either passes with a one-line detail, or fails saying what failed, the
catalogue code / HTTP status involved, and what to do.  The first failure stops the run;
later steps are reported as skipped.  A project the doctor created for itself is
deleted at the end, whatever happened.

The steps talk to the services with the same building blocks as the SDK
(:mod:`tether_client.http`, :mod:`tether_client.protocol`) but on one raw WebSocket, so
that each failure is attributed to exactly one step.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import trio
import trio_websocket

from .errors import TetherHTTPError, TetherProtocolError, TetherTransportError
from .http import AuthClient, Project, SessionHttp, User, problem_error, ws_url
from .protocol import (
    CloseCatalogue,
    CloseDecision,
    ErrorFrame,
    Event,
    Events,
    PromptAck,
    Ready,
    ServerFrame,
    answers,
    decide_close,
    encode,
    init_frame,
    new_client_msg_id,
    parse_server_frame,
    project_ref,
    prompt_frame,
)
from .session import handshake_reason

Status = Literal["ok", "failed", "skipped"]


@dataclass
class StepResult:
    id: str
    title: str
    status: Status
    detail: str = ""
    code: str | None = None  # catalogue code or problem+json code
    http_status: int | None = None
    close_code: int | None = None
    hint: str = ""  # what to do
    duration_ms: int = 0

    def render(self) -> str:
        if self.status == "ok":
            return f"✓ {self.title} — {self.detail}"
        if self.status == "skipped":
            return f"- {self.title} — skipped ({self.detail})"
        codes = []
        if self.http_status is not None:
            codes.append(f"HTTP {self.http_status}")
        if self.close_code is not None:
            codes.append(f"close {self.close_code}")
        if self.code:
            codes.append(self.code)
        tag = f" [{' '.join(codes)}]" if codes else ""
        hint = f"\n    → {self.hint}" if self.hint else ""
        return f"✗ {self.title} — {self.detail}{tag}{hint}"


@dataclass
class DoctorReport:
    steps: list[StepResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.status == "ok" for s in self.steps)

    @property
    def failed(self) -> StepResult | None:
        return next((s for s in self.steps if s.status == "failed"), None)

    def to_json(self) -> dict[str, Any]:
        failed = self.failed
        return {
            "ok": self.ok,
            "failed_step": failed.id if failed else None,
            "steps": [asdict(s) for s in self.steps],
        }

    def summary(self) -> str:
        failed = self.failed
        if failed is None:
            return f"doctor: all {len(self.steps)} checks passed"
        number = self.steps.index(failed) + 1
        return f"doctor: FAILED at step {number} ({failed.title}): {failed.detail}"


class StepFailed(Exception):
    """A doctor step failed; the fields become the step's report."""

    def __init__(
        self,
        detail: str,
        *,
        hint: str = "",
        code: str | None = None,
        http_status: int | None = None,
        close_code: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.hint = hint
        self.code = code
        self.http_status = http_status
        self.close_code = close_code

    def result(self, step_id: str, title: str) -> StepResult:
        return StepResult(
            step_id,
            title,
            "failed",
            self.detail,
            code=self.code,
            http_status=self.http_status,
            close_code=self.close_code,
            hint=self.hint,
        )


@dataclass(frozen=True)
class DoctorConfig:
    auth_url: str
    session_url: str
    api_key: str | None
    project: str | None = None
    origin: str | None = None
    ws_url: str | None = None
    step_timeout_s: float = 15.0
    agent_timeout_s: float = 30.0
    batch: bool = True  # INIT asks for batched delivery (`events` frames), as the SDK does


STEPS: list[tuple[str, str]] = [
    ("auth_healthz", "auth-token /healthz"),
    ("auth_readyz", "auth-token /readyz"),
    ("session_healthz", "session /healthz"),
    ("session_readyz", "session /readyz"),
    ("credentials", "credentials (/v1/me)"),
    ("project", "project"),
    ("token", "token issue"),
    ("ws_upgrade", "WebSocket upgrade"),
    ("init_ready", "INIT → ready"),
    ("prompt_round_trip", "prompt round trip"),
    ("resume", "reconnect + resume"),
]


# -- turning errors into advice ----------------------------------------------------------


def _http_failure(exc: TetherHTTPError | TetherTransportError, service: str, option: str) -> StepFailed:
    """A failed request, explained for a person: what happened and what to do."""
    if isinstance(exc, TetherTransportError):
        return StepFailed(
            f"cannot connect to {exc.url}: {exc.reason}",
            code="unreachable",
            hint=f"start the {service} service, or point {option} at it",
        )
    rid = f" (request_id {exc.request_id})" if exc.request_id else ""
    detail = f"{exc.detail or exc.title or 'error'}{rid}"

    def failed(what: str, hint: str) -> StepFailed:
        return StepFailed(what, hint=hint, code=exc.code, http_status=exc.status)

    if exc.code in ("http_not_found", "http_404", "http_method_not_allowed", "http_405"):
        return failed(f"{exc.url} has no such endpoint: {detail}", f"is this URL the {service} service? Check {option}")
    if exc.status == 401:
        return failed(
            f"the API key was refused: {detail}",
            "run `tether login` with a valid API key, or pass --api-key / set TETHER_API_KEY",
        )
    if exc.status == 429:
        wait = f" after {exc.retry_after_s:g}s" if exc.retry_after_s is not None else " later"
        return failed(f"rate limited: {detail}", f"try again{wait}")
    if exc.status == 503:
        dependency = exc.problem.get("dependency")
        what = f" (dependency: {dependency})" if dependency else ""
        return failed(
            f"{service} is unavailable{what}: {detail}{_checks_text(exc.problem.get('checks'))}",
            f"the {service} service is starting or lost a dependency; check its log and its database",
        )
    if exc.status >= 500:
        return failed(f"{service} failed: {detail}", f"a server-side error: find the request_id in the {service} log")
    return failed(detail, f"unexpected answer from the {service} service")


def _checks_text(checks: object) -> str:
    if not isinstance(checks, dict) or not checks:
        return ""
    return " — checks: " + ", ".join(f"{k} {'✓' if v else '✗'}" for k, v in checks.items())


def _close_failure(decision: CloseDecision, during: str) -> StepFailed:
    hints = {
        "show_message": decision.message,
        "fix_client": "the client broke the protocol: upgrade tether-client, or report this as a bug",
        "reload": "the client is out of date or its history is gone: upgrade / start from a fresh state",
        "refresh_token": "the connection token was refused: the doctor used a fresh one, so check the clocks "
        "and that the session service reaches the same auth-token service",
        "backoff": "the server is busy or limiting this user: wait and run the doctor again",
        "reconnect": "the server asked to reconnect: run the doctor again in a moment",
        "resume": "the server dropped the connection: run the doctor again in a moment",
    }
    detail = f"the server closed the connection {during}: {decision.describe()}"
    return StepFailed(
        detail,
        code=decision.name,
        close_code=decision.code,
        hint=hints.get(decision.action, decision.message),
    )


def _token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


# -- the raw link used by the WebSocket steps ---------------------------------------------


class _Closed(Exception):
    def __init__(self, decision: CloseDecision) -> None:
        super().__init__(decision.describe())
        self.decision = decision


class _Link:
    """One WebSocket, held open by a task in the doctor's nursery until :meth:`close`,
    with the ``error`` frame that preceded its close remembered."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, catalogue: CloseCatalogue, done: trio.Event) -> None:
        self.ws = ws
        self.catalogue = catalogue
        self.error: ErrorFrame | None = None
        self._done = done
        self._batched: deque[Event] = deque()  # the rest of an `events` frame

    async def send(self, frame: dict[str, Any]) -> None:
        try:
            await self.ws.send_message(encode(frame))
        except trio_websocket.ConnectionClosed as exc:
            raise _Closed(self._decide(exc)) from None

    async def receive(self) -> ServerFrame:
        """The next frame; an ``error`` frame is remembered and skipped (the close follows).
        The items of an ``events`` frame are returned one by one, as if each had arrived alone."""
        while True:
            if self._batched:
                return self._batched.popleft()
            try:
                raw = await self.ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                raise _Closed(self._decide(exc)) from None
            frame = parse_server_frame(raw)
            if isinstance(frame, ErrorFrame):
                self.error = frame
                continue
            if isinstance(frame, Events):
                self._batched.extend(frame.events)
                continue
            return frame

    def _decide(self, exc: trio_websocket.ConnectionClosed) -> CloseDecision:
        code = exc.reason.code if exc.reason is not None else None
        return decide_close(self.catalogue, code, self.error)

    async def close(self) -> None:
        try:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await self.ws.aclose(1000, "doctor")
        finally:
            self._done.set()


async def _hold_websocket(
    url: str,
    headers: list[tuple[bytes, bytes]] | None,
    timeout_s: float,
    done: trio.Event,
    *,
    task_status: trio.TaskStatus[trio_websocket.WebSocketConnection] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Open ``url`` and keep it open until ``done``; connect errors are raised by ``nursery.start``."""
    async with trio_websocket.open_websocket_url(
        url, extra_headers=headers, connect_timeout=timeout_s, disconnect_timeout=2
    ) as ws:
        task_status.started(ws)
        await done.wait()


# -- the doctor ---------------------------------------------------------------------------


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
        self.link: _Link | None = None
        self.ready: Ready | None = None
        self.last_seq = 0
        self.seen: list[Event] = []
        self.nursery: trio.Nursery | None = None

    async def run(self) -> DoctorReport:
        steps: list[Callable[[], Awaitable[str]]] = [
            self.auth_healthz,
            self.auth_readyz,
            self.session_healthz,
            self.session_readyz,
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
                    failed = result.status != "ok"
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
        except _Closed as exc:
            result = _close_failure(exc.decision, f"during {title}").result(step_id, title)
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
                        failure = _http_failure(exc, "session", "--session-url")
                        failure.detail = f"could not delete project {self.created.slug}: {failure.detail}"
                        failure.hint = f"delete it by hand: DELETE /v1/projects/{self.created.id}"
                        result = failure.result("cleanup", "cleanup")
                    result.duration_ms = round((time.monotonic() - started) * 1000)
                    self._record(result)
            finally:
                await self.auth.aclose()
                await self.http.aclose()

    # -- steps 1-4: health and readiness -----------------------------------------------------

    async def _healthz(self, client: AuthClient | SessionHttp, service: str, option: str) -> str:
        try:
            body = await client.healthz()
        except (TetherHTTPError, TetherTransportError) as exc:
            raise _http_failure(exc, service, option) from None
        if body.get("status") != "ok":
            raise StepFailed(
                f'{client.base_url}/healthz answered {json.dumps(body)[:120]}, not {{"status": "ok"}}',
                code="unexpected_answer",
                hint=f"is this URL the {service} service? Check {option}",
            )
        # Both services answer /healthz alike; their contracts say which one this is.
        try:
            info = (await client.openapi()).get("info")
        except (TetherHTTPError, TetherTransportError) as exc:
            return f"{client.base_url} is alive (cannot tell which service it is: /openapi.json: {exc})"
        title = str(info.get("title", "")) if isinstance(info, dict) else ""
        if f"{service} service" not in title:
            raise StepFailed(
                f"{client.base_url} is alive but it is {title or 'an unknown service'!r}, not the Tether {service} service",
                code="wrong_service",
                hint=f"point {option} at the {service} service",
            )
        return f"{client.base_url} is alive ({title})"

    async def _readyz(self, client: AuthClient | SessionHttp, service: str, option: str) -> str:
        try:
            readiness = await client.readyz()
        except (TetherHTTPError, TetherTransportError) as exc:
            raise _http_failure(exc, service, option) from None
        if not readiness.ready:
            raise StepFailed(
                f"{service} says it is not ready{_checks_text(readiness.checks)}",
                code="not_ready",
                hint=f"the {service} service is starting or lost a dependency",
            )
        checks = ", ".join(f"{k} ✓" for k in readiness.checks) or "no checks reported"
        return f"ready ({checks})"

    async def auth_healthz(self) -> str:
        return await self._healthz(self.auth, "auth-token", "--auth-url / TETHER_AUTH_URL")

    async def auth_readyz(self) -> str:
        return await self._readyz(self.auth, "auth-token", "--auth-url / TETHER_AUTH_URL")

    async def session_healthz(self) -> str:
        return await self._healthz(self.http, "session", "--session-url / TETHER_SESSION_URL")

    async def session_readyz(self) -> str:
        return await self._readyz(self.http, "session", "--session-url / TETHER_SESSION_URL")

    # -- steps 5-7: credentials, project, token ----------------------------------------------

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
            raise _http_failure(exc, "auth-token", "--auth-url / TETHER_AUTH_URL") from None
        return f"API key accepted: user {self.user.name} ({self.user.id})"

    async def resolve_project(self) -> str:
        wanted = self.config.project
        if wanted is None:
            name = f"doctor-{secrets.token_hex(4)}"
            try:
                self.created = self.project = await self.http.create_project(name)
            except (TetherHTTPError, TetherTransportError) as exc:
                raise _http_failure(exc, "session", "--session-url / TETHER_SESSION_URL") from None
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
            raise _http_failure(exc, "session", "--session-url / TETHER_SESSION_URL") from None
        except TetherTransportError as exc:
            raise _http_failure(exc, "session", "--session-url / TETHER_SESSION_URL") from None
        return f"{self.project.slug} ({self.project.id}), last_seq {self.project.last_seq}"

    async def _new_token(self) -> str:
        project = self._project()
        try:
            issued = await self.auth.issue_token(project.id)
        except (TetherHTTPError, TetherTransportError) as exc:
            raise _http_failure(exc, "auth-token", "--auth-url / TETHER_AUTH_URL") from None
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

    # -- steps 8-11: the WebSocket -------------------------------------------------------------

    async def _load_catalogue(self) -> CloseCatalogue:
        if self.catalogue is None:
            try:
                self.catalogue = await self.http.close_codes()
            except (TetherHTTPError, TetherTransportError) as exc:
                failure = _http_failure(exc, "session", "--session-url / TETHER_SESSION_URL")
                failure.detail = f"close-code catalogue: {failure.detail}"
                raise failure from None
        return self.catalogue

    async def _connect(self) -> _Link:
        catalogue = await self._load_catalogue()
        if self.nursery is None:
            raise RuntimeError("the doctor's nursery is not open")
        headers = [(b"Origin", self.config.origin.encode())] if self.config.origin else None
        done = trio.Event()
        try:
            ws = await self.nursery.start(_hold_websocket, self.ws_url, headers, self.config.step_timeout_s, done)
        except trio_websocket.ConnectionRejected as exc:
            error = problem_error(exc.status_code, exc.body or b"", _lower(exc.headers), self.ws_url)
            if exc.status_code == 403:
                sent = f"Origin {self.config.origin!r}" if self.config.origin else "no Origin header"
                raise StepFailed(
                    f"origin refused: the upgrade with {sent} was rejected: {error.detail}",
                    code=error.code,
                    http_status=403,
                    hint="pass --origin (or set TETHER_ORIGIN) to an origin in the session service's "
                    "TETHER_ALLOWED_ORIGINS, or add yours to that list",
                ) from None
            raise _http_failure(error, "session", "--session-url / TETHER_SESSION_URL") from None
        except trio_websocket.HandshakeError as exc:
            raise StepFailed(
                f"cannot open {self.ws_url}: {handshake_reason(exc)}",
                code="unreachable",
                hint="start the session service, or point --session-url (or --ws-url) at it",
            ) from None
        return _Link(ws, catalogue, done)

    async def ws_upgrade(self) -> str:
        self.link = await self._connect()
        origin = f"Origin {self.config.origin}" if self.config.origin else "no Origin header"
        catalogue = self._catalogue()
        return f"{self.ws_url} upgraded ({origin}); close-code catalogue v{catalogue.version} ({len(catalogue.entries)} codes)"

    async def _init(self, link: _Link, token: str, resume_from: int | None) -> Ready:
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
        self.last_seq = self.ready.resume_from
        r = self.ready
        return (
            f"ready: project {r.project.slug}, last_seq {r.last_seq}, heartbeat "
            f"{r.heartbeat_interval_ms}/{r.heartbeat_timeout_ms} ms, connection {r.connection_id}, "
            f"batched delivery {'on' if r.batch else 'off'}"
        )

    async def _prompt(self, link: _Link, text: str) -> PromptAck:
        client_msg_id = new_client_msg_id()
        await link.send(prompt_frame(client_msg_id, text))
        while True:
            frame = await link.receive()
            if isinstance(frame, PromptAck) and frame.client_msg_id == client_msg_id:
                return frame
            if isinstance(frame, Event):
                self._accept(frame)

    def _accept(self, event: Event) -> None:
        """In order, no gap, no duplicate (F20-F22)."""
        if event.seq <= self.last_seq:
            raise StepFailed(
                f"duplicate event: seq {event.seq} after seq {self.last_seq}",
                code="duplicate_event",
                hint="the session service delivered an event twice: a server bug (F21); check its log",
            )
        if event.seq != self.last_seq + 1:
            raise StepFailed(
                f"gap in the event stream: expected seq {self.last_seq + 1}, got {event.seq}",
                code="event_gap",
                hint="the session service skipped events: a server bug (F20/F22); check its log",
            )
        self.last_seq = event.seq
        self.seen.append(event)

    def _done_for(self, prompt_seq: int) -> Event | None:
        return next((e for e in self.seen if e.kind == "agent_done" and answers(e, prompt_seq)), None)

    async def _await_answer(self, link: _Link, prompt_seq: int) -> Event:
        """Events until ``agent_done`` for the prompt stored at ``prompt_seq``."""
        while (done := self._done_for(prompt_seq)) is None:
            frame = await link.receive()
            if not isinstance(frame, Event):
                continue
            self._accept(frame)
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
        chunks = sum(1 for e in self.seen if e.kind == "agent_chunk" and answers(e, ack.seq))
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
        resume_from = self.last_seq
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
        span = f"seq {resume_from + 1}..{self.last_seq}" if self.last_seq > resume_from else "nothing new"
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

    def _link(self) -> _Link:
        if self.link is None:
            raise RuntimeError("no WebSocket open")
        return self.link

    def _take_token(self) -> str:
        token, self.token = self.token, None
        if token is None:
            raise RuntimeError("no fresh token: each INIT needs its own")
        return token


def _lower(raw: tuple[tuple[bytes, bytes], ...]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}


async def run_doctor(config: DoctorConfig, on_step: Callable[[StepResult], None] | None = None) -> DoctorReport:
    """Run every step; ``on_step`` sees each result as soon as it is known."""
    return await Doctor(config, on_step=on_step).run()
