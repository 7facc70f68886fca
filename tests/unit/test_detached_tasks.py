"""F40: a task started from inside a connection's or request's log context does not inherit it."""

from __future__ import annotations

import asyncio

from tether_kit import logs
from tether_kit.tasks import detached


def test_F40_a_detached_task_starts_with_an_empty_log_context() -> None:
    async def main() -> tuple[dict[str, object], dict[str, object], dict[str, object]]:
        async def seen() -> dict[str, object]:
            return dict(logs.context())

        token = logs.enter(connection_id="c123", user_id="u1")
        try:
            plain = await asyncio.create_task(seen())
            clean = await detached(seen(), name="worker")
            here = dict(logs.context())
        finally:
            logs.leave(token)
        return plain, clean, here

    plain, clean, here = asyncio.run(main())
    assert plain["connection_id"] == "c123", "a plain task inherits the context (what detached exists to avoid)"
    assert "connection_id" not in clean
    assert "user_id" not in clean
    assert here["connection_id"] == "c123", "the caller's own context is untouched"
