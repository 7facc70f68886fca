"""Group commit for the event log.

Every append used to be its own transaction, so each one waited for its own WAL flush,
and appends to one project also queued on that project's row lock: with ``fsync`` on,
one project took a few hundred appends per second whatever the hardware.  Here
concurrent appends, whether ingest requests or prompts, are queued and written by one worker
in a single transaction: one flush for the whole group.

* Items are grouped by project and applied in project-id order (a fixed lock order).
  Each project gets its own savepoint, so a failure (a deleted project, say) fails only
  that project's items; the rest of the group commits.
* Per project, the items' events go to :func:`store.append_events` as one list, so
  idempotency by ``event_id`` holds across the requests of a group too (a duplicate gets
  the seq of the copy stored first).
* An item may carry ``after(conn, results)``, run inside its project's savepoint, for
  writes that must commit with its events (a prompt's agent job).
* Each caller awaits its own future; results are handed back in order.  A group is
  bounded (``max_events``); what is left waits for the next round.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from tether_kit.db import Connection, Database
from tether_kit.logs import JsonLogger

from . import store

After = Callable[[Connection, list[store.Appended]], Awaitable[None]]


@dataclass
class _Item:
    project_id: uuid.UUID
    events: Sequence[store.NewEvent]
    after: After | None
    future: asyncio.Future[list[store.Appended]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def _no_failpoint(_name: str) -> None:
    return None


class Appender:
    def __init__(self, db: Database, log: JsonLogger, *, max_events: int = 5000) -> None:
        self.db = db
        self.log = log
        self.max_events = max_events
        self._queue: list[_Item] = []
        self._worker: asyncio.Task[None] | None = None
        self.groups = 0
        self.items = 0

    async def append(
        self, project_id: uuid.UUID, events: Sequence[store.NewEvent], *, after: After | None = None
    ) -> list[store.Appended]:
        item = _Item(project_id, events, after)
        self._queue.append(item)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="appender")
        return await item.future

    async def close(self) -> None:
        if self._worker is not None and not self._worker.done():
            await asyncio.wait({self._worker})

    def _take(self) -> list[_Item]:
        taken: list[_Item] = []
        count = 0
        while self._queue and (not taken or count + len(self._queue[0].events) <= self.max_events):
            item = self._queue.pop(0)
            count += len(item.events)
            taken.append(item)
        return taken

    async def _run(self) -> None:
        while self._queue:
            group = [item for item in self._take() if not item.future.done()]
            if group:
                await self._commit(group)

    async def _commit(self, group: list[_Item]) -> None:
        by_project: dict[uuid.UUID, list[_Item]] = {}
        for item in group:
            by_project.setdefault(item.project_id, []).append(item)
        outcomes: dict[uuid.UUID, list[store.Appended] | BaseException] = {}
        try:
            async with self.db.transaction() as conn:
                for project_id in sorted(by_project):
                    items = by_project[project_id]
                    try:
                        async with conn.transaction():  # a savepoint per project
                            events = [e for item in items for e in item.events]
                            results, _ = await store.append_events(conn, project_id, events, _no_failpoint)
                            start = 0
                            for item in items:
                                mine = results[start : start + len(item.events)]
                                start += len(item.events)
                                if item.after is not None:
                                    await item.after(conn, mine)
                            outcomes[project_id] = results
                    except Exception as exc:  # noqa: BLE001 - handed to this project's callers, who raise it
                        outcomes[project_id] = exc
        except BaseException as exc:  # the commit itself failed: every item of the group fails
            for item in group:
                if not item.future.done():
                    item.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("append cancelled"))
            if not isinstance(exc, Exception):
                raise
            return
        self.groups += 1
        self.items += len(group)
        for project_id, items in by_project.items():
            outcome = outcomes[project_id]
            start = 0
            for item in items:
                if item.future.done():
                    start += len(item.events)
                    continue
                if isinstance(outcome, BaseException):
                    item.future.set_exception(outcome)
                else:
                    item.future.set_result(outcome[start : start + len(item.events)])
                start += len(item.events)
