"""Session frames: server frames parsed into typed values, client frames built; no I/O.

Both directions are checked against the contract's JSON Schemas (:mod:`.schemas`):
:func:`parse_server_frame` turns server text into frozen dataclasses (:class:`Ready`,
:class:`Event`, :class:`Events`, :class:`PromptAck`, :class:`Pong`, :class:`ReauthOk`,
:class:`ErrorFrame`), and the ``*_frame`` functions refuse (``ValueError``) to build a frame
the server would refuse.  An ``events`` frame (batched delivery, asked for with INIT
``batch: true``) is a list of event frames: a client handles each of them exactly as if it
had arrived alone.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from .errors import TetherProtocolError
from .schemas import SERVER_TO_CLIENT, frame_error, frame_types, schema_value

PROTOCOL_VERSION: Final[int] = schema_value("init", "properties", "v", "const")
MIN_PROMPT_CHARS: Final[int] = schema_value("prompt", "properties", "text", "minLength")
MAX_PROMPT_CHARS: Final[int] = schema_value("prompt", "properties", "text", "maxLength")
SLUG: Final = re.compile(schema_value("init", "properties", "project", "oneOf", 1, "properties", "slug", "pattern"))


def project_ref(value: str) -> dict[str, str]:
    """The INIT ``project`` member for a project id (UUID) or slug.

    >>> project_ref("my-project")
    {'slug': 'my-project'}
    """
    try:
        return {"id": str(uuid.UUID(value))}
    except ValueError:
        slug = SLUG.match(value)
    if slug:
        return {"slug": value}
    raise ValueError(f"{value!r} is neither a project id (UUID) nor a project slug (lowercase letters, digits, '-')")


# -- server frames -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProjectInfo:
    id: str
    slug: str
    name: str


@dataclass(frozen=True, slots=True)
class Ready:
    """INIT succeeded; events with ``seq > resume_from`` follow (replay, then live)."""

    session_id: str
    connection_id: str
    project: ProjectInfo
    last_seq: int
    resume_from: int
    heartbeat_interval_ms: int
    heartbeat_timeout_ms: int
    session_expires_at: datetime
    server_time: datetime
    max_frame_bytes: int
    prompts_per_minute: int
    batch: bool = False  # the server delivers events in `events` frames (INIT batch granted)


@dataclass(frozen=True, slots=True)
class Event:
    """One event of the project's log."""

    seq: int
    event_id: str
    kind: str
    data: dict[str, Any]
    ts: str

    def as_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "event_id": self.event_id, "kind": self.kind, "data": self.data, "ts": self.ts}


@dataclass(frozen=True, slots=True)
class Events:
    """Batched delivery: consecutive events of the log in one frame (INIT ``batch: true``).

    Each item is handled exactly as if it had arrived alone in an ``event`` frame: dedup,
    gap detection and the resume cursor apply item by item, in order.
    """

    events: tuple[Event, ...]


@dataclass(frozen=True, slots=True)
class PromptAck:
    client_msg_id: str
    seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Pong:
    server_time: str
    nonce: str | None = None


@dataclass(frozen=True, slots=True)
class ReauthOk:
    session_expires_at: datetime


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """Sent by the server right before every close it initiates; or, with ``scope`` ==
    ``"request"``, to refuse the one prompt named by ``client_msg_id`` (no close follows)."""

    code: str
    close_code: int
    message: str
    retryable: bool
    action: str
    retry_after_ms: int | None = None
    connection_id: str | None = None
    scope: str = "connection"
    client_msg_id: str | None = None

    @property
    def request_scoped(self) -> bool:
        return self.scope == "request"


@dataclass(frozen=True, slots=True)
class UnknownFrame:
    """A frame type this client does not know (a newer server); ignored."""

    type: str
    raw: dict[str, Any] = field(repr=False)


ServerFrame = Ready | Event | Events | PromptAck | Pong | ReauthOk | ErrorFrame | UnknownFrame


def parse_time(text: str) -> datetime:
    """An RFC 3339 date-time with an offset (``Z`` allowed) as an aware datetime."""
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"date-time without a time zone: {text!r}")
    return value


def _when(kind: str, obj: Mapping[str, Any], name: str) -> datetime:
    try:
        return parse_time(obj[name])
    except ValueError:
        raise TetherProtocolError(f"{kind} frame: {name}: not an RFC 3339 date-time with a time zone") from None


def _event(obj: Mapping[str, Any]) -> Event:
    return Event(int(obj["seq"]), obj["event_id"], obj["kind"], obj["data"], obj["ts"])


