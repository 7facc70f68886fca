"""The Tether session protocol's client-side rules, with no I/O.

Everything here is plain data and plain functions: no sockets, no clock, no randomness
of its own (the random source is passed in).  :mod:`tether_client.session` wraps it with
trio and trio-websocket; the unit tests drive it directly.

* Frames: :func:`parse_server_frame` turns server text into frozen dataclasses
  (:class:`Ready`, :class:`Event`, :class:`Events`, :class:`PromptAck`, :class:`Pong`,
  :class:`ReauthOk`, :class:`ErrorFrame`); ``*_frame`` functions build client frames as the
  JSON Schemas in ``contracts/session/frames/`` describe them.  An ``events`` frame (batched
  delivery, asked for with INIT ``batch: true``) is a list of event frames: a client handles
  each of them exactly as if it had arrived alone.
* Close codes: :class:`CloseCatalogue` is the catalogue *as served by the session
  service* (``GET /v1/protocol/close-codes``); :func:`decide_close` turns a close code
  (plus the ``error`` frame that preceded it) into a :class:`CloseDecision`: retry or
  stop, and how long to wait at least (F32).
* :class:`Backoff`: exponential backoff with full jitter, capped, honouring the
  server's ``retry_after_ms``.
* :class:`SeqTracker`: the resume cursor; classifies each event as deliver, duplicate
  (``seq <= last_seq``, dropped and counted) or gap (reconnect with resume) (F20-F22).
* :class:`Outbox`: prompts waiting for their ``prompt_ack``, re-sent on every new
  connection until acknowledged (F21).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Final

from .errors import TetherClosed, TetherProtocolError

PROTOCOL_VERSION: Final = 1
MAX_SEQ: Final = 9007199254740991
MAX_PROMPT_CHARS: Final = 16000

_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")

ACTIONS: Final = frozenset({"fix_client", "reconnect", "refresh_token", "resume", "show_message", "reload", "backoff"})


# -- projects ------------------------------------------------------------------------------


def project_ref(value: str) -> dict[str, str]:
    """The INIT ``project`` member for a project id (UUID) or slug.

    >>> project_ref("my-project")
    {'slug': 'my-project'}
    """
    if _UUID.match(value):
        return {"id": str(uuid.UUID(value))}
    if SLUG.match(value):
        return {"slug": value}
    raise ValueError(f"{value!r} is neither a project id (UUID) nor a project slug (lowercase letters, digits, '-')")


# -- server frames -------------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectInfo:
    id: str
    slug: str
    name: str


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class Event:
    """One event of the project's log."""

    seq: int
    event_id: str
    kind: str
    data: dict[str, Any]
    ts: str

    def as_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "event_id": self.event_id, "kind": self.kind, "data": self.data, "ts": self.ts}


@dataclass(frozen=True)
class Events:
    """Batched delivery: consecutive events of the log in one frame (INIT ``batch: true``).

    Each item is handled exactly as if it had arrived alone in an ``event`` frame: dedup,
    gap detection and the resume cursor apply item by item, in order.
    """

    events: tuple[Event, ...]


@dataclass(frozen=True)
class PromptAck:
    client_msg_id: str
    seq: int
    duplicate: bool


@dataclass(frozen=True)
class Pong:
    server_time: str
    nonce: str | None = None


@dataclass(frozen=True)
class ReauthOk:
    session_expires_at: datetime


@dataclass(frozen=True)
class ErrorFrame:
    """Sent by the server right before every close it initiates."""

    code: str
    close_code: int
    message: str
    retryable: bool
    action: str
    retry_after_ms: int | None = None
    connection_id: str | None = None


@dataclass(frozen=True)
class UnknownFrame:
    """A frame type this client does not know (a newer server); ignored."""

    type: str
    raw: dict[str, Any] = field(repr=False)


ServerFrame = Ready | Event | Events | PromptAck | Pong | ReauthOk | ErrorFrame | UnknownFrame


