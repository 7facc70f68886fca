"""What every Tether service has besides its own routes: readiness, metrics, service credentials,
JSON answers, and the maintenance loops it runs in the background.

Resource handling: :class:`Background` owns the service's long-lived tasks; ``start`` runs in
``before_serving`` and ``stop`` in ``after_serving`` cancels each and waits for it.  Tasks are
started in a fresh :mod:`contextvars` context, so their log lines never carry the request or
connection that happened to be current when they were created (F40).

Error handling: a maintenance step that fails is logged and retried at the next interval.  A
connectivity failure (the database is down) is a ``warning`` naming the dependency, without a
traceback; any other failure is an ``error`` with its traceback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from quart import Quart, Response, request

from . import logs
from .contract import OpenApiContract
from .db import Database, is_connectivity_error
from .errors import Catalogue, DependencyUnavailable, TetherError
from .http import HttpKit, bearer_token
from .secrets import same_secret
from .tasks import detached

Check = Callable[[], Awaitable[bool]]


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json", headers=dict(headers or {}))


def authenticate_service(keys: Mapping[str, str]) -> str:
    """The name of the service whose shared secret the request's Bearer credential is (constant-time
    compare against every configured key), or ``service_unauthenticated``."""
    key = bearer_token(request.headers.get("Authorization"))
    if key is not None:
        matched = [name for name, secret in keys.items() if same_secret(key, secret)]
        if matched:
            logs.bind(caller=matched[0])
            return matched[0]
    raise TetherError("service_unauthenticated", "a valid service credential is required")


def add_readyz(app: Quart, checks: Mapping[str, Check], *, draining: Callable[[], bool] = lambda: False) -> None:
    """``GET /readyz``: every check runs and reports its own truth; ready only when all hold.

    The refusal names the checks that failed (``not_ready``, or ``draining`` while the replica drains).
    """

    async def readyz() -> Response:
        results = {name: await check() for name, check in checks.items()}
        if all(results.values()):
            return json_response({"ready": True, "checks": results})
        failed = sorted(name for name, ok in results.items() if not ok)
        code = "draining" if draining() else "not_ready"
        raise TetherError(code, f"not ready: {', '.join(failed)}", extras={"checks": results})

    app.add_url_rule("/readyz", "readyz", readyz, methods=["GET"])


def add_metrics(
    app: Quart, registry: CollectorRegistry, db: Database, refresh: Callable[[], None] = lambda: None
) -> None:
    """``GET /metrics`` (Prometheus text), with the database pool gauges every service has."""
    pool = Gauge("tether_db_pool_connections", "Database pool connections", ["state"], registry=registry)

    async def metrics() -> Response:
        for key, value in db.stats().items():
            pool.labels(key).set(value)
        refresh()
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    app.add_url_rule("/metrics", "metrics", metrics, methods=["GET"])


def database_check(db: Database) -> Check:
    async def postgres() -> bool:
        return await db.ping() if db.is_open else False

    return postgres


class Background:
    """The service's long-lived tasks, each started in a fresh log context and stopped at shutdown."""

    def __init__(self, log: logs.JsonLogger) -> None:
        self.log = log
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = detached(work, name=name)
        self._tasks[name] = task
        return task

    def periodic(
        self, name: str, every_s: float, step: Callable[[], Awaitable[None]], *, after: asyncio.Event | None = None
    ) -> asyncio.Task[None]:
        """Run ``step`` every ``every_s`` seconds (after ``after`` is set, when given) until stopped."""

        async def loop() -> None:
            if after is not None:
                await after.wait()
            while True:
                await asyncio.sleep(every_s)
                await self.guarded(name, step)

        return self.start(name, loop())

    async def guarded(self, name: str, step: Callable[[], Awaitable[None]]) -> None:
        """One maintenance step; its failure is logged (see the module's error handling) and not raised."""
        try:
            await step()
        except DependencyUnavailable as exc:
            self.log.warning(f"{name}_failed", dependency=exc.dependency, error=exc.detail[:300])
        except Exception as exc:
            if not is_connectivity_error(exc):
                self.log.exception(f"{name}_failed", exc)
                return
            self.log.warning(f"{name}_failed", dependency="postgres", error=f"{type(exc).__name__}: {exc}"[:300])

    async def stop(self) -> None:
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise


@dataclass(frozen=True)
class Core:
    """The parts every service builds the same way in its app factory."""

    http: Quart
    log: logs.JsonLogger
    registry: CollectorRegistry
    db: Database
    kit: HttpKit


class CoreSettings(Protocol):
    """The configuration every service has (each service's frozen ``Config`` provides it)."""

    @property
    def database_url(self) -> str: ...
    @property
    def db_pool_max(self) -> int: ...
    @property
    def max_body_bytes(self) -> int: ...
    @property
    def cors_origins(self) -> frozenset[str]: ...
    @property
    def test_mode(self) -> bool: ...


def build_core(
    service: str,
    import_name: str,
    settings: CoreSettings,
    *,
    schema: str,
    catalogue: Catalogue,
    contract: Path,
    allow_nul: bool = True,
) -> Core:
    log = logs.from_env(service)
    registry = CollectorRegistry()
    http = Quart(import_name)
    http.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    kit = HttpKit(
        http,
        log=log,
        catalogue=catalogue,
        contract=OpenApiContract(contract),
        registry=registry,
        cors_origins=settings.cors_origins,
        test_mode=settings.test_mode,
        allow_nul=allow_nul,
    )
    db = Database(settings.database_url, schema=schema, max_size=settings.db_pool_max)
    return Core(http=http, log=log, registry=registry, db=db, kit=kit)