def _ready(obj: Mapping[str, Any]) -> Ready:
    project, heartbeat, limits = obj["project"], obj["heartbeat"], obj["limits"]
    return Ready(
        session_id=obj["session_id"],
        connection_id=obj["connection_id"],
        project=ProjectInfo(project["id"], project["slug"], project["name"]),
        last_seq=int(obj["last_seq"]),
        resume_from=int(obj["resume_from"]),
        heartbeat_interval_ms=int(heartbeat["interval_ms"]),
        heartbeat_timeout_ms=int(heartbeat["timeout_ms"]),
        session_expires_at=_when("ready", obj, "session_expires_at"),
        server_time=_when("ready", obj, "server_time"),
        max_frame_bytes=int(limits["max_frame_bytes"]),
        prompts_per_minute=int(limits["prompts_per_minute"]),
        batch=obj.get("batch", False),
    )


def _typed(kind: str, obj: dict[str, Any]) -> ServerFrame:
    """The dataclass of a frame that matched its schema."""
    if kind == "event":
        return _event(obj)
    if kind == "events":
        return Events(tuple(_event(item) for item in obj["events"]))
    if kind == "prompt_ack":
        return PromptAck(obj["client_msg_id"], int(obj["seq"]), obj["duplicate"])
    if kind == "pong":
        return Pong(obj["server_time"], obj.get("nonce"))
    if kind == "reauth_ok":
        return ReauthOk(_when(kind, obj, "session_expires_at"))
    if kind == "error":
        retry_after = obj.get("retry_after_ms")
        return ErrorFrame(
            code=obj["code"],
            close_code=int(obj["close_code"]),
            message=obj["message"],
            retryable=obj["retryable"],
            action=obj["action"],
            retry_after_ms=None if retry_after is None else int(retry_after),
            connection_id=obj.get("connection_id"),
            scope=obj.get("scope", "connection"),
            client_msg_id=obj.get("client_msg_id"),
        )
    if kind == "ready":
        return _ready(obj)
    raise AssertionError(f"the contract has a server frame type {kind!r} that this module does not build")


def parse_server_frame(raw: str | bytes) -> ServerFrame:
    """Parse one server-to-client frame.

    Raises :class:`TetherProtocolError` for binary messages, non-JSON text, a wrong
    protocol version, or a known frame type that does not match its schema (the message
    names the member and the rule).  Unknown frame types are returned as
    :class:`UnknownFrame` (forward compatibility).
    """
    if isinstance(raw, bytes):
        raise TetherProtocolError("the server sent a binary message; the protocol is JSON text only")
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        raise TetherProtocolError(f"the server sent a message that is not JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise TetherProtocolError("the server sent a message that is not a frame object with a type")
    kind: str = obj["type"]
    if obj.get("v") != PROTOCOL_VERSION:
        raise TetherProtocolError(
            f"{kind} frame has protocol version {obj.get('v')!r}, this client speaks {PROTOCOL_VERSION}"
        )
    if kind not in frame_types(SERVER_TO_CLIENT):
        return UnknownFrame(kind, obj)
    problem = frame_error(kind, obj)
    if problem is not None:
        raise TetherProtocolError(problem)
    return _typed(kind, obj)


# -- client frames -------------------------------------------------------------------------


def encode(frame: Mapping[str, Any]) -> str:
    """Compact JSON text of a client frame."""
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def _checked(frame: dict[str, Any]) -> dict[str, Any]:
    """``frame`` if it matches its schema; else ``ValueError`` naming the member."""
    problem = frame_error(frame["type"], frame)
    if problem is not None:
        raise ValueError(problem)
    return frame


def init_frame(
    token: str, project: Mapping[str, str], client_id: str, resume_from: int | None, *, batch: bool = False
) -> dict[str, Any]:
    """The INIT frame; ``batch=True`` says the client understands ``events`` frames."""
    frame: dict[str, Any] = {
        "type": "init",
        "v": PROTOCOL_VERSION,
        "token": token,
        "project": dict(project),
        "client_id": client_id,
    }
    if resume_from is not None:
        frame["resume_from"] = resume_from
    if batch:
        frame["batch"] = True
    return _checked(frame)


def check_prompt_text(text: str) -> None:
    """Refuse locally what the server would refuse with a terminal ``invalid_frame``."""
    if not MIN_PROMPT_CHARS <= len(text) <= MAX_PROMPT_CHARS:
        raise ValueError(f"a prompt must have {MIN_PROMPT_CHARS} to {MAX_PROMPT_CHARS} characters, got {len(text)}")


def prompt_frame(client_msg_id: str, text: str) -> dict[str, Any]:
    check_prompt_text(text)
    return _checked({"type": "prompt", "v": PROTOCOL_VERSION, "client_msg_id": client_msg_id, "text": text})


def ping_frame(nonce: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "ping", "v": PROTOCOL_VERSION}
    if nonce is not None:
        frame["nonce"] = nonce
    return _checked(frame)


def reauth_frame(token: str) -> dict[str, Any]:
    return _checked({"type": "reauth", "v": PROTOCOL_VERSION, "token": token})


def ack_frame(seq: int) -> dict[str, Any]:
    return _checked({"type": "ack", "v": PROTOCOL_VERSION, "seq": seq})


def new_client_msg_id() -> str:
    return str(uuid.uuid4())
