"""HTTP clients of the two services: :class:`AuthClient` (auth-token) and
:class:`SessionHttp` (session: projects, close-code catalogue, health).

Both run on ``httpx.AsyncClient``, which works under trio.  Errors:

* an HTTP error answer raises :class:`~tether_client.errors.TetherHTTPError` with the
  problem+json ``code``, ``detail`` and ``request_id`` (and ``Retry-After``);
* a service that cannot be reached raises :class:`~tether_client.errors.TetherTransportError`.

Resource handling: a client made without ``client=`` owns its ``httpx.AsyncClient``;
use it as ``async with`` (or call :meth:`aclose`).  The API key is sent as
``Authorization: Bearer`` and appears in no ``repr``, message or log line.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from .closing import CloseCatalogue
from .errors import TetherHTTPError, TetherTransportError, connection_failure_reason
from .frames import Event, project_ref

DEFAULT_TIMEOUT_S = 10.0
USER_AGENT = "tether-client-python/0.1"

TokenSource = Callable[[], Awaitable[str]]


@dataclass(frozen=True)
class User:
    id: str
    name: str


@dataclass(frozen=True)
class IssuedToken:
    """A single-use connection token.  ``token`` is kept out of ``repr``: never print it."""

    token: str = field(repr=False)
    expires_at: str
    ttl_s: int
    project_id: str | None


@dataclass(frozen=True)
class Readiness:
    ready: bool
    checks: dict[str, bool]


@dataclass(frozen=True)
class Project:
    id: str
    slug: str
    name: str
    created_at: str
    last_seq: int


@dataclass(frozen=True)
class EventPage:
    events: list[Event]
    last_seq: int


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date: not used by Tether; treat as absent


def problem_error(status: int, body: bytes, headers: Mapping[str, str], url: str) -> TetherHTTPError:
    """Map an HTTP error answer to :class:`TetherHTTPError` (problem+json when it is one)."""
    problem: dict[str, Any] = {}
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None  # not JSON (a proxy's HTML page): fall back to the status line
    if isinstance(parsed, dict):
        problem = parsed
    code = problem.get("code")
    detail = problem.get("detail")
    title = problem.get("title")
    request_id = problem.get("request_id") or headers.get("x-request-id")
    if not isinstance(detail, str):
        detail = body[:200].decode("utf-8", "replace").strip() if not problem else ""
    return TetherHTTPError(
        status,
        code if isinstance(code, str) else f"http_{status}",
        detail,
        request_id if isinstance(request_id, str) else None,
        title=title if isinstance(title, str) else "",
        url=url,
        retry_after_s=_retry_after(headers.get("retry-after")),
        problem=problem,
    )


def describe_transport_error(exc: BaseException) -> str:
    """A short, human reason for a connection failure (refused, DNS, timeout...)."""
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    return connection_failure_reason(exc)


class _HttpBase:
    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        client: httpx.AsyncClient | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout_s, headers={"User-Agent": USER_AGENT})

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.base_url} api_key={'set' if self._api_key else 'unset'}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
        authenticated: bool = True,
        expect: tuple[int, ...] = (200,),
    ) -> httpx.Response:
        """One request; raise on a transport failure or an unexpected status."""
        url = self.base_url + path
        sent: dict[str, str] = dict(headers or {})
        if authenticated:
            if not self._api_key:
                raise TetherHTTPError(401, "unauthenticated", "no API key configured", None, url=url)
            sent["Authorization"] = f"Bearer {self._api_key}"
        try:
            response = await self._client.request(method, url, json=body, params=params, headers=sent)
        except httpx.TransportError as exc:
            raise TetherTransportError(url, describe_transport_error(exc)) from exc
        if response.status_code not in expect:
            raise problem_error(response.status_code, response.content, response.headers, url)
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self.request(method, path, **kwargs)
        try:
            data = response.json()
        except ValueError as exc:
            raise TetherHTTPError(
                response.status_code, "invalid_response", f"the answer is not JSON: {exc}", None, url=str(response.url)
            ) from None
        if not isinstance(data, dict):
            raise TetherHTTPError(
                response.status_code, "invalid_response", "the answer is not a JSON object", None, url=str(response.url)
            )
        return data

    async def healthz(self) -> dict[str, Any]:
        """``GET /healthz`` (liveness)."""
        return await self._json("GET", "/healthz", authenticated=False)

    async def openapi(self) -> dict[str, Any]:
        """``GET /openapi.json``: the service's contract (names the service in ``info.title``)."""
        return await self._json("GET", "/openapi.json", authenticated=False)

    async def metrics(self) -> str:
        """``GET /metrics``: the service's Prometheus text."""
        return (await self.request("GET", "/metrics", authenticated=False)).text

    async def readyz(self) -> Readiness:
        """``GET /readyz``.  Not ready is a :class:`TetherHTTPError` 503 whose
        ``problem["checks"]`` names what is missing."""
        data = await self._json("GET", "/readyz", authenticated=False)
        checks = data.get("checks")
        return Readiness(bool(data.get("ready")), dict(checks) if isinstance(checks, dict) else {})


