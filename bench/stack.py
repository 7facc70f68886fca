"""The system under test, started by the harness: embedded Postgres, auth-token, session replicas.

Every process is a subprocess of the harness and is stopped by its own PID at the end
(:meth:`Stack.close`).  The session replica is pinned to ``session_cpu`` (core 0); the
load client to ``client_cpu`` (core 1); Postgres and auth-token to ``infra_cpu`` (core 1
by default, so the replica has its core to itself, like each peer server).

CPU is read from ``/proc`` (psutil) at the load client's ``MARK start`` / ``MARK end``
lines: session replica, Postgres (postmaster + backends + reaped children), auth-token,
the load client, each core, and what nobody of ours used ("foreign": other work on the
machine during the window).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tether_dev.pg import EmbeddedPostgres, free_port

REPO = Path(__file__).resolve().parents[1]


def http_json(
    url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None, timeout: float = 10
) -> tuple[int, Any]:
    """A tiny blocking HTTP client (stdlib): the harness' own setup calls, never on a measured path."""
    assert url.startswith("http://")
    hostport, _, path = url[len("http://") :].partition("/")
    host, _, port = hostport.partition(":")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        hdrs.update(headers or {})
        conn.request(method, "/" + path, body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw else None)
    finally:
        conn.close()


def ready(url: str, timeout: float = 0.5) -> bool:
    try:
        status, _ = http_json(url + "/readyz", timeout=timeout)
    except (OSError, http.client.HTTPException, ValueError):
        return False
    return status == 200


def pin(pid: int, cpus: set[int] | None) -> None:
    """Pin a process and all its threads (and its current children) to ``cpus``."""
    if cpus is None:
        return
    with contextlib.suppress(psutil.Error, OSError):
        proc = psutil.Process(pid)
        for p in [proc, *proc.children(recursive=True)]:
            for thread in p.threads():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(thread.id, cpus)


def cpu_set(spec: str | None) -> set[int] | None:
    if spec in (None, "", "none"):
        return None
    out: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def taskset(spec: str | None) -> list[str]:
    return [] if spec in (None, "", "none") else ["taskset", "-c", spec]


def proc_cpu(p: psutil.Process | None, *, with_children: bool = False) -> float:
    """CPU seconds (user+system) of ``p``; with reaped children and live children if asked."""
    if p is None:
        return 0.0
    try:
        t = p.cpu_times()
        total = t.user + t.system
        if with_children:
            total += t.children_user + t.children_system
            for child in p.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    ct = child.cpu_times()
                    total += ct.user + ct.system
        return float(total)
    except psutil.Error:
        return 0.0


def _busy(t: Any) -> float:
    return float(t.user + t.nice + t.system + t.irq + t.softirq + t.steal)


