"""Load shedding, counted and logged at a bounded rate (F25, F41).

A replica past its capacity answers at once (``overloaded`` with a retry hint) instead of
letting requests wait out their own timeouts.  Under overload the sheds come by the
thousand, so they are not logged one line each: :class:`ShedLog` counts every shed in
``tether_load_shed_total{reason}`` and writes at most one ``load_shed`` line per reason per
second, with the count since the previous line and a few request or connection ids as a
sample (each shed answer carries its own id, so a client's report can still be matched).

:class:`Pacer` spreads the retries: each shed caller is given the next free slot at the
configured capacity, so the wave of retries arrives at the rate the replica can serve,
not all at once.  Both are pure of I/O but for the log line; the clock is passed in.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter

from .logs import JsonLogger

LOG_INTERVAL_S = 1.0
SAMPLE_IDS = 5


@dataclass
class _Pending:
    count: int = 0
    since: float = 0.0
    sample: list[str] = field(default_factory=list)


class ShedLog:
    def __init__(self, log: JsonLogger, registry: CollectorRegistry) -> None:
        self.log = log
        self.total = Counter(
            "tether_load_shed_total", "Requests and connections shed by reason", ["reason"], registry=registry
        )
        self._pending: dict[str, _Pending] = {}

    def shed(self, reason: str, now: float, *, ref: str = "") -> None:
        """Count one shed; write the reason's line when its second is over."""
        self.total.labels(reason).inc()
        pending = self._pending.get(reason)
        if pending is None:
            pending = self._pending[reason] = _Pending(since=now - LOG_INTERVAL_S)
        pending.count += 1
        if ref and len(pending.sample) < SAMPLE_IDS:
            pending.sample.append(ref)
        if now - pending.since >= LOG_INTERVAL_S:
            self.log.warning("load_shed", reason=reason, count=pending.count, sample=pending.sample)
            self._pending[reason] = _Pending(since=now)

    def flush_due(self, now: float) -> None:
        """Write the count of every reason whose second is over (a burst's tail, when sheds stop)."""
        for reason, pending in list(self._pending.items()):
            if pending.count and now - pending.since >= LOG_INTERVAL_S:
                self.log.warning("load_shed", reason=reason, count=pending.count, sample=pending.sample)
                self._pending[reason] = _Pending(since=now)


class Pacer:
    """Hands out retry delays so that the retries arrive at ``capacity_per_s`` at most."""

    __slots__ = ("capacity_per_s", "next_slot", "rng")

    def __init__(self, capacity_per_s: float, rng: random.Random | None = None) -> None:
        if capacity_per_s <= 0:
            raise ValueError("capacity_per_s must be > 0")
        self.capacity_per_s = capacity_per_s
        self.next_slot = 0.0
        self.rng = rng or random.Random()

    def delay_ms(self, now: float, *, floor_ms: int = 100) -> int:
        """The retry delay for one shed caller arriving at ``now`` (seconds, monotonic)."""
        slot = max(now + floor_ms / 1000, self.next_slot)
        self.next_slot = slot + 1 / self.capacity_per_s
        jitter = self.rng.uniform(0, 1 / self.capacity_per_s)  # within the slot: never two on one instant
        return int((slot - now + jitter) * 1000)
