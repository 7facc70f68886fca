"""Service subprocesses for black-box tests: started by module name, stopped by PID.

:class:`ServiceProcess` runs ``sys.executable -m <module>`` with an explicit environment.
Its stdout/stderr go to ``<log_dir>/<name>.out`` and its structured JSON log to
``<log_dir>/<name>.jsonl`` (through ``TETHER_LOG_FILE``), both kept under ``artifacts/``.
The port is learned from the service's ``{"event": "listening", "port": N}`` line, so
services are started on port 0.

Resource handling: every started process is recorded in a module-level registry; an
``atexit`` hook (and :func:`stop_all`, called by the session fixture) kills whatever is
still running, by PID, so no test run leaves a process behind.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import httpx

from tests.support.waiting import apoll_pause, poll_pause

from .waiting import scaled, timeout_scale

_LIVE: dict[int, ServiceProcess] = {}
_LIVE_LOCK = threading.Lock()
_COUNTER = iter(range(1, 1_000_000))


class ServiceFailed(AssertionError):
    """The service died or did not become ready in time (the message has its log tail)."""


class ServiceProcess:
    """One service subprocess.

    ``env`` is merged over ``os.environ`` minus ``DATABASE_URL``/``TETHER_*`` of the test
    runner, so only what the test sets reaches the service.  ``name`` names the log files
    (a counter is appended so names never collide).
    """

    def __init__(
        self, module: str, env: Mapping[str, str], *, name: str, log_dir: Path, host: str = "127.0.0.1"
    ) -> None:
        self.module = module
        self.host = host
        self.name = f"{name}-{next(_COUNTER)}"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.out_path = log_dir / f"{self.name}.out"
        self.log_path = log_dir / f"{self.name}.jsonl"
        base = {k: v for k, v in os.environ.items() if not (k.startswith("TETHER_") or k == "DATABASE_URL")}
        base.update(env)
        base["TETHER_LOG_FILE"] = str(self.log_path)
        base.setdefault("PYTHONUNBUFFERED", "1")
        self.env = base
        self._popen: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> ServiceProcess:
        """Spawn the process (returns at once; see :meth:`wait_listening`, :meth:`wait_ready`)."""
        if self._popen is not None:
            raise RuntimeError(f"{self.name} already started")
        with self.out_path.open("ab") as out:
            self._popen = subprocess.Popen(
                [sys.executable, "-m", self.module],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        with _LIVE_LOCK:
            _LIVE[self._popen.pid] = self
        return self

    @property
    def pid(self) -> int:
        return self._require().pid

    @property
    def returncode(self) -> int | None:
        return self._require().poll()

    def is_running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait up to ``timeout`` (scaled) for exit; SIGKILL and raise if it hangs.

        Returns the exit code.  A service that ignores SIGTERM is a bug (graceful drain, F15).
        """
        popen = self._require()
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout=scaled(timeout))
            except subprocess.TimeoutExpired:
                self.kill()
                raise ServiceFailed(
                    f"{self.name} (pid {popen.pid}) ignored SIGTERM for {scaled(timeout):.1f}s\n{self.tail()}"
                ) from None
        self._forget()
        return popen.returncode

    def kill(self) -> int:
        """SIGKILL and reap (a crash, as far as the service can tell)."""
        popen = self._require()
        if popen.poll() is None:
            popen.kill()
            popen.wait(timeout=scaled(15.0))
        self._forget()
        return popen.returncode

    def _require(self) -> subprocess.Popen[bytes]:
        if self._popen is None:
            raise RuntimeError(f"{self.name} was not started")
        return self._popen

    def _forget(self) -> None:
        if self._popen is not None:
            with _LIVE_LOCK:
                _LIVE.pop(self._popen.pid, None)

    def __enter__(self) -> ServiceProcess:
        if self._popen is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Terminate if still running (teardown helper; never raises on an already dead process)."""
        if self._popen is not None and self._popen.poll() is None:
            self.terminate()
        self._forget()

    # -- logs ------------------------------------------------------------------------------
    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (a partly written last line is left out)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        lines: list[dict[str, Any]] = []
        for raw in text.splitlines(keepends=True):
            if not raw.endswith("\n"):
                break
            raw = raw.strip()
            if raw:
                lines.append(json.loads(raw))
        return lines

    def events(self, event: str, **match: Any) -> list[dict[str, Any]]:
        """Log lines with ``event`` whose fields equal every ``match`` item."""
        return [
            line
            for line in self.log_lines()
            if line.get("event") == event and all(line.get(k) == v for k, v in match.items())
        ]

    def tail(self, lines: int = 40) -> str:
        """Last lines of stdout/stderr (which includes the JSON log), for failure messages."""
        try:
            text = self.out_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            text = ""
        status = "running" if self.is_running() else f"exited with {self._popen.returncode if self._popen else None}"
        body = "\n".join(text.splitlines()[-lines:])
        return f"--- {self.name} ({status}), {self.out_path} ---\n{body}"

    # -- port and readiness ---------------------------------------------------------------
    def wait_listening(self, timeout: float = 20.0) -> int:
        """Wait for the ``listening`` log line; return the port."""
        if self._port is not None:
            return self._port
        deadline = time.monotonic() + scaled(timeout)
        while True:
            found = self.events("listening")
            if found:
                self._port = int(found[0]["port"])
                return self._port
            if not self.is_running():
                raise ServiceFailed(f"{self.name} exited before listening\n{self.tail()}")
            if time.monotonic() >= deadline:
                raise ServiceFailed(f"{self.name} did not log 'listening' within {scaled(timeout):.1f}s\n{self.tail()}")
            poll_pause()

    @property
    def port(self) -> int:
        return self.wait_listening()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def wait_ready(self, timeout: float = 30.0, path: str = "/readyz") -> None:
        """Poll ``path`` until 200; raise :class:`ServiceFailed` with the log tail on timeout or death."""
        deadline = time.monotonic() + scaled(timeout)
        self.wait_listening(timeout)
        last = "no answer yet"
        with httpx.Client(timeout=scaled(2.0)) as client:
            while True:
                if not self.is_running():
                    raise ServiceFailed(f"{self.name} died before becoming ready\n{self.tail()}")
                try:
                    response = client.get(self.url + path)
                    if response.status_code == 200:
                        return
                    last = f"{response.status_code} {response.text[:200]}"
                except httpx.TransportError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                if time.monotonic() >= deadline:
                    raise ServiceFailed(
                        f"{self.name} not ready within {scaled(timeout):.1f}s (last: {last})\n{self.tail()}"
                    )
                poll_pause()

    async def wait_ready_async(self, timeout: float = 30.0, path: str = "/readyz") -> None:
        """:meth:`wait_ready` for async tests (trio or asyncio)."""
        deadline = time.monotonic() + scaled(timeout)
        await anyio.to_thread.run_sync(lambda: self.wait_listening(timeout))
        last = "no answer yet"
        async with httpx.AsyncClient(timeout=scaled(2.0)) as client:
            while True:
                if not self.is_running():
                    raise ServiceFailed(f"{self.name} died before becoming ready\n{self.tail()}")
                try:
                    response = await client.get(self.url + path)
                    if response.status_code == 200:
                        return
                    last = f"{response.status_code} {response.text[:200]}"
                except httpx.TransportError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                if time.monotonic() >= deadline:
                    raise ServiceFailed(
                        f"{self.name} not ready within {scaled(timeout):.1f}s (last: {last})\n{self.tail()}"
                    )
                await apoll_pause()

    def __repr__(self) -> str:
        pid = self._popen.pid if self._popen else None
        return f"<ServiceProcess {self.name} module={self.module} pid={pid} port={self._port}>"


def live_processes() -> list[ServiceProcess]:
    """Processes started by this test run that have not been stopped."""
    with _LIVE_LOCK:
        return list(_LIVE.values())


def stop_all() -> list[str]:
    """Kill every process still registered (by PID); return the names that were still alive."""
    leftovers: list[str] = []
    for proc in live_processes():
        if proc.is_running():
            leftovers.append(proc.name)
            proc.kill()
        proc._forget()
    return leftovers


def wait_all_ready(procs: Iterable[ServiceProcess], timeout: float = 30.0) -> None:
    """Wait until every process in ``procs`` is ready, within one overall (scaled) deadline."""
    deadline = time.monotonic() + scaled(timeout)
    for proc in procs:
        remaining = max(deadline - time.monotonic(), 0.1)
        proc.wait_ready(remaining / timeout_scale())


atexit.register(stop_all)
