"""The one way the client tests let time pass on purpose.

:func:`pause` is for a sleep that *is* the behaviour under test (where a reconnect cuts a
prompt, events spread over a drain), never to wait for something: that is
``tests.support.waiting.await_until``.
"""

from __future__ import annotations

import trio


async def pause(seconds: float) -> None:
    """Let ``seconds`` of trio's clock pass."""
    await trio.sleep(seconds)  # sleep-ok: time passing is the behaviour under test (named helper)