def listen_overflows() -> int:
    """TcpExt ListenOverflows (system-wide): connections dropped because an accept queue was full."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return 0
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            pairs = dict(zip(head.split()[1:], values.split()[1:], strict=False))
            return int(pairs.get("ListenOverflows", 0))
    return 0


@dataclass
class Snapshot:
    t: float
    session: float
    pg: float
    auth: float
    client: float
    cores: list[float]
    total_busy: float
    overflows: int = 0
    session_sys: float = 0.0


@dataclass
class Service:
    name: str
    url: str
    port: int
    popen: subprocess.Popen[bytes]
    ps: psutil.Process
    log: Path

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def cpu(self) -> float:
        return proc_cpu(self.ps)

    def sys_cpu(self) -> float:
        try:
            return float(self.ps.cpu_times().system)
        except psutil.Error:
            return 0.0


@dataclass
class Stack:
    workdir: Path
    session_cpu: str = "0"
    client_cpu: str = "1"
    infra_cpu: str = "1"
    log: Any = print
    pg: EmbeddedPostgres | None = None
    dsn: str = ""
    auth: Service | None = None
    sessions: list[Service] = field(default_factory=list)
    api_key: str = ""
    service_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    ingest_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    logs_dir: Path | None = None
    keep_pg: bool = False
    session_pythonpath: str = ""  # A/B runs: a patched copy of the session service (and its libs) first
    # what the load client's sessions offer (see bench/loadgen.mjs): the headline rows do the peers'
    # work, one frame per event; batched 'events' frames (INIT batch: true, what Tether's clients ask
    # for) and permessage-deflate (browsers offer it) are variant rows
    batch_frames: bool = False
    deflate: bool = False
    reconnect_pacing: str = "tether.js"  # storm 5b: like tether.js, or "pool" (<= concurrency handshakes in flight)
    _pg_ps: psutil.Process | None = None
    _counter: int = 0

    @property
    def logs(self) -> Path:
        return self.logs_dir or self.workdir / "logs"

    # -- Postgres ---------------------------------------------------------------------
    def start_pg(self) -> None:
        """A fresh cluster (durable: fsync on), one database ``bench``."""
        if self.logs_dir is None and self.logs.exists():
            shutil.rmtree(self.logs)  # the previous run's logs in this work folder
        self.logs.mkdir(parents=True, exist_ok=True)
        # the cluster runs as an unprivileged user (when we are root) whose group is still root's:
        # the work folder needs group and other search permission, not only other
        self.workdir.chmod(self.workdir.stat().st_mode | 0o011)
        pg = EmbeddedPostgres(self.workdir / "pg", free_port(), fast=False)
        if (pg.data_dir / "postmaster.pid").exists():
            pg.destroy()  # a previous run of this harness that did not finish; its own cluster
        elif pg.data_dir.exists():
            shutil.rmtree(pg.data_dir)
        pg.start()
        self.pg = pg
        self.dsn = pg.create_database("bench")
        pid = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
        self._pg_ps = psutil.Process(pid)
        pin(pid, cpu_set(self.infra_cpu))

    def pg_settings(self) -> dict[str, str]:
        assert self.pg is not None
        rows = self.pg.psql(
            "SELECT name || '=' || setting FROM pg_settings WHERE name IN "
            "('fsync','synchronous_commit','full_page_writes','shared_buffers','server_version')"
        )
        return dict(line.split("=", 1) for line in rows.split())

    # -- services ---------------------------------------------------------------------
    def _spawn(self, name: str, module: str, env: dict[str, str], cpus: str | None, port: int) -> Service:
        self._counter += 1
        out = self.logs / f"{name}-{self._counter}.out"
        full = {k: v for k, v in os.environ.items() if not (k.startswith("TETHER_") or k == "DATABASE_URL")}
        full.update(env)
        full.update(
            {
                "DATABASE_URL": self.dsn,
                "TETHER_LOG_LEVEL": "info",  # as shipped (infra/ configs): every connect and close logs a line
                "TETHER_LOG_FILE": str(self.logs / f"{name}-{self._counter}.jsonl"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if module == "tether_session" and self.session_pythonpath:
            full["PYTHONPATH"] = os.pathsep.join(x for x in (self.session_pythonpath, full.get("PYTHONPATH")) if x)
        with out.open("ab") as fh:
            popen = subprocess.Popen(
                [*taskset(cpus), sys.executable, "-m", module],
                env=full,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        return Service(name, f"http://127.0.0.1:{port}", port, popen, psutil.Process(popen.pid), out)

    def wait_ready(self, svc: Service, timeout: float = 30) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if svc.popen.poll() is not None:
                raise RuntimeError(f"{svc.name} exited with {svc.popen.returncode}; see {svc.log}:\n{tail(svc.log)}")
            if ready(svc.url):
                return time.monotonic() - t0
            time.sleep(0.02)
        raise RuntimeError(f"{svc.name} not ready after {timeout}s; see {svc.log}:\n{tail(svc.log)}")

    def start_auth(self) -> None:
        port = free_port()
        env = {
            "TETHER_AUTH_PORT": str(port),
            "TETHER_SERVICE_KEYS": f"session={self.service_key}",
            # every bench client is the one user "bench": the per-user issue limit would measure itself
            "TETHER_TOKEN_ISSUE_PER_MINUTE": "1000000",
        }
        self.auth = self._spawn("auth-token", "tether_auth", env, self.infra_cpu, port)
        self.wait_ready(self.auth)
        self.api_key = self.create_user("bench")

    def create_user(self, name: str) -> str:
        """A user (auth-token's CLI): its API key."""
        out = subprocess.run(
            [sys.executable, "-m", "tether_auth.cli", "--database-url", self.dsn, "create-user", name],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        return next(x.split("=", 1)[1] for x in out.splitlines() if x.startswith("api_key="))

    def session_env(self, port: int, agent: str = "none", **extra: str) -> dict[str, str]:
        assert self.auth is not None
        env = {
            "TETHER_SESSION_PORT": str(port),
            "TETHER_AUTH_URL": self.auth.url,
            "TETHER_AUTH_SERVICE_KEY": self.service_key,
            "TETHER_INGEST_KEYS": f"bench={self.ingest_key}",
            "TETHER_AGENT_URL": agent,
            "TETHER_AGENT_DELAY_MS": "0",
            "TETHER_MAX_CONNECTIONS_PER_USER": "100000",
            "TETHER_PROMPTS_PER_MINUTE": "1000000",
            # every bench client comes from 127.0.0.1: the per-IP connect limit would measure itself
            "TETHER_CONNECTS_PER_IP_PER_MINUTE": "100000000",
        }
        env.update(extra)
        return env

    def start_session(self, agent: str = "none", **extra: str) -> Service:
        port = free_port()
        svc = self._spawn("session", "tether_session", self.session_env(port, agent, **extra), self.session_cpu, port)
        self.sessions.append(svc)
        self.wait_ready(svc)
        return svc

    def stop(self, svc: Service, timeout: float = 20) -> None:
        if svc.popen.poll() is None:
            svc.popen.send_signal(signal.SIGTERM)
            try:
                svc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                svc.popen.kill()
                svc.popen.wait(5)
        if svc in self.sessions:
            self.sessions.remove(svc)

    def close(self) -> None:
        for svc in list(self.sessions):
            self.stop(svc)
        if self.auth is not None:
            self.stop(self.auth)
            self.auth = None
        if self.pg is not None:
            with contextlib.suppress(Exception):
                if self.pg.log_file.exists():
                    shutil.copy(self.pg.log_file, self.logs / "postgres.log")
                if self.keep_pg:
                    self.pg.stop()
                else:
                    self.pg.destroy()
            self.pg = None

    # -- setup calls ------------------------------------------------------------------
    def create_project(self, session: Service, name: str, api_key: str = "") -> str:
        """A project of the user ``api_key`` (default: the one bench user)."""
        status, body = http_json(
            session.url + "/v1/projects", "POST", {"name": name}, {"Authorization": f"Bearer {api_key or self.api_key}"}
        )
        if status != 201:
            raise RuntimeError(f"create project: {status} {body}")
        return str(body["id"])

    def client_config(self, session: Service, mode: str, **kw: Any) -> dict[str, Any]:
        assert self.auth is not None
        return {
            "mode": mode,
            "ws_url": f"ws://127.0.0.1:{session.port}/v1/ws",
            "ingest_url": session.url,
            "ingest_key": self.ingest_key,
            "auth_url": self.auth.url,
            "api_key": self.api_key,
            "batch_frames": self.batch_frames,
            "deflate": self.deflate,
            "reconnect_pacing": self.reconnect_pacing,
            **kw,
        }

    # -- measurement ------------------------------------------------------------------
    def snapshot(self, session: Service | None, client: psutil.Process | None) -> Snapshot:
        per = psutil.cpu_times(percpu=True)
        return Snapshot(
            t=time.monotonic(),
            session=session.cpu() if session else 0.0,
            pg=proc_cpu(self._pg_ps, with_children=True),
            auth=self.auth.cpu() if self.auth else 0.0,
            client=proc_cpu(client),
            cores=[_busy(c) for c in per],
            total_busy=sum(_busy(c) for c in per),
            overflows=listen_overflows(),
            session_sys=session.sys_cpu() if session else 0.0,
        )


def window(a: Snapshot, b: Snapshot) -> dict[str, Any]:
    wall = b.t - a.t
    ours = (b.session - a.session) + (b.pg - a.pg) + (b.auth - a.auth) + (b.client - a.client)
    return {
        "wall_s": round(wall, 4),
        "session_cpu_s": round(b.session - a.session, 4),
        "session_sys_s": round(b.session_sys - a.session_sys, 4),
        "pg_cpu_s": round(b.pg - a.pg, 4),
        "auth_cpu_s": round(b.auth - a.auth, 4),
        "client_cpu_s": round(b.client - a.client, 4),
        "core_busy": [round((y - x) / wall, 2) for x, y in zip(a.cores, b.cores, strict=True)] if wall > 0 else [],
        "foreign_cpu": round(max(0.0, (b.total_busy - a.total_busy) - ours) / wall, 2) if wall > 0 else 0.0,
        "listen_overflows": b.overflows - a.overflows,
    }


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""
