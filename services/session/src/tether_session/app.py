"""The session service app factory: ``create_app()``; no module-level app.

Every dependency (pool, LISTEN connection, auth-token client, agents, hub) is built
here and started in ``before_serving``; none is created on a request path (F10, F11).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, cast

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from quart import Quart, Response, current_app, has_request_context, request

from tether_kit import logs, migrate
from tether_kit.contract import OpenApiContract, check_routes
from tether_kit.db import Database
from tether_kit.errors import COMMON, Catalogue, DependencyUnavailable, ErrorSpec, TetherError
from tether_kit.http import FAILPOINT_HEADER, HttpKit, bearer_token
from tether_kit.lifecycle import Startup, database_phases
from tether_kit.secrets import same_secret

from . import names, store, web
from .agent import AgentRunner, BuiltinAgent, WebhookAgent
from .appender import Appender
from .asgi_ws import AsgiWebsocket, WebsocketQuart
from .auth_client import AuthClient, AuthUser
from .config import Config
from .connection import Connection, jitter_ms, origin_refusal
from .fanout import Hub, Listener
from .frames import Frames
from .jobs import MAX_ATTEMPTS, AgentJobs, Job
from .metrics import Metrics
from .protocol import CloseCatalogue, SessionError, TokenBucket

SERVICE = "session"
SCHEMA = "session"

CATALOGUE = Catalogue(
    [
        *COMMON,
        ErrorSpec("idempotency_conflict", 409, "Idempotency-Key reused with a different request"),
        ErrorSpec("service_unauthenticated", 401, "Missing or invalid service credential"),
        ErrorSpec("resume_unavailable", 410, "Events before this point are no longer retained"),
        ErrorSpec("draining", 503, "Replica is draining", retry_after_s=1),
    ]
)


@dataclass
class State:
    config: Config
    log: logs.JsonLogger
    db: Database
    kit: HttpKit
    startup: Startup
    registry: CollectorRegistry
    metrics: Metrics
    frames: Frames
    close_catalogue: CloseCatalogue
    auth: AuthClient
    hub: Hub
    listener: Listener
    agents: AgentRunner
    jobs: AgentJobs
    appender: Appender
    agent: BuiltinAgent | WebhookAgent | None = None
    draining: bool = False
    connections: dict[str, Connection] = field(default_factory=dict)
    user_connections: dict[uuid.UUID, int] = field(default_factory=dict)
    ip_buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def ip_bucket(self, ip: str) -> TokenBucket:
        """Per-IP connect rate limit (in memory, per replica; bounded to 10,000 addresses)."""
        bucket = self.ip_buckets.get(ip)
        if bucket is None:
            if len(self.ip_buckets) >= 10_000:
                self.ip_buckets.clear()
            per_minute = self.config.connects_per_ip_per_minute
            bucket = self.ip_buckets[ip] = TokenBucket(per_minute / 60, max(1.0, per_minute / 6))
        return bucket

    async def publish(
        self, project_id: uuid.UUID, events: Sequence[store.NewEvent], *, source: str
    ) -> list[store.Appended]:
        """The append path of HTTP ingest: group-committed with every concurrent append.

        A request that arms a failpoint (test mode) gets a transaction of its own, so the
        failure it asks for cannot fail other requests' events.
        """
        if self.kit.failpoints.enabled and has_request_context() and FAILPOINT_HEADER in request.headers:
            async with self.db.transaction() as conn:
                batch = await store.append_events(conn, project_id, events, self.kit.failpoints.hit)
            self.appender.committed(project_id, batch.stored)
            results = batch.results
        else:
            results = await self.appender.append(project_id, events)
        self.metrics.published.labels(source).inc(sum(1 for r in results if r.stored))
        return results

    async def publish_prompt(self, project_id: uuid.UUID, event: store.NewEvent, text: str) -> store.Appended:
        """Store a prompt and its agent job atomically, then start the agent on it."""
        result, job = await self.jobs.publish_prompt(project_id, event, text, with_job=self.agent is not None)
        if job is not None:
            self.start_agent(job)
        return result

    def start_agent(self, job: Job) -> None:
        if self.agent is not None:
            self.agents.start(f"agent-{job.project_id}-{job.prompt_seq}", self.agent.answer(job, self.jobs))

    async def drain(self) -> None:
        """SIGTERM: stop accepting, close every socket with a jittered retryable 'draining', wait, stop."""
        self.draining = True
        window = self.config.drain_window_ms
        count = len(self.connections)
        self.log.info("drain_started", connections=count, window_ms=window)
        for conn in list(self.connections.values()):
            conn.force_close(SessionError("draining", retry_after_ms=random.randint(0, window)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_timeout_s
        tasks = {c.task for c in self.connections.values() if c.task is not None}
        if tasks:
            await asyncio.wait(tasks, timeout=self.config.drain_timeout_s)
        await self.agents.shutdown(max(0.1, deadline - loop.time()))
        self.log.info("drain_finished", closed=count, remaining=len(self.connections))


def state() -> State:
    return cast(State, current_app.extensions["tether"])


def migrations() -> list[migrate.Migration]:
    return migrate.load(Path(str(resources.files("tether_session") / "migrations")))


def create_app(config: Config | None = None) -> Quart:
    config = config or Config.from_env()
    log = logs.from_env(SERVICE)
    contract = OpenApiContract(config.contracts_dir / "openapi.json")
    close_catalogue = CloseCatalogue.load(config.contracts_dir / "close-codes.json")
    frames = Frames(config.contracts_dir / "frames", validate_outgoing=config.test_mode)
    registry = CollectorRegistry()
    app = WebsocketQuart(__name__, log=log, catalogue=CATALOGUE)
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    db = Database(config.database_url, schema=SCHEMA, max_size=config.db_pool_max)
    kit = HttpKit(
        app,
        log=log,
        catalogue=CATALOGUE,
        contract=contract,
        registry=registry,
        cors_origins=config.cors_origins,
        test_mode=config.test_mode,
        allow_nul=False,  # names and event data go to text/jsonb columns, which cannot hold U+0000
    )
    auth = AuthClient(
        config.auth_url,
        config.auth_service_key,
        record_path=config.record_auth_calls if config.record_auth_calls != "-" else None,
    )
    all_migrations = migrations()
    st_box: list[State] = []

    async def auth_service() -> None:
        if not await auth.healthy():
            raise DependencyUnavailable("auth-token", "the auth-token service does not answer /healthz")

    async def listen() -> None:
        st = st_box[0]
        app.extensions["tether_listener"] = asyncio.create_task(st.listener.run(), name="listener")
        async with asyncio.timeout(5):
            await st.listener.connected.wait()

    startup = Startup(
        log,
        registry,
        [*database_phases(db, SCHEMA, all_migrations, log), ("auth_token", auth_service), ("listen", listen)],
    )
    metrics = Metrics(registry)
    hub = Hub(db, log, frames.encode_event, frames.encode_batch)
    appender = Appender(db, log, on_commit=hub.appended)
    st = State(
        config=config,
        log=log,
        db=db,
        kit=kit,
        startup=startup,
        registry=registry,
        metrics=metrics,
        frames=frames,
        close_catalogue=close_catalogue,
        auth=auth,
        hub=hub,
        listener=Listener(config.database_url, hub, log),
        agents=AgentRunner(log),
        appender=appender,
        jobs=AgentJobs(
            db,
            appender,
            config.replica,
            kit.failpoints.hit,
            stale_s=config.agent_stale_s,
            published=lambda source, n: metrics.published.labels(source).inc(n),
        ),
    )
    st_box.append(st)

    if config.agent_url == "builtin":
        st.agent = BuiltinAgent(chunks=config.agent_chunks, delay_ms=config.agent_delay_ms)
    elif config.agent_url != "none":
        st.agent = WebhookAgent(
            log,
            url=config.agent_url,
            key=config.agent_key,
            public_url=config.public_url,
            timeout_s=max(0.5, config.agent_stale_s / 2),
        )
    app.extensions["tether"] = st
    kit.add_common_routes()
    _routes(app)
    web.register(app, config)
    check_routes(app, contract, outside_contract=web.RULES)
    # WebSocket scopes never reach Quart (memory per idle session): see asgi_ws.
    app.websocket_route("/v1/ws", functools.partial(serve_ws, st))

    @app.before_serving
    async def _start() -> None:
        log.info("starting", port=config.port, test_mode=config.test_mode, agent=config.agent_url.split("?")[0])
        startup.start()
        if config.retention_events > 0:
            app.extensions["tether_pruner"] = asyncio.create_task(_prune_loop(st), name="retention")
        if st.agent is not None:
            app.extensions["tether_sweeper"] = asyncio.create_task(_sweep_loop(st), name="agent-sweeper")

    @app.after_serving
    async def _stop() -> None:
        for name in ("tether_listener", "tether_pruner", "tether_sweeper"):
            task: asyncio.Task[None] | None = app.extensions.get(name)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await st.agents.shutdown(1.0)
        await st.appender.close()
        await startup.stop()
        await auth.aclose()
        if isinstance(st.agent, WebhookAgent):
            await st.agent.aclose()
        await db.close()
        log.close()

    return app


async def _prune_loop(st: State) -> None:
    """Retention (TETHER_RETENTION_EVENTS > 0): prune every project's log periodically."""
    await st.startup.ready.wait()
    while True:
        try:
            async with st.db.transaction() as conn:
                removed = await store.prune(conn, st.config.retention_events)
            if removed:
                st.log.info("events_pruned", count=removed, keep=st.config.retention_events)
        except Exception as exc:  # logged; retried at the next interval
            st.log.exception("events_prune_failed", exc)
        await asyncio.sleep(st.config.retention_interval_s)


