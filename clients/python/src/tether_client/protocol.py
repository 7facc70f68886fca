"""The session's client-side rules that are state, not frames: no I/O, no clock, no randomness
of its own (the random source is passed in).  :mod:`tether_client.session` wraps them with
trio; the unit tests drive them directly.

* :class:`Backoff`: exponential backoff with full jitter, capped; a server's
  ``retry_after_ms`` (or ``Retry-After``) is pacing: that wait plus jitter (:func:`paced_delay`).
* :class:`SeqTracker`: the resume cursor; classifies each event as deliver, duplicate
  (``seq <= last_seq``, dropped and counted) or gap (reconnect with resume) (F20-F22).
* :class:`Outbox`: prompts waiting for their ``prompt_ack``, re-sent on every new
  connection until acknowledged, and held back after a request-scoped refusal (F21).
* :func:`reauth_delay_s`: when to renew the session before it expires.

Frames are in :mod:`.frames`, close codes in :mod:`.closing`, agent conventions in :mod:`.agent`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from .frames import check_prompt_text

# -- backoff -------------------------------------------------------------------------------


@dataclass
class Backoff:
    """Exponential backoff with full jitter, capped (the browser client's rule).

    The n-th consecutive failure (n from 0) waits ``uniform(0, min(cap_s, base_s * 2**n))``;
    when the server said when to come back, :func:`paced_delay` of that instead.
    :meth:`reset` once a connection has stayed up a while.
    """

    base_s: float = 0.25
    cap_s: float = 15.0
    attempt: int = 0
    max_retry_after_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.base_s <= self.cap_s:
            raise ValueError("backoff needs 0 < base_s <= cap_s")

    def ceiling(self, attempt: int | None = None) -> float:
        n = self.attempt if attempt is None else attempt
        # 2**n overflows floats near n=1024; the cap is reached long before that.
        return min(self.cap_s, self.base_s * math.pow(2.0, min(n, 64)))

    def next_delay(self, random: Callable[[], float], retry_after_s: float | None = None) -> float:
        """The wait before the next attempt; ``random()`` returns a float in [0, 1)."""
        ceiling = self.ceiling()
        self.attempt += 1
        if retry_after_s:
            return paced_delay(retry_after_s, ceiling, random, self.max_retry_after_s)
        return random() * ceiling

    def reset(self) -> None:
        self.attempt = 0


def paced_delay(retry_after_s: float, ceiling_s: float, random: Callable[[], float], max_s: float) -> float:
    """The wait after being told when to come back: ``retry_after_s`` (at most ``max_s``)
    plus this client's jitter in ``[0, min(that, ceiling_s))``, so clients told the same
    value do not come back in one wave (the browser client's rule)."""
    told = min(max(0.0, retry_after_s), max_s)
    return told + random() * min(told, ceiling_s)


# -- sequence tracking (dedup, ordering, gaps) --------------------------------------------


class Verdict(Enum):
    DELIVER = "deliver"
    DUPLICATE = "duplicate"
    GAP = "gap"


@dataclass
class SeqTracker:
    """The resume cursor of one session.

    ``last_seq`` is the last sequence number delivered (``None`` before the first
    ``ready``, unless the caller starts from a known cursor).  Each event is delivered
    only when its seq is exactly ``last_seq + 1``: a smaller or equal seq is a duplicate
    (dropped, counted), a larger one is a gap (the caller reconnects with
    ``resume_from=last_seq``; nothing is delivered out of order).
    """

    last_seq: int | None = None
    duplicates: int = 0
    gaps: int = 0

    def on_ready(self, ready_resume_from: int) -> None:
        """Adopt the server's cursor when the client had none (a fresh start)."""
        if self.last_seq is None:
            self.last_seq = ready_resume_from

    def classify(self, seq: int) -> Verdict:
        if self.last_seq is None:
            raise RuntimeError("SeqTracker.classify before the first ready")
        if seq <= self.last_seq:
            return Verdict.DUPLICATE
        if seq != self.last_seq + 1:
            return Verdict.GAP
        return Verdict.DELIVER

    def accept(self, seq: int) -> Verdict:
        """Classify ``seq`` and update the cursor and counters."""
        verdict = self.classify(seq)
        if verdict is Verdict.DELIVER:
            self.last_seq = seq
        elif verdict is Verdict.DUPLICATE:
            self.duplicates += 1
        else:
            self.gaps += 1
        return verdict


# -- outbox --------------------------------------------------------------------------------


@dataclass
class PendingPrompt:
    client_msg_id: str
    text: str
    sent_on: int | None = None  # connection generation it was last sent on
    sends: int = 0
    not_before: float = 0.0  # clock time before which it is not sent (a refusal's pacing)
    refusals: int = 0


class Outbox:
    """Prompts sent but not yet acknowledged, in the order they were sent.

    Each connection has a generation number.  :meth:`unsent` lists the prompts not yet
    sent on the given generation: everything after a reconnect, only new prompts while
    connected.  A ``prompt_ack`` removes the prompt (:meth:`ack`); the server stores a
    retried prompt once (same ``client_msg_id``), so re-sending is safe.  A prompt the
    server refused for now (:meth:`defer`) is held until its ``not_before``, and the
    prompts behind it wait too, so the order is kept.
    """

    def __init__(self) -> None:
        self._items: OrderedDict[str, PendingPrompt] = OrderedDict()

    def add(self, client_msg_id: str, text: str) -> PendingPrompt:
        if client_msg_id in self._items:
            raise ValueError(f"client_msg_id {client_msg_id!r} is already pending")
        check_prompt_text(text)
        item = PendingPrompt(client_msg_id, text)
        self._items[client_msg_id] = item
        return item

    def unsent(self, generation: int, now: float = math.inf) -> list[PendingPrompt]:
        """In order, the prompts to send on ``generation`` at clock time ``now``."""
        due: list[PendingPrompt] = []
        for item in self._items.values():
            if item.sent_on == generation:
                continue
            if item.not_before > now:
                break
            due.append(item)
        return due

    def held_until(self, generation: int) -> float | None:
        """When the first prompt held back on ``generation`` becomes due (``None``: none is)."""
        for item in self._items.values():
            if item.sent_on != generation:
                return item.not_before
        return None

    def defer(self, client_msg_id: str, not_before: float) -> PendingPrompt | None:
        """The server refused the prompt for now: send it again at ``not_before``.
        ``None`` when it is not pending (acknowledged meanwhile)."""
        item = self._items.get(client_msg_id)
        if item is not None:
            item.sent_on = None
            item.not_before = not_before
            item.refusals += 1
        return item

    def mark_sent(self, client_msg_id: str, generation: int) -> None:
        item = self._items.get(client_msg_id)
        if item is not None:  # it may have been acknowledged meanwhile
            item.sent_on = generation
            item.sends += 1

    def ack(self, client_msg_id: str) -> PendingPrompt | None:
        """Remove and return the prompt; ``None`` when it is not pending (an old ack)."""
        return self._items.pop(client_msg_id, None)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, client_msg_id: object) -> bool:
        return client_msg_id in self._items


# -- session expiry ------------------------------------------------------------------------


def reauth_delay_s(server_now: datetime, expires_at: datetime, margin_s: float) -> float:
    """Seconds from now until a ``reauth`` should be sent.

    The margin is ``margin_s`` but at most a quarter of the remaining lifetime, so short
    test sessions still renew in time.  Never negative.
    """
    remaining = (expires_at - server_now).total_seconds()
    if remaining <= 0:
        return 0.0
    return max(0.0, remaining - min(margin_s, remaining / 4))
