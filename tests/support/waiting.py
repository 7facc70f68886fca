"""Waiting on conditions with deadlines; timeouts that scale with ``TETHER_TEST_TIMEOUT_SCALE``.

Tests never sleep to synchronise.  They poll a condition until it holds or a deadline
passes, and the failure message says what was awaited and what was last seen.  The only
sleeps are the short pauses *inside* these polling loops.

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


class WaitTimeout(AssertionError):
    """A condition did not hold before its deadline (an assertion failure of the test)."""


def wait_until(
    condition: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.02,
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
        time.sleep(interval)  # noqa: sleep-ok (pause inside a polling loop with a deadline)


async def await_until(
    condition: Callable[[], Awaitable[T]],
    *,
    timeout: float,
    what: str,
    interval: float = 0.02,
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
        await anyio.sleep(interval)  # noqa: sleep-ok (pause inside a polling loop with a deadline)
