"""The fuzz suite's wiring (the rules of ``tests/conftest.py`` apply here too).

* Importing :mod:`tests.fuzz.harness` registers Tether's schemathesis checks
  (``error_is_logged``, ``write_is_atomic``) and hooks for every schemathesis test of this
  directory, the auth-token suite included.
* The session-wide report (:data:`tests.fuzz.report.REPORT`) gets every failed test, and is
  written at the end to ``artifacts/fuzz/<run id>.json`` (and ``$TETHER_FUZZ_REPORT``),
  which ``python -m tests.fuzz.run`` prints.
* Budgets: ``TETHER_FUZZ_EXAMPLES`` (cases per operation / per generated scenario, default
  20 in the normal run) and ``TETHER_FUZZ_WS_EXAMPLES`` (per WebSocket scenario, default the
  same); ``just fuzz`` raises both.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pg import PgServer
from tests.support.session import Stack, StackFactory

from . import harness
from .report import REPORT, REPORT_ENV


@pytest.fixture(scope="session", autouse=True)
def fuzz_report(run_log_dir: Path, pg_server: PgServer) -> Iterator[None]:
    """Writes the report when the session ends (after the last fuzz test)."""
    yield
    harness.PROBE.close()
    # Beside the run's logs, not among them: the F07 scan of the logs must not read the
    # repro commands of failures, which carry the test's (throw-away) credentials.
    REPORT.write(run_log_dir.parent.parent / "fuzz" / f"{run_log_dir.name}.json")
    target = os.environ.get(REPORT_ENV)
    if target:
        REPORT.write(Path(target))


@pytest.fixture(scope="session")
def normal_stack(run_log_dir: Path, pg_server: PgServer) -> Iterator[Stack]:
    """auth-token + session, both in normal mode (failpoints off), on a database of their own.

    Shared by the suites that only send requests whose effect they snapshot around
    themselves (failpoint refusal, security); tests run one at a time, so nothing else
    writes between a snapshot and its request.
    """
    factory = StackFactory(pg_server, run_log_dir / "tests.fuzz.normal_stack")
    try:
        yield factory.start(session_env={"TETHER_TEST_MODE": "0"})
    finally:
        factory.close()


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Every failed fuzz test (setup, call or teardown) is a failure of the report too."""
    if not report.failed or not report.nodeid.startswith("tests/fuzz/"):
        return
    text = str(report.longrepr)
    lines = [line for line in text.splitlines() if line.startswith("E ")]
    last = text.strip().splitlines()[-1:] or ["failed"]
    title = (lines[0][1:].strip() if lines else last[0])[:200]
    REPORT.failure(
        "pytest",
        report.nodeid,
        f"pytest ({report.when})",
        title,
        text[-3000:],
        f"python -m pytest '{report.nodeid}'",
    )
