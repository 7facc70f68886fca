"""Coalescing concurrent requests into batches: one statement or one HTTP call for many callers.

Each caller queues a waiter holding its own future and awaits it; a batch is taken from the
head of the queue when one of ``in_flight`` batch slots is free and handed to ``send``, which
must answer every waiter of its batch (set each future's result or exception) whatever
happens.  A waiter whose caller went away (its future is done: cancelled) is skipped, so a
batch not yet sent leaves it out.

Resource handling: batch tasks are started detached from the caller's log context
(:func:`tether_kit.tasks.detached`) and tracked; :meth:`Batcher.stop` stops taking new
batches, cancels the ones out (their ``send`` still answers their waiters) and waits for them.
The owner answers what is left in the queue.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

from .tasks import detached


class Waiter(Protocol):
    @property
    def future(self) -> asyncio.Future[Any]: ...


W = TypeVar("W", bound=Waiter)


class Batcher(Generic[W]):
    def __init__(
        self,
        send: Callable[[list[W]], Awaitable[None]],
        *,
        name: str,
        in_flight: int,
        fits: Callable[[list[W], W], bool],
        before_take: Callable[[], None] | None = None,
    ) -> None:
        self._send = send
        self._name = name
        self._slots = max(1, in_flight)
        self._fits = fits
        self._before_take = before_take  # e.g. refuse the waiters that waited too long
        self.queue: collections.deque[W] = collections.deque()
        self.in_flight: set[asyncio.Task[None]] = set()
        self.in_flight_waiters = 0
        self.stopping = False

    def submit(self, waiter: W) -> None:
        self.queue.append(waiter)
        self.dispatch()

    def dispatch(self) -> None:
        """Send what is queued, as long as a batch slot is free."""
        while self.queue and len(self.in_flight) < self._slots and not self.stopping:
            batch = self._take()
            if not batch:
                return
            self.in_flight_waiters += len(batch)
            task = detached(self._run(batch), name=self._name)
            self.in_flight.add(task)
            task.add_done_callback(self._done)

    def _take(self) -> list[W]:
        if self._before_take is not None:
            self._before_take()
        batch: list[W] = []
        while self.queue:
            waiter = self.queue[0]
            if waiter.future.done():  # its caller is gone: leave it out
                self.queue.popleft()
                continue
            if batch and not self._fits(batch, waiter):
                break
            batch.append(self.queue.popleft())
        return batch

    async def _run(self, batch: list[W]) -> None:
        try:
            await self._send(batch)
        finally:
            self.in_flight_waiters -= len(batch)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        self.dispatch()

    async def stop(self) -> None:
        self.stopping = True  # the batches ending below must not send the queued ones
        for task in list(self.in_flight):
            task.cancel()  # each send answers its waiters before it ends
        if self.in_flight:
            done, _pending = await asyncio.wait(set(self.in_flight))
            for task in done:
                error = None if task.cancelled() else task.exception()
                if error is not None:
                    raise error
