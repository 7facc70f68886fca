"""The session lifecycle as an explicit state machine.  No I/O, no clock, no sockets.

States and the inputs that move between them are tables (the idea of h11's
``_state.py``); the WebSocket handler feeds inputs in and acts on what comes out::

    AWAITING_INIT --init--> AUTHENTICATING --auth_ok--> READY --(prompt|ack|ping|reauth)--> READY
          |                       |                       |
          +--------- failure -----+--------- failure -----+--> CLOSING --close_sent--> CLOSED
          +--------- client_closed (from any state but CLOSED) ---------------------> CLOSED

An input the table does not allow raises :class:`SessionError` ``unexpected_frame``
naming both the state and the input (as wsproto does).  Every failure maps to one
entry of the close-code catalogue (``contracts/session/close-codes.json``): the
:class:`ClosePlan` says which error frame to send and which close code to use.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class State(enum.Enum):
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

_LIVE = (State.AWAITING_INIT, State.AUTHENTICATING, State.READY)

TRANSITIONS: dict[tuple[State, Input], State] = {
    (State.AWAITING_INIT, Input.INIT): State.AUTHENTICATING,
    (State.AUTHENTICATING, Input.AUTH_OK): State.READY,
    (State.READY, Input.PROMPT): State.READY,
    (State.READY, Input.ACK): State.READY,
    (State.READY, Input.PING): State.READY,
    (State.READY, Input.REAUTH): State.READY,
    **{(s, Input.FAILURE): State.CLOSING for s in _LIVE},
    **{(s, Input.CLIENT_CLOSED): State.CLOSED for s in (*_LIVE, State.CLOSING)},
    (State.CLOSING, Input.CLOSE_SENT): State.CLOSED,
}


@dataclass(frozen=True)
class CloseCode:
    code: int
    name: str
    meaning: str
    retryable: bool
    action: str
    message: str


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


@dataclass(frozen=True)
class ClosePlan:
    close_code: int
    frame: dict[str, Any]
    level: str  # log level of the close line: warning for client causes, error for ours


# Failures caused by the server side are logged at error level; the rest at warning.
_SERVER_SIDE = frozenset({"internal_error", "auth_unavailable", "database_unavailable", "overloaded"})


class SessionMachine:
    """One connection's lifecycle.  Feed it inputs; it answers with states and close plans."""

    __slots__ = ("catalogue", "failure", "state")  # one per session: no instance dict

    def __init__(self, catalogue: CloseCatalogue) -> None:
        self.catalogue = catalogue
        self.state = State.AWAITING_INIT
        self.failure: SessionError | None = None

    def _move(self, event: Input) -> State:
        target = TRANSITIONS.get((self.state, event))
        if target is None:
            raise SessionError(
                "unexpected_frame" if event in FRAME_INPUTS.values() else "internal_error",
                f"{event.value} is not allowed in state {self.state.value}",
            )
        self.state = target
        return target

    def receive(self, frame_type: str) -> State:
        """A schema-valid frame of ``frame_type`` arrived."""
        event = FRAME_INPUTS.get(frame_type)
        if event is None:
            raise SessionError("unexpected_frame", f"{frame_type!r} is not a client frame")
        return self._move(event)

    def authenticated(self) -> State:
        return self._move(Input.AUTH_OK)

    def fail(self, error: SessionError) -> ClosePlan:
        """The session must end because of ``error``: what to send and how to close."""
        self._move(Input.FAILURE)
        self.failure = error
        entry = self.catalogue[error.name]
        frame: dict[str, Any] = {
            "type": "error",
            "v": 1,
            "code": entry.name,
            "close_code": entry.code,
            "message": error.detail or entry.message,
            "retryable": entry.retryable,
            "action": entry.action,
        }
        if error.retry_after_ms is not None:
            frame["retry_after_ms"] = error.retry_after_ms
        return ClosePlan(entry.code, frame, "error" if entry.name in _SERVER_SIDE else "warning")

    def close_sent(self) -> State:
        return self._move(Input.CLOSE_SENT)

    def client_closed(self) -> State:
        if self.state is State.CLOSED:
            return self.state
        return self._move(Input.CLIENT_CLOSED)

    @property
    def is_live(self) -> bool:
        return self.state in _LIVE

    def deadline_ms(self, *, init_timeout_ms: int, heartbeat_timeout_ms: int) -> int | None:
        """How long the next receive may wait in the current state."""
        if self.state is State.AWAITING_INIT:
            return init_timeout_ms
        if self.state is State.READY:
            return heartbeat_timeout_ms
        return None

    def timeout_error(self) -> SessionError:
        if self.state is State.AWAITING_INIT:
            return SessionError("init_timeout", "no init frame within the deadline")
        return SessionError("heartbeat_timeout", "no frame from the client within the heartbeat timeout")


@dataclass(slots=True)
class TokenBucket:
    """Rate limit (pure: the caller passes the clock).  One per session: slotted."""

    rate_per_s: float
    burst: float
    tokens: float = -1.0
    updated: float = 0.0

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