class AuthClient(_HttpBase):
    """The auth-token service, authenticated with a user's API key."""

    async def me(self) -> User:
        """``GET /v1/me``: the user the API key belongs to (checks the key)."""
        data = await self._json("GET", "/v1/me")
        return User(str(data["id"]), str(data["name"]))

    async def issue_token(self, project_id: str | None = None) -> IssuedToken:
        """``POST /v1/tokens``: a fresh single-use connection token, bound to
        ``project_id`` when given.  Use it for one INIT or one reauth, then never again."""
        body: dict[str, str] = {} if project_id is None else {"project_id": project_id}
        data = await self._json("POST", "/v1/tokens", body=body, expect=(201, 200))
        return IssuedToken(
            token=str(data["token"]),
            expires_at=str(data["expires_at"]),
            ttl_s=int(data["ttl_s"]),
            project_id=data.get("project_id") if isinstance(data.get("project_id"), str) else None,
        )

    def token_source(self, project_id: str | None = None) -> TokenSource:
        """An async callable for :func:`~tether_client.open_session`: every call issues a
        new token (F05: never reuse one)."""

        async def get_token() -> str:
            return (await self.issue_token(project_id)).token

        return get_token


def _project(data: Mapping[str, Any]) -> Project:
    return Project(
        id=str(data["id"]),
        slug=str(data["slug"]),
        name=str(data["name"]),
        created_at=str(data["created_at"]),
        last_seq=int(data["last_seq"]),
    )


class SessionHttp(_HttpBase):
    """The session service's HTTP API.  ``api_key`` is needed for projects only."""

    async def close_codes(self) -> CloseCatalogue:
        """``GET /v1/protocol/close-codes``: the catalogue every retry decision reads."""
        data = await self._json("GET", "/v1/protocol/close-codes", authenticated=False)
        try:
            return CloseCatalogue.from_json(data)
        except ValueError as exc:
            raise TetherHTTPError(
                200, "invalid_response", str(exc), None, url=self.base_url + "/v1/protocol/close-codes"
            ) from None

    async def list_projects(self) -> list[Project]:
        data = await self._json("GET", "/v1/projects")
        return [_project(p) for p in data.get("projects", [])]

    async def create_project(self, name: str, *, idempotency_key: str | None = None) -> Project:
        """``POST /v1/projects`` with an ``Idempotency-Key`` (a new one unless given), so
        a retried create returns the same project."""
        key = idempotency_key or str(uuid.uuid4())
        data = await self._json(
            "POST", "/v1/projects", body={"name": name}, headers={"Idempotency-Key": key}, expect=(201, 200)
        )
        return _project(data)

    async def get_project(self, project_id: str) -> Project:
        return _project(await self._json("GET", f"/v1/projects/{quote(project_id, safe='')}"))

    async def get_project_by_slug(self, slug: str) -> Project:
        return _project(await self._json("GET", f"/v1/projects/by-slug/{quote(slug, safe='')}"))

    async def resolve_project(self, id_or_slug: str) -> Project:
        """A project by id (UUID) or slug; ``ValueError`` when it is neither."""
        ref = project_ref(id_or_slug)
        if "id" in ref:
            return await self.get_project(ref["id"])
        return await self.get_project_by_slug(ref["slug"])

    async def delete_project(self, project_id: str) -> None:
        await self.request("DELETE", f"/v1/projects/{quote(project_id, safe='')}", expect=(204, 200))

    async def list_events(self, project_id: str, *, after: int = 0, limit: int = 100) -> EventPage:
        """One page of the project's log: events with ``seq > after``."""
        data = await self._json(
            "GET", f"/v1/projects/{quote(project_id, safe='')}/events", params={"after": after, "limit": limit}
        )
        events = [
            Event(int(e["seq"]), str(e["event_id"]), str(e["kind"]), dict(e["data"]), str(e["ts"]))
            for e in data.get("events", [])
        ]
        return EventPage(events, int(data.get("last_seq", 0)))


# -- URLs ----------------------------------------------------------------------------------


def ws_url(session_url: str) -> str:
    """``http(s)://host/prefix`` -> ``ws(s)://host/prefix/v1/ws``."""
    parts = urlsplit(session_url.rstrip("/"))
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {session_url!r}")
    path = parts.path if parts.path.endswith("/v1/ws") else parts.path + "/v1/ws"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def http_url(websocket_url: str) -> str:
    """``ws(s)://host/prefix/v1/ws`` -> ``http(s)://host/prefix`` (the session service's HTTP base)."""
    parts = urlsplit(websocket_url)
    scheme = {"ws": "http", "wss": "https", "http": "http", "https": "https"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"not a ws(s) URL: {websocket_url!r}")
    path = parts.path.removesuffix("/").removesuffix("/v1/ws")
    return urlunsplit((scheme, parts.netloc, path, "", ""))
