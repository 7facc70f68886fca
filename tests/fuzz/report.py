"""The fuzz report: cases run and failures, per service and per endpoint / frame type.

Every part of the fuzz suite writes here: schemathesis through a global ``after_validate``
hook (:mod:`tests.fuzz.harness`), the failpoint, security, WebSocket and consumer-contract
tests directly, and ``tests/fuzz/conftest.py`` adds every failed pytest test.  At the end
of the pytest session the conftest writes it as JSON (``artifacts/fuzz/<run id>.json``
and ``$TETHER_FUZZ_REPORT`` when set); ``python -m tests.fuzz.run`` prints it.

Failures are deduplicated by (service, target, check, title): hypothesis replays and
shrinks a failing example many times, and the report wants one entry per distinct
problem, with the *last* (shrunk) reproduction command and how often it was seen.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPORT_ENV = "TETHER_FUZZ_REPORT"
MAX_MESSAGE = 1500


@dataclass
class FailureEntry:
    service: str
    target: str  # "POST /v1/projects", "frame init", "failpoint projects.create.after_insert_project", a test id
    check: str  # schemathesis check name, a Tether check, or "pytest"
    title: str
    message: str
    repro: str
    seen: int = 1


@dataclass
class FuzzReport:
    """Thread-safe accumulator (schemathesis may validate from worker threads)."""

    cases: Counter[tuple[str, str]] = field(default_factory=Counter)
    checks: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    failures: dict[tuple[str, str, str, str], FailureEntry] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def case(self, service: str, target: str, checks: list[str] | tuple[str, ...] = (), count: int = 1) -> None:
        """``count`` cases were run against ``target`` (an endpoint, a frame type, ...)."""
        with self._lock:
            self.cases[(service, target)] += count
            self.checks.setdefault((service, target), set()).update(checks)

    def failure(self, service: str, target: str, check: str, title: str, message: str, repro: str) -> None:
        key = (service, target, check, title)
        with self._lock:
            existing = self.failures.get(key)
            if existing is not None:
                existing.seen += 1
                existing.message = message[:MAX_MESSAGE]
                existing.repro = repro
                return
            self.failures[key] = FailureEntry(service, target, check, title, message[:MAX_MESSAGE], repro)

    def as_json(self) -> dict[str, Any]:
        with self._lock:
            targets = [
                {
                    "service": service,
                    "target": target,
                    "cases": count,
                    "checks": sorted(self.checks.get((service, target), ())),
                }
                for (service, target), count in sorted(self.cases.items())
            ]
            failures = [asdict(f) for f in self.failures.values()]
        return {"targets": targets, "failures": failures, "total_cases": sum(t["cases"] for t in targets)}

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_json(), indent=2, ensure_ascii=False), encoding="utf-8")


REPORT = FuzzReport()
