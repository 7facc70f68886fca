"""Token issue throughput of one auth-token replica: ``python -m bench.token_issue``.

Starts its own durable embedded PostgreSQL (fsync on) and one auth-token replica, creates
``--users`` users, then drives ``--concurrency`` concurrent issuers (a Node keep-alive HTTP
client on loopback, cheaper per request than any Python client) for ``--duration`` seconds
after a warm-up, each issuing ``POST /v1/tokens`` back to back with its user's API key (and
waiting out ``Retry-After`` after a refusal, as our clients do).

Reports tokens/s (201 answers), p50/p99 latency of every answer, the answers by status,
and CPU per token (user+system from /proc) of the auth-token process and of PostgreSQL
(the postmaster, its live children and the reaped ones) over the measured window, plus the
machine's load average, which says how much of the CPU others were using meanwhile.

Every process is a child of this script and is stopped by its PID at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from bench.stack import proc_cpu
from tether_dev.pg import EmbeddedPostgres, free_port

REPO = Path(__file__).resolve().parents[1]

# One issuer loop per concurrency slot; each issuer uses the API key of user (i mod users).
# Latency of every answer in the window; statuses counted; JSON summary on stdout.
_CLIENT = r"""
const http = require('http');
const [url, keysJson, concurrency, warmup, duration] = process.argv.slice(1);
const keys = JSON.parse(keysJson);
const target = new URL(url + '/v1/tokens');
const agent = new http.Agent({keepAlive: true, maxSockets: Number(concurrency)});
const body = '{}';
let measuring = false, stop = false;
const lat = [], statuses = {};
function one(key) {
  return new Promise((resolve) => {
    const t0 = process.hrtime.bigint();
    const req = http.request({agent, host: target.hostname, port: target.port, path: target.pathname,
      method: 'POST', headers: {'Content-Type': 'application/json', 'Content-Length': body.length,
      'Authorization': 'Bearer ' + key}}, (res) => {
        res.resume();
        res.on('end', () => {
          if (measuring) {
            lat.push(Number(process.hrtime.bigint() - t0) / 1e6);
            statuses[res.statusCode] = (statuses[res.statusCode] || 0) + 1;
          }
          resolve([res.statusCode, Number(res.headers['retry-after'] || 0)]);
        });
      });
    req.on('error', () => { if (measuring) statuses.error = (statuses.error || 0) + 1; resolve([0, 0]); });
    req.end(body);
  });
}
async function issuer(i) {
  const key = keys[i % keys.length];
  // connections open over most of the warm-up, not as one SYN flood
  await new Promise(r => setTimeout(r, i * Number(warmup) * 800 / Number(concurrency)));
  while (!stop) {
    const [status, retryAfter] = await one(key);
    // as our clients do: a refusal's Retry-After is pacing (seconds), a network error waits 50 ms
    if (status === 503 || status === 429) await new Promise(r => setTimeout(r, retryAfter * 1000 || 50));
    else if (status === 0) await new Promise(r => setTimeout(r, 50));
  }
}
const loops = [];
for (let i = 0; i < Number(concurrency); i++) loops.push(issuer(i));
setTimeout(() => { measuring = true; console.error('MARK start'); }, Number(warmup) * 1000);
setTimeout(() => { measuring = false; stop = true; console.error('MARK end'); }, (Number(warmup) + Number(duration)) * 1000);
Promise.all(loops).then(() => {
  lat.sort((a, b) => a - b);
  const q = (p) => lat.length ? lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] : null;
  console.log(JSON.stringify({answers: lat.length, statuses, p50_ms: q(0.5), p99_ms: q(0.99), max_ms: lat[lat.length - 1] || null}));
  agent.destroy();
});
"""


def listen_overflows() -> int:
    """TcpExt ListenOverflows (machine-wide): connections refused because an accept queue was full."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            return int(dict(zip(head.split()[1:], values.split()[1:], strict=False)).get("ListenOverflows", 0))
    return 0


def taskset(cpus: str) -> list[str]:
    return [] if cpus in ("", "none") else ["taskset", "-c", cpus]


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"auth-token exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url + "/readyz", timeout=1) as response:
            if response.status == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"auth-token not ready after {timeout}s:\n{log.read_text()[-3000:]}")


