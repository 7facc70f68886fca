"""Structured JSON logs: one line per event, with the ids known in the current context.

Every line carries ``ts``, ``level``, ``service`` and ``event``; the ids bound in the
current context (``request_id``, ``connection_id``, ``user_id``, ``project_id``) are
added automatically.  Field names that could carry a secret are refused at the source
(replaced by ``"[redacted]"``) so that a token cannot reach a log line by accident.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import os
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any, Final

LEVELS: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40}

# Keys whose values are never written, whatever their content.
SECRET_KEYS: Final = frozenset(
    {"token", "api_key", "authorization", "cookie", "set_cookie", "secret", "password", "key"}
)

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("tether_log_ctx")


def bind(**fields: Any) -> None:
    """Add ids to the current context (e.g. ``user_id`` once authenticated)."""
    current = dict(_context.get({}))
    current.update({k: v for k, v in fields.items() if v is not None})
    _context.set(current)


@contextmanager
def scope(**fields: Any) -> Iterator[None]:
    """Bind ids for the duration of a block (a request or a connection)."""
    token = _context.set({k: v for k, v in fields.items() if v is not None})
    try:
        yield
    finally:
        _context.reset(token)


def enter(**fields: Any) -> contextvars.Token[dict[str, Any]]:
    """:func:`scope` without a generator frame kept alive for the block (per-connection memory):
    pair with :func:`leave` in ``finally``."""
    return _context.set({k: v for k, v in fields.items() if v is not None})


def leave(token: contextvars.Token[dict[str, Any]]) -> None:
    _context.reset(token)


def context() -> dict[str, Any]:
    return dict(_context.get({}))


class JsonLogger:
    """Writes one JSON object per line to stderr and, optionally, to a file."""

    def __init__(self, service: str, *, level: str = "info", path: str | None = None) -> None:
        self.service = service
        self.threshold = LEVELS[level]
        self._lock = threading.Lock()
        self._streams: list[IO[str]] = [sys.stderr]
        if path:
            self._streams.append(open(path, "a", encoding="utf-8", buffering=1))  # noqa: SIM115

    def close(self) -> None:
        for stream in self._streams[1:]:
            stream.close()
        self._streams = self._streams[:1]

    def log(self, level: str, event: str, **fields: Any) -> None:
        if LEVELS[level] < self.threshold:
            return
        record: dict[str, Any] = {
            "ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "level": level,
            "service": self.service,
            "event": event,
        }
        record.update(_context.get({}))
        for key, value in fields.items():
            record[key] = "[redacted]" if key.lower() in SECRET_KEYS else value
        line = json.dumps(record, default=str, separators=(",", ":"))
        with self._lock:
            for stream in self._streams:
                stream.write(line + "\n")
                stream.flush()

    def debug(self, event: str, **fields: Any) -> None:
        self.log("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self.log("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.log("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.log("error", event, **fields)

    def exception(self, event: str, exc: BaseException, **fields: Any) -> None:
        """Log an unexpected exception with its type and a compact traceback."""
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=8))
        self.log("error", event, exc_type=type(exc).__name__, exc=str(exc)[:500], traceback=tb, **fields)


def from_env(service: str) -> JsonLogger:
    return JsonLogger(
        service,
        level=os.environ.get("TETHER_LOG_LEVEL", "info"),
        path=os.environ.get("TETHER_LOG_FILE") or None,
    )
