"""Why a connection ended, and whether to try again: the close-code catalogue and its rules.

:class:`CloseCatalogue` is the contract's catalogue (``close-codes.json``): the copy shipped
in this package by default (:meth:`CloseCatalogue.bundled`), or the one a session service
serves at ``GET /v1/protocol/close-codes`` (:meth:`CloseCatalogue.from_json`).
:func:`decide_close` turns a close code, plus the ``error`` frame that preceded it, into a
:class:`CloseDecision`: retry or stop, and how long to wait at least (F32).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from .errors import TetherClosed
from .frames import ErrorFrame
from .schemas import catalogue_error, document

# RFC 6455 codes a server (or a proxy in front of it) may close with before the session
# layer has read the frame: each means what one catalogue entry means, without its error frame.
TRANSPORT_CLOSES: Final = MappingProxyType({1007: "invalid_frame", 1009: "frame_too_large"})


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseCode:
    """One entry of the catalogue: first what decides, then what explains.  Members the
    contract adds later are kept in ``extra``."""

    code: int
    name: str
    retryable: bool
    action: str  # fix_client, reconnect, refresh_token, resume, show_message, reload, backoff
    retry_after_ms: int | None = None
    message: str  # the text to show a person
    meaning: str  # for developers
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_entry(cls, item: Mapping[str, Any]) -> CloseCode:
        known = {name: item[name] for name in cls.__dataclass_fields__ if name in item and name != "extra"}
        rest = {k: v for k, v in item.items() if k not in cls.__dataclass_fields__}
        return cls(**known, extra=MappingProxyType(rest))


@dataclass(frozen=True, slots=True)
class CloseCatalogue:
    """The close-code catalogue of the contract (never hand-copied here)."""

    version: int
    entries: tuple[CloseCode, ...]

    @classmethod
    def from_json(cls, data: object) -> CloseCatalogue:
        """Validate a catalogue document against the contract's schema; ``ValueError`` names the problem."""
        problem = catalogue_error(data)
        if problem is not None:
            raise ValueError(problem)
        assert isinstance(data, dict)  # the schema says so
        entries = tuple(CloseCode.from_entry(item) for item in data["codes"])
        for attribute in ("code", "name"):
            if len({getattr(e, attribute) for e in entries}) != len(entries):
                raise ValueError(f"close-code catalogue: duplicate {attribute}")
        return cls(data["version"], entries)

    @staticmethod
    @functools.cache
    def bundled() -> CloseCatalogue:
        """The catalogue of the contract this package was built with."""
        return CloseCatalogue.from_json(document("close-codes.json"))

    def get(self, code: int | None) -> CloseCode | None:
        return next((e for e in self.entries if e.code == code), None)

    def by_name(self, name: str) -> CloseCode | None:
        return next((e for e in self.entries if e.name == name), None)


def is_application_code(code: int | None) -> bool:
    """4000-4999: the codes the catalogue describes (RFC 6455 leaves them to applications)."""
    return code is not None and 4000 <= code <= 4999


@dataclass(frozen=True, slots=True)
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
       frame adds ``retry_after_ms`` and the server's own message.  A bare 1009 (message
       too big) or 1007 (invalid UTF-8) is the catalogue's ``frame_too_large`` or
       ``invalid_frame``: the server refused the frame before the session read it.
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
    transport = TRANSPORT_CLOSES.get(effective) if effective is not None and error is None else None
    if entry is None and transport is not None:
        entry = catalogue.by_name(transport)
    if entry is not None:
        retry, name, message, action = entry.retryable, entry.name, entry.message, entry.action
    elif is_application_code(effective) and error is not None:
        retry, name, message, action = error.retryable, error.code, error.message, error.action
    elif is_application_code(effective):
        retry, name, action = False, "unknown_close_code", "show_message"
        message = f"The server closed the connection with an unknown code ({effective})."
    else:
        retry, name, message, action = True, "connection_lost", "The connection was lost; reconnecting.", "reconnect"
    detail = error.message if entry is not None and error is not None else ""
    return CloseDecision(retry, name, message, action, code=effective, retry_after_s=retry_after_s, detail=detail)
