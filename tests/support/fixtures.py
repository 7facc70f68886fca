"""pytest fixtures shared by the black-box suites (registered in ``tests/conftest.py``).

All fixtures are synchronous, so they serve trio tests (``@pytest.mark.trio``), asyncio
tests (``@pytest.mark.anyio``) and plain tests alike.

===================  =======  =========================================================
fixture              scope    what it gives
===================  =======  =========================================================
``run_log_dir``      session  ``artifacts/logs/<run id>/``: every log of this run
``pg_server``        session  :class:`~tests.support.pg.PgServer` (embedded or DATABASE_URL)
``restartable_pg``   function ``pg_server``, or skip the test when it is external (cannot stop it)
``log_dir``          module   ``<run_log_dir>/<test module>/``
``spawn_service``    function start any ``python -m <module>`` service; stopped after the test
``auth_factory``     function :class:`~tests.support.auth.AuthServiceFactory` (per test)
``module_auth_factory`` module the same, for module-scoped instances
``auth_service``     module   one running auth-token instance, fresh database, test mode off
===================  =======  =========================================================
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from .auth import AuthService, AuthServiceFactory
from .contract import REPO_ROOT
from .pg import PgServer, start_pg_server
from .procs import ServiceProcess, stop_all
from .secrets import find_leaks, remembered

ARTIFACTS = Path(os.environ.get("TETHER_ARTIFACTS_DIR", REPO_ROOT / "artifacts"))

SpawnService = Callable[..., ServiceProcess]


@pytest.fixture(scope="session")
def run_log_dir() -> Iterator[Path]:
    """A directory for this run's logs (one per pytest process, so parallel runs never mix)."""
    run_id = f"{dt.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"
    path = ARTIFACTS / "logs" / run_id
    path.mkdir(parents=True, exist_ok=True)
    yield path
    leftovers = stop_all()
    if leftovers:
        raise AssertionError(f"processes left running by the tests were killed: {leftovers}")
    # F07/F40: no token, API key, session cookie or service secret that any test of this
    # run saw may appear in any log line or output file any service wrote during the run.
    leaks = find_leaks((f for f in path.rglob("*") if f.is_file()), remembered())
    if leaks:
        raise AssertionError(f"secrets found in service logs of this run: {leaks[:20]}")


@pytest.fixture(scope="session")
def pg_server(run_log_dir: Path) -> Iterator[PgServer]:
    server = start_pg_server()
    try:
        yield server
    finally:
        server.close(artifacts=run_log_dir)


@pytest.fixture
def restartable_pg(pg_server: PgServer) -> Iterator[PgServer]:
    """``pg_server`` for a test that stops and starts it; skipped on an external server.

    Whatever the test does, the server is running again afterwards.
    """
    pg_server.require_restartable()
    try:
        yield pg_server
    finally:
        if not pg_server.is_running():
            pg_server.start()


@pytest.fixture(scope="module")
def log_dir(request: pytest.FixtureRequest, run_log_dir: Path) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.module.__name__)
    path = run_log_dir / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def spawn_service(log_dir: Path) -> Iterator[SpawnService]:
    """``spawn_service(module, env, name=...) -> ServiceProcess`` (started, not yet ready).

    Every process is stopped (SIGTERM, by PID) when the test ends.
    """
    started: list[ServiceProcess] = []

    def spawn(module: str, env: Mapping[str, str], *, name: str | None = None) -> ServiceProcess:
        proc = ServiceProcess(module, env, name=name or module.replace(".", "-"), log_dir=log_dir)
        started.append(proc)
        return proc.start()

    yield spawn
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
def auth_factory(pg_server: PgServer, log_dir: Path) -> Iterator[AuthServiceFactory]:
    factory = AuthServiceFactory(pg_server, log_dir)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def module_auth_factory(pg_server: PgServer, log_dir: Path) -> Iterator[AuthServiceFactory]:
    factory = AuthServiceFactory(pg_server, log_dir)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def auth_service(module_auth_factory: AuthServiceFactory) -> AuthService:
    """A running auth-token service on a fresh database: test mode off, one known service key."""
    return module_auth_factory.start()
