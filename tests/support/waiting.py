"""Waiting on conditions with deadlines; timeouts that scale with ``TETHER_TEST_TIMEOUT_SCALE``.

Tests never sleep to synchronise.  They poll a condition until it holds or a deadline
passes, and the failure message says what was awaited and what was last seen.  Every
sleep in the suite goes through one of three named helpers, so a reader (and a scan)
can tell a pause from a synchronisation:

* :func:`poll_pause` / :func:`apoll_pause`: the short pause between two checks of a
  condition inside a loop that has a deadline;
* :func:`pace`: time passing *is* the behaviour under test (a heartbeat interval, a
  reconnect backoff, a window in which nothing may happen, spreading load over time).

:func:`wait_until` is synchronous (fixtures, helpers); :func:`await_until` is the same for
async tests and runs on whichever loop anyio detects (trio in the black-box tests,
asyncio under ``@pytest.mark.anyio``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")

_SCALE_ENV = "TETHER_TEST_TIMEOUT_SCALE"


def timeout_scale() -> float:
    """The factor every test timeout is multiplied by (``TETHER_TEST_TIMEOUT_SCALE``, default 1)."""
    raw = os.environ.get(_SCALE_ENV, "").strip()
    if not raw:
        return 1.0
    value = float(raw)
    if value <= 0:
        raise ValueError(f"{_SCALE_ENV} must be > 0, got {raw!r}")
    return value


def scaled(seconds: float) -> float:
    """``seconds`` multiplied by the timeout scale: use it for every timeout in a test."""
    return seconds * timeout_scale()


POLL_S = 0.02


def poll_pause(interval: float = POLL_S) -> None:
    """The pause between two checks of a condition, inside a polling loop that has a deadline."""
    time.sleep(interval)  # sleep-ok: the pause between two checks of a polling loop with a deadline


async def apoll_pause(interval: float = POLL_S) -> None:
    """Async :func:`poll_pause` (trio or asyncio, through anyio)."""
    await anyio.sleep(interval)


async def pace(seconds: float) -> None:
    """Let ``seconds`` pass on purpose: the passing of time is the behaviour under test, never a way
    to wait for something to have happened (wait on the condition for that)."""
    await anyio.sleep(seconds)


class WaitTimeout(AssertionError):
    """A condition did not hold before its deadline (an assertion failure of the test)."""


def wait_until(
    condition: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = POLL_S,
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll ``condition`` until it returns a truthy value; return that value.

    ``timeout`` is scaled.  On timeout raise :class:`WaitTimeout` naming ``what``, the last
    value seen and ``describe()`` (e.g. a log tail).  Exceptions from ``condition`` propagate.
    """
    deadline = time.monotonic() + scaled(timeout)
    last: T | None = None
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() >= deadline:
            extra = f"\n{describe()}" if describe is not None else ""
            raise WaitTimeout(f"timed out after {scaled(timeout):.1f}s waiting for {what}; last value: {last!r}{extra}")
        poll_pause(interval)


async def await_until(
    condition: Callable[[], Awaitable[T]],
    *,
    timeout: float,
    what: str,
    interval: float = POLL_S,
    describe: Callable[[], str] | None = None,
) -> T:
    """Async :func:`wait_until`: await ``condition()`` until truthy, with a scaled deadline."""
    deadline = time.monotonic() + scaled(timeout)
    last: T | None = None
    while True:
        last = await condition()
        if last:
            return last
        if time.monotonic() >= deadline:
            extra = f"\n{describe()}" if describe is not None else ""
            raise WaitTimeout(f"timed out after {scaled(timeout):.1f}s waiting for {what}; last value: {last!r}{extra}")
        await apoll_pause(interval)
