"""Turning a failure into advice for a person: what happened and what to do."""

from __future__ import annotations

from collections.abc import Mapping

from ..closing import CloseDecision
from ..errors import TetherHTTPError, TetherTransportError
from .report import StepFailed

# What to do when a /readyz check is false (the checks both services report).
CHECK_HINTS: Mapping[str, str] = {
    "postgres": "the {service} service cannot reach its database: check its DATABASE_URL and that PostgreSQL is up",
    "migrations": "the {service} service has not finished its schema migrations: it is starting, or its log says "
    "why it cannot",
    "listen": "the {service} service lost its LISTEN connection (live delivery between replicas): check its "
    "DATABASE_URL and that PostgreSQL is up",
    "auth_token": "the {service} service cannot reach the auth-token service: check its TETHER_AUTH_URL and "
    "the auth-token service's /readyz",
    "accepting": "the {service} replica is draining (shutting down): wait for its restart, or use another replica",
}


def http_failure(exc: TetherHTTPError | TetherTransportError, service: str, option: str) -> StepFailed:
    """A failed request, explained for a person: what happened and what to do."""
    if isinstance(exc, TetherTransportError):
        return StepFailed(
            f"cannot connect to {exc.url}: {exc.reason}",
            code="unreachable",
            hint=f"start the {service} service, or point {option} at it",
        )
    rid = f" (request_id {exc.request_id})" if exc.request_id else ""
    detail = f"{exc.detail or exc.title or 'error'}{rid}"

    def failed(what: str, hint: str) -> StepFailed:
        return StepFailed(what, hint=hint, code=exc.code, http_status=exc.status)

    if exc.code in ("http_not_found", "http_404", "http_method_not_allowed", "http_405"):
        return failed(f"{exc.url} has no such endpoint: {detail}", f"is this URL the {service} service? Check {option}")
    if exc.status == 401:
        return failed(
            f"the API key was refused: {detail}",
            "run `tether login` with a valid API key, or pass --api-key / set TETHER_API_KEY",
        )
    if exc.status == 429:
        wait = f" after {exc.retry_after_s:g}s" if exc.retry_after_s is not None else " later"
        return failed(f"rate limited: {detail}", f"try again{wait}")
    if exc.status == 503:
        dependency = exc.problem.get("dependency")
        what = f" (dependency: {dependency})" if dependency else ""
        return failed(
            f"{service} is unavailable{what}: {detail}{checks_text(exc.problem.get('checks'))}",
            f"the {service} service is starting or lost a dependency; check its log and its database",
        )
    if exc.status >= 500:
        return failed(f"{service} failed: {detail}", f"a server-side error: find the request_id in the {service} log")
    return failed(detail, f"unexpected answer from the {service} service")


def checks_text(checks: object) -> str:
    if not isinstance(checks, dict) or not checks:
        return ""
    return " — checks: " + ", ".join(f"{k} {'✓' if v else '✗'}" for k, v in checks.items())


def close_failure(decision: CloseDecision, during: str) -> StepFailed:
    hints = {
        "show_message": decision.message,
        "fix_client": "the client broke the protocol: upgrade tether-client, or report this as a bug",
        "reload": "the client is out of date or its history is gone: upgrade / start from a fresh state",
        "refresh_token": "the connection token was refused: the doctor used a fresh one, so check the clocks "
        "and that the session service reaches the same auth-token service",
        "backoff": "the server is busy or limiting this user: wait and run the doctor again",
        "reconnect": "the server asked to reconnect: run the doctor again in a moment",
        "resume": "the server dropped the connection: run the doctor again in a moment",
    }
    detail = f"the server closed the connection {during}: {decision.describe()}"
    return StepFailed(
        detail,
        code=decision.name,
        close_code=decision.code,
        hint=hints.get(decision.action, decision.message),
    )


def not_ready(service: str, checks: Mapping[str, object], *, code: str, http_status: int | None) -> StepFailed:
    """A readiness answer that is not ready: the checks that failed, each with its hint."""
    failed = [name for name, ok in checks.items() if ok is not True]
    hints = [
        CHECK_HINTS.get(name, f"{name}: see the {service} service's log").format(service=service) for name in failed
    ]
    return StepFailed(
        f"{service} is not ready: failed check(s): {', '.join(failed) or 'none named'}{checks_text(checks)}",
        code=code,
        http_status=http_status,
        hint="; ".join(hints) or f"the {service} service is starting: check its log",
    )
