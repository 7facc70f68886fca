"""Token issue, coalesced and admission-controlled.

Concurrent ``POST /v1/tokens`` on one replica leave together: :meth:`TokenIssuer.issue`
queues the request, and at most ``batches_in_flight`` batches are out at a time, each one
``issue_tokens`` statement for up to ``batch_max`` requests.  A request that finds a free
slot goes out at once (alone, when nothing else waits); the ones arriving while every slot
is busy leave together in the next batch.  Under a storm one statement then carries tens
of requests: one round trip, one commit, one lock of each user's row.

Admission: a request arriving while ``max_pending`` requests are already queued or in
flight is refused at once (:class:`Overloaded` ``issue_pending``): the bound is the number
the replica issues within the wait a client should accept.  A queued request that has
waited ``max_wait_s`` (the database slowed down) is refused then (``issue_wait``, a timer
sees to it even while every batch is stuck), rather than issued a token late; and a batch
whose statement has not answered within ``statement_timeout_s`` is cancelled and its
requests answered 503 ``dependency_unavailable``.  No request waits on the database longer
than those bounds for its answer.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter

from tether_kit import logs
from tether_kit.batching import Batcher
from tether_kit.db import Database, is_connectivity_error
from tether_kit.errors import DependencyUnavailable, TetherError

from . import store


class Overloaded(Exception):
    """The request was not admitted; ``reason`` names the bound it hit."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Limits:
    batches_in_flight: int
    batch_max: int
    max_pending: int
    max_wait_s: float
    statement_timeout_s: float
    retry_after_max_s: int


@dataclass(frozen=True)
class _Waiter:
    request: store.IssueRequest
    queued_at: float
    future: asyncio.Future[store.IssueOutcome]


class TokenIssuer:
    def __init__(
        self, db: Database, log: logs.JsonLogger, *, ttl_s: int, per_minute: int, limits: Limits, batches: Counter
    ) -> None:
        self.db, self.log, self.limits, self.batches = db, log, limits, batches
        self.token = (ttl_s, per_minute)  # what every issued token gets: its lifetime, its user's cap
        self._batcher: Batcher[_Waiter] = Batcher(
            self._send,
            name="token-issue-batch",
            in_flight=limits.batches_in_flight,
            fits=lambda batch, _waiter: len(batch) < limits.batch_max,
            before_take=self._refuse_expired,  # the queue is in arrival order: only its head can be too old
        )
        self._queue = self._batcher.queue
        self._expiry: asyncio.TimerHandle | None = None

    @property
    def pending(self) -> int:
        """Requests admitted and not yet answered: queued, or in a batch that is out."""
        return len(self._queue) + self._batcher.in_flight_waiters

    def retry_after_s(self) -> int:
        """Spread over 1..retry_after_max_s, so that the refused do not come back as one wave."""
        return random.randint(1, max(1, self.limits.retry_after_max_s))

    async def issue(self, request: store.IssueRequest) -> store.IssueOutcome:
        if self._batcher.stopping:
            raise DependencyUnavailable("auth-token", "the replica is stopping", 1)
        if self.pending >= self.limits.max_pending:
            raise Overloaded("issue_pending", f"{self.pending} token requests are already waiting on this replica")
        future: asyncio.Future[store.IssueOutcome] = asyncio.get_running_loop().create_future()
        self._batcher.submit(_Waiter(request, time.monotonic(), future))
        if self._queue and self._expiry is None:
            self._expiry = asyncio.get_running_loop().call_later(self.limits.max_wait_s, self._expire)
        # A caller cancelled here cancels its future: a batch not yet sent leaves it out.
        return await future

    async def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        await self._batcher.stop()
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(DependencyUnavailable("auth-token", "the replica is stopping", 1))

    def _expire(self) -> None:
        """Refuse the queued requests that have waited ``max_wait_s``; re-armed for the next one."""
        self._expiry = None
        self._refuse_expired()
        if self._queue:
            due = self._queue[0].queued_at + self.limits.max_wait_s - time.monotonic()
            self._expiry = asyncio.get_running_loop().call_later(max(due, 0.001), self._expire)

    def _refuse_expired(self) -> None:
        too_old = time.monotonic() - self.limits.max_wait_s
        while self._queue and (self._queue[0].future.done() or self._queue[0].queued_at <= too_old):
            waiter = self._queue.popleft()
            if not waiter.future.done():  # else its caller is gone
                waiter.future.set_exception(
                    Overloaded("issue_wait", f"waited {self.limits.max_wait_s:g} s for the database")
                )

    async def _send(self, batch: list[_Waiter]) -> None:
        """One statement for ``batch``; every waiter gets its own answer, whatever happens."""
        try:
            async with self.db.connection() as conn:
                outcomes = await store.issue_tokens(
                    conn,
                    [w.request for w in batch],
                    *self.token,
                    timeout=self.limits.statement_timeout_s,
                )
        except asyncio.CancelledError:
            self._fail(batch, lambda: DependencyUnavailable("auth-token", "the replica is stopping", 1))
            raise
        except Exception as exc:
            if is_connectivity_error(exc) or isinstance(exc, DependencyUnavailable):
                detail = (
                    f"the database did not answer within {self.limits.statement_timeout_s:g} s"
                    if isinstance(exc, TimeoutError)
                    else f"database error: {type(exc).__name__}"
                )
                self._fail(batch, lambda: DependencyUnavailable("postgres", detail))
            else:
                self.log.exception("token_issue_batch_failed", exc, requests=len(batch))
                self._fail(batch, lambda: TetherError("internal_error", "issuing the connection token failed"))
            return
        self.batches.inc()
        for waiter, outcome in zip(batch, outcomes, strict=True):
            if not waiter.future.done():  # else cancelled while out: its token expires unused
                waiter.future.set_result(outcome)

    @staticmethod
    def _fail(batch: list[_Waiter], error: Callable[[], Exception]) -> None:
        for waiter in batch:
            if not waiter.future.done():
                waiter.future.set_exception(error())
