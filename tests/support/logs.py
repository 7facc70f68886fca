"""Assertions on the structured JSON logs of service processes (F01, F40).

Tether's HTTP spine writes exactly one ``http_error`` line per error response, carrying
the request id and the catalogue code.  The line is written before the response is sent,
so by the time a client has the response the line is in the file; the helpers still poll
with a short deadline so that a slow file system cannot make them flaky.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .procs import ServiceProcess
from .waiting import wait_until


def lines_for_request(procs: ServiceProcess | Iterable[ServiceProcess], request_id: str) -> list[dict[str, Any]]:
    """Every log line of ``procs`` that carries ``request_id``."""
    group = [procs] if isinstance(procs, ServiceProcess) else list(procs)
    return [line for proc in group for line in proc.log_lines() if line.get("request_id") == request_id]


def assert_one_error_line(
    procs: ServiceProcess | Iterable[ServiceProcess], request_id: str, code: str, *, timeout: float = 5.0, **fields: Any
) -> dict[str, Any]:
    """Exactly one ``http_error`` line for ``request_id``, with ``code`` and ``fields``; return it."""

    def errors() -> list[dict[str, Any]]:
        return [line for line in lines_for_request(procs, request_id) if line.get("event") == "http_error"]

    found = wait_until(errors, timeout=timeout, what=f"an http_error log line for request {request_id}")
    assert len(found) == 1, f"expected exactly one http_error line for {request_id}, got {found}"
    line = found[0]
    assert line.get("code") == code, f"log line code {line.get('code')!r} != {code!r}: {line}"
    for key, value in fields.items():
        assert line.get(key) == value, f"log line {key}={line.get(key)!r}, expected {value!r}: {line}"
    assert line.get("level") in ("warning", "error"), f"error logged at level {line.get('level')!r}: {line}"
    return line
