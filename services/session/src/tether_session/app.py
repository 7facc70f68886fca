"""The session service app factory: ``create_app()``; no module-level app.

Every dependency (pool, LISTEN connection, auth-token client, agents, fan-out hub, the
replica's connection registry) is built here, once, and started in ``before_serving``;
none is created on a request path (F10, F11).  The factory returns the service's ASGI
app: :class:`SessionApp`, the explicit dispatch of :mod:`tether_session.asgi` (HTTP and
lifespan to Quart, ``/v1/ws`` to the session) with the replica's drain.
"""

from __future__ import annotations

import asyncio
import functools

from quart import Quart

from tether_kit import logs, migrate
from tether_kit.contract import check_routes
from tether_kit.errors import DependencyUnavailable
from tether_kit.lifecycle import Startup, database_phases
from tether_kit.service import Background, build_core
from tether_kit.shedding import ShedLog

from . import routes, web
from .agent import AgentRunner, BuiltinAgent, WebhookAgent
from .appender import Appender
from .asgi import Dispatcher
from .auth_client import AuthClient
from .catalogue import CATALOGUE
from .config import Config
from .deps import Deps
from .fanout import Hub, Listener
from .frames import Frames
from .jobs import AgentJobs
from .load import Load, ShedLimits
from .metrics import Metrics
from .protocol import CloseCatalogue, Limits
from .publisher import Agent, Publisher
from .replica import Replica
from .rules import Rules

SERVICE = "session"
SCHEMA = "session"
WS_PATH = "/v1/ws"


class SessionApp(Dispatcher):
    """The session service's ASGI app, with the replica's SIGTERM drain."""

    def __init__(self, http: Quart, deps: Deps) -> None:
        super().__init__(
            http, log=deps.log, catalogue=CATALOGUE, ws_routes={WS_PATH: functools.partial(routes.serve_ws, deps)}
        )
        self.deps = deps

    async def drain(self) -> None:
        """SIGTERM: stop accepting, close every socket with a jittered retryable 'draining', wait, stop."""
        deps = self.deps
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deps.config.drain_timeout_s
        closed = await deps.replica.drain(deps.config.drain_timeout_s)
        await deps.publisher.agents.shutdown(max(0.1, deadline - loop.time()))
        deps.log.info("drain_finished", closed=closed, remaining=len(deps.replica.connections))


def _agent(config: Config, log: logs.JsonLogger) -> Agent | None:
    if config.agent_url == "builtin":
        return BuiltinAgent(chunks=config.agent_chunks, delay_ms=config.agent_delay_ms)
    if config.agent_url == "none":
        return None
    return WebhookAgent(
        log,
        url=config.agent_url,
        key=config.agent_key,
        public_url=config.public_url,
        timeout_s=max(0.5, config.agent_stale_s / 2),
    )


def _rules(config: Config) -> Rules:
    limits = Limits(
        max_connections=config.max_connections,
        max_connections_per_user=config.max_connections_per_user,
        init_timeout_ms=config.init_timeout_ms,
        heartbeat_timeout_ms=config.heartbeat_timeout_ms,
        session_lifetime_s=config.session_lifetime_s,
        drain_window_ms=config.drain_window_ms,
    )
    return Rules(CloseCatalogue.load(config.contracts_dir / "close-codes.json"), limits)


def create_app(config: Config | None = None) -> SessionApp:
    config = config or Config.from_env()
    # allow_nul=False: names and event data go to text/json columns, which cannot hold U+0000
    core = build_core(
        SERVICE,
        __name__,
        config,
        schema=SCHEMA,
        catalogue=CATALOGUE,
        contract=config.contracts_dir / "openapi.json",
        allow_nul=False,
    )
    http, log, registry, db, kit = core.http, core.log, core.registry, core.db, core.kit
    frames = Frames(config.contracts_dir / "frames", validate_outgoing=config.test_mode)
    auth = AuthClient(
        config.auth_url,
        config.auth_service_key,
        record_path=config.record_auth_calls if config.record_auth_calls != "-" else None,
    )
    metrics = Metrics(registry)
    hub = Hub(db, log, frames.encode_event, frames.encode_batch)
    listener = Listener(config.database_url, hub, log)
    background = Background(log)

    async def auth_service() -> None:
        if not await auth.healthy():
            raise DependencyUnavailable("auth-token", "the auth-token service does not answer /healthz")

    async def listen() -> None:
        background.start("listener", listener.run())
        async with asyncio.timeout(5):
            await listener.connected.wait()

    startup = Startup(
        log,
        registry,
        [
            *database_phases(db, SCHEMA, migrate.load_package("tether_session"), log),
            ("auth_token", auth_service),
            ("listen", listen),
        ],
    )
    appender = Appender(db, log, on_commit=hub.appended)
    rules = _rules(config)
    publisher = Publisher(
        db,
        log,
        appender,
        AgentJobs(
            db,
            appender,
            config.replica,
            kit.failpoints.hit,
            stale_s=config.agent_stale_s,
            published=lambda source, n: metrics.published.labels(source).inc(n),
        ),
        AgentRunner(log),
        _agent(config, log),
        metrics.published,
        kit.failpoints.hit,
    )
    load = Load(
        ShedLimits(
            loop_lag_ms=config.shed_loop_lag_ms,
            handshakes=config.shed_handshakes,
            append_queue=config.shed_append_queue,
            connect_capacity_per_s=config.connect_capacity_per_s,
            ingest_capacity_per_s=config.ingest_capacity_per_s,
        ),
        ShedLog(log, registry),
        registry,
        append_queue=lambda: appender.queued,
    )
    replica = Replica(
        rules,
        log,
        load,
        ready=startup.ready,
        startup_wait_s=config.startup_wait_ms / 1000,
        connects_per_ip_per_minute=config.connects_per_ip_per_minute,
    )
    deps = Deps(
        config=config,
        log=log,
        metrics=metrics,
        frames=frames,
        rules=rules,
        replica=replica,
        load=load,
        db=db,
        hub=hub,
        listener=listener,
        auth=auth,
        publisher=publisher,
        startup=startup,
        kit=kit,
        registry=registry,
    )
    kit.add_common_routes()
    routes.register(http, deps)
    web.register(http, config)
    check_routes(http, kit.contract, outside_contract=web.RULES)

    @http.before_serving
    async def _start() -> None:
        log.info("starting", port=config.port, test_mode=config.test_mode, agent=config.agent_url.split("?")[0])
        startup.start()
        background.start("load_probe", load.probe())
        if config.retention_events > 0:
            keep = config.retention_events
            background.periodic(
                "events_prune", config.retention_interval_s, lambda: publisher.prune(keep), after=startup.ready
            )
        if publisher.agent is not None:
            background.periodic("agent_sweep", config.agent_stale_s / 2, sweep, after=startup.ready)

    async def sweep() -> None:
        if not replica.draining:  # a draining replica takes over no one's jobs
            await publisher.sweep()

    @http.after_serving
    async def _stop() -> None:
        await background.stop()
        await publisher.aclose(1.0)
        await startup.stop()
        await auth.aclose()
        await db.close()
        log.close()

    return SessionApp(http, deps)


__all__ = ["SERVICE", "SessionApp", "create_app"]
