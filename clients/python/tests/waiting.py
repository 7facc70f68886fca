"""Waiting on a condition with a deadline, for the SDK's tests (tests never sleep to synchronise).

:func:`until` polls a condition of the test's own state (the fake server's records, the
session's counters) on trio's clock; its pause between polls is the only sleep in these tests.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

POLL_INTERVAL_S = 0.005


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Return once ``condition()`` holds; ``trio.TooSlowError`` after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while True:
            if condition():
                return
            await trio.sleep(POLL_INTERVAL_S)  # sleep-ok: pause inside a polling loop with a deadline
