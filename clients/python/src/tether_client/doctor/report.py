"""The doctor's report: each step's result, the whole run's verdict, and its configuration."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["ok", "warning", "failed", "skipped"]


@dataclass
class StepResult:
    id: str
    title: str
    status: Status
    detail: str = ""
    code: str | None = None  # catalogue code or problem+json code
    http_status: int | None = None
    close_code: int | None = None
    hint: str = ""  # what to do
    duration_ms: int = 0

    def render(self) -> str:
        if self.status == "ok":
            return f"✓ {self.title} — {self.detail}"
        if self.status == "skipped":
            return f"- {self.title} — skipped ({self.detail})"
        if self.status == "warning":
            hint = f"\n    → {self.hint}" if self.hint else ""
            return f"! {self.title} — {self.detail}{hint}"
        codes = []
        if self.http_status is not None:
            codes.append(f"HTTP {self.http_status}")
        if self.close_code is not None:
            codes.append(f"close {self.close_code}")
        if self.code:
            codes.append(self.code)
        tag = f" [{' '.join(codes)}]" if codes else ""
        hint = f"\n    → {self.hint}" if self.hint else ""
        return f"✗ {self.title} — {self.detail}{tag}{hint}"


@dataclass
class DoctorReport:
    steps: list[StepResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every step passed; a warning (a replica shedding load) does not fail the run."""
        return all(s.status in ("ok", "warning") for s in self.steps)

    @property
    def warnings(self) -> list[StepResult]:
        return [s for s in self.steps if s.status == "warning"]

    @property
    def failed(self) -> StepResult | None:
        return next((s for s in self.steps if s.status == "failed"), None)

    def to_json(self) -> dict[str, Any]:
        failed = self.failed
        return {
            "ok": self.ok,
            "failed_step": failed.id if failed else None,
            "warnings": [s.id for s in self.warnings],
            "steps": [asdict(s) for s in self.steps],
        }

    def summary(self) -> str:
        failed = self.failed
        if failed is None:
            warned = ", ".join(s.title for s in self.warnings)
            return f"doctor: all {len(self.steps)} checks passed" + (f" (warning: {warned})" if warned else "")
        number = self.steps.index(failed) + 1
        return f"doctor: FAILED at step {number} ({failed.title}): {failed.detail}"


class StepFailed(Exception):
    """A doctor step failed; the fields become the step's report."""

    def __init__(
        self,
        detail: str,
        *,
        hint: str = "",
        code: str | None = None,
        http_status: int | None = None,
        close_code: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.hint = hint
        self.code = code
        self.http_status = http_status
        self.close_code = close_code

    def result(self, step_id: str, title: str) -> StepResult:
        return StepResult(
            step_id,
            title,
            "failed",
            self.detail,
            code=self.code,
            http_status=self.http_status,
            close_code=self.close_code,
            hint=self.hint,
        )


class StepWarning(StepFailed):
    """A doctor step found something to fix that does not stop the checklist."""

    def result(self, step_id: str, title: str) -> StepResult:
        result = super().result(step_id, title)
        result.status = "warning"
        return result


@dataclass(frozen=True)
class DoctorConfig:
    auth_url: str
    session_url: str
    api_key: str | None
    project: str | None = None
    origin: str | None = None
    ws_url: str | None = None
    step_timeout_s: float = 15.0
    agent_timeout_s: float = 30.0
    batch: bool = True  # INIT asks for batched delivery (`events` frames), as the SDK does


STEPS: list[tuple[str, str]] = [
    ("auth_healthz", "auth-token /healthz"),
    ("auth_readyz", "auth-token /readyz"),
    ("session_healthz", "session /healthz"),
    ("session_readyz", "session /readyz"),
    ("shedding", "load shedding (/metrics)"),
    ("credentials", "credentials (/v1/me)"),
    ("project", "project"),
    ("token", "token issue"),
    ("ws_upgrade", "WebSocket upgrade"),
    ("init_ready", "INIT → ready"),
    ("prompt_round_trip", "prompt round trip"),
    ("resume", "reconnect + resume"),
]
