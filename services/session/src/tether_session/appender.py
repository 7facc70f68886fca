"""Group commit for the event log.

An append in a transaction of its own waits for its own WAL flush, and appends to one
project also queue on that project's row lock: with ``fsync`` on, one project would take a
few hundred appends per second whatever the hardware.  So concurrent appends, whether
ingest requests or prompts, are queued and written by one worker in a single
transaction: one flush for the whole group.

* Items are grouped by project and applied in project-id order (a fixed lock order).
  Per project, the items' events go to the log's append function as one list, so
  idempotency by ``event_id`` holds across the requests of a group too (a duplicate gets
  the seq of the copy stored first).
* A group of plain appends is one round trip: one statement per project, pipelined in one
  implicit transaction (``fetchmany``: every Bind/Execute, then one Sync).  A project that
  does not exist fails only its own items (the function says so in its row, nothing raises);
  if the batch fails otherwise, each project is retried on its own, so one project's failure
  cannot fail the others.
* An item may carry ``after(conn, results)`` for writes that must commit with its events (a
  prompt's agent job).  A group with one runs in a transaction with a savepoint per project:
  a failure fails only that project's items.
* After the commit, the events stored are handed to ``on_commit`` (the replica's fan-out hub)
  before any caller is answered: this replica's subscribers get them without a read back.
* Each caller awaits its own future; results are handed back in order.  A group is
  bounded (``max_events``); what is left waits for the next round.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from tether_kit.db import Connection, Database, is_connectivity_error
from tether_kit.errors import DependencyUnavailable
from tether_kit.logs import JsonLogger
from tether_kit.tasks import detached

from . import store

After = Callable[[Connection, list[store.Appended]], Awaitable[None]]
OnCommit = Callable[[uuid.UUID, list[store.StoredEvent]], None]
Outcome = store.Batch | BaseException


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
    def __init__(
        self, db: Database, log: JsonLogger, *, on_commit: OnCommit | None = None, max_events: int = 5000
    ) -> None:
        self.db = db
        self.log = log
        self.on_commit = on_commit
        self.max_events = max_events
        self._queue: list[_Item] = []
        self._worker: asyncio.Task[None] | None = None

    async def append(
        self, project_id: uuid.UUID, events: Sequence[store.NewEvent], *, after: After | None = None
    ) -> list[store.Appended]:
        item = _Item(project_id, events, after)
        self._queue.append(item)
        if self._worker is None or self._worker.done():
            self._worker = detached(self._run(), name="appender")
        return await item.future

    @property
    def queued(self) -> int:
        """Appends waiting for the next group commit (a load signal)."""
        return len(self._queue)

    def committed(self, project_id: uuid.UUID, stored: list[store.StoredEvent]) -> None:
        """Hand events just committed (by any writer of this replica) to ``on_commit``.

        A failure here loses nothing: the NOTIFY of the same commit makes every feed read them.
        """
        if not stored or self.on_commit is None:
            return
        try:
            self.on_commit(project_id, stored)
        except Exception as exc:  # logged; the NOTIFY path delivers these events
            self.log.exception("local_push_failed", exc, project_id=str(project_id), events=len(stored))

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
        for item in sorted(group, key=lambda i: i.project_id):  # stable: a project's items keep their order
            by_project.setdefault(item.project_id, []).append(item)
        try:
            if any(item.after is not None for item in group):
                outcomes = await self._in_savepoints(by_project)
            else:
                outcomes = await self._pipelined(by_project)
        except BaseException as exc:  # the commit itself failed: every item of the group fails
            for item in group:
                if not item.future.done():
                    item.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("append cancelled"))
            if not isinstance(exc, Exception):
                raise
            return
        for project_id, outcome in outcomes.items():
            if isinstance(outcome, store.Batch):
                self.committed(project_id, outcome.stored)
        for project_id, items in by_project.items():
            outcome = outcomes[project_id]
            start = 0
            for item in items:
                if not item.future.done():
                    if isinstance(outcome, BaseException):
                        item.future.set_exception(outcome)
                    else:
                        item.future.set_result(outcome.results[start : start + len(item.events)])
                start += len(item.events)

    async def _pipelined(self, by_project: dict[uuid.UUID, list[_Item]]) -> dict[uuid.UUID, Outcome]:
        args = {
            project_id: store.append_args(project_id, [e for item in items for e in item.events])
            for project_id, items in by_project.items()
        }
        async with self.db.connection() as conn:
            if len(args) == 1:
                ((project_id, one),) = args.items()
                return {project_id: self._outcome(one, await conn.fetchrow(store.APPEND_SQL, *one))}
            try:
                rows = await conn.fetchmany(store.APPEND_SQL, list(args.values()))
            except Exception as exc:
                if isinstance(exc, DependencyUnavailable) or is_connectivity_error(exc):
                    raise
                self.log.warning("append_group_failed", projects=len(args), reason=f"{type(exc).__name__}: {exc}"[:200])
                return {project_id: await self._alone(conn, a) for project_id, a in args.items()}
        return {project_id: self._outcome(a, row) for (project_id, a), row in zip(args.items(), rows, strict=True)}

    async def _alone(self, conn: Connection, args: store.AppendArgs) -> Outcome:
        try:
            return store.append_outcome(args, await conn.fetchrow(store.APPEND_SQL, *args))
        except Exception as exc:  # noqa: BLE001 - handed to this project's callers, who raise it
            return exc

    @staticmethod
    def _outcome(args: store.AppendArgs, row: object) -> Outcome:
        try:
            return store.append_outcome(args, row)
        except Exception as exc:  # noqa: BLE001 - not_found: handed to this project's callers, who raise it
            return exc

    async def _in_savepoints(self, by_project: dict[uuid.UUID, list[_Item]]) -> dict[uuid.UUID, Outcome]:
        outcomes: dict[uuid.UUID, Outcome] = {}
        async with self.db.transaction() as conn:
            for project_id, items in by_project.items():
                try:
                    async with conn.transaction():  # a savepoint per project
                        events = [e for item in items for e in item.events]
                        batch = await store.append_events(conn, project_id, events, _no_failpoint)
                        start = 0
                        for item in items:
                            mine = batch.results[start : start + len(item.events)]
                            start += len(item.events)
                            if item.after is not None:
                                await item.after(conn, mine)
                        outcomes[project_id] = batch
                except Exception as exc:  # noqa: BLE001 - handed to this project's callers, who raise it
                    outcomes[project_id] = exc
        return outcomes
