"""The test run's PostgreSQL server: embedded (default) or the one ``DATABASE_URL`` names.

One server per test session (:func:`start_pg_server`); each test module asks for its own
fresh database with :meth:`PgServer.fresh_database`.  The embedded server lives in a
temporary directory under ``/tmp`` (never in the repository), runs with ``fast=True``
(fsync off) on a free port, and can be stopped and started again by tests that take the
database away (F06); on an external server those tests are skipped.

SQL helpers (:func:`query`, :func:`aquery`) use asyncpg on a private event loop in a
worker thread, so they work from sync code, from trio tests and from asyncio tests alike.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import pytest

from tether_dev.pg import EmbeddedPostgres, free_port

from .waiting import scaled

_DB_NAME = re.compile(r"[^a-z0-9_]+")
SQL_TIMEOUT_S = 15.0


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


async def _query(dsn: str, sql: str, args: Sequence[Any], timeout: float) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn, timeout=timeout)
    try:
        rows = await conn.fetch(sql, *args, timeout=timeout)
        return [dict(row) for row in rows]
    finally:
        await conn.close(timeout=timeout)


def query(dsn: str, sql: str, *args: Any, timeout: float = SQL_TIMEOUT_S) -> list[dict[str, Any]]:
    """Run one SQL statement on ``dsn`` and return its rows as dicts (blocking).

    Runs on a fresh asyncio loop in a worker thread, so it is safe to call from anywhere.
    """
    limit = scaled(timeout)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-query") as pool:
        future = pool.submit(asyncio.run, _query(dsn, sql, args, limit))
        return future.result(timeout=limit * 3)


async def aquery(dsn: str, sql: str, *args: Any, timeout: float = SQL_TIMEOUT_S) -> list[dict[str, Any]]:
    """:func:`query` for async tests (trio or asyncio): runs in a worker thread."""
    return await anyio.to_thread.run_sync(lambda: query(dsn, sql, *args, timeout=timeout))


def execute(dsn: str, sql: str, *, timeout: float = SQL_TIMEOUT_S) -> None:
    """Run SQL that returns nothing useful (DDL, CREATE DATABASE)."""

    async def run() -> None:
        conn = await asyncpg.connect(dsn, timeout=scaled(timeout))
        try:
            await conn.execute(sql, timeout=scaled(timeout))
        finally:
            await conn.close(timeout=scaled(timeout))

    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-exec") as pool:
        pool.submit(asyncio.run, run()).result(timeout=scaled(timeout) * 3)


class PgServer:
    """A PostgreSQL server for the test session.

    ``embedded`` is set when the tests own the server (and can stop/start it).
    """

    def __init__(self, admin_dsn: str, embedded: EmbeddedPostgres | None, workdir: Path | None) -> None:
        self.admin_dsn = admin_dsn
        self.embedded = embedded
        self._workdir = workdir
        self._created: list[str] = []

    # -- databases ------------------------------------------------------------------
    def fresh_database(self, prefix: str) -> str:
        """Create a new, empty database whose name starts with ``prefix``; return its DSN."""
        clean = _DB_NAME.sub("_", prefix.lower()).strip("_")[:40] or "t"
        name = f"{clean}_{uuid.uuid4().hex[:10]}"
        execute(self.admin_dsn, f'CREATE DATABASE "{name}"')
        self._created.append(name)
        return _with_database(self.admin_dsn, name)

    @property
    def databases(self) -> list[str]:
        """Names of the databases this session created."""
        return list(self._created)

    # -- stop / start (embedded only) -----------------------------------------------
    @property
    def restartable(self) -> bool:
        return self.embedded is not None

    def require_restartable(self) -> EmbeddedPostgres:
        """The embedded server, or skip the calling test (cannot stop an external server)."""
        if self.embedded is None:
            pytest.skip("DATABASE_URL points at an external PostgreSQL: this test must stop and start the server")
        return self.embedded

    def stop(self) -> None:
        """Stop the embedded server (fast shutdown: clients are disconnected)."""
        self.require_restartable().stop("fast")

    def start(self) -> None:
        """Start the embedded server again, same port and data."""
        self.require_restartable().start()

    def is_running(self) -> bool:
        return self.embedded.is_running() if self.embedded is not None else True

    @property
    def log_file(self) -> Path | None:
        """The embedded server's own log (copied to artifacts at the end of the run)."""
        return self.embedded.log_file if self.embedded is not None else None

    # -- teardown -----------------------------------------------------------------------
    def close(self, artifacts: Path | None = None) -> None:
        """Destroy the embedded cluster (its log is kept under ``artifacts``); drop the
        databases made on an external server."""
        if self.embedded is not None:
            if artifacts is not None and self.embedded.log_file.exists():
                artifacts.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.embedded.log_file, artifacts / "postgres.log")
            self.embedded.destroy()
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
            return
        for name in self._created:
            execute(self.admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._created.clear()


def start_pg_server() -> PgServer:
    """``DATABASE_URL``'s server when set, else a new embedded cluster under /tmp."""
    external = os.environ.get("DATABASE_URL")
    if external:
        return PgServer(external, None, None)
    workdir = Path(tempfile.mkdtemp(prefix="tether-test-pg-", dir="/tmp"))
    # When the tests run as root the cluster runs as an unprivileged user whose group is
    # still root's, so the directory needs group *and* other traverse permission.
    workdir.chmod(0o711)
    embedded = EmbeddedPostgres(workdir / "data", free_port(), fast=True)
    try:
        embedded.start()
    except BaseException:
        embedded.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return PgServer(embedded.dsn("postgres"), embedded, workdir)
