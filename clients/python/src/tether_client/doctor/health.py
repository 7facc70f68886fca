"""Steps 1-4 of the doctor: is each service alive, is it the right one, is it ready."""

from __future__ import annotations

import json

from ..errors import TetherHTTPError, TetherTransportError
from ..http import AuthClient, SessionHttp
from .advice import http_failure, not_ready
from .report import StepFailed


async def healthz(client: AuthClient | SessionHttp, service: str, option: str) -> str:
    try:
        body = await client.healthz()
    except (TetherHTTPError, TetherTransportError) as exc:
        raise http_failure(exc, service, option) from None
    if body.get("status") != "ok":
        raise StepFailed(
            f'{client.base_url}/healthz answered {json.dumps(body)[:120]}, not {{"status": "ok"}}',
            code="unexpected_answer",
            hint=f"is this URL the {service} service? Check {option}",
        )
    # Both services answer /healthz alike; their contracts say which one this is.
    try:
        info = (await client.openapi()).get("info")
    except (TetherHTTPError, TetherTransportError) as exc:
        return f"{client.base_url} is alive (cannot tell which service it is: /openapi.json: {exc})"
    title = str(info.get("title", "")) if isinstance(info, dict) else ""
    if f"{service} service" not in title:
        raise StepFailed(
            f"{client.base_url} is alive but it is {title or 'an unknown service'!r}, not the Tether {service} service",
            code="wrong_service",
            hint=f"point {option} at the {service} service",
        )
    return f"{client.base_url} is alive ({title})"


async def readyz(client: AuthClient | SessionHttp, service: str, option: str) -> str:
    """Ready, or the checks that failed: a not-ready service answers 503 with its ``checks``,
    each of which reports its own truth; the server's own summary is not the diagnosis."""
    try:
        readiness = await client.readyz()
    except TetherHTTPError as exc:
        checks = exc.problem.get("checks")
        if exc.status == 503 and isinstance(checks, dict) and checks:
            raise not_ready(service, checks, code=exc.code, http_status=exc.status) from None
        raise http_failure(exc, service, option) from None
    except TetherTransportError as exc:
        raise http_failure(exc, service, option) from None
    if not readiness.ready:
        raise not_ready(service, readiness.checks, code="not_ready", http_status=None)
    checks = ", ".join(f"{k} ✓" for k in readiness.checks) or "no checks reported"
    return f"ready ({checks})"
