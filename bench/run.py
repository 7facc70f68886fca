"""``just bench``: Tether's scenarios and the peer servers, side by side, in one invocation.

    just bench                  # full sizes, all peers; writes bench/RESULTS.md
    just bench --quick          # small counts (a few minutes)
    just bench --only fanout,echo --peers none
    python -m bench.run --tiny --peers none --json /tmp/r.json --out -   # the smoke test's sizes

Everything is started here as subprocesses and stopped by PID at the end: an embedded
PostgreSQL (durable: fsync on), auth-token, session replicas, the Node load client
(``bench/loadgen.mjs``; ``npm install --prefix bench`` when ``ws`` is missing), and the
peers from their own folder (``/work/shared/peers/setup.sh`` → ``/tmp/tether-peers``).
Exit status 1 when a scenario failed or lost/duplicated an event.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import peers as peers_mod
from . import scenarios as sc
from .capacity import update_readme
from .report import load_notes, profile_summary, render
from .stack import REPO, Stack, taskset

BENCH = Path(__file__).resolve().parent
SCENARIOS = ["fanout", "stream", "stream_rate", "agent", "echo", "catchup", "idle", "storm", "cold_start"]
# extra rows next to the headline scenarios: the other delivery framing (fan-out, also with batched
# publish; catch-up), the built-in agent as a bulk insert, and permessage-deflate offered by the client
# (fan-out, idle 1,000; the peers' broadcast where they negotiate it)
VARIANTS = ["frames", "bulk", "deflate"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure_node_deps() -> None:
    if not (BENCH / "node_modules" / "ws" / "package.json").exists():
        log("installing the load client's dependency (npm install --prefix bench) ...")
        subprocess.run(
            ["npm", "install", "--prefix", str(BENCH), "--no-audit", "--no-fund"], check=True, timeout=600, cwd=REPO
        )


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


CALIBRATE = "import time\nbest = 9.0\nfor _ in range(5):\n    t = time.perf_counter(); s = 0\n    for i in range(1_000_000): s += i * i\n    best = min(best, time.perf_counter() - t)\nprint(round(best * 1000, 1))"


def calibrate(cpu: str) -> float | None:
    """ns per iteration of a fixed pure-Python loop on the server core: compares machines and runs
    (contention on a shared machine moves every µs/unit figure; bench/NOTES.md)."""
    try:
        out = subprocess.run(
            [*taskset(cpu), sys.executable, "-c", CALIBRATE], capture_output=True, text=True, timeout=60, check=True
        )
        return float(out.stdout.strip())
    except (subprocess.SubprocessError, ValueError):
        return None


def machine(args: argparse.Namespace, stack: Stack | None) -> dict[str, Any]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal"))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "just bench " + " ".join(sys.argv[1:]),
        "sizes": args.sizes_name,
        "commit": commit.strip() or "?",
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_gb": round(mem_kb / 2**20, 1),
        "kernel": f"Linux {platform.release()}",
        "python": platform.python_version(),
        "node": node,
        "pg": stack.pg_settings() if stack and stack.pg else {},
        "calibration_ns": calibrate(args.session_cpu),
        "session_cpu": args.session_cpu,
        "client_cpu": args.client_cpu,
        "infra_cpu": args.infra_cpu,
    }


def run_tether(args: argparse.Namespace, sizes: sc.Sizes, only: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    stack = Stack(
        Path(args.workdir),
        session_cpu=args.session_cpu,
        client_cpu=args.client_cpu,
        infra_cpu=args.infra_cpu,
        log=log,
        logs_dir=Path(args.logs) if args.logs else None,
        keep_pg=args.keep_pg,
        session_pythonpath=args.session_pythonpath,
        batch_frames=args.batch,
        reconnect_pacing=args.storm_pacing,
    )
    res: dict[str, Any] = {}
    variants: list[dict[str, Any]] = []
    try:
        log(f"starting embedded Postgres, auth-token, session in {args.workdir} ...")
        stack.start_pg()
        stack.start_auth()
        main = stack.start_session("none")
        mach = machine(args, stack)

        def attempt(label: str, fn: Callable[[], dict[str, Any]], **flags: bool) -> dict[str, Any]:
            """Run one scenario (with the load client's ``flags`` for its duration); errors are recorded."""
            log(f"[tether] {label} ...")
            t0 = time.monotonic()
            saved = {k: getattr(stack, k) for k in flags}
            seen = profiles_now()
            try:
                for k, v in flags.items():
                    setattr(stack, k, v)
                r = fn()
            except Exception as exc:  # noqa: BLE001 - recorded; one failed scenario must not stop the rest
                log(traceback.format_exc())
                r = {"error": f"{type(exc).__name__}: {exc}"}
            finally:
                for k, v in saved.items():
                    setattr(stack, k, v)
            new = sorted(profiles_now() - seen, key=lambda p: (len(p.name), p.name))
            if new:
                r["profiles"] = [profile_summary(p) for p in new]
            log(f"[tether] {label}: {json.dumps(r)[:600]} ({time.monotonic() - t0:.1f} s)")
            return r

        def step(name: str, fn: Callable[[], dict[str, Any]]) -> None:
            if name in only:
                res[name] = attempt(name, fn)

        def variant(name: str, label: str, fn: Callable[[], dict[str, Any]], **flags: bool) -> None:
            if name in only:
                variants.append({"scenario": name, "variant": label, **attempt(f"{name} ({label})", fn, **flags)})

        other = "per-event frames" if stack.batch_frames else "events frames (INIT batch: true)"
        step("fanout", lambda: sc.fanout(stack, main, sizes))
        if "frames" in args.variants:
            variant("fanout", other, lambda: sc.fanout(stack, main, sizes), batch_frames=not stack.batch_frames)
            nb = sizes.fanout_batch_variant
            variant(
                "fanout",
                f"events frames + batched publish ({nb} events per request)",
                lambda: sc.fanout(stack, main, sizes, batch=nb),
                batch_frames=True,
            )
        if "deflate" in args.variants:
            variant("fanout", "permessage-deflate offered", lambda: sc.fanout(stack, main, sizes), deflate=True)
        step("stream", lambda: sc.stream(stack, main, sizes))
        step("stream_rate", lambda: sc.stream_rate(stack, main, sizes))
        step("echo", lambda: sc.echo(stack, main, sizes))
        step("catchup", lambda: sc.catchup(stack, main, sizes))
        if "frames" in args.variants:
            variant("catchup", other, lambda: sc.catchup(stack, main, sizes), batch_frames=not stack.batch_frames)
        stack.stop(main)
        step("agent", lambda: sc.agent_builtin(stack, sizes))
        if "bulk" in args.variants:
            variant(
                "agent",
                f"bulk insert: 1 answer of {sizes.agent_chunks:,} chunks, no delay",
                lambda: sc.agent_builtin(stack, sizes, bulk=True),
            )
        if "idle" in only:
            res["idle"] = []
            for n in sizes.idle:
                r = attempt(f"idle {n}", functools.partial(sc.idle, stack, n))
                r.setdefault("n", n)
                res["idle"].append(r)
            if "deflate" in args.variants:
                first = functools.partial(sc.idle, stack, sizes.idle[0])
                variant("idle", "permessage-deflate offered", first, deflate=True)
        step("storm", lambda: sc.storm(stack, sizes))
        step("cold_start", lambda: sc.cold_start(stack, sizes))
        if variants:
            res["variants"] = variants
        return res, mach
    finally:
        stack.close()


def profiles_now() -> set[Path]:
    """The py-spy profiles written so far (``--profile``): a scenario's are the ones it added."""
    return set(sc.PROFILE_DIR.glob("*.folded")) if sc.PROFILE_DIR is not None and sc.PROFILE_DIR.exists() else set()


def run_peers(args: argparse.Namespace) -> list[dict[str, Any]]:
    names = peers_mod.ALL if args.peers == "all" else [x for x in args.peers.split(",") if x and x != "none"]
    if not names:
        return []
    root = Path(args.peers_root)
    peers_mod.ensure(root, log)
    runner = peers_mod.load_runner(root, args.quiet_wait)
    sizes = {"full": peers_mod.PEER_FULL, "quick": peers_mod.PEER_QUICK, "tiny": peers_mod.PEER_TINY}[args.sizes_name]
    out = []
    for name in names:
        log(f"[peer] {name} ...")
        try:
            r = peers_mod.bench_peer(runner, name, sizes, deflate="deflate" in args.variants)
        except Exception as exc:  # noqa: BLE001 - recorded; one failed scenario must not stop the rest
            log(traceback.format_exc())
            r = {"server": name, "error": f"{type(exc).__name__}: {exc}"}
        log(f"[peer] {name}: {json.dumps(r)[:600]}")
        out.append(r)
    return out


def problems(data: dict[str, Any]) -> list[str]:
    bad = []
    t = data["tether"]
    for name, r in t.items():
        for item in r if isinstance(r, list) else [r]:
            if "error" in item:
                bad.append(f"{name}: {item['error']}")
            elif item.get("lost", 0) or item.get("duplicates", 0):
                bad.append(f"{name}: lost={item.get('lost')} duplicates={item.get('duplicates')}")
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="just bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small counts (a few minutes in all)")
    size.add_argument("--tiny", action="store_true", help="tiny counts: the smoke test's sizes (numbers meaningless)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma list of {','.join(SCENARIOS)}")
    parser.add_argument("--peers", default=None, help="'all' (default), 'none' (default with --tiny), or a comma list")
    parser.add_argument("--peers-root", default=os.environ.get("TETHER_PEERS_ROOT", "/tmp/tether-peers"))
    parser.add_argument(
        "--workdir", default="/tmp/tether-bench", help="Postgres data, logs (default /tmp/tether-bench)"
    )
    parser.add_argument("--logs", default=None, help="service and client logs (default WORKDIR/logs)")
    parser.add_argument(
        "--keep-pg", action="store_true", help="keep the Postgres cluster (default: removed at the end)"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="markdown file ('-' = stdout only); default: bench/RESULTS.md, bench/results.json and README.md's"
        " Capacity section",
    )
    parser.add_argument("--json", default=None, help="also write the raw results as JSON here")
    parser.add_argument("--session-cpu", default="0")
    parser.add_argument("--client-cpu", default="1")
    parser.add_argument("--infra-cpu", default="1", help="cores for Postgres and auth-token ('none': unpinned)")
    parser.add_argument(
        "--session-pythonpath",
        default="",
        help="put these paths first on the session replica's PYTHONPATH (A/B runs of a patched copy)",
    )
    parser.add_argument(
        "--profile",
        default=None,
        help="py-spy the session replica over each window into this folder; RESULTS.md then shows, for each"
        " missed target, the top functions of its window",
    )
    parser.add_argument(
        "--batch",
        action="store_true",
        help="the headline rows' INIT asks for batched 'events' frames, as Tether's clients do (default: no"
        " batch, one 'event' frame per event, the peers' work)",
    )
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="extra rows: 'frames' (fan-out and catch-up with the other framing, fan-out with batched publish),"
        " 'bulk' (the built-in agent without delay), 'deflate' (fan-out, idle and the peers' broadcast with"
        " permessage-deflate offered); comma list or 'none'",
    )
    parser.add_argument(
        "--storm-pacing",
        choices=["tether.js", "pool"],
        default="tether.js",
        help="storm 5b reconnects: like tether.js (default: jittered, full-jitter backoff, no cap in flight) or"
        " 'pool' (at most the storm's concurrency in flight, retry after retry_after_ms)",
    )
    parser.add_argument("--notes", default=str(BENCH / "NOTES.md"), help="what was tried, per target (see the file)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        help="max seconds to wait for the machine to go quiet before each window (default 20; 0 with --tiny)",
    )
    args = parser.parse_args(argv)
    args.sizes_name = "tiny" if args.tiny else "quick" if args.quick else "full"
    sizes = {"full": sc.FULL, "quick": sc.QUICK, "tiny": sc.TINY}[args.sizes_name]
    if args.peers is None:
        args.peers = "none" if args.tiny else "all"
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.tiny else 20.0
    sc.QUIET_LIMIT = args.quiet_wait
    sc.PROFILE_DIR = Path(args.profile) if args.profile else None
    args.variants = [x.strip() for x in args.variants.split(",") if x.strip() and x.strip() != "none"]
    if set(args.variants) - set(VARIANTS):
        parser.error(f"unknown variants: {', '.join(sorted(set(args.variants) - set(VARIANTS)))}")
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if (os.cpu_count() or 1) < 2:
        log("warning: fewer than 2 CPUs; server and client will share a core")
        args.session_cpu = args.client_cpu = args.infra_cpu = "none"

    ensure_node_deps()
    raise_nofile()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    tether, mach = run_tether(args, sizes, only)
    peer_results = run_peers(args)
    data: dict[str, Any] = {"machine": mach, "tether": tether, "peers": peer_results, "notes": []}
    data["machine"]["total_secs"] = round(time.monotonic() - t0, 1)
    md = render(data, load_notes(Path(args.notes)))
    print(md)
    if args.out is None:
        # the repository's record of the run: RESULTS.md, results.json and README's Capacity section agree
        (BENCH / "RESULTS.md").write_text(md, encoding="utf-8")
        (BENCH / "results.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        update_readme(REPO / "README.md", data)
        log("wrote bench/RESULTS.md, bench/results.json and README.md's Capacity section")
    elif args.out != "-":
        Path(args.out).write_text(md, encoding="utf-8")
        log(f"wrote {args.out}")
    json_path = Path(args.json) if args.json else Path(args.workdir) / "results.json"
    json_path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    log(f"raw results: {json_path}; logs: {args.logs or Path(args.workdir) / 'logs'}")
    bad = problems(data)
    for b in bad:
        log(f"PROBLEM: {b}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
