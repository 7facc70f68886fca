"""This replica's live connections: the registry, admission, the per-user and per-IP counts, drain.

Resource handling: the replica owns the connections it admitted (as a trio nursery owns
its tasks): a connection registers when it starts and is released on every path when it
ends (F13); :meth:`Replica.drain` closes all of them with a jittered retryable
``draining`` and waits for their tasks, bounded.  The rules themselves (which refusal,
which ``retry_after_ms``) are :class:`~tether_session.protocol.Rules`; this module only
measures what they need.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Protocol

from tether_kit.logs import JsonLogger

from .load import Load
from .protocol import SessionError, Shed, TokenBucket
from .rules import Admission, Rules

# Per-IP connect buckets kept at most; beyond it the table starts again (a bound on memory, not a rule).
MAX_TRACKED_ADDRESSES = 10_000


class Member(Protocol):
    """What the replica needs of a connection it holds."""

    @property
    def id(self) -> str: ...

    @property
    def task(self) -> asyncio.Task[None] | None: ...

    def force_close(self, error: SessionError) -> None: ...


class Replica:
    def __init__(
        self,
        rules: Rules,
        log: JsonLogger,
        load: Load,
        *,
        ready: asyncio.Event,
        startup_wait_s: float,
        connects_per_ip_per_minute: int,
    ) -> None:
        self.rules = rules
        self.load = load
        self.log = log
        self.ready = ready
        self.startup_wait_s = startup_wait_s
        self.connects_per_ip_per_minute = connects_per_ip_per_minute
        self.draining = False
        self.connections: dict[str, Member] = {}
        self.user_connections: dict[uuid.UUID, int] = {}
        self._ip_buckets: dict[str, TokenBucket] = {}

    # -- admission ---------------------------------------------------------------------------------
    def shed(self, connection_id: str) -> Shed | None:
        """The load shed for a connection arriving now (a load signal over its limit), or None.

        Decided at once, with nothing awaited: a shed connection costs next to nothing.
        """
        shed = self.load.connect_refusal(connection_id)
        return self.rules.overloaded(*shed) if shed is not None else None

    async def admit(self, remote_addr: str) -> None:
        """Raise the refusal the rules give for a connection from ``remote_addr`` arriving now.

        A connection that arrives before readiness waits for it, bounded (F10).
        """
        ready = self.ready.is_set()
        if not ready:
            try:
                async with asyncio.timeout(self.startup_wait_s):
                    await self.ready.wait()
                ready = True
            except TimeoutError:
                ready = False  # the rules answer starting_up
        refusal = self.rules.admission(
            Admission(
                ready=ready,
                draining=self.draining,
                open_connections=len(self.connections),
                ip_allowed=self._ip_allowed(remote_addr),
            )
        )
        if refusal is not None:
            raise refusal

    def _ip_allowed(self, remote_addr: str) -> bool:
        bucket = self._ip_buckets.get(remote_addr)
        if bucket is None:
            if len(self._ip_buckets) >= MAX_TRACKED_ADDRESSES:
                self._ip_buckets.clear()
            bucket = self._ip_buckets[remote_addr] = TokenBucket.per_minute(self.connects_per_ip_per_minute)
        return bucket.take(time.monotonic())

    def add_user(self, user_id: uuid.UUID) -> None:
        """Count one more connection of ``user_id``, or raise the per-user refusal."""
        refusal = self.rules.user_admission(self.user_connections.get(user_id, 0))
        if refusal is not None:
            raise refusal
        self.user_connections[user_id] = self.user_connections.get(user_id, 0) + 1

    def remove_user(self, user_id: uuid.UUID) -> None:
        left = self.user_connections.get(user_id, 1) - 1
        if left > 0:
            self.user_connections[user_id] = left
        else:
            self.user_connections.pop(user_id, None)

    # -- registry ----------------------------------------------------------------------------------
    def register(self, member: Member) -> None:
        self.connections[member.id] = member

    def unregister(self, member: Member) -> None:
        self.connections.pop(member.id, None)

    # -- drain -------------------------------------------------------------------------------------
    async def drain(self, timeout_s: float) -> int:
        """SIGTERM: refuse new connections, close each open one with a jittered retryable ``draining``,
        wait for their tasks (at most ``timeout_s``).  Returns how many were closed."""
        self.draining = True
        count = len(self.connections)
        window = self.rules.limits.drain_window_ms
        self.log.info("drain_started", connections=count, window_ms=window)
        for member in list(self.connections.values()):
            member.force_close(SessionError("draining", retry_after_ms=self.rules.retry_after_ms(0, window)))
        tasks = {m.task for m in self.connections.values() if m.task is not None}
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
        return count
