"""Structured JSON logs: one line per event, with the ids known in the current context.

Every line carries ``ts``, ``level``, ``service`` and ``event``; the ids bound in the
current context (``request_id``, ``connection_id``, ``user_id``, ``project_id``) are
added automatically.  Field names that could carry a secret are refused at the source
(replaced by ``"[redacted]"``), and so is any value, in any field, that has the shape of a
Tether secret (:data:`SECRET_SHAPE`): a token sent in the wrong field (``client_id``) or in
a URL path cannot reach a log line either.

Records of libraries (:class:`LibraryLogHandler`) carry none of the context ids: a pool
warning during an outage belongs to no request or connection.  :class:`DependencyStates`
turns a dependency outage into one ``error`` line when it is lost and one ``info`` line
when it is back, so the per-request answers during it can stay at ``warning``.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any, Final

LEVELS: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40}

# Keys whose values are never written, whatever their content.
SECRET_KEYS: Final = frozenset(
    {"token", "api_key", "authorization", "cookie", "set_cookie", "secret", "password", "key"}
)

REDACTED: Final = "[redacted]"

# API keys (tk_), connection tokens (tt_) and session cookies (ts_) are the prefix and 43
# URL-safe characters (tether_auth.secrets.new_secret).  A shorter run still matches so that
# a truncated copy (a 500-character exception text) is caught too.  Matched once in the JSON
# line: not after a letter or digit ("hits_per_…" stays), but after a JSON escape (``\\n``,
# ``\\u00e9``) although its last character is one.  The look-behinds sit after the leading
# "t" so that the engine can still scan for that literal instead of trying every position.
SECRET_SHAPE: Final = re.compile(
    r"t(?:(?<![A-Za-z0-9]t)|(?<=\\[bfnrt]t)|(?<=\\u[0-9a-fA-F]{4}t))[kts]_[A-Za-z0-9_-]{16,}"
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
        self._write(level, event, _context.get({}), fields)

    def log_detached(self, level: str, event: str, **fields: Any) -> None:
        """:meth:`log` without the ids of the current context (a library's or a background record)."""
        self._write(level, event, {}, fields)

    def _write(self, level: str, event: str, context: dict[str, Any], fields: dict[str, Any]) -> None:
        if LEVELS[level] < self.threshold:
            return
        record: dict[str, Any] = {
            "ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "level": level,
            "service": self.service,
            "event": event,
        }
        record.update(context)
        for key, value in fields.items():
            record[key] = REDACTED if key.lower() in SECRET_KEYS else value
        line = SECRET_SHAPE.sub(REDACTED, json.dumps(record, default=str, separators=(",", ":")))
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


class LibraryLogHandler(logging.Handler):
    """Routes stdlib log records (Hypercorn, asyncpg, Quart) into the service's JSON log.

    Detached from the context: the record is written by whatever task the library happened
    to run in (asyncpg's pool logs from the task of an unrelated WebSocket), so that task's
    ids would name the wrong request or connection.
    """

    def __init__(self, log: JsonLogger) -> None:
        super().__init__()
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        level = "error" if record.levelno >= logging.ERROR else "warning"
        if record.levelno < logging.WARNING:
            level = "info"
        fields: dict[str, str] = {"logger": record.name, "message": record.getMessage()[:1000]}
        if record.exc_info and record.exc_info[1] is not None:
            fields["exc"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"[:500]
        self.log.log_detached(level, "library_log", **fields)


class DependencyStates:
    """Which dependencies (``postgres``, ``auth-token``) this process has lost, and since when.

    :meth:`lost` writes one ``dependency_lost`` line at ``error`` the first time (the answers
    during the outage are then ``warning``: expected while it lasts); :meth:`ok` writes one
    ``dependency_restored`` line at ``info``, with the outage's duration, through the logger
    that reported the loss.  ``ok`` is a dict lookup when nothing is lost: cheap enough for
    every successful use of a dependency.
    """

    def __init__(self) -> None:
        self._lost: dict[str, tuple[float, JsonLogger]] = {}

    def lost(self, dependency: str, detail: str, log: JsonLogger) -> None:
        if dependency in self._lost:
            return
        self._lost[dependency] = (time.monotonic(), log)
        log.log_detached("error", "dependency_lost", dependency=dependency, detail=detail)

    def ok(self, dependency: str) -> None:
        if not self._lost or dependency not in self._lost:
            return
        since, log = self._lost.pop(dependency)
        log.log_detached(
            "info", "dependency_restored", dependency=dependency, outage_s=round(time.monotonic() - since, 3)
        )

    def is_lost(self, dependency: str) -> bool:
        return dependency in self._lost


# A dependency is lost or reachable for the whole process, whichever request or loop saw it.
DEPENDENCIES: Final = DependencyStates()


def from_env(service: str) -> JsonLogger:
    return JsonLogger(
        service,
        level=os.environ.get("TETHER_LOG_LEVEL", "info"),
        path=os.environ.get("TETHER_LOG_FILE") or None,
    )