async def _sweep_loop(st: State) -> None:
    """Claim agent jobs whose replica stopped heart-beating and finish them here (F15)."""
    await st.startup.ready.wait()
    while True:
        await asyncio.sleep(st.config.agent_stale_s / 2)
        if st.draining:
            return
        try:
            claimed = await st.jobs.claim_stale()
        except Exception as exc:  # logged; the next sweep retries
            st.log.exception("agent_sweep_failed", exc)
            continue
        for job in claimed:
            st.log.warning(
                "agent_job_claimed",
                project_id=str(job.project_id),
                prompt_seq=job.prompt_seq,
                next_index=job.next_index,
                attempts=job.attempts,
            )
            if job.attempts > MAX_ATTEMPTS:
                st.agents.start(f"agent-error-{job.prompt_seq}", _give_up(st, job))
            else:
                st.start_agent(job)


async def _give_up(st: State, job: Job) -> None:
    """A job interrupted too often ends with an agent_error event, not another retry."""
    reason = f"the answer was interrupted {job.attempts - 1} times"
    error = store.NewEvent(
        f"agent-{job.prompt_seq}-error", "agent_error", {"prompt_seq": job.prompt_seq, "reason": reason}
    )
    await st.jobs.step(job, [error], done=True)


async def current_user() -> AuthUser:
    st = state()
    user = await st.auth.me(
        authorization=request.headers.get("Authorization"),
        session_cookie=request.cookies.get("tether_session"),
        request_id=logs.context().get("request_id", ""),
    )
    logs.bind(user_id=str(user.id))
    return user