class _Fields:
    """Typed access to a frame's members; every failure names the frame and the member."""

    def __init__(self, kind: str, obj: Mapping[str, Any]) -> None:
        self.kind = kind
        self.obj = obj

    def _fail(self, name: str, want: str) -> TetherProtocolError:
        got = self.obj.get(name, "<missing>")
        return TetherProtocolError(f"{self.kind} frame: {name} must be {want}, got {got!r:.80}")

    def text(self, name: str) -> str:
        value = self.obj.get(name)
        if not isinstance(value, str):
            raise self._fail(name, "a string")
        return value

    def opt_text(self, name: str) -> str | None:
        return self.text(name) if name in self.obj else None

    def integer(self, name: str, minimum: int = 0) -> int:
        value = self.obj.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_SEQ:
            raise self._fail(name, f"an integer >= {minimum}")
        return value

    def opt_integer(self, name: str) -> int | None:
        return self.integer(name) if name in self.obj else None

    def boolean(self, name: str) -> bool:
        value = self.obj.get(name)
        if not isinstance(value, bool):
            raise self._fail(name, "a boolean")
        return value

    def mapping(self, name: str) -> dict[str, Any]:
        value = self.obj.get(name)
        if not isinstance(value, dict):
            raise self._fail(name, "an object")
        return value

    def opt_boolean(self, name: str) -> bool:
        return self.boolean(name) if name in self.obj else False

    def when(self, name: str) -> datetime:
        text = self.text(name)
        try:
            return parse_time(text)
        except ValueError:
            raise self._fail(name, "an RFC 3339 date-time with a time zone") from None

    def sub(self, name: str) -> _Fields:
        return _Fields(f"{self.kind}.{name}", self.mapping(name))


def parse_time(text: str) -> datetime:
    """An RFC 3339 date-time with an offset (``Z`` allowed) as an aware datetime."""
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"date-time without a time zone: {text!r}")
    return value


