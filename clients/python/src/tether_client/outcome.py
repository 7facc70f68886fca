"""How one connection attempt ended (:class:`Outcome`), from whichever step ended it."""

from __future__ import annotations

from dataclasses import dataclass

import trio_websocket

from .closing import CloseDecision, local_decision
from .errors import TetherError, TetherHTTPError, TetherTransportError, connection_failure_reason
from .http import problem_error


@dataclass
class Outcome:
    """How one connection attempt ended."""

    decision: CloseDecision
    error: TetherError | None = None  # raised instead of decision.to_error() when terminal
    ready_for_s: float | None = None  # how long the connection was up after `ready`


def failed_request(what: str, exc: TetherHTTPError | TetherTransportError) -> Outcome:
    """The outcome of a failed HTTP step (token, upgrade): retry when it may help."""
    if isinstance(exc, TetherTransportError):
        return Outcome(local_decision("service_unreachable", f"{what}: {exc}"))
    decision = CloseDecision(
        retry=exc.retryable,
        name=exc.code,
        message=f"{what}: {exc}",
        action="backoff" if exc.retryable else "show_message",
        retry_after_s=exc.retry_after_s,
    )
    return Outcome(decision, error=None if exc.retryable else exc)


def protocol_failure(error: TetherError) -> Outcome:
    """The server broke the protocol: stop, and raise ``error``."""
    return Outcome(local_decision("protocol_error", str(error), retry=False), error=error)


def close_code_of(exc: trio_websocket.ConnectionClosed) -> int | None:
    return exc.reason.code if exc.reason is not None else None


def handshake_reason(exc: trio_websocket.HandshakeError) -> str:
    """Why a WebSocket could not be opened, in a few words."""
    if isinstance(exc, trio_websocket.ConnectionTimeout):
        return "timed out"
    return connection_failure_reason(exc)


def rejected_error(exc: trio_websocket.ConnectionRejected, url: str) -> TetherHTTPError:
    """A refused WebSocket upgrade as the HTTP error it is (problem+json when the server sent one)."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in exc.headers}
    return problem_error(exc.status_code, exc.body or b"", headers, url)
