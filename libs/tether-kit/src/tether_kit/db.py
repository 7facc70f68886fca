"""The one way to get a database connection or a transaction (F14).

``Database`` owns an asyncpg pool created in the app's start-up.  Code uses::

    async with db.transaction() as conn: ...   # writes, atomic
    async with db.connection() as conn: ...    # reads

Connection-level failures (Postgres down, restarting, unreachable) surface as
:class:`~tether_kit.errors.DependencyUnavailable` (503 + Retry-After), never as a
bare 500 (F06).  SQL errors (constraint violations, bugs) propagate unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from .errors import DependencyUnavailable
from .logs import DEPENDENCIES

# Errors meaning "the database is not there right now", as opposed to a bad query.
CONNECTIVITY_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)

# The type handlers receive: a pooled connection (or a plain one in admin commands).
# A string alias: asyncpg's classes are generic only in the stubs, not at run time.
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"


async def _keep_session(_conn: Any) -> None:
    """The pool's reset on release: nothing beyond asyncpg's own (it still rolls back an open
    transaction and drops listeners).

    asyncpg's default runs ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``:
    one more round trip per release, on every request.  Our code leaves no session state on a
    pooled connection: settings are ``SET LOCAL``, advisory locks ``_xact_``, no cursor outlives
    its transaction, and LISTEN has a connection of its own.
    """


def is_connectivity_error(exc: BaseException) -> bool:
    return isinstance(exc, CONNECTIVITY_ERRORS)


class Database:
    """An asyncpg pool with typed context managers and connectivity error mapping."""

    def __init__(self, dsn: str, *, schema: str, min_size: int = 1, max_size: int = 10) -> None:
        self.dsn = dsn
        self.schema = schema
        self.min_size = min_size
        self.max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self.acquire_timeout = 3.0
        # Server pids of this pool's connections (bounded; a stale entry only costs a hint):
        # lets a LISTEN callback tell this process's own NOTIFYs from other replicas'.
        self.backend_pids: set[int] = set()

    async def _on_new_connection(self, conn: Any) -> None:
        if len(self.backend_pids) >= 4 * self.max_size:
            self.backend_pids.clear()
        self.backend_pids.add(conn.get_server_pid())

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise DependencyUnavailable("postgres", "database pool is not open yet")
        return self._pool

    @property
    def is_open(self) -> bool:
        return self._pool is not None

    async def open(self, *, timeout: float = 5.0) -> None:
        """Create the pool; raises a connectivity error if Postgres is not reachable."""
        self._pool = await asyncpg.create_pool(
            self.dsn,
            min_size=self.min_size,
            max_size=self.max_size,
            timeout=timeout,
            command_timeout=30,
            max_inactive_connection_lifetime=60,
            server_settings={"search_path": self.schema, "application_name": f"tether-{self.schema}"},
            reset=_keep_session,
            init=self._on_new_connection,
        )

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    def stats(self) -> dict[str, int]:
        if self._pool is None:
            return {"size": 0, "idle": 0, "max": self.max_size}
        return {
            "size": self._pool.get_size(),
            "idle": self._pool.get_idle_size(),
            "max": self.max_size,
        }

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        pool = self.pool
        # With a connection idle, acquiring cannot wait: skip the timeout, which costs a task
        # and a timer per acquire (asyncio.wait_for).  Nothing awaits between the check and
        # the acquire, so no other task can take that connection in between.
        timeout = self.acquire_timeout if pool.get_idle_size() == 0 else None
        try:
            async with pool.acquire(timeout=timeout) as conn:
                yield conn
        except CONNECTIVITY_ERRORS as exc:
            raise DependencyUnavailable("postgres", f"database error: {type(exc).__name__}") from exc
        DEPENDENCIES.ok("postgres")  # a use that went through: the outage, if any, is over

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self.connection() as conn, conn.transaction():
            yield conn

    async def ping(self, timeout: float = 1.0) -> bool:
        """True when the database answers ``SELECT 1`` within ``timeout``."""
        try:
            async with asyncio.timeout(timeout), self.connection() as conn:
                value: Any = await conn.fetchval("SELECT 1")
                return bool(value == 1)
        except (DependencyUnavailable, TimeoutError):
            return False
