"""The session lifecycle and every session rule, as data and pure functions.  No I/O, no clock, no sockets.

States and the inputs that move between them are tables (the idea of h11's
``_state.py``); the WebSocket handler (:mod:`tether_session.connection`) feeds inputs in
and carries out what comes back, as python-websockets' ``protocol.py`` sits under its
asyncio layer::

    AWAITING_INIT --init--> AUTHENTICATING --auth_ok--> READY --(prompt|ack|ping|reauth)--> READY
          |                       |                       |
          +--------- failure -----+--------- failure -----+--> CLOSING --close_sent--> CLOSED
          +--------- client_closed (from any state but CLOSED) ---------------------> CLOSED

An input the table does not allow raises :class:`SessionError` ``unexpected_frame``
naming both the state and the input (as wsproto does).  Every failure maps to one
entry of the close-code catalogue (``contracts/session/close-codes.json``): the
:class:`ClosePlan` says which error frame to send, which close code to use and at which
level the close is logged (the catalogue's ``log_level``).

The machine also owns the session's deadlines (INIT, heartbeat, lifetime).  The rules that
decide *whether* a session may go on are in :mod:`tether_session.rules`, equally free of I/O.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class SessionState(enum.Enum):
    AWAITING_INIT = "awaiting_init"
    AUTHENTICATING = "authenticating"
    READY = "ready"
    CLOSING = "closing"
    CLOSED = "closed"


class Input(enum.Enum):
    INIT = "init"
    PROMPT = "prompt"
    ACK = "ack"
    PING = "ping"
    REAUTH = "reauth"
    AUTH_OK = "auth_ok"
    FAILURE = "failure"
    CLOSE_SENT = "close_sent"
    CLIENT_CLOSED = "client_closed"


FRAME_INPUTS = {i.value: i for i in (Input.INIT, Input.PROMPT, Input.ACK, Input.PING, Input.REAUTH)}

_LIVE = (SessionState.AWAITING_INIT, SessionState.AUTHENTICATING, SessionState.READY)

TRANSITIONS: dict[tuple[SessionState, Input], SessionState] = {
    (SessionState.AWAITING_INIT, Input.INIT): SessionState.AUTHENTICATING,
    (SessionState.AUTHENTICATING, Input.AUTH_OK): SessionState.READY,
    (SessionState.READY, Input.PROMPT): SessionState.READY,
    (SessionState.READY, Input.ACK): SessionState.READY,
    (SessionState.READY, Input.PING): SessionState.READY,
    (SessionState.READY, Input.REAUTH): SessionState.READY,
    **{(s, Input.FAILURE): SessionState.CLOSING for s in _LIVE},
    **{(s, Input.CLIENT_CLOSED): SessionState.CLOSED for s in (*_LIVE, SessionState.CLOSING)},
    (SessionState.CLOSING, Input.CLOSE_SENT): SessionState.CLOSED,
}


@dataclass(frozen=True)
class CloseCode:
    code: int
    name: str
    meaning: str
    retryable: bool
    action: str
    message: str
    cause: str
    log_level: str


class CloseCatalogue:
    """The close-code catalogue, read from the contract file."""

    def __init__(self, entries: list[CloseCode]) -> None:
        self.by_name = {e.name: e for e in entries}
        self.by_code = {e.code: e for e in entries}
        if len(self.by_name) != len(entries) or len(self.by_code) != len(entries):
            raise ValueError("close-code catalogue has duplicate names or codes")
        for entry in entries:
            if not 4000 <= entry.code <= 4999:
                raise ValueError(f"close code {entry.code} outside 4000-4999")
            if entry.log_level not in ("warning", "error"):
                raise ValueError(f"close code {entry.name}: log_level must be warning or error")

    @classmethod
    def load(cls, path: Path) -> CloseCatalogue:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return cls([CloseCode(**{k: e[k] for k in CloseCode.__dataclass_fields__}) for e in raw["codes"]])

    def __getitem__(self, name: str) -> CloseCode:
        return self.by_name[name]


@dataclass
class SessionError(Exception):
    """A failure that ends the session with the catalogue entry ``name``."""

    name: str
    detail: str = ""
    retry_after_ms: int | None = None
    log_fields: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.name}: {self.detail}"


class Shed(SessionError):
    """A connection or request refused because the replica is overloaded (a load signal over its limit).

    Sheds come by the thousand in a storm: they are counted and logged at a bounded rate
    (``tether_kit.shedding``), not one log line each.
    """


@dataclass(frozen=True)
class ClosePlan:
    close_code: int
    frame: dict[str, Any]
    level: str  # the catalogue entry's log_level


@dataclass(frozen=True)
class Limits:
    """The configured bounds the rules apply (from the service's Config)."""

    max_connections: int
    max_connections_per_user: int
    init_timeout_ms: int
    heartbeat_timeout_ms: int
    session_lifetime_s: float
    drain_window_ms: int


# -- the machine -----------------------------------------------------------------------------------


class SessionMachine:
    """One connection's lifecycle.  Feed it inputs; it answers with states, deadlines and close plans."""

    __slots__ = ("catalogue", "expires_at", "failure", "state")  # one per session: no instance dict

    def __init__(self, catalogue: CloseCatalogue) -> None:
        self.catalogue = catalogue
        self.state = SessionState.AWAITING_INIT
        self.failure: SessionError | None = None
        self.expires_at = 0.0  # monotonic seconds; set when authenticated, moved by reauth

    def _move(self, event: Input) -> SessionState:
        target = TRANSITIONS.get((self.state, event))
        if target is None:
            raise SessionError(
                "unexpected_frame" if event in FRAME_INPUTS.values() else "internal_error",
                f"{event.value} is not allowed in state {self.state.value}",
            )
        self.state = target
        return target

    def receive(self, frame_type: str) -> SessionState:
        """A schema-valid frame of ``frame_type`` arrived."""
        event = FRAME_INPUTS.get(frame_type)
        if event is None:
            raise SessionError("unexpected_frame", f"{frame_type!r} is not a client frame")
        return self._move(event)

    def authenticated(self, now: float = 0.0, lifetime_s: float = 0.0) -> SessionState:
        """The INIT's token and project checked out; the session lives ``lifetime_s`` from ``now``."""
        state = self._move(Input.AUTH_OK)
        self.expires_at = now + lifetime_s
        return state

    def renewed(self, now: float, lifetime_s: float) -> None:
        """A reauth frame's token checked out: the lifetime starts again."""
        self.expires_at = now + lifetime_s

    def fail(self, error: SessionError) -> ClosePlan:
        """The session must end because of ``error``: what to send and how to close."""
        self._move(Input.FAILURE)
        self.failure = error
        entry = self.catalogue[error.name]
        return ClosePlan(entry.code, self._error_frame(entry, error), entry.log_level)

    @staticmethod
    def _error_frame(entry: CloseCode, error: SessionError, **scope: str) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "type": "error",
            "v": 1,
            "code": entry.name,
            "close_code": entry.code,
            "message": error.detail or entry.message,
            "retryable": entry.retryable,
            "action": entry.action,
            **scope,
        }
        if error.retry_after_ms is not None:
            frame["retry_after_ms"] = error.retry_after_ms
        return frame

    def refuse_request(self, error: SessionError, client_msg_id: str) -> dict[str, Any]:
        """The error frame that refuses one request (a prompt) while the session goes on.

        ``scope: "request"`` tells the client that no close follows; the state does not move.
        """
        if self.state is not SessionState.READY:
            raise SessionError("internal_error", f"a request refusal in state {self.state.value}")
        return self._error_frame(self.catalogue[error.name], error, scope="request", client_msg_id=client_msg_id)

    def close_sent(self) -> SessionState:
        return self._move(Input.CLOSE_SENT)

    def client_closed(self) -> SessionState:
        if self.state is SessionState.CLOSED:
            return self.state
        return self._move(Input.CLIENT_CLOSED)

    @property
    def is_live(self) -> bool:
        return self.state in _LIVE

    def receive_deadline(self, now: float, limits: Limits) -> tuple[float | None, bool]:
        """How long the next receive may wait (seconds, None: no bound) and whether that bound is the
        session's lifetime (True) rather than the INIT or heartbeat deadline."""
        if self.state is SessionState.AWAITING_INIT:
            return limits.init_timeout_ms / 1000, False
        if self.state is not SessionState.READY:
            return None, False
        heartbeat = limits.heartbeat_timeout_ms / 1000
        remaining = max(0.0, self.expires_at - now)
        return (remaining, True) if remaining < heartbeat else (heartbeat, False)

    def timeout_error(self, expiring: bool) -> SessionError:
        if expiring:
            return SessionError("session_expired", "the session was not renewed with a reauth frame in time")
        if self.state is SessionState.AWAITING_INIT:
            return SessionError("init_timeout", "no init frame within the deadline")
        return SessionError("heartbeat_timeout", "no frame from the client within the heartbeat timeout")


@dataclass(slots=True)
class TokenBucket:
    """Rate limit (pure: the caller passes the clock).  One per session: slotted."""

    rate_per_s: float
    burst: float
    tokens: float = -1.0
    updated: float = 0.0

    @classmethod
    def per_minute(cls, per_minute: int) -> TokenBucket:
        """``per_minute`` on average, bursts of ten seconds' worth (at least one)."""
        return cls(per_minute / 60, max(1.0, per_minute / 6))

    def take(self, now: float) -> bool:
        if self.tokens < 0:
            self.tokens, self.updated = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def retry_after_ms(self) -> int:
        return max(1, int((1 - self.tokens) / self.rate_per_s * 1000)) if self.rate_per_s > 0 else 60000