def authenticate_service() -> str:
    key = bearer_token(request.headers.get("Authorization"))
    if key is not None:
        for name, secret in state().config.ingest_keys.items():
            if same_secret(key, secret):
                logs.bind(caller=name)
                return name
    raise TetherError("service_unauthenticated", "a valid service credential is required")


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json", headers=headers)


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise TetherError("not_found", "no such project") from None


def _routes(app: Quart) -> None:
    @app.get("/readyz")
    async def readyz() -> Response:
        st = state()
        checks = {
            "migrations": st.startup.is_ready,
            "postgres": await st.db.ping() if st.db.is_open else False,
            "listen": st.listener.connected.is_set(),
            "auth_token": await st.auth.healthy(),
            "accepting": not st.draining,
        }
        if all(checks.values()):
            return _json({"ready": True, "checks": checks})
        code = "draining" if st.draining else "not_ready"
        raise TetherError(code, f"not ready: phase {st.startup.phase}", extras={"checks": checks})

    @app.get("/metrics")
    async def metrics() -> Response:
        st = state()
        st.metrics.observe(st)
        return Response(generate_latest(st.registry), content_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/protocol/close-codes")
    async def close_codes() -> Response:
        st = state()
        return Response((st.config.contracts_dir / "close-codes.json").read_bytes(), content_type="application/json")

    @app.get("/v1/projects")
    async def list_projects() -> Response:
        st = state()
        user = await current_user()
        async with st.db.connection() as conn:
            projects = await store.list_projects(conn, user.id)
        return _json({"projects": [p.public() for p in projects]})

    @app.post("/v1/projects")
    async def create_project() -> Response:
        st = state()
        user = await current_user()
        body = await st.kit.json_body("createProject")
        key = request.headers.get("Idempotency-Key")
        if key is not None and not (0 < len(key) <= 128 and all(c.isalnum() or c in "._:-" for c in key)):
            raise TetherError("validation_failed", "Idempotency-Key must match ^[A-Za-z0-9._:-]{1,128}$")
        name = names.project_name(body["name"])
        async with st.db.transaction() as conn:
            project, replayed = await store.create_project(conn, user.id, name, key, st.kit.failpoints.hit)
        if not replayed:
            st.log.info("project_created", project_id=str(project.id), slug=project.slug)
        return _json(project.public(), status=201, headers={"Idempotent-Replayed": "true"} if replayed else None)

    @app.get("/v1/projects/<project_id>")
    async def get_project(project_id: str) -> Response:
        st = state()
        user = await current_user()
        async with st.db.connection() as conn:
            project = await store.project_by_id(conn, user.id, _uuid(project_id))
        if project is None:
            raise TetherError("not_found", "no such project")
        return _json(project.public())

    @app.delete("/v1/projects/<project_id>")
    async def delete_project(project_id: str) -> Response:
        st = state()
        user = await current_user()
        pid = _uuid(project_id)
        async with st.db.transaction() as conn:
            deleted = await store.delete_project(conn, user.id, pid, st.kit.failpoints.hit)
        if not deleted:
            raise TetherError("not_found", "no such project")
        st.log.info("project_deleted", project_id=str(pid))
        return Response("", status=204)

    @app.get("/v1/projects/by-slug/<slug>")
    async def get_project_by_slug(slug: str) -> Response:
        st = state()
        user = await current_user()
        async with st.db.connection() as conn:
            project = await store.project_by_slug(conn, user.id, slug)
        if project is None:
            raise TetherError("not_found", "no such project")
        return _json(project.public())

    @app.get("/v1/projects/<project_id>/events")
    async def list_events(project_id: str) -> Response:
        st = state()
        user = await current_user()
        after = _int_query("after", 0, 0, 2**53 - 1)
        limit = _int_query("limit", 100, 1, 1000)
        pid = _uuid(project_id)
        async with st.db.connection() as conn:
            project = await store.project_by_id(conn, user.id, pid)
            if project is None:
                raise TetherError("not_found", "no such project")
            first = await store.first_seq(conn, pid)
            if first is not None and after < first - 1:
                raise TetherError("resume_unavailable", f"events before seq {first} are no longer retained")
            events = await store.read_events(conn, pid, after, limit)
        return Response(
            '{"events":[%s],"last_seq":%d}'  # noqa: UP031
            % (",".join(_event_json(e) for e in events), project.last_seq),
            content_type="application/json",
        )

    @app.post("/v1/projects/<project_id>/events")
    async def publish_events(project_id: str) -> Response:
        st = state()
        authenticate_service()
        body = await st.kit.json_body("publishEvents")
        pid = _uuid(project_id)
        events = [store.NewEvent(e["event_id"], e["kind"], e["data"]) for e in body["events"]]
        results = await st.publish(pid, events, source="ingest")
        logs.bind(project_id=str(pid))
        conflicts = [r.event_id for r in results if r.conflict]
        if conflicts:  # each is reported in its result; the events stored or duplicated beside it stand
            st.log.warning("idempotency_conflict", conflicts=len(conflicts), event_ids=conflicts[:10])
        return _json({"results": [_publish_result(r) for r in results], "last_seq": max(r.seq for r in results)})

    @app.websocket("/v1/ws")
    async def ws() -> None:
        """The rule only (a plain GET /v1/ws is a 400): WebSocket scopes are served by serve_ws."""
        raise RuntimeError("/v1/ws is served by tether_session.asgi_ws.dispatch, in front of Quart")


def serve_ws(st: State, sock: AsgiWebsocket) -> web.Rejection | Coroutine[Any, Any, None]:
    """GET /v1/ws (WebSocket upgrade): the Origin check before accept (F07), then one Connection
    (its coroutine: the dispatch awaits it once it has accepted the upgrade)."""
    refusal = origin_refusal(st, sock.headers.get("Origin"))
    if refusal is not None:
        return web.ws_rejection(st.log, refusal, CATALOGUE)
    return Connection(st, sock).run()


def _event_json(e: store.StoredEvent) -> str:
    return '{"seq":%d,"event_id":%s,"kind":%s,"data":%s,"ts":"%s"}' % (  # noqa: UP031
        e.seq,
        json.dumps(e.event_id),
        json.dumps(e.kind),
        e.data_json,
        e.ts.isoformat(),
    )


def _publish_result(r: store.Appended) -> dict[str, Any]:
    result: dict[str, Any] = {"event_id": r.event_id, "seq": r.seq, "duplicate": r.duplicate}
    if r.conflict:
        result["error"] = "idempotency_conflict"
    return result


def _int_query(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise TetherError("validation_failed", f"{name} must be an integer") from None
    if not low <= value <= high:
        raise TetherError("validation_failed", f"{name} must be between {low} and {high}")
    return value


__all__ = ["SERVICE", "State", "create_app", "jitter_ms"]
