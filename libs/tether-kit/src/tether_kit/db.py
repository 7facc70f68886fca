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
        try:
            async with self.pool.acquire(timeout=self.acquire_timeout) as conn:
                yield conn
        except CONNECTIVITY_ERRORS as exc:
            raise DependencyUnavailable("postgres", f"database error: {type(exc).__name__}") from exc

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
