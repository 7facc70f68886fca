"""``./dev up``: embedded Postgres (or $DATABASE_URL), both services, the demo page.

Runs in the foreground; Ctrl-C (or SIGTERM) drains and stops every process it started,
by PID.  Re-running is safe: the Postgres data directory is kept under /tmp/tether,
migrations are idempotent, and the demo user gets a fresh API key each time.

    ./dev up                    # one replica of each service
    ./dev up --replicas 3       # three session replicas (ports 8002, 8003, 8004)
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .pg import DEFAULT_DATA, EmbeddedPostgres

STATE = Path("/tmp/tether")


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"up: {url} exited with code {proc.returncode}; see its log under {STATE}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass  # not listening yet: keep polling until the deadline
        time.sleep(0.1)
    raise SystemExit(f"up: {url} was not ready after {timeout:.0f}s")


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tether up", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", type=int, default=1, help="session service replicas")
    parser.add_argument("--pg-port", type=int, default=55432)
    parser.add_argument("--auth-port", type=int, default=8001)
    parser.add_argument("--session-port", type=int, default=8002)
    parser.add_argument(
        "--proxy-port", type=int, default=8080, help="with --replicas > 1: the one URL in front of the replicas"
    )
    parser.add_argument("--check", action="store_true", help="start, verify readiness, then stop (smoke test)")
    args = parser.parse_args(argv)
    STATE.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops everything, like Ctrl-C

    pg: EmbeddedPostgres | None = None
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        pg = EmbeddedPostgres(DEFAULT_DATA, args.pg_port)
        pg.start()
        database_url = pg.create_database("tether")
    service_key = secrets.token_urlsafe(24)
    ingest_key = secrets.token_urlsafe(24)
    session_ports = [args.session_port + i for i in range(args.replicas)]
    origins = ",".join(f"http://{h}:{p}" for p in session_ports for h in ("127.0.0.1", "localhost"))
    # --- local proxy (only with --replicas > 1; N=1 is unchanged) ---------------------------
    # One URL for all session replicas (infra/tether_dev/proxy.py, round robin over the
    # replicas whose /readyz is 200): the demo page, the public URL and the WebSocket URL all
    # point at it, and its origin is allowed for CORS and the WebSocket Origin check.
    proxy_url = f"http://127.0.0.1:{args.proxy_port}" if args.replicas > 1 else None
    proxy_env: dict[str, str] = {}
    if proxy_url is not None:
        origins += f",{proxy_url},http://localhost:{args.proxy_port}"
        proxy_env = {
            "TETHER_PUBLIC_URL": proxy_url,
            "TETHER_PUBLIC_WS_URLS": proxy_url.replace("http://", "ws://", 1) + "/v1/ws",
        }
    # ------------------------------------------------------------------------------------------
    base_env = {**os.environ, "DATABASE_URL": database_url}
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(module: str, env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
        log = open(STATE / log_name, "ab")  # noqa: SIM115 - owned by the child process for its lifetime
        proc = subprocess.Popen([sys.executable, "-m", module], env=env, stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    def stop_all(*_: object) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if pg is not None:
            pg.stop()

    try:
        auth_url = f"http://127.0.0.1:{args.auth_port}"
        auth = spawn(
            "tether_auth",
            {
                **base_env,
                "TETHER_AUTH_PORT": str(args.auth_port),
                "TETHER_SERVICE_KEYS": f"session={service_key}",
                "TETHER_CORS_ORIGINS": origins,
            },
            "auth-token.log",
        )
        _wait_ready(auth_url, auth)
        for port in session_ports:
            url = f"http://127.0.0.1:{port}"
            proc = spawn(
                "tether_session",
                {
                    **base_env,
                    "TETHER_SESSION_PORT": str(port),
                    "TETHER_AUTH_URL": auth_url,
                    "TETHER_AUTH_SERVICE_KEY": service_key,
                    "TETHER_INGEST_KEYS": f"agent={ingest_key}",
                    "TETHER_ALLOWED_ORIGINS": origins,
                    "TETHER_CORS_ORIGINS": origins,
                    "TETHER_PUBLIC_AUTH_URL": auth_url,
                    "TETHER_PUBLIC_WS_URLS": ",".join(f"ws://127.0.0.1:{p}/v1/ws" for p in session_ports),
                    "TETHER_REPLICA": f"session-{port}",
                    **proxy_env,
                },
                f"session-{port}.log",
            )
            _wait_ready(url, proc)
        if proxy_url is not None:  # --- local proxy: started once every replica is ready ---
            log = open(STATE / "proxy.log", "ab")  # noqa: SIM115 - owned by the child process for its lifetime
            backends = [arg for p in session_ports for arg in ("--backend", f"127.0.0.1:{p}")]
            proxy = subprocess.Popen(
                [sys.executable, "-m", "tether_dev.proxy", "--port", str(args.proxy_port), *backends],
                env=base_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            procs.append(proxy)
            _wait_ready(proxy_url, proxy)
        demo = subprocess.run(
            [sys.executable, "-m", "tether_auth.cli", "--database-url", database_url, "demo-user"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        api_key = next(line.split("=", 1)[1] for line in demo.splitlines() if line.startswith("api_key="))
        first = f"http://127.0.0.1:{session_ports[0]}"
        if proxy_url is not None:  # --- local proxy: the demo page is served through it ---
            first = proxy_url
        print(
            f"""
Tether is up.
  demo page        {first}/   (log in with the demo API key below)
  auth-token       {auth_url}   (openapi: {auth_url}/openapi.json)
  session          {", ".join(f"http://127.0.0.1:{p}" for p in session_ports)}
  postgres         {database_url}
  logs             {STATE}/*.log

Demo user API key (shown once; run ./dev up again for a new one):
  {api_key}

From a shell:
  export TETHER_API_KEY={api_key}
  .venv/bin/tether projects create "My project" && .venv/bin/tether doctor

Ctrl-C stops everything.""",
            flush=True,
        )
        if args.check:
            return 0
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        print("up: a service exited; stopping the rest", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_all()


if __name__ == "__main__":
    sys.exit(main())
