"""``just fuzz``: the whole fuzz suite against freshly started services, with a readable report.

Usage::

    python -m tests.fuzz.run [--examples N] [--ws-examples M] [--report FILE] [-k EXPR] [-- PYTEST ARGS]

It runs ``pytest tests/fuzz`` (the same tests as the normal run, which start their own
Postgres database and services) with ``TETHER_FUZZ_EXAMPLES=N`` (cases per operation and per
generated scenario, default 100) and ``TETHER_FUZZ_WS_EXAMPLES=M`` (per WebSocket scenario,
default N), then prints, per service and per endpoint / frame type / failpoint, the cases
run and the failures, and for each failure the check, what it saw and a command that
reproduces it (schemathesis' curl command for HTTP cases; the pytest node otherwise, whose
output carries hypothesis' ``@reproduce_failure`` blob and the frames sent).

Exits 0 only when pytest passed and the report holds no failure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
REPORT_ENV = "TETHER_FUZZ_REPORT"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="just fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=100, help="cases per operation / scenario (default 100)")
    parser.add_argument(
        "--ws-examples", type=int, default=None, help="cases per WebSocket scenario (default: --examples)"
    )
    parser.add_argument("--report", type=Path, default=None, help="where to write the JSON report")
    parser.add_argument("-k", dest="keyword", default=None, help="only tests matching this pytest -k expression")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    return parser.parse_args(argv)


def run_pytest(args: argparse.Namespace, report: Path) -> tuple[int, float, Path | None]:
    env = dict(os.environ)
    env["TETHER_FUZZ_EXAMPLES"] = str(args.examples)
    env["TETHER_FUZZ_WS_EXAMPLES"] = str(args.ws_examples or args.examples)
    env[REPORT_ENV] = str(report)
    command = [sys.executable, "-m", "pytest", "tests/fuzz", "-p", "no:cacheprovider", "-q", "--timeout=3600"]
    if args.keyword:
        command += ["-k", args.keyword]
    command += args.pytest_args
    print(
        f"$ TETHER_FUZZ_EXAMPLES={env['TETHER_FUZZ_EXAMPLES']} TETHER_FUZZ_WS_EXAMPLES={env['TETHER_FUZZ_WS_EXAMPLES']} {' '.join(command[1:])}",
        flush=True,
    )
    started = time.monotonic()
    proc = subprocess.Popen(command, cwd=REPO, env=env)
    code = proc.wait()
    elapsed = time.monotonic() - started
    logs = sorted((REPO / "artifacts" / "logs").glob(f"*-{proc.pid}"))
    return code, elapsed, logs[-1] if logs else None


def _kind(target: str) -> str:
    if target.startswith("failpoint refused"):
        return "failpoint refused"
    if target.startswith("failpoint "):
        return "failpoint"
    if target.startswith(("frame ", "server frame ", "ws ")):
        return "websocket"
    if target.startswith("security "):
        return "security"
    if target.startswith(("consumer contract", "contract:")):
        return "contract"
    if target.startswith("stateful"):
        return "stateful"
    return "endpoint"


def render(
    data: dict[str, Any], *, code: int, elapsed: float, args: argparse.Namespace, report: Path, logs: Path | None
) -> str:
    out: list[str] = []
    budget = f"{args.examples} cases/operation, {args.ws_examples or args.examples}/WebSocket scenario"
    out.append(f"Tether fuzz report — {dt.datetime.now():%Y-%m-%d %H:%M}, budget {budget}, {elapsed:.0f} s")
    failures_by_target: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for failure in data["failures"]:
        failures_by_target[(failure["service"], failure["target"])].append(failure)
    by_service: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for target in data["targets"]:
        by_service[target["service"]].append(target)
    for service in sorted(by_service):
        out.append("")
        out.append(f"{service}")
        out.append(f"  {'what':<64} {'kind':<18} {'cases':>6}  failures")
        for target in sorted(by_service[service], key=lambda t: (_kind(t["target"]), t["target"])):
            failed = failures_by_target.get((service, target["target"]), [])
            marks = ", ".join(sorted({f["check"] for f in failed})) or "-"
            out.append(f"  {target['target'][:64]:<64} {_kind(target['target']):<18} {target['cases']:>6}  {marks}")
        checks = sorted({c for t in by_service[service] for c in t["checks"]})
        out.append(textwrap.fill(f"checks: {', '.join(checks)}", 110, initial_indent="  ", subsequent_indent="    "))
    targets = data["targets"]
    endpoints = {(t["service"], t["target"]) for t in targets if _kind(t["target"]) == "endpoint"}
    failpoints = {t["target"] for t in targets if _kind(t["target"]) == "failpoint"}
    frames = {t["target"] for t in targets if t["target"].startswith(("frame ", "server frame "))}
    out.append("")
    out.append(
        f"Totals: {data['total_cases']} cases; {len(endpoints)} operations; {len(failpoints)} failpoints; "
        f"{len(frames)} frame types / invalid-frame kinds; {len(data['failures'])} distinct failures"
    )
    if data["failures"]:
        out.append("")
        out.append("Failures")
        by_check: dict[str, int] = defaultdict(int)
        for failure in data["failures"]:
            by_check[failure["check"]] += 1
        out.append("  by check: " + ", ".join(f"{check} {n}" for check, n in sorted(by_check.items())))
        for i, failure in enumerate(data["failures"], 1):
            out.append("")
            out.append(
                f"  [{i}] {failure['service']} · {failure['target']} · {failure['check']} (seen {failure['seen']}×)"
            )
            out.append(f"      {failure['title']}")
            message = "\n".join(failure["message"].strip().splitlines()[:12])
            out.append(textwrap.indent(message, "      | "))
            out.append("      Reproduce:")
            out.append(textwrap.indent(failure["repro"], "        "))
    out.append("")
    verdict = "PASS" if code == 0 and not data["failures"] else "FAIL"
    out.append(f"{verdict}: pytest exit code {code}; JSON report {report}" + (f"; service logs {logs}" if logs else ""))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    stamp = f"{dt.datetime.now():%Y%m%d-%H%M%S}"
    report = (args.report or REPO / "artifacts" / "fuzz" / f"report-{stamp}.json").resolve()
    report.unlink(missing_ok=True)
    code, elapsed, logs = run_pytest(args, report)
    if not report.exists():
        print(f"\nno fuzz report was written ({report}); pytest exit code {code}", file=sys.stderr)
        return code or 1
    data = json.loads(report.read_text(encoding="utf-8"))
    print()
    print(render(data, code=code, elapsed=elapsed, args=args, report=report, logs=logs))
    if code == 5:
        print("no tests ran: that is a failure", file=sys.stderr)
    return 0 if code == 0 and not data["failures"] else (code or 1)


if __name__ == "__main__":
    sys.exit(main())
