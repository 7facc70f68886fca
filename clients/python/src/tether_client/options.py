"""The options of a session, in one frozen value (:class:`SessionOptions`)."""

from __future__ import annotations

import random as _random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from .closing import CloseCatalogue


@dataclass(frozen=True)
class SessionOptions:
    """How a session connects, retries and times out; every field has a working default.

    ``catalogue`` decides retry or stop (F32); by default the catalogue of the contract
    shipped in this package (pass ``await SessionHttp(url).close_codes()`` to use the one a
    service serves).  ``resume_from`` starts after that seq (default: live from now).
    ``max_reconnects``: consecutive failed attempts before :class:`TetherGaveUp` (default:
    never give up).  ``backoff_reset_s``: a connection up this long resets the backoff.
    ``batch``: ask for batched delivery in ``events`` frames.  ``random``: the jitter's
    source of floats in [0, 1).  A wait the server asks for (``retry_after_ms``,
    ``Retry-After``) is pacing, honoured up to ``max_retry_after_s`` plus jitter, and never
    counts towards ``max_reconnects``.
    """

    client_id: str = field(default_factory=lambda: f"py-{uuid.uuid4().hex[:16]}")
    origin: str | None = None  # sent as the Origin header of the upgrade
    resume_from: int | None = None
    catalogue: CloseCatalogue = field(default_factory=CloseCatalogue.bundled)
    backoff_base_s: float = 0.25
    backoff_cap_s: float = 15.0
    backoff_reset_s: float = 5.0
    max_reconnects: int | None = None
    max_retry_after_s: float = 60.0
    connect_timeout_s: float = 10.0
    ready_timeout_s: float = 10.0
    close_timeout_s: float = 2.0
    reauth_margin_s: float = 60.0
    event_buffer: int = 10_000
    batch: bool = True
    random: Callable[[], float] = _random.random

    @property
    def headers(self) -> list[tuple[bytes, bytes]] | None:
        return [(b"Origin", self.origin.encode())] if self.origin else None