def create_users(dsn: str, count: int) -> list[str]:
    keys = []
    for index in range(count):
        out = subprocess.run(
            [sys.executable, "-m", "tether_auth.cli", "--database-url", dsn, "create-user", f"bench{index}"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        keys.append(next(x.split("=", 1)[1] for x in out.splitlines() if x.startswith("api_key=")))
    return keys


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    workdir.chmod(workdir.stat().st_mode | 0o011)  # the cluster's OS user must traverse it
    pg = EmbeddedPostgres(workdir / "pg", free_port(), fast=False)
    auth: subprocess.Popen[bytes] | None = None
    try:
        pg.start()
        dsn = pg.create_database("bench")
        postmaster = psutil.Process(int((pg.data_dir / "postmaster.pid").read_text().split()[0]))
        if args.pg_cpus not in ("", "none"):
            for proc in [postmaster, *postmaster.children(recursive=True)]:
                with contextlib.suppress(psutil.Error, OSError):
                    os.sched_setaffinity(proc.pid, {int(c) for c in args.pg_cpus.split(",")})
        port = free_port()
        log = workdir / "auth-token.out"
        env = {k: v for k, v in os.environ.items() if not (k.startswith("TETHER_") or k == "DATABASE_URL")}
        env.update(
            {
                "DATABASE_URL": dsn,
                "TETHER_AUTH_PORT": str(port),
                "TETHER_SERVICE_KEYS": f"session={secrets.token_hex(16)}",
                "TETHER_TOKEN_ISSUE_PER_MINUTE": "100000000",
                "TETHER_LOG_LEVEL": "warning",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(dict(pair.split("=", 1) for pair in args.env))
        with log.open("ab") as out:
            auth = subprocess.Popen(
                [*taskset(args.auth_cpus), sys.executable, "-m", "tether_auth"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, auth, log)
        keys = create_users(dsn, args.users)
        auth_ps = psutil.Process(auth.pid)
        client = subprocess.Popen(
            [
                *taskset(args.client_cpus),
                "node",
                "-e",
                _CLIENT,
                url,
                json.dumps(keys),
                str(args.concurrency),
                str(args.warmup),
                str(args.duration),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert client.stderr is not None
        assert client.stdout is not None
        marks: dict[str, tuple[float, float, float, int]] = {}
        for line in client.stderr:
            if line.startswith("MARK "):
                marks[line.split()[1]] = (
                    time.monotonic(),
                    proc_cpu(auth_ps),
                    proc_cpu(postmaster, with_children=True),
                    listen_overflows(),
                )
                if "end" in marks:
                    break
        summary = json.loads(client.stdout.read() or "{}")
        client.wait(timeout=30)
        (t0, auth0, pg0, drops0), (t1, auth1, pg1, drops1) = marks["start"], marks["end"]
        issued = int(summary["statuses"].get("201", 0))
        return {
            "concurrency": args.concurrency,
            "users": args.users,
            "window_s": round(t1 - t0, 2),
            "tokens_per_s": round(issued / (t1 - t0), 1),
            "p50_ms": round(summary["p50_ms"], 2) if summary["p50_ms"] is not None else None,
            "p99_ms": round(summary["p99_ms"], 2) if summary["p99_ms"] is not None else None,
            "max_ms": round(summary["max_ms"], 2) if summary["max_ms"] is not None else None,
            "statuses": summary["statuses"],
            "auth_cpu_ms_per_token": round((auth1 - auth0) * 1000 / issued, 3) if issued else None,
            "pg_cpu_ms_per_token": round((pg1 - pg0) * 1000 / issued, 3) if issued else None,
            "auth_cpu_util": round((auth1 - auth0) / (t1 - t0), 2),
            "pg_cpu_util": round((pg1 - pg0) / (t1 - t0), 2),
            "listen_overflows": drops1 - drops0,
            "loadavg_1m": os.getloadavg()[0],
        }
    finally:
        if auth is not None:
            auth.terminate()
            try:
                auth.wait(timeout=20)
            except subprocess.TimeoutExpired:
                auth.kill()
                auth.wait()
        pg.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--auth-cpus", default="0", help="taskset list for auth-token ('none': unpinned)")
    parser.add_argument("--pg-cpus", default="1", help="CPUs for PostgreSQL ('none': unpinned)")
    parser.add_argument("--client-cpus", default="1", help="taskset list for the load client")
    parser.add_argument("--env", action="append", default=[], help="extra KEY=VALUE for auth-token")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tether-token-bench-", dir="/tmp"))
    try:
        print(json.dumps(run(args, workdir)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
