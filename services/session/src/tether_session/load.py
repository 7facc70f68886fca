"""What this replica can measure cheaply about its own load, and whether it must shed (issue: overload).

Signals, each against a configured limit (``TETHER_SHED_*``, derived from the benchmark's
measured capacity, see the README's Capacity section):

* ``loop_lag``: how late the event loop runs a timer, sustained (a probe every ``PROBE_S``; the
  *smallest* lag of the last ``PROBES_KEPT`` probes, so one pause — a GC, one slow callback —
  does not trip it, and a loop that is late on every probe does).  Every task on the replica
  waits at least that long, so past the limit new work only makes everyone later.
* ``handshakes``: connections accepted but not yet ready (INIT being authenticated).  Each
  costs a token consume and a project read; a connect storm piles them up.
* ``append_queue``: appends waiting for the group commit (ingest and prompts).

A new connection is refused (``overloaded``, 4503) when ``loop_lag`` or ``handshakes`` is over
(a deep append queue slows writes, not reads: a connection that only reads is still served);
ingest is answered 503 ``overloaded`` when ``loop_lag`` or ``append_queue`` is over; a prompt
gets a request-scoped refusal on the same two.  The retry delay comes from the :class:`Pacer`
(spread at the configured connect capacity), never a fixed value.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge

from tether_kit.shedding import Pacer, ShedLog

PROBE_S = 0.05
PROBES_KEPT = 10  # the lag signal: late on every probe of the last half second (at least)


@dataclass(frozen=True)
class ShedLimits:
    loop_lag_ms: float
    handshakes: int
    append_queue: int
    connect_capacity_per_s: float
    ingest_capacity_per_s: float


class Load:
    def __init__(
        self,
        limits: ShedLimits,
        shed_log: ShedLog,
        registry: CollectorRegistry,
        *,
        append_queue: Callable[[], int],
    ) -> None:
        self.limits = limits
        self.shed_log = shed_log
        self.handshakes = 0
        self._append_queue = append_queue
        self._lags: collections.deque[float] = collections.deque([0.0], maxlen=PROBES_KEPT)
        self.connect_pacer = Pacer(limits.connect_capacity_per_s)
        self.ingest_pacer = Pacer(limits.ingest_capacity_per_s)
        self.shedding = Gauge(
            "tether_load_shedding", "1 while the signal is over its limit", ["signal"], registry=registry
        )
        self.lag_gauge = Gauge(
            "tether_event_loop_lag_seconds", "Sustained event-loop lag (least of the recent probes)", registry=registry
        )

    # -- signals -----------------------------------------------------------------------------------
    @property
    def loop_lag_ms(self) -> float:
        return min(self._lags) * 1000

    def over(self, *signals: str) -> str | None:
        """The first of ``signals`` that is over its limit now, or None."""
        for signal in signals:
            if signal == "loop_lag" and self.loop_lag_ms > self.limits.loop_lag_ms:
                return signal
            if signal == "handshakes" and self.handshakes >= self.limits.handshakes:
                return signal
            if signal == "append_queue" and self._append_queue() >= self.limits.append_queue:
                return signal
        return None

    async def probe(self) -> None:
        """Measure the event loop's lag for as long as the replica runs."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(PROBE_S)
            self._lags.append(max(0.0, loop.time() - started - PROBE_S))
            self.refresh()

    def refresh(self) -> None:
        self.lag_gauge.set(self.loop_lag_ms / 1000)
        for signal in ("loop_lag", "handshakes", "append_queue"):
            self.shedding.labels(signal).set(1 if self.over(signal) else 0)
        self.shed_log.flush_due(time.monotonic())

    # -- decisions ---------------------------------------------------------------------------------
    def connect_refusal(self, ref: str) -> tuple[str, int] | None:
        """(signal, retry_after_ms) when a new connection must be shed now."""
        return self._shed("connect", ref, self.over("loop_lag", "handshakes"), self.connect_pacer)

    def write_refusal(self, kind: str, ref: str) -> tuple[str, int] | None:
        """(signal, retry_after_ms) when an ingest request or a prompt must be shed now."""
        return self._shed(kind, ref, self.over("loop_lag", "append_queue"), self.ingest_pacer)

    def _shed(self, kind: str, ref: str, signal: str | None, pacer: Pacer) -> tuple[str, int] | None:
        if signal is None:
            return None
        now = time.monotonic()
        self.shed_log.shed(f"{kind}:{signal}", now, ref=ref)
        return signal, pacer.delay_ms(now)
