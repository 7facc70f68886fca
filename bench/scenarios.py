"""Tether's scenarios: each starts what it needs, drives the Node load client, returns numbers.

Every scenario returns a dict of plain numbers (see :mod:`bench.report` for the columns):
server CPU per unit (session replica; Postgres and auth-token separately), wall throughput,
latency percentiles, RSS, the load client's CPU share, and ``lost``/``duplicates`` wherever
events are delivered.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from .report import _g, fold_counts
from .stack import Service, Stack, taskset, window

BENCH = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Sizes:
    fanout_sockets: int = 200
    fanout_events: int = 1000
    fanout_batch: int = 1  # events per publish: one, like the peers' broadcasts
    fanout_batch_variant: int = 10  # the batched-publish variant row
    stream_events: int = 50_000
    stream_batch: int = 50
    stream_inflight: int = 2
    rate: int = 1000
    rate_seconds: float = 10
    agent_streams: int = 100  # concurrent answers of the built-in agent, one socket and project each
    agent_stream_chunks: int = 1000
    agent_delay_ms: int = 5  # between chunks of one answer: 200 tokens/s per stream
    agent_chunks: int = 5000  # the bulk variant: one answer, no delay
    echo_conns: int = 200
    echo_rounds: int = 200
    idle: tuple[int, ...] = (1000, 10_000)
    storm: int = 5000
    storm_projects: int = 50
    storm_concurrency: int = 500
    storm_deadline_s: int = 180  # 5b: a session not back by then stops trying and counts as not recovered
    catchup_events: int = 100_000
    cold_runs: int = 3


FULL = Sizes()
QUICK = Sizes(
    fanout_events=200,
    stream_events=10_000,
    rate_seconds=3,
    agent_streams=20,
    agent_stream_chunks=300,
    agent_chunks=1000,
    echo_rounds=50,
    idle=(1000, 2000),
    storm=1000,
    storm_projects=20,
    storm_concurrency=200,
    catchup_events=20_000,
    cold_runs=2,
)
TINY = Sizes(
    fanout_sockets=5,
    fanout_events=20,
    fanout_batch_variant=5,
    stream_events=200,
    stream_batch=20,
    rate=200,
    rate_seconds=1,
    agent_streams=2,
    agent_stream_chunks=10,
    agent_chunks=20,
    echo_conns=5,
    echo_rounds=5,
    idle=(20, 40),
    storm=30,
    storm_projects=3,
    storm_concurrency=10,
    storm_deadline_s=60,
    catchup_events=500,
    cold_runs=1,
)


QUIET_LIMIT = 20.0  # seconds; set by bench.run (--quiet-wait)
PROFILE_DIR: Path | None = None  # set by bench.run (--profile): py-spy over every measured window
_profiles: dict[str, int] = {}


class PgWaits(threading.Thread):
    """Samples ``pg_stat_activity`` (active backends of the bench database) every 20 ms."""

    def __init__(self, dsn: str, path: Path) -> None:
        super().__init__(daemon=True)
        self.dsn, self.path = dsn, path
        self.stop_flag = threading.Event()
        self.counts: dict[str, int] = {}
        self.samples = 0

    def run(self) -> None:
        import asyncio

        import asyncpg

        async def sample() -> None:
            conn = await asyncpg.connect(self.dsn, timeout=5)
            try:
                while not self.stop_flag.is_set():
                    rows = await conn.fetch(
                        """SELECT coalesce(wait_event_type, 'CPU') || ':' || coalesce(wait_event, 'running')
                                  || '  ' || left(regexp_replace(query, '\\s+', ' ', 'g'), 70) AS k
                           FROM pg_stat_activity
                           WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()"""
                    )
                    self.samples += 1
                    for r in rows:
                        self.counts[r["k"]] = self.counts.get(r["k"], 0) + 1
                    await asyncio.sleep(0.02)
            finally:
                await conn.close()

        with contextlib.suppress(Exception):
            asyncio.run(sample())

    def finish(self) -> None:
        self.stop_flag.set()
        self.join(10)
        n = max(1, self.samples)
        lines = [
            f"{self.samples} samples of pg_stat_activity (active backends, every 20 ms)",
            "",
            "avg backends  wait_event_type:wait_event  query",
        ]
        lines += [f"{c / n:8.2f}      {k}" for k, c in sorted(self.counts.items(), key=lambda x: -x[1])[:25]]
        self.path.write_text("\n".join(lines) + "\n")


class Profiler:
    """``py-spy record`` on the session replica over one measured window (raw collapsed stacks),
    and what the Postgres backends wait on (:class:`PgWaits`)."""

    def __init__(self, pid: int, name: str, client_cpu: str, dsn: str = "") -> None:
        assert PROFILE_DIR is not None
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
        k = _profiles[name] = _profiles.get(name, 0) + 1
        self.path = PROFILE_DIR / f"{name}-{k}.folded"
        self.waits = PgWaits(dsn, PROFILE_DIR / f"{name}-{k}.pgwait.txt") if dsn else None
        if self.waits is not None:
            self.waits.start()
        self.popen = subprocess.Popen(
            [
                *taskset(client_cpu),
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--rate",
                "250",
                "--function",
                "--nonblocking",
                "--output",
                str(self.path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> Path:
        if self.waits is not None:
            self.waits.finish()
        self.popen.send_signal(signal.SIGINT)
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
        if self.path.exists():
            summarize(self.path)
        return self.path


def summarize(path: Path, top: int = 40) -> Path:
    """``<profile>.top.txt``: self and inclusive sample shares per function (idle loop excluded)."""
    own, incl, total = fold_counts(path)
    out = path.with_suffix(".top.txt")
    lines = [f"{total} samples (250/s, active threads only)", "", "self %   function"]
    lines += [f"{n / total * 100:6.1f}   {f}" for f, n in sorted(own.items(), key=lambda x: -x[1])[:top]]
    lines += ["", "incl %   function"]
    lines += [f"{n / total * 100:6.1f}   {f}" for f, n in sorted(incl.items(), key=lambda x: -x[1])[:top]]
    out.write_text("\n".join(lines) + "\n")
    return out


class ClientFailed(RuntimeError):
    pass


def wait_quiet(stack: Stack, session: Service | None, threshold: float = 0.15) -> float:
    """Wait (up to ``QUIET_LIMIT`` s) until the machine's busy CPU is below ``threshold`` cores.

    Like the peers' runner: a window that starts while other work runs measures that work's
    cache and scheduler effects too; ``foreign_cpu`` in each result says how much there was.
    """
    t0 = time.monotonic()
    while time.monotonic() - t0 < QUIET_LIMIT:
        a = stack.snapshot(session, None)
        time.sleep(0.5)
        w = window(a, stack.snapshot(session, None))
        # between windows every process of ours should be idle too: count all busy time
        busy = w["foreign_cpu"] + (w["session_cpu_s"] + w["pg_cpu_s"] + w["auth_cpu_s"]) / w["wall_s"]
        if busy < threshold:
            break
    return round(time.monotonic() - t0, 1)


def run_client(
    stack: Stack,
    session: Service,
    cfg: dict[str, Any],
    *,
    on_wait: Callable[[str], dict[str, Any] | None] | None = None,
    timeout: float = 900,
    quiet: bool = True,
) -> dict[str, Any]:
    """Run ``bench/loadgen.mjs`` with ``cfg``; sample CPU at its MARK lines; return RESULT + windows."""
    cmd = [*taskset(stack.client_cpu), "node", str(BENCH / "loadgen.mjs"), json.dumps(cfg)]
    err = (stack.logs / f"loadgen-{cfg['mode']}.err").open("ab")
    popen = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, cwd=BENCH)
    assert popen.stdout is not None
    assert popen.stdin is not None
    ps = psutil.Process(popen.pid)
    killer = threading.Timer(timeout, popen.kill)
    killer.start()
    windows: list[dict[str, Any]] = []
    waits: dict[str, Any] = {}
    result: dict[str, Any] | None = None
    failure = ""
    start = None
    quiet_waits: list[float] = []
    prof: Profiler | None = None
    try:
        for raw in popen.stdout:
            line = raw.rstrip("\n")
            if line == "MARK start":
                if PROFILE_DIR is not None:
                    prof = Profiler(session.ps.pid, cfg["mode"], stack.client_cpu, stack.dsn)
                start = stack.snapshot(session, ps)
            elif line == "MARK end" and start is not None:
                windows.append(window(start, stack.snapshot(session, ps)))
                if prof is not None:
                    stack.log(f"    profile: {prof.stop()}")
                    prof = None
            elif line.startswith("WAIT "):
                what = line[5:]
                if quiet:
                    quiet_waits.append(wait_quiet(stack, session))
                if on_wait is not None:
                    waits[what] = on_wait(what)
                popen.stdin.write("go\n")
                popen.stdin.flush()
            elif line.startswith("RESULT "):
                result = json.loads(line[7:])
            elif line.startswith("FAILED "):
                failure = line[7:]
            elif line.startswith("LOG "):
                stack.log(f"    client: {line[4:]}")
        popen.wait(30)
    finally:
        if prof is not None:
            prof.stop()
        killer.cancel()
        if popen.poll() is None:
            popen.kill()
            popen.wait(5)
        with contextlib.suppress(OSError):
            popen.stdin.close()
        err.close()
    if result is None:
        raise ClientFailed(f"load client {cfg['mode']} failed: {failure or 'no RESULT'} (exit {popen.returncode})")
    result["windows"] = windows
    result["waits"] = {k: v for k, v in waits.items() if v}
    result["quiet_wait_s"] = quiet_waits
    return result


def _per(value_s: float, units: float) -> float | None:
    return round(value_s / units * 1e6, 2) if units else None


def _costs(w: dict[str, Any], units: float, prefix: str = "") -> dict[str, Any]:
    """Per-unit CPU (µs) of each process group and the client's CPU share over window ``w``.

    ``system_us`` is what the whole system spent per unit (session + PostgreSQL + auth-token) and
    ``system_cores`` the cores it kept busy on average: the figures set against a peer, which is
    one process."""
    system_s = w["session_cpu_s"] + w["pg_cpu_s"] + w["auth_cpu_s"]
    return {
        f"{prefix}system_us": _per(system_s, units),
        f"{prefix}system_cores": round(system_s / w["wall_s"], 2) if w["wall_s"] else None,
        f"{prefix}session_us": _per(w["session_cpu_s"], units),
        f"{prefix}session_sys_share": round(w["session_sys_s"] / w["session_cpu_s"], 2) if w["session_cpu_s"] else None,
        f"{prefix}pg_us": _per(w["pg_cpu_s"], units),
        f"{prefix}auth_us": _per(w["auth_cpu_s"], units),
        f"{prefix}client_cpu_share": round(w["client_cpu_s"] / w["wall_s"], 2) if w["wall_s"] else None,
        f"{prefix}session_cpu_share": round(w["session_cpu_s"] / w["wall_s"], 2) if w["wall_s"] else None,
        f"{prefix}core_busy": w["core_busy"],
        f"{prefix}foreign_cpu": w["foreign_cpu"],
        f"{prefix}listen_overflows": w["listen_overflows"],
        f"{prefix}session_cpu_s": w["session_cpu_s"],
        f"{prefix}wall_s": w["wall_s"],
    }


def _lat(r: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k.startswith(prefix + "_p") or k == prefix + "_max_ms"}


_CLIENT_INFO = ("batch_frames", "batch_granted", "deflate", "extensions", "event_messages", "events_per_message")


def _client_info(r: dict[str, Any]) -> dict[str, Any]:
    """What the load client offered (batch frames, permessage-deflate) and what the server granted."""
    return {k: r[k] for k in _CLIENT_INFO if k in r}


# -- 1. durable fan-out ---------------------------------------------------------------------------
def fanout(stack: Stack, session: Service, sz: Sizes, batch: int | None = None) -> dict[str, Any]:
    """``batch``: events per publish request (default ``sz.fanout_batch``)."""
    project = stack.create_project(session, "bench fanout")
    cfg = stack.client_config(
        session,
        "fanout",
        project=project,
        sockets=sz.fanout_sockets,
        events=sz.fanout_events,
        batch=batch or sz.fanout_batch,
        inflight=2,
    )
    r = run_client(stack, session, cfg)
    w = r["windows"][0]
    return {
        "sockets": r["sockets"],
        "events": r["events"],
        "batch": r["batch"],
        "deliveries": r["delivered"],
        "expected": r["expected"],
        "deliveries_per_s": r["deliveries_per_s"],
        "events_per_s": r["events_per_s"],
        **_costs(w, r["expected"]),
        "pg_us_per_event": _per(w["pg_cpu_s"], r["events"]),
        "session_us_per_event": _per(w["session_cpu_s"], r["events"]),
        **_lat(r, "lat"),
        **_client_info(r),
        "rss_mb": round(session.rss() / 2**20, 1),
        "lost": r["lost"],
        "duplicates": r["duplicates"],
    }


# -- 2. agent token stream -------------------------------------------------------------------------
def stream(stack: Stack, session: Service, sz: Sizes, *, inflight: int | None = None) -> dict[str, Any]:
    project = stack.create_project(session, "bench stream")
    cfg = stack.client_config(
        session,
        "stream",
        project=project,
        events=sz.stream_events,
        batch=sz.stream_batch,
        inflight=inflight or sz.stream_inflight,
    )
    r = run_client(stack, session, cfg)
    w = r["windows"][0]
    more: dict[str, Any] = {}
    if inflight is None:
        # the same publisher with twice the requests in flight: with 2, a request waits for the
        # one before it (latency-bound, the replica's core is not saturated); this shows capacity
        more["more_inflight"] = stream(stack, session, sz, inflight=2 * sz.stream_inflight)
    return {
        **more,
        "events": r["events"],
        "batch": r["batch"],
        "inflight": r["inflight"],
        "events_per_s": r["events_per_s"],
        **_costs(w, r["events"]),
        **_lat(r, "lat"),
        **_client_info(r),
        "rss_mb": round(session.rss() / 2**20, 1),
        "lost": r["lost"],
        "duplicates": r["duplicates"],
    }


def stream_rate(stack: Stack, session: Service, sz: Sizes) -> dict[str, Any]:
    project = stack.create_project(session, "bench stream rate")
    cfg = stack.client_config(session, "stream_rate", project=project, rate=sz.rate, seconds=sz.rate_seconds)
    r = run_client(stack, session, cfg)
    w = r["windows"][0]
    return {
        "rate": r["rate"],
        "events": r["events"],
        "events_per_s": r["events_per_s"],
        "max_inflight_requests": r["max_inflight_requests"],
        **_costs(w, r["events"]),
        **_lat(r, "lat"),
        **_client_info(r),
        "lost": r["lost"],
        "duplicates": r["duplicates"],
        # the latency floor with durability on: a request waits for the commit in flight, then its own
        **disk_flush(stack),
        "diagnostic_sync_commit_off": stream_rate_sync_commit_off(stack, sz),
    }


def disk_flush(stack: Stack, n: int = 200) -> dict[str, float]:
    """What one WAL flush costs on the cluster's disk, like ``pg_test_fsync``'s one 8 kB write +
    ``fdatasync`` (Linux's default ``wal_sync_method``): ``n`` times, same offset, median and p99."""
    assert stack.pg is not None
    path = stack.pg.data_dir.parent / "flush-probe.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    times: list[float] = []
    try:
        block = b"\0" * 8192
        os.pwrite(fd, block, 0)
        os.fsync(fd)
        for _ in range(n):
            t0 = time.perf_counter()
            os.pwrite(fd, block, 0)
            os.fdatasync(fd)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    times.sort()
    return {
        "fdatasync_p50_ms": round(statistics.median(times), 3),
        "fdatasync_p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 3),
    }


def stream_rate_sync_commit_off(stack: Stack, sz: Sizes) -> dict[str, Any]:
    """DIAGNOSTIC ONLY, never the product setting: scenario 2b again on a fresh replica whose
    database has ``synchronous_commit = off`` (a commit returns before its WAL flush; a crash can
    lose the last commits).  Separates the software's own ingest→client latency from the disk's
    flush wait, which the durable run includes."""
    assert stack.pg is not None
    stack.pg.psql("ALTER DATABASE bench SET synchronous_commit = off")
    diag: Service | None = None
    try:
        setting = stack.pg.psql("SHOW synchronous_commit", database="bench").strip()
        diag = stack.start_session("none")  # its connections are new: they get the setting
        project = stack.create_project(diag, "bench stream rate diagnostic")
        cfg = stack.client_config(diag, "stream_rate", project=project, rate=sz.rate, seconds=sz.rate_seconds)
        r = run_client(stack, diag, cfg)
        w = r["windows"][0]
        return {
            "label": "DIAGNOSTIC: synchronous_commit=off (not durable; not the product setting)",
            "synchronous_commit": setting,
            "rate": r["rate"],
            "events_per_s": r["events_per_s"],
            **_costs(w, r["events"]),
            **_lat(r, "lat"),
            "lost": r["lost"],
            "duplicates": r["duplicates"],
        }
    finally:
        if diag is not None:
            stack.stop(diag)
        stack.pg.psql("ALTER DATABASE bench RESET synchronous_commit")


def agent_builtin(stack: Stack, sz: Sizes, *, bulk: bool = False) -> dict[str, Any]:
    """The built-in agent streaming answers: ``sz.agent_streams`` prompts at once, each answered with
    ``sz.agent_stream_chunks`` chunks ``sz.agent_delay_ms`` apart (tokens arriving over time, each
    committed as it is produced).  ``bulk``: one answer of ``sz.agent_chunks`` chunks with no delay,
    committed together as they are ready (a bulk insert, a variant row only)."""
    streams, chunks, delay = (
        (1, sz.agent_chunks, 0) if bulk else (sz.agent_streams, sz.agent_stream_chunks, sz.agent_delay_ms)
    )
    session = stack.start_session("builtin", TETHER_AGENT_CHUNKS=str(chunks), TETHER_AGENT_DELAY_MS=str(delay))
    try:
        projects = [stack.create_project(session, f"bench agent {i}") for i in range(streams)]
        r = run_client(stack, session, stack.client_config(session, "agent", projects=projects, chunks=chunks))
        w = r["windows"][0]
        return {
            "streams": r["streams"],
            "chunks": r["chunks"],
            "delay_ms": delay,
            "offered_events_per_s": round(streams * 1000 / delay) if delay else None,
            "events_per_s": r["events_per_s"],
            "first_chunk_ms": r["first_chunk_ms"],
            **_costs(w, r["received_chunks"]),
            **_lat(r, "first_chunk"),
            **_lat(r, "chunk_gap"),
            **_client_info(r),
            "rss_mb": round(session.rss() / 2**20, 1),
            "lost": r["lost"],
            "duplicates": r["duplicates"],
        }
    finally:
        stack.stop(session)


# -- 3. echo-equivalent ----------------------------------------------------------------------------
def echo(stack: Stack, session: Service, sz: Sizes) -> dict[str, Any]:
    projects = [stack.create_project(session, f"bench echo {i}") for i in range(sz.echo_conns)]
    cfg = stack.client_config(session, "echo", projects=projects, rounds=sz.echo_rounds, warmup=5)
    r = run_client(stack, session, cfg)
    w = r["windows"][0]
    return {
        "conns": r["conns"],
        "rounds": r["rounds"],
        "total": r["total"],
        "msgs_per_s": r["msgs_per_s"],
        **_costs(w, r["total"]),
        **_lat(r, "rtt"),
        **_client_info(r),
        "rss_mb": round(session.rss() / 2**20, 1),
        "lost": r["lost"],
        "duplicates": r["duplicates"],
    }


# -- 4. idle ---------------------------------------------------------------------------------------
def idle(stack: Stack, n: int, projects_per: int = 100) -> dict[str, Any]:
    """A fresh replica (like the peers' idle test): RSS before, and with ``n`` sessions open + ready."""
    session = stack.start_session("none")
    try:
        projects = [stack.create_project(session, f"bench idle {i}") for i in range(max(1, min(50, n // projects_per)))]
        time.sleep(1.0)
        base = session.rss()

        def measure(what: str) -> dict[str, Any] | None:
            if what != "idle":
                return None
            time.sleep(3.0)  # as the peers' runner does before reading RSS
            return {"rss": session.rss(), "conns": len(session.ps.net_connections(kind="tcp"))}

        cfg = stack.client_config(session, "idle", projects=projects, n=n, concurrency=100)
        r = run_client(stack, session, cfg, on_wait=measure, quiet=False)
        m = r["waits"]["idle"]
        w = r["windows"][0]
        return {
            "n": n,
            "live": r["live"],
            "rss_base_mb": round(base / 2**20, 1),
            "rss_mb": round(m["rss"] / 2**20, 1),
            "kb_per_conn": round((m["rss"] - base) / 1024 / n, 1),
            "tcp_conns_seen": m["conns"],
            "open_secs_incl_tokens": r["open_secs_incl_tokens"],
            "session_us_per_open": _per(w["session_cpu_s"], n),
            "refusals": r["refusals"],
            "server_closes": r["server_closes"],
            **_client_info(r),
            "lost": 0 if r["live"] == n else n - r["live"],
        }
    finally:
        stack.stop(session)


# -- 5. connect storm ------------------------------------------------------------------------------
def storm(stack: Stack, sz: Sizes) -> dict[str, Any]:
    session = stack.start_session("none")
    try:
        # one user per project, as real clients are many users: auth-token's per-user checks then see
        # each user's own tokens, not all of the storm's
        keys = [stack.create_user(f"bench-storm-{i}") for i in range(sz.storm_projects)]
        projects = [stack.create_project(session, f"bench storm {i}", key) for i, key in enumerate(keys)]
        cfg = stack.client_config(
            session,
            "storm",
            projects=projects,
            api_keys=keys,
            n=sz.storm,
            concurrency=sz.storm_concurrency,
            publish_interval_ms=20,
            recover_deadline_ms=sz.storm_deadline_s * 1000,
        )
        r = run_client(stack, session, cfg)
        w1, w2 = r["windows"]
        return {
            "n": r["n"],
            "projects": r["projects"],
            "users": len(keys),
            "concurrency": r["concurrency"],
            "connects_per_s": r["connects_per_s"],
            **_costs(w1, r["n"], "connect_"),
            **_lat(r, "connect"),
            "recover_secs": r["recover_secs"],
            "not_recovered": _g(r, "reconnect_detail", "not_recovered") or 0,
            "reconnects_per_s": r["reconnects_per_s"],
            **_costs(w2, r["n"], "reconnect_"),
            **_lat(r, "reconnect"),
            "refusals_connect": r["refusals_connect"],
            "refusals_reconnect": r["refusals_reconnect"],
            "reconnect_pacing": r.get("reconnect_pacing"),
            "reconnect_detail": r.get("reconnect_detail"),
            **_client_info(r),
            "published_during": r["published_during"],
            "rss_mb": round(session.rss() / 2**20, 1),
            "lost": r["lost"],
            "duplicates": r["duplicates"],
            "behind_sessions": r["behind_sessions"],
        }
    finally:
        stack.stop(session)


# -- 6. catch-up -----------------------------------------------------------------------------------
def catchup(stack: Stack, session: Service, sz: Sizes) -> dict[str, Any]:
    project = stack.create_project(session, "bench catchup")
    fill = run_client(
        stack,
        session,
        stack.client_config(session, "fill", project=project, events=sz.catchup_events, batch=500, inflight=2),
        quiet=False,
    )
    stack.log(f"    filled {fill['events']} events in {fill['secs']} s ({fill['events'] / fill['secs']:.0f}/s)")
    r = run_client(
        stack, session, stack.client_config(session, "catchup", project=project, expect_last=fill["last_seq"])
    )
    w = r["windows"][0]
    return {
        "events": r["received"],
        "events_per_s": r["events_per_s"],
        "ready_ms": r["ready_ms"],
        "secs": r["secs"],
        **_costs(w, r["received"]),
        "fill_events_per_s": round(fill["events"] / fill["secs"]),
        **_client_info(r),
        "rss_mb": round(session.rss() / 2**20, 1),
        "lost": r["lost"],
        "duplicates": r["duplicates"],
    }


# -- 7. cold start ---------------------------------------------------------------------------------
def cold_start(stack: Stack, sz: Sizes) -> dict[str, Any]:
    """Process start (Popen) to the first ``/readyz`` 200, on the already-migrated database.

    The replica's own ``tether_startup_phase_seconds`` (from ``/metrics``) splits the time:
    the start-up phases (database, migrations, auth-token, LISTEN) versus everything before
    them (interpreter, imports, ``create_app``, Hypercorn binding).
    """
    runs: list[float] = []
    phases: dict[str, float] = {}
    rss = 0
    for _ in range(sz.cold_runs):
        wait_quiet(stack, None)
        t0 = time.monotonic()
        session = stack.start_session("none")  # polls /readyz every 20 ms
        runs.append(time.monotonic() - t0)
        rss = session.rss()
        phases = startup_phases(session)
        stack.stop(session)
    median = statistics.median(runs)
    return {
        "runs_s": [round(x, 3) for x in runs],
        "median_s": round(median, 3),
        "phases_s": phases,
        "before_phases_s": round(runs[-1] - phases.get("total", 0.0), 3),
        "rss_mb": round(rss / 2**20, 1),
    }


def startup_phases(session: Service) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(session.url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("tether_startup_phase_seconds{"):
            name = line.split('phase="', 1)[1].split('"', 1)[0]
            out[name] = round(float(line.rsplit(" ", 1)[1]), 3)
    return out
