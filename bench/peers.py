"""The peer servers, run from their own work folder (``<repo>/../shared/peers/setup.sh`` installs them).

Nothing of the peers is copied into this project: their ``runner.py`` is loaded from the
work folder and its ``start`` / ``client`` / ``stop`` drive the peers' own Node load
client (``loadgen.mjs``, the same ``ws`` package as Tether's), server pinned to core 0,
client to core 1, server CPU read over the client's measured window.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from tether_dev.pg import free_port

from .stack import REPO

# the peers' kit is a sibling of the repository (``<repo>/../shared/peers``), wherever the repository is
SETUP = Path(os.environ.get("TETHER_PEERS_SRC") or REPO.parent / "shared" / "peers") / "setup.sh"

# The names for the peers -> the runner's names.  socketio+uvicorn is "python-socketio".
ALL = [
    "websockets",
    "uvicorn+starlette",
    "hypercorn+quart",
    "hypercorn+quart(uvloop)",
    "socketio+uvicorn",
    "socketio+aiohttp",
    "daphne+channels",
    "node ws",
    "node socket.io",
    "go centrifuge",
]


@dataclass(frozen=True)
class PeerSizes:
    idle: int = 1000
    echo_conns: int = 200
    echo_rounds: int = 200
    bcast_conns: int = 200
    bcast_n: int = 250
    push: int = 50_000


PEER_FULL = PeerSizes()
PEER_QUICK = PeerSizes(echo_rounds=50, bcast_n=100, push=10_000)
PEER_TINY = PeerSizes(idle=20, echo_conns=5, echo_rounds=5, bcast_conns=5, bcast_n=5, push=200)


def ensure(root: Path, log: Any = print) -> None:
    if (root / "venv" / "bin" / "python").exists() and (root / "node_modules" / "ws").exists():
        return
    if not SETUP.exists():
        raise RuntimeError(f"peers are not set up in {root} and {SETUP} is missing")
    log(f"setting up the peers in {root} ({SETUP}) ...")
    subprocess.run(["bash", str(SETUP), str(root)], check=True, timeout=1800)


def load_runner(root: Path, quiet_limit: float = 45) -> ModuleType:
    os.environ["PEERS_ROOT"] = str(root)
    (root / "logs").mkdir(exist_ok=True)
    spec = importlib.util.spec_from_file_location("tether_peers_runner", root / "runner.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # the runner waits up to 45 s for a quiet machine before each window; the harness' limit applies
    wait_quiet = module.wait_quiet
    setattr(module, "wait_quiet", lambda p, limit=45: wait_quiet(p, limit=min(limit, quiet_limit)))  # noqa: B010
    return module


def _cores(r: dict[str, Any]) -> float | None:
    """The server's CPU over the client's window ÷ the window's wall time: how many cores it kept busy."""
    wall = r.get("wall_s")
    return round(r["server_cpu_s"] / wall, 2) if wall else None


def _err(r: dict[str, Any]) -> str | None:
    return str(r["error"])[:200] if "error" in r else None


def _deflate(runner: ModuleType, proto: str, port: int, p: Any, sz: PeerSizes) -> dict[str, Any]:
    probe = runner.client(proto, port, "probe", [], p)
    if _err(probe):
        return {"error": _err(probe)}
    res: dict[str, Any] = {"extensions": probe.get("extensions", "")}
    if "permessage-deflate" not in res["extensions"]:
        return res
    bc = runner.client(proto, port, "bcast", [sz.bcast_conns, sz.bcast_n], p, deflate=True)
    if _err(bc):
        res["bcast_error"] = _err(bc)
    else:
        res["bcast"] = {
            "expected": bc["expected"],
            "deliveries_per_s": bc["deliveries_per_s"],
            "session_us": round(bc["server_cpu_s"] / bc["expected"] * 1e6, 2),
            "cores": _cores(bc),
            "client_cpu_share": bc.get("client_cpu_window"),
            "lost": bc["expected"] - bc["deliveries"],
        }
    return res


def bench_peer(runner: ModuleType, name: str, sz: PeerSizes, deflate: bool = True) -> dict[str, Any]:
    """Idle RSS on a fresh instance; then echo (200 conns), broadcast, push on a second one.

    With ``deflate``: a probe connection that offers permessage-deflate (the runner's ``probe``
    mode; ``ws``'s offer, like a browser's) records what the server negotiates, and where it
    accepts, the broadcast runs a second time with every client offering it."""
    out: dict[str, Any] = {"server": name}
    t0 = time.monotonic()
    port = free_port()
    pr, p, proto = runner.start(name, port)
    try:
        base = p.memory_info().rss

        def on_ready() -> dict[str, Any]:
            time.sleep(3)
            return {"rss_idle": p.memory_info().rss}

        idle = runner.client(proto, port, "idle", [sz.idle, 5], p, on_ready=on_ready)
        if _err(idle) or "rss_idle" not in idle:
            out["idle_error"] = _err(idle) or "no RSS reading"
        else:
            out["idle"] = {
                "n": sz.idle,
                "rss_base_mb": round(base / 2**20, 1),
                "rss_mb": round(idle["rss_idle"] / 2**20, 1),
                "kb_per_conn": round((idle["rss_idle"] - base) / 1024 / sz.idle, 1),
            }
    finally:
        runner.stop(pr)
    port = free_port()
    pr, p, proto = runner.start(name, port)
    try:
        thr = runner.client(proto, port, "throughput", [sz.echo_conns, sz.echo_rounds], p)
        if _err(thr):
            out["echo_error"] = _err(thr)
        else:
            out["echo"] = {
                "total": thr["total"],
                "msgs_per_s": thr["msgs_per_s"],
                "session_us": round(thr["server_cpu_s"] / thr["total"] * 1e6, 2),
                "cores": _cores(thr),
                "client_cpu_share": thr.get("client_cpu_window"),
                "foreign_cpu": thr.get("foreign_cpu_frac"),
            }
        bc = runner.client(proto, port, "bcast", [sz.bcast_conns, sz.bcast_n], p)
        if _err(bc):
            out["bcast_error"] = _err(bc)
        else:
            out["bcast"] = {
                "expected": bc["expected"],
                "deliveries": bc["deliveries"],
                "deliveries_per_s": bc["deliveries_per_s"],
                "session_us": round(bc["server_cpu_s"] / bc["expected"] * 1e6, 2),
                "cores": _cores(bc),
                "client_cpu_share": bc.get("client_cpu_window"),
                "foreign_cpu": bc.get("foreign_cpu_frac"),
                "lost": bc["expected"] - bc["deliveries"],
            }
        if deflate:
            out["deflate"] = _deflate(runner, proto, port, p, sz)
        pu = runner.client(proto, port, "push", [sz.push], p)
        if _err(pu):
            out["push_error"] = _err(pu)
        else:
            out["push"] = {
                "n": pu["n"],
                "msgs_per_s": pu["msgs_per_s"],
                "session_us": round(pu["server_cpu_s"] / pu["n"] * 1e6, 2),
                "cores": _cores(pu),
                "client_cpu_share": pu.get("client_cpu_window"),
            }
        out["rss_end_mb"] = round(p.memory_info().rss / 2**20, 1)
    finally:
        runner.stop(pr)
    out["secs"] = round(time.monotonic() - t0, 1)
    return out
