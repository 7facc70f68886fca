"""The session service as a consumer of the auth-token contract.

Only two calls, exactly as contracts/auth-token/openapi.json describes them:
``POST /v1/tokens/consume`` (service credential) and ``GET /v1/me`` (the user's own
credential, forwarded).  In test mode every call can be recorded to a JSON-lines file
(token values replaced by same-length placeholders) for the consumer contract test.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from tether_kit.errors import DependencyUnavailable, TetherError

from .protocol import SessionError

_TOKEN_ERRORS = {404: "token_unknown", 409: "token_used", 410: "token_expired"}


@dataclass(frozen=True)
class Consumed:
    user_id: uuid.UUID
    project_id: uuid.UUID | None


@dataclass(frozen=True)
class AuthUser:
    id: uuid.UUID
    name: str


class AuthClient:
    def __init__(self, base_url: str, service_key: str, *, record_path: str | None = None) -> None:
        self.base_url = base_url
        self.service_key = service_key
        self.record_path = record_path
        self.http = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(3.0, connect=1.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    def _record(self, method: str, path: str, body: Any, response: httpx.Response) -> None:
        if not self.record_path:
            return
        if isinstance(body, dict) and "token" in body:
            body = {**body, "token": "x" * len(body["token"])}
        try:
            response_body: Any = response.json()
        except ValueError:
            response_body = response.text[:500]
        line = {
            "method": method,
            "path": path,
            "request_body": body,
            "request_content_type": "application/json" if body is not None else None,
            "status": response.status_code,
            "response_content_type": response.headers.get("content-type", ""),
            "response_headers": {"x-request-id": response.headers.get("x-request-id")},
            "response_body": response_body,
        }
        with open(self.record_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")

    async def consume(self, token: str, *, request_id: str) -> Consumed:
        """Consume a connection token; auth failures become catalogue SessionErrors."""
        body = {"token": token}
        try:
            response = await self.http.post(
                "/v1/tokens/consume",
                json=body,
                headers={"Authorization": f"Bearer {self.service_key}", "X-Request-ID": request_id},
            )
        except httpx.HTTPError as exc:
            raise SessionError(
                "auth_unavailable",
                "the auth-token service could not be reached",
                retry_after_ms=random.randint(500, 2000),
                log_fields={"dependency": "auth-token", "cause": type(exc).__name__},
            ) from exc
        self._record("POST", "/v1/tokens/consume", body, response)
        if response.status_code == 200:
            data = response.json()
            return Consumed(uuid.UUID(data["user_id"]), uuid.UUID(data["project_id"]) if data["project_id"] else None)
        code = _problem_code(response)
        if response.status_code in _TOKEN_ERRORS and code == _TOKEN_ERRORS[response.status_code]:
            raise SessionError(code, log_fields={"auth_request_id": response.headers.get("x-request-id")})
        if response.status_code >= 500:
            raise SessionError(
                "auth_unavailable",
                f"the auth-token service answered {response.status_code}",
                retry_after_ms=random.randint(500, 2000),
                log_fields={"dependency": "auth-token", "auth_code": code},
            )
        # 401 service_unauthenticated or anything undocumented: our configuration is wrong.
        raise SessionError(
            "internal_error",
            "the session service could not use the auth-token service",
            log_fields={"auth_status": response.status_code, "auth_code": code},
        )

    async def me(self, *, authorization: str | None, session_cookie: str | None, request_id: str) -> AuthUser:
        """Validate a user's credential by asking the auth-token service who it is."""
        headers = {"X-Request-ID": request_id}
        if authorization is not None:
            headers["Authorization"] = authorization
        cookies = {"tether_session": session_cookie} if session_cookie and authorization is None else None
        if authorization is None and not cookies:
            raise TetherError("unauthenticated", "a valid API key (Bearer) or session cookie is required")
        if not (authorization or "").isascii() or not (session_cookie or "").isascii():
            # Tether credentials are ASCII; httpx cannot forward anything else (it answered 500).
            raise TetherError("unauthenticated", "a valid API key (Bearer) or session cookie is required")
        try:
            response = await self.http.get("/v1/me", headers=headers, cookies=cookies)
        except httpx.HTTPError as exc:
            raise DependencyUnavailable("auth-token", "the auth-token service could not be reached") from exc
        self._record("GET", "/v1/me", None, response)
        if response.status_code == 200:
            data = response.json()
            return AuthUser(uuid.UUID(data["id"]), data["name"])
        if response.status_code == 401:
            raise TetherError("unauthenticated", "a valid API key (Bearer) or session cookie is required")
        raise DependencyUnavailable("auth-token", f"the auth-token service answered {response.status_code}")

    async def healthy(self) -> bool:
        try:
            response = await self.http.get("/healthz", timeout=1.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200


def _problem_code(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return "unparseable"
    code = data.get("code") if isinstance(data, dict) else None
    return code if isinstance(code, str) else "missing"