def parse_server_frame(raw: str | bytes) -> ServerFrame:
    """Parse one server-to-client frame.

    Raises :class:`TetherProtocolError` for binary messages, non-JSON text, a wrong
    protocol version, or a known frame type with missing or mistyped members.
    Unknown frame types are returned as :class:`UnknownFrame` (forward compatibility).
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
    f = _Fields(kind, obj)
    if obj.get("v") != PROTOCOL_VERSION:
        raise TetherProtocolError(
            f"{kind} frame has protocol version {obj.get('v')!r}, this client speaks {PROTOCOL_VERSION}"
        )
    if kind == "event":
        return _event(f)
    if kind == "events":
        return Events(tuple(_event(item) for item in _event_items(obj)))
    if kind == "prompt_ack":
        return PromptAck(f.text("client_msg_id"), f.integer("seq", 1), f.boolean("duplicate"))
    if kind == "pong":
        return Pong(f.text("server_time"), f.opt_text("nonce"))
    if kind == "reauth_ok":
        return ReauthOk(f.when("session_expires_at"))
    if kind == "error":
        return ErrorFrame(
            code=f.text("code"),
            close_code=f.integer("close_code", 1000),
            message=f.text("message"),
            retryable=f.boolean("retryable"),
            action=f.text("action"),
            retry_after_ms=f.opt_integer("retry_after_ms"),
            connection_id=f.opt_text("connection_id"),
        )
    if kind == "ready":
        project = f.sub("project")
        heartbeat = f.sub("heartbeat")
        limits = f.sub("limits")
        return Ready(
            session_id=f.text("session_id"),
            connection_id=f.text("connection_id"),
            project=ProjectInfo(project.text("id"), project.text("slug"), project.text("name")),
            last_seq=f.integer("last_seq"),
            resume_from=f.integer("resume_from"),
            heartbeat_interval_ms=heartbeat.integer("interval_ms", 1),
            heartbeat_timeout_ms=heartbeat.integer("timeout_ms", 1),
            session_expires_at=f.when("session_expires_at"),
            server_time=f.when("server_time"),
            max_frame_bytes=limits.integer("max_frame_bytes"),
            prompts_per_minute=limits.integer("prompts_per_minute"),
            batch=f.opt_boolean("batch"),
        )
    return UnknownFrame(kind, obj)


def _event(f: _Fields) -> Event:
    return Event(f.integer("seq", 1), f.text("event_id"), f.text("kind"), f.mapping("data"), f.text("ts"))


def _event_items(obj: Mapping[str, Any]) -> list[_Fields]:
    """The items of an ``events`` frame, each checked to be an ``event`` frame."""
    items = obj.get("events")
    if not isinstance(items, list) or not items:
        raise TetherProtocolError(f"events frame: events must be a non-empty list, got {items!r:.80}")
    checked: list[_Fields] = []
    for i, item in enumerate(items):
        where = f"events[{i}]"
        if not isinstance(item, dict) or item.get("type") != "event":
            raise TetherProtocolError(f"events frame: {where} must be an event frame, got {item!r:.80}")
        if item.get("v") != PROTOCOL_VERSION:
            raise TetherProtocolError(f"events frame: {where} has protocol version {item.get('v')!r}")
        checked.append(_Fields(where, item))
    return checked


# -- client frames -------------------------------------------------------------------------


def encode(frame: Mapping[str, Any]) -> str:
    """Compact JSON text of a client frame."""
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def init_frame(
    token: str, project: Mapping[str, str], client_id: str, resume_from: int | None, *, batch: bool = False
) -> dict[str, Any]:
    """The INIT frame; ``batch=True`` says the client understands ``events`` frames."""
    if not _ID.match(client_id):
        raise ValueError("client_id must be 1-64 characters of A-Z a-z 0-9 . _ : -")
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
    return frame


def prompt_frame(client_msg_id: str, text: str) -> dict[str, Any]:
    check_prompt_text(text)
    return {"type": "prompt", "v": PROTOCOL_VERSION, "client_msg_id": client_msg_id, "text": text}


def check_prompt_text(text: str) -> None:
    """Refuse locally what the server would refuse with a terminal ``invalid_frame``."""
    if not 1 <= len(text) <= MAX_PROMPT_CHARS:
        raise ValueError(f"a prompt must have 1 to {MAX_PROMPT_CHARS} characters, got {len(text)}")


def ping_frame(nonce: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "ping", "v": PROTOCOL_VERSION}
    if nonce is not None:
        frame["nonce"] = nonce
    return frame


def reauth_frame(token: str) -> dict[str, Any]:
    return {"type": "reauth", "v": PROTOCOL_VERSION, "token": token}


def ack_frame(seq: int) -> dict[str, Any]:
    return {"type": "ack", "v": PROTOCOL_VERSION, "seq": seq}


def new_client_msg_id() -> str:
    return str(uuid.uuid4())


# -- close codes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CloseCode:
    """One entry of the close-code catalogue."""

    code: int
    name: str
    meaning: str
    retryable: bool
    action: str
    message: str


@dataclass(frozen=True)
class CloseCatalogue:
    """The close-code catalogue served by the session service (never hand-copied here)."""

    version: int
    entries: tuple[CloseCode, ...]

    @classmethod
    def from_json(cls, data: object) -> CloseCatalogue:
        """Validate and load ``GET /v1/protocol/close-codes``; ``ValueError`` names the problem."""
        if not isinstance(data, dict) or not isinstance(data.get("codes"), list):
            raise ValueError("close-code catalogue: expected an object with a 'codes' list")
        version = data.get("version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise ValueError("close-code catalogue: 'version' must be an integer")
        entries: list[CloseCode] = []
        for i, item in enumerate(data["codes"]):
            if not isinstance(item, dict):
                raise ValueError(f"close-code catalogue: codes[{i}] is not an object")
            code, name, retryable = item.get("code"), item.get("name"), item.get("retryable")
            if isinstance(code, bool) or not isinstance(code, int) or not isinstance(name, str):
                raise ValueError(f"close-code catalogue: codes[{i}] needs an integer code and a name")
            if not isinstance(retryable, bool):
                raise ValueError(f"close-code catalogue: codes[{i}] ({name}) needs a boolean 'retryable'")
            entries.append(
                CloseCode(
                    code=code,
                    name=name,
                    meaning=str(item.get("meaning", "")),
                    retryable=retryable,
                    action=str(item.get("action", "show_message")),
                    message=str(item.get("message", name)),
                )
            )
        if len({e.code for e in entries}) != len(entries):
            raise ValueError("close-code catalogue: duplicate code")
        return cls(version, tuple(entries))

    def get(self, code: int | None) -> CloseCode | None:
        for entry in self.entries:
            if entry.code == code:
                return entry
        return None

    def by_name(self, name: str) -> CloseCode | None:
        for entry in self.entries:
            if entry.name == name:
                return entry
        return None


def is_application_code(code: int | None) -> bool:
    """4000-4999: the codes the catalogue describes (RFC 6455 leaves them to applications)."""
    return code is not None and 4000 <= code <= 4999


@dataclass(frozen=True)
class CloseDecision:
    """What to do after a connection ended: ``retry`` or stop; wait at least ``retry_after_s``."""

    retry: bool
    name: str
    message: str
    action: str
    code: int | None = None
    retry_after_s: float | None = None
    detail: str = ""

    def to_error(self) -> TetherClosed:
        return TetherClosed(self.code, self.name, self.message, self.action, detail=self.detail)

    def describe(self) -> str:
        code = f"{self.code} " if self.code is not None else ""
        detail = f" ({self.detail})" if self.detail and self.detail != self.message else ""
        return f"{code}{self.name}: {self.message}{detail}"


def local_decision(name: str, message: str, *, retry: bool = True, retry_after_s: float | None = None) -> CloseDecision:
    """A decision for an end the client itself detected (gap, heartbeat, connect failure)."""
    return CloseDecision(
        retry=retry,
        name=name,
        message=message,
        action="reconnect" if retry else "show_message",
        retry_after_s=retry_after_s,
    )


def decide_close(catalogue: CloseCatalogue, close_code: int | None, error: ErrorFrame | None) -> CloseDecision:
    """Retry or stop after the connection closed with ``close_code``.

    The same rules as the browser client (``clients/js/tether.js``):

    1. The effective code is ``close_code``, or the ``error`` frame's ``close_code`` when
       the close itself carried no application code (a lost close frame: 1006).
    2. A code in the catalogue: its ``retryable`` and ``action`` decide; the ``error``
       frame adds ``retry_after_ms`` and the server's own message.
    3. Another application code (4000-4999): the ``error`` frame's ``retryable`` if the
       server sent one, else stop: an unexplained application close is not retried, or
       reconnect loops never end.
    4. Anything else (1000, 1001, 1006, 1011, no code at all...) is the network or a
       proxy, not the application refusing: the connection was lost; retry.
    """
    effective = close_code
    if error is not None and not is_application_code(close_code) and is_application_code(error.close_code):
        effective = error.close_code
    retry_after_s = error.retry_after_ms / 1000 if error is not None and error.retry_after_ms is not None else None
    entry = catalogue.get(effective)
    if entry is not None:
        return CloseDecision(
            retry=entry.retryable,
            name=entry.name,
            message=entry.message,
            action=entry.action,
            code=entry.code,
            retry_after_s=retry_after_s,
            detail=error.message if error is not None else "",
        )
    if is_application_code(effective):
        if error is not None:
            return CloseDecision(
                retry=error.retryable,
                name=error.code,
                message=error.message,
                action=error.action,
                code=effective,
                retry_after_s=retry_after_s,
            )
        return CloseDecision(
            retry=False,
            name="unknown_close_code",
            message=f"The server closed the connection with an unknown code ({effective}).",
            action="show_message",
            code=effective,
        )
    return CloseDecision(
        retry=True,
        name="connection_lost",
        message="The connection was lost; reconnecting.",
        action="reconnect",
        code=effective,
        retry_after_s=retry_after_s,
    )


# -- backoff -------------------------------------------------------------------------------


@dataclass
class Backoff:
    """Exponential backoff with full jitter, capped (the browser client's rule).

    The n-th consecutive failure (n from 0) waits ``uniform(0, min(cap_s, base_s * 2**n))``,
    and at least the server's ``retry_after_s`` (the server already spreads that value
    over its clients).  :meth:`reset` once a connection has stayed up a while.
    """

    base_s: float = 0.25
    cap_s: float = 15.0
    attempt: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.base_s <= self.cap_s:
            raise ValueError("backoff needs 0 < base_s <= cap_s")

    def ceiling(self, attempt: int | None = None) -> float:
        n = self.attempt if attempt is None else attempt
        # 2**n overflows floats near n=1024; the cap is reached long before that.
        return min(self.cap_s, self.base_s * math.pow(2.0, min(n, 64)))

    def next_delay(self, random: Callable[[], float], retry_after_s: float | None = None) -> float:
        """The wait before the next attempt; ``random()`` returns a float in [0, 1)."""
        jitter = random() * self.ceiling()
        self.attempt += 1
        return max(jitter, retry_after_s or 0.0)

    def reset(self) -> None:
        self.attempt = 0


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


class Outbox:
    """Prompts sent but not yet acknowledged, in the order they were sent.

    Each connection has a generation number.  :meth:`unsent` lists the prompts not yet
    sent on the given generation: everything after a reconnect, only new prompts while
    connected.  A ``prompt_ack`` removes the prompt (:meth:`ack`); the server stores a
    retried prompt once (same ``client_msg_id``), so re-sending is safe.
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

    def unsent(self, generation: int) -> list[PendingPrompt]:
        return [p for p in self._items.values() if p.sent_on != generation]

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


# -- agent conventions ---------------------------------------------------------------------

# The keys an agent event may use to name the prompt it answers (by the prompt's seq).
REPLY_KEYS: Final = ("prompt_seq", "reply_to", "in_reply_to")
TEXT_KEYS: Final = ("text", "delta", "content", "chunk")


def reply_to(event: Event) -> int | None:
    """The seq of the prompt an agent event answers, when the event names it."""
    for key in REPLY_KEYS:
        value = event.data.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def event_text(event: Event) -> str:
    """The text carried by a ``prompt`` or ``agent_chunk`` event (empty when none)."""
    for key in TEXT_KEYS:
        value = event.data.get(key)
        if isinstance(value, str):
            return value
    return ""


def answers(event: Event, prompt_seq: int) -> bool:
    """Whether an agent event belongs to the answer to the prompt stored at ``prompt_seq``.

    Events that name their prompt must name this one; events that do not are taken as
    answering the latest prompt before them.
    """
    if event.seq <= prompt_seq:
        return False
    named = reply_to(event)
    return named is None or named == prompt_seq
