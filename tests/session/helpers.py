"""Helpers shared by the session black-box tests in this folder (not fixtures).

* :func:`ws_to` opens a schema-checking :class:`~tests.support.session.WsClient` on any
  :class:`~tests.support.session.SessionReplica` (not only those at an index of a stack).
* :class:`NewConnection` finds the server-side connection id of a socket the test opened,
  from the replica's ``ws_open`` lines (an error before ``ready`` tells the client nothing
  else), so the log checks are about *that* connection only.
* :func:`assert_closed_as` is the F01 check: the error frame and the close code equal the
  catalogue entry, the error frame is the last frame, and the replica wrote exactly one
  ``ws_open`` and one ``ws_close`` line for the connection, at warning/error level, with
  the reason, the code and the ids known at that point.
* :class:`~tests.support.rawws.RawWs` (re-exported here) is the raw-socket WebSocket client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from trio_websocket import open_websocket_url

from tests.support.procs import ServiceProcess
from tests.support.session import ALLOWED_ORIGIN, Closed, SessionReplica, WsClient, close_catalogue
from tests.support.waiting import scaled, wait_until

CATALOGUE = close_catalogue()


@asynccontextmanager
async def ws_to(
    replica: SessionReplica, *, origin: str | None = ALLOWED_ORIGIN, connect_timeout: float = 10.0
) -> AsyncIterator[WsClient]:
    headers = [("Origin", origin)] if origin is not None else []
    async with open_websocket_url(
        replica.ws_url,
        extra_headers=headers,  # type: ignore[arg-type]
        connect_timeout=scaled(connect_timeout),
        disconnect_timeout=scaled(5),
    ) as ws:
        yield WsClient(ws)


def open_ids(proc: ServiceProcess) -> set[str]:
    return {line["connection_id"] for line in proc.events("ws_open")}


class NewConnection:
    """Snapshot a replica's connections now; :meth:`id` is the one connection opened since."""

    def __init__(self, proc: ServiceProcess) -> None:
        self.proc = proc
        self.before = open_ids(proc)

    def id(self, timeout: float = 10.0) -> str:
        new = wait_until(
            lambda: open_ids(self.proc) - self.before,
            timeout=timeout,
            what=f"a new ws_open line on {self.proc.name}",
        )
        assert len(new) == 1, f"expected one new connection on {self.proc.name}, got {sorted(new)}"
        return next(iter(new))


def close_lines(proc: ServiceProcess, connection_id: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    return wait_until(
        lambda: proc.events("ws_close", connection_id=connection_id),
        timeout=timeout,
        what=f"the ws_close line of {connection_id}",
        describe=proc.tail,
    )


def assert_error_frame(closed: Closed, name: str) -> dict[str, Any]:
    """The client got the catalogue's error frame for ``name``, as the last frame, then that close code."""
    entry = CATALOGUE[name]
    assert closed.error is not None, f"silent close: no error frame before close {closed.code} ({closed.frames})"
    error = closed.error
    assert closed.frames[-1] is error, f"the error frame must be the last frame: {closed.frames[-3:]}"
    assert error["code"] == name, error
    assert error["close_code"] == entry["code"], error
    assert error["retryable"] is entry["retryable"], error
    assert error["action"] == entry["action"], error
    assert error["message"], error
    assert closed.code == entry["code"], f"WebSocket closed with {closed.code}, catalogue says {entry['code']} ({name})"
    assert closed.reason == name, f"close reason {closed.reason!r}"
    return error


def assert_close_logged(
    proc: ServiceProcess,
    connection_id: str,
    name: str,
    *,
    user_id: str | None = None,
    project_id: str | None = None,
    send_may_time_out: bool = False,
) -> dict[str, Any]:
    """Exactly one ws_open and one ws_close line for the connection, naming the reason (F01, F40)."""
    entry = CATALOGUE[name]
    lines = close_lines(proc, connection_id)
    assert len(lines) == 1, f"expected one ws_close line for {connection_id}: {lines}"
    line = lines[0]
    assert line["reason"] == name, line
    assert line["code"] == entry["code"], line
    assert line["level"] == entry["log_level"], line
    assert line["connection_id"] == connection_id
    assert isinstance(line["duration_ms"], int | float), line
    assert line["duration_ms"] >= 0, line
    if user_id is None:
        assert "user_id" not in line, f"user_id logged although unknown: {line}"
    else:
        assert line.get("user_id") == user_id, line
    if project_id is None:
        assert "project_id" not in line, f"project_id logged although unknown: {line}"
    else:
        assert line.get("project_id") == project_id, line
    assert len(proc.events("ws_open", connection_id=connection_id)) == 1
    if not send_may_time_out:
        failed = proc.events("ws_close_send_failed", connection_id=connection_id)
        assert failed == [], f"the error frame or close could not be sent: {failed}"
    assert proc.events("ws_internal_error", connection_id=connection_id) == []
    return line


def assert_closed_as(
    closed: Closed,
    proc: ServiceProcess,
    connection_id: str,
    name: str,
    *,
    user_id: str | None = None,
    project_id: str | None = None,
    send_may_time_out: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both sides of F01 for one connection; returns the error frame and the ws_close line."""
    error = assert_error_frame(closed, name)
    line = assert_close_logged(
        proc, connection_id, name, user_id=user_id, project_id=project_id, send_may_time_out=send_may_time_out
    )
    return error, line


def init_frame(token: str, project: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"type": "init", "v": 1, "token": token, "project": project, "client_id": "test", **extra}
