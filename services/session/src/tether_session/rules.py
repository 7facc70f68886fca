"""The session rules: whether a connection may start, go on, resume.  No I/O, no clock, no sockets.

Each rule is a function of plain values that the caller measured: admission of a new
connection (:data:`ADMISSION_CHECKS`, in order), the per-user cap, a token bound to another
project, a reauth, the Origin, the resume cursor and the retention gap, which close a
dependency failure gets (:data:`DEPENDENCY_CLOSES`), and the shape of a load shed.
Randomness (the jitter of ``retry_after_ms``) comes from a :class:`random.Random` the caller
owns, so tests can seed it.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from .protocol import CloseCatalogue, Limits, SessionError, Shed


@dataclass(frozen=True)
class Admission:
    """What the replica measured when a connection arrived (after its bounded wait for readiness).

    ``open_connections`` counts the open connections, the arriving one included.
    """

    ready: bool
    draining: bool
    open_connections: int
    ip_allowed: bool


@dataclass(frozen=True)
class AdmissionCheck:
    """One admission rule: when ``refuses`` holds, the connection is closed with ``name``."""

    name: str
    refuses: Callable[[Admission, Limits], bool]
    detail: str
    retry_after_ms: Callable[[Limits], tuple[int, int]]  # the jitter range


ADMISSION_CHECKS: tuple[AdmissionCheck, ...] = (
    AdmissionCheck("starting_up", lambda a, _l: not a.ready, "the replica is starting up", lambda _l: (500, 2000)),
    AdmissionCheck(
        "draining", lambda a, _l: a.draining, "the replica is draining", lambda lim: (100, lim.drain_window_ms)
    ),
    AdmissionCheck(
        "overloaded",
        lambda a, lim: a.open_connections > lim.max_connections,
        "the replica holds its maximum number of connections",
        lambda _l: (1000, 5000),
    ),
    AdmissionCheck(
        "rate_limited",
        lambda a, _l: not a.ip_allowed,
        "too many connection attempts from this address",
        lambda _l: (1000, 5000),
    ),
)
"""Checked in this order when a connection arrives; the first that refuses closes it."""

DEPENDENCY_CLOSES: dict[str, str] = {"postgres": "database_unavailable", "auth-token": "auth_unavailable"}
"""Which catalogue entry a failed dependency gets (both retryable, with a jittered retry_after_ms)."""


def jitter(rng: random.Random, low: int, high: int) -> int:
    return rng.randint(low, max(low, high))


class Rules:
    """The session rules of one replica: pure, the caller passes what it measured."""

    __slots__ = ("catalogue", "limits", "rng")

    def __init__(self, catalogue: CloseCatalogue, limits: Limits, rng: random.Random | None = None) -> None:
        self.catalogue = catalogue
        self.limits = limits
        self.rng = rng or random.Random()

    def retry_after_ms(self, low: int, high: int) -> int:
        return jitter(self.rng, low, high)

    def admission(self, measured: Admission) -> SessionError | None:
        for check in ADMISSION_CHECKS:
            if check.refuses(measured, self.limits):
                low, high = check.retry_after_ms(self.limits)
                return SessionError(check.name, check.detail, retry_after_ms=self.retry_after_ms(low, high))
        return None

    def user_admission(self, open_for_user: int) -> SessionError | None:
        if open_for_user >= self.limits.max_connections_per_user:
            return SessionError(
                "too_many_connections",
                f"this user holds {open_for_user} connections on this replica",
                retry_after_ms=self.retry_after_ms(1000, 5000),
            )
        return None

    @staticmethod
    def token_binding(token_project: uuid.UUID | None, project: uuid.UUID) -> SessionError | None:
        if token_project is not None and token_project != project:
            return SessionError("forbidden", "this token is bound to another project")
        return None

    @staticmethod
    def reauth(
        token_user: uuid.UUID, token_project: uuid.UUID | None, user: uuid.UUID, project: uuid.UUID
    ) -> SessionError | None:
        if token_user != user or token_project not in (None, project):
            return SessionError("forbidden", "the reauth token is for another user or project")
        return None

    @staticmethod
    def overloaded(signal: str, retry_after_ms: int) -> Shed:
        """A connection or a request shed because the replica's ``signal`` is over its limit."""
        return Shed(
            "overloaded",
            f"the replica is overloaded ({signal}); retry after {retry_after_ms} ms",
            retry_after_ms=retry_after_ms,
            log_fields={"signal": signal},
        )

    def dependency_failure(self, dependency: str, detail: str) -> SessionError:
        return SessionError(
            DEPENDENCY_CLOSES.get(dependency, "internal_error"),
            detail,
            retry_after_ms=self.retry_after_ms(500, 2000),
            log_fields={"dependency": dependency},
        )


def origin_refusal(origin: str | None, allowed: frozenset[str], *, required: bool) -> str | None:
    """Why a WebSocket upgrade from ``origin`` is refused before accept (F07), or None when it may connect."""
    if origin is None:
        return "an Origin header is required" if required else None
    if origin in allowed:
        return None
    return f"origin {origin[:100]} is not allowed"


def retention_gap(after: int, first_seq: int | None) -> str | None:
    """Why the events after ``after`` cannot all be read (the log was pruned below them), or None."""
    if first_seq is not None and after < first_seq - 1:
        return f"events before seq {first_seq} are no longer retained"
    return None


def resume_cursor(resume_from: int | None, last_seq: int, first_seq: int | None) -> int:
    """Where delivery starts: after ``resume_from`` when given (it must be inside the log), else at the head."""
    if resume_from is None:
        return last_seq
    if resume_from > last_seq:
        raise SessionError("resume_unavailable", f"resume_from {resume_from} is beyond the log's last seq {last_seq}")
    gap = retention_gap(resume_from, first_seq)
    if gap is not None:
        raise SessionError("resume_unavailable", gap)
    return resume_from
