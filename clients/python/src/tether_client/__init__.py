"""Tether's Python client: the session SDK (trio) and the ``tether`` CLI.

Start with :func:`open_session` (a resilient session over WebSocket), :class:`AuthClient`
(API key -> connection tokens) and :class:`SessionHttp` (projects, close codes).
The frames and the close-code catalogue are the contract's own (``tether_client/contract/``).
"""

from .closing import CloseCatalogue, CloseCode
from .errors import (
    TetherClosed,
    TetherError,
    TetherGaveUp,
    TetherHTTPError,
    TetherProtocolError,
    TetherRefused,
    TetherTransportError,
)
from .frames import Event, Events, Ready
from .http import AuthClient, EventPage, IssuedToken, Project, Readiness, SessionHttp, User, http_url, ws_url
from .options import SessionOptions
from .session import EventStream, Session, SessionStats, open_session

__version__ = "0.1.0"

__all__ = [
    "AuthClient",
    "CloseCatalogue",
    "CloseCode",
    "Event",
    "EventPage",
    "EventStream",
    "Events",
    "IssuedToken",
    "Project",
    "Readiness",
    "Ready",
    "Session",
    "SessionHttp",
    "SessionOptions",
    "SessionStats",
    "TetherClosed",
    "TetherError",
    "TetherGaveUp",
    "TetherHTTPError",
    "TetherProtocolError",
    "TetherRefused",
    "TetherTransportError",
    "User",
    "__version__",
    "http_url",
    "open_session",
    "ws_url",
]
