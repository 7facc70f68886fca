"""Start-up as named phases, retried until they succeed, with readiness at the end (F10).

The app starts serving at once (``/healthz`` answers, ``/readyz`` says false) while a
background task runs the phases in order: open the database, apply migrations, check
other dependencies.  A phase that fails on a connectivity error is logged and retried
with capped backoff; any other error is fatal (the process exits non-zero, loudly).
Each phase's duration is recorded for ``/metrics``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Gauge

from . import migrate
from .db import Database, is_connectivity_error
from .errors import DependencyUnavailable
from .logs import JsonLogger

Phase = tuple[str, Callable[[], Awaitable[None]]]


@dataclass
class Startup:
    log: JsonLogger
    registry: CollectorRegistry
    phases: list[Phase]
    started_at: float = field(default_factory=time.perf_counter)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    phase: str = "starting"
    completed: set[str] = field(default_factory=set)
    _task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.durations = Gauge(
            "tether_startup_phase_seconds", "Duration of each start-up phase", ["phase"], registry=self.registry
        )

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="startup")

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                if asyncio.current_task() is not None and asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise

    async def _run(self) -> None:
        for name, phase in self.phases:
            self.phase = name
            phase_start = time.perf_counter()
            delay = 0.05
            while True:
                try:
                    await phase()
                    break
                except Exception as exc:
                    if not (isinstance(exc, DependencyUnavailable) or is_connectivity_error(exc)):
                        self.log.exception("startup_failed", exc, phase=name)
                        os._exit(3)  # a bug or a bad contract/migration: stop loudly, do not limp
                    self.log.warning(
                        "startup_waiting", phase=name, reason=f"{type(exc).__name__}: {exc}"[:300], retry_in_s=delay
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
            self.durations.labels(name).set(time.perf_counter() - phase_start)
            self.completed.add(name)
        self.phase = "ready"
        total = time.perf_counter() - self.started_at
        self.durations.labels("total").set(total)
        self.log.info("ready", startup_s=round(total, 4))
        self.ready.set()

    @property
    def is_ready(self) -> bool:
        return self.ready.is_set()

    def done(self, phase: str) -> bool:
        """Whether start-up phase ``phase`` has finished (it stays finished: a later outage is not a phase)."""
        return phase in self.completed


def database_phases(db: Database, schema: str, migrations: list[migrate.Migration], log: JsonLogger) -> list[Phase]:
    """The two start-up phases every service has: open the pool, apply its migrations."""

    async def open_db() -> None:
        if not db.is_open:
            await db.open()

    async def apply_migrations() -> None:
        async with db.connection() as conn:
            for m in await migrate.apply(conn, schema, migrations):
                log.info("migration_applied", schema=schema, version=m.version, name=m.name)

    return [("database", open_db), ("migrations", apply_migrations)]
