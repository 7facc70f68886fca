"""Tether's black-box test suite.  The rules every test here follows:

1. **Real things only.**  Services run as real subprocesses (``python -m <module>``) on
   real sockets against a real PostgreSQL: the embedded one (a throw-away cluster under
   ``/tmp``, fsync off) or the server ``DATABASE_URL`` names, with one fresh database per
   test module.  No mocks.
2. **Port 0 / free ports.**  Services listen on port 0 and the tests read the port from
   their ``{"event": "listening", "port": N}`` log line; the embedded Postgres takes a free
   port.  Nothing assumes a fixed port, so runs can go in parallel.
3. **A timeout on every I/O.**  Every HTTP client, SQL call, subprocess wait and poll has
   a timeout; pytest-timeout is the last resort, never the mechanism.
4. **No sleeps for synchronisation.**  Wait on a condition with a deadline
   (``tests.support.waiting.wait_until`` / ``await_until``; ``ServiceProcess.wait_ready``).
   Every sleep goes through a named helper of ``tests.support.waiting``: ``poll_pause`` /
   ``apoll_pause`` inside a polling loop with a deadline, ``pace`` where time passing is
   the behaviour under test (a heartbeat interval, a backoff, a quiet window).
5. **Timeouts scale** with ``TETHER_TEST_TIMEOUT_SCALE`` (e.g. 3 on a slow CI machine):
   use ``tests.support.waiting.scaled(seconds)`` for every timeout.
6. **Every process started is stopped, by its PID.**  ``ServiceProcess`` sends SIGTERM
   (SIGKILL if it hangs) to its own PID; fixtures stop what they start; an ``atexit``
   safety net and the session teardown kill anything left and fail loudly.  Never
   ``pkill``/``killall``.
7. **Logs are evidence.**  Each process writes stdout/stderr and its JSON log under
   ``artifacts/logs/<run id>/<test module>/`` (``TETHER_LOG_FILE``); the embedded
   Postgres log is copied there at the end.  Tests assert on log lines, not only on
   responses.
8. **Every response is checked against the contract** (``tests.support.contract``):
   documented status, content type, body schema and ``X-Request-ID``.
9. **Tests are named after the failure they prevent** (``test_F05_…``; see
   ``FAILURES.md``), and every test must be able to fail.
10. Async black-box tests use trio (``@pytest.mark.trio``) and httpx; in-process asyncio
    tests use ``@pytest.mark.anyio``.  All shared fixtures are synchronous.
"""

from __future__ import annotations

from tests.support.fixtures import (
    auth_factory,
    auth_service,
    log_dir,
    module_auth_factory,
    pg_server,
    restartable_pg,
    run_log_dir,
    spawn_service,
)
from tests.support.session_fixtures import module_stack_factory, stack, stack_factory

__all__ = [
    "auth_factory",
    "auth_service",
    "log_dir",
    "module_auth_factory",
    "module_stack_factory",
    "pg_server",
    "restartable_pg",
    "run_log_dir",
    "spawn_service",
    "stack",
    "stack_factory",
]
