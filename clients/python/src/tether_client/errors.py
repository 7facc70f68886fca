"""Errors raised by the Tether client.

Exception tree::

    TetherError                  base of everything this package raises on purpose
     ├── TetherHTTPError         a service answered with an HTTP error (problem+json)
     ├── TetherTransportError    a service could not be reached (refused, DNS, timeout)
     ├── TetherClosed            the session ended with a terminal close code
     ├── TetherProtocolError     the server sent a frame the protocol does not allow
     ├── TetherRefused           the server refused one prompt for good (the session goes on)
     └── TetherGaveUp            the reconnect budget (max_reconnects) was used up

None of them ever carries a connection token or an API key in its message.
"""

from __future__ import annotations

from typing import Any


class TetherError(Exception):
    """Base class of the errors this package raises."""


class TetherHTTPError(TetherError):
    """An HTTP error answer.  Tether services answer ``application/problem+json``
    ``{code, title, detail, status, request_id}``; other servers' answers are mapped to
    ``code = "http_<status>"``.

    ``retry_after_s`` is the ``Retry-After`` header, ``problem`` the whole body (for
    example ``checks`` of a 503 from ``/readyz``).
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        request_id: str | None,
        *,
        title: str = "",
        url: str = "",
        retry_after_s: float | None = None,
        problem: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(status, code, detail, request_id)
        self.status, self.code, self.detail, self.request_id = status, code, detail, request_id
        self.title, self.url, self.retry_after_s = title, url, retry_after_s
        self.problem: dict[str, Any] = problem or {}

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later (timeouts, rate limits, 5xx)."""
        return http_status_retryable(self.status)

    def __str__(self) -> str:
        where = f" from {self.url}" if self.url else ""
        rid = f" (request_id {self.request_id})" if self.request_id else ""
        return f"HTTP {self.status} {self.code}{where}: {self.detail or self.title}{rid}"


class TetherTransportError(TetherError):
    """A service could not be reached at all (connection refused, DNS, TLS, timeout)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url = url
        self.reason = reason

    retryable = True

    def __str__(self) -> str:
        return f"cannot reach {self.url}: {self.reason}"


class TetherClosed(TetherError):
    """The session was closed with a terminal code: reconnecting would not help.

    ``code`` and ``name`` come from the close-code catalogue (or RFC 6455 for transport
    codes), ``message`` is the human-readable text to show, ``action`` what to do
    (``show_message``, ``fix_client``, ``reload``...).  ``detail`` is the server's own
    message from its ``error`` frame, when it sent one.
    """

    def __init__(self, code: int | None, name: str, message: str, action: str, *, detail: str = "") -> None:
        super().__init__(code, name, message, action)
        self.code, self.name, self.message, self.action = code, name, message, action
        self.detail = detail

    def __str__(self) -> str:
        code = f"{self.code} " if self.code is not None else ""
        extra = f" ({self.detail})" if self.detail and self.detail != self.message else ""
        return f"session closed: {code}{self.name}: {self.message}{extra} [action: {self.action}]"


class TetherProtocolError(TetherError):
    """The server sent something the session protocol does not allow."""


class TetherRefused(TetherError):
    """The server refused one prompt with a request-scoped, non-retryable ``error`` frame:
    that prompt is dropped; the session and its other prompts go on."""

    def __init__(self, client_msg_id: str, code: str, message: str, action: str) -> None:
        super().__init__(client_msg_id, code, message, action)
        self.client_msg_id, self.code, self.message, self.action = client_msg_id, code, message, action

    def __str__(self) -> str:
        return f"prompt {self.client_msg_id} refused: {self.code}: {self.message} [action: {self.action}]"


class TetherGaveUp(TetherError):
    """``max_reconnects`` attempts in a row failed before reaching ``ready``."""

    def __init__(self, attempts: int, last_reason: str) -> None:
        super().__init__(attempts, last_reason)
        self.attempts = attempts
        self.last_reason = last_reason

    def __str__(self) -> str:
        return f"gave up after {self.attempts} failed connection attempts; last: {self.last_reason}"


def http_status_retryable(status: int) -> bool:
    """Request timeout, too early, rate limited, or any 5xx."""
    return status in (408, 425, 429) or status >= 500


def connection_failure_reason(exc: BaseException) -> str:
    """A few words on why a connection could not be made ("connection refused", "name or
    service not known"...), found anywhere in the exception's causes and groups."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    fallback = ""
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, OSError) and current.strerror:
            fallback = fallback or current.strerror.lower()
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        todo.extend(linked for linked in (current.__cause__, current.__context__) if linked is not None)
    return fallback or str(exc) or type(exc).__name__


def exception_leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """Every exception inside ``group`` and its nested groups, in order."""
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(exception_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found
