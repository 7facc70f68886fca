"""Errors as data.

Each service declares one :class:`Catalogue` of error codes (HTTP status, title,
log level).  Code raises :class:`TetherError` with a code from it; one function
(:func:`tether_kit.http.problem`) turns it into an ``application/problem+json``
response *and* the structured log line, so no path can forget either.

Exception tree::

    TetherError                 a catalogue error (code, status, detail, extras)
     └── DependencyUnavailable  503 + Retry-After, names the dependency (F06)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ErrorSpec:
    code: str
    status: int
    title: str
    level: str = "warning"
    retry_after_s: int | None = None


class Catalogue:
    """The one list of error codes a service can answer with."""

    def __init__(self, specs: list[ErrorSpec]) -> None:
        self._specs = {s.code: s for s in specs}
        if len(self._specs) != len(specs):
            raise ValueError("duplicate error code in catalogue")

    def __getitem__(self, code: str) -> ErrorSpec:
        return self._specs[code]

    def __contains__(self, code: object) -> bool:
        return code in self._specs

    def codes(self) -> list[str]:
        return sorted(self._specs)

    def for_status(self, status: int) -> ErrorSpec:
        """The generic spec used for framework-level HTTP errors (404 route, 405...)."""
        for spec in self._specs.values():
            if spec.status == status and spec.code.startswith("http_"):
                return spec
        return self._specs["internal_error"]


# Codes every Tether HTTP service shares.  Services extend this list.
COMMON: list[ErrorSpec] = [
    ErrorSpec("internal_error", 500, "Internal error", level="error"),
    # warning: expected while an outage lasts; the outage itself is one error line
    # (logs.DependencyStates: dependency_lost / dependency_restored).
    ErrorSpec("dependency_unavailable", 503, "A dependency is unavailable", retry_after_s=2),
    ErrorSpec("not_ready", 503, "Service is starting up", retry_after_s=1),
    ErrorSpec("invalid_body", 400, "Request body is not valid JSON text"),
    ErrorSpec("unsupported_media_type", 415, "Request body must be application/json"),
    ErrorSpec("body_too_large", 413, "Request body is too large"),
    ErrorSpec("validation_failed", 422, "Request does not match the contract"),
    ErrorSpec("unauthenticated", 401, "Missing or invalid credentials"),
    ErrorSpec("forbidden", 403, "Not allowed"),
    ErrorSpec("origin_not_allowed", 403, "Origin is not in the allow-list"),
    ErrorSpec("not_found", 404, "Not found"),
    ErrorSpec("http_not_found", 404, "No such route"),
    ErrorSpec("http_method_not_allowed", 405, "Method not allowed"),
    ErrorSpec("http_bad_request", 400, "Bad request"),
    ErrorSpec("http_request_too_large", 413, "Request too large"),
    ErrorSpec("failpoint", 500, "Failpoint triggered (test mode)", level="error"),
    ErrorSpec("rate_limited", 429, "Too many requests", retry_after_s=1),
    ErrorSpec("failpoints_disabled", 400, "Failpoints can only be armed in test mode"),
]


@dataclass
class TetherError(Exception):
    code: str
    detail: str = ""
    extras: dict[str, Any] = field(default_factory=dict)
    retry_after_s: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # Already logged by its raiser at a bounded rate (a load shed: tether_kit.shedding), so the
    # response does not add its own http_error line; it still carries X-Request-ID.
    logged_elsewhere: bool = False

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}" if self.detail else self.code


class DependencyUnavailable(TetherError):
    """A dependency (database, another service) could not be reached."""

    def __init__(self, dependency: str, detail: str = "", retry_after_s: int = 2) -> None:
        super().__init__(
            "dependency_unavailable",
            detail or f"{dependency} is unavailable",
            extras={"dependency": dependency},
            retry_after_s=retry_after_s,
        )
        self.dependency = dependency
