"""Hostile requests on every endpoint of both services: each gets its documented status and
code, exactly one log line, and changes nothing in either service's tables (F05, F07, F03).

For every operation of both contracts (so a new endpoint is covered or the suite fails):

* missing, malformed (wrong scheme, truncated, padded, huge, non-ASCII, garbage cookie) and
  wrong-service credentials (a service key where a user key belongs, a user key where a
  service key belongs, another service's key): 401 ``unauthenticated`` /
  ``service_unauthenticated`` on secured operations; public operations ignore them;
* wrong user: another user's key on a project-scoped operation: 404 ``not_found``, the
  same answer as for a project that does not exist, so ids cannot be probed;
* replays: a consumed connection token (409 ``token_used``), a session cookie after logout
  (401);
* bodies: larger than the service's limit (413 ``body_too_large``), nested deeper than 32
  (400 ``invalid_body``), strings holding U+0000 (session) or an unpaired surrogate (both):
  400 ``invalid_body``.

Every response also passes the contract check of ``tests.support.contract``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import trio

from tests.support.auth import AUTH_CONTRACT, UserCredentials
from tests.support.contract import sync_client
from tests.support.session import SESSION_CONTRACT, Stack
from tests.support.waiting import scaled

from . import harness
from .harness import AUTH, SESSION, LiveService, ServiceKind
from .report import REPORT

CHECKS = ("status_and_code", "contract", "error_is_logged", "nothing_changed")
AUTH_MAX_BODY = 16 * 1024  # TETHER_MAX_BODY_BYTES defaults of the services
SESSION_MAX_BODY = 1 << 20


@dataclass
class Request:
    method: str
    path: str
    body: Any = None  # JSON value, or bytes sent as-is
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class World:
    """Two users, a project of user A, and clients of both services."""

    stack: Stack
    alice: UserCredentials
    bob: UserCredentials
    project: dict[str, Any]
    services: dict[str, LiveService]
    clients: dict[str, httpx.Client]  # contract-checking, one per service (building one costs ~30 ms)

    def fresh_token(self) -> str:
        return trio.run(self.stack.token, self.alice.api_key)

    def service(self, kind: ServiceKind) -> LiveService:
        return self.services[kind.name]

    def url(self, kind: ServiceKind) -> str:
        return self.stack.auth.url if kind is AUTH else self.stack.session.url


@pytest.fixture(scope="module")
def world(normal_stack: Stack) -> Iterator[World]:
    alice, bob = normal_stack.make_user(), normal_stack.make_user()
    project = trio.run(normal_stack.create_project, alice.api_key, "Alice's secret project")
    services, clients = {}, {}
    for url, contract in ((normal_stack.auth.url, AUTH_CONTRACT), (normal_stack.session.url, SESSION_CONTRACT)):
        found = harness.service_at(url)
        assert found is not None
        services[found.kind.name] = found
        clients[found.kind.name] = sync_client(contract, url, timeout=scaled(10))
    try:
        yield World(normal_stack, alice, bob, project, services, clients)
    finally:
        for client in clients.values():
            client.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def legit_request(w: World, kind: ServiceKind, operation_id: str) -> Request:
    """A request of ``operation_id`` that succeeds for Alice (the probes then vary one thing)."""
    a, pid = w.alice.api_key, w.project["id"]
    requests: dict[str, Callable[[], Request]] = {
        "healthz": lambda: Request("GET", "/healthz"),
        "readyz": lambda: Request("GET", "/readyz"),
        "openapi": lambda: Request("GET", "/openapi.json"),
        "metrics": lambda: Request("GET", "/metrics"),
        "closeCodes": lambda: Request("GET", "/v1/protocol/close-codes"),
        "login": lambda: Request("POST", "/v1/login", {"api_key": a}),
        "logout": lambda: Request("POST", "/v1/logout"),
        "me": lambda: Request("GET", "/v1/me", headers=bearer(a)),
        "issueToken": lambda: Request("POST", "/v1/tokens", {"project_id": pid}, bearer(a)),
        "consumeToken": lambda: Request(
            "POST", "/v1/tokens/consume", {"token": w.fresh_token()}, bearer(w.stack.auth.service_key)
        ),
        "consumeTokenBatch": lambda: Request(
            "POST", "/v1/tokens/consume-batch", {"tokens": [w.fresh_token()]}, bearer(w.stack.auth.service_key)
        ),
        "listProjects": lambda: Request("GET", "/v1/projects", headers=bearer(a)),
        "createProject": lambda: Request("POST", "/v1/projects", {"name": "probe"}, bearer(a)),
        "getProject": lambda: Request("GET", f"/v1/projects/{pid}", headers=bearer(a)),
        "deleteProject": lambda: Request("DELETE", f"/v1/projects/{pid}", headers=bearer(a)),
        "getProjectBySlug": lambda: Request("GET", f"/v1/projects/by-slug/{w.project['slug']}", headers=bearer(a)),
        "listEvents": lambda: Request("GET", f"/v1/projects/{pid}/events", headers=bearer(a)),
        "publishEvents": lambda: Request(
            "POST",
            f"/v1/projects/{pid}/events",
            {"events": [{"event_id": "probe-1", "kind": "probe", "data": {}}]},
            bearer(w.stack.ingest_key),
        ),
    }
    assert operation_id in requests, f"no security probe for {kind.name} {operation_id}: add one here"
    return requests[operation_id]()


def _send(w: World, kind: ServiceKind, request: Request) -> httpx.Response:
    """Send with the service's contract-checking client; no cookie jar carries over between probes."""
    client = w.clients[kind.name]
    client.cookies.clear()
    content = request.body if isinstance(request.body, bytes) else None
    body = None if isinstance(request.body, bytes) or request.body is None else request.body
    headers = dict(request.headers)
    if content is not None:
        headers.setdefault("Content-Type", "application/json")
    return client.request(request.method, request.path, json=body, content=content, headers=headers)


def probe(w: World, kind: ServiceKind, label: str, request: Request, status: int, code: str) -> None:
    """Send a hostile request: documented status and code, one log line, nothing changed anywhere."""
    before = {name: harness.snapshot(s) for name, s in w.services.items()}
    response = _send(w, kind, request)  # the contract check runs in the client's hook
    REPORT.case(kind.name, f"security {label.split(':')[0]}", CHECKS)  # one row per operation
    got = (response.status_code, response.json().get("code") if response.content else None)
    assert got == (status, code), f"{label}: expected {status} {code}, got {got}: {response.text[:300]}"
    problem = harness.one_error_line_problem(w.service(kind).proc, response.headers["X-Request-ID"], code, status)
    assert problem is None, f"{label}: {problem}"
    after = {name: harness.snapshot(s) for name, s in w.services.items()}
    changed = {name: harness.diff(before[name], after[name]) for name in before if before[name] != after[name]}
    assert not changed, f"{label} changed the database: {changed}"


def operations() -> Iterator[tuple[ServiceKind, str, frozenset[str]]]:
    for kind in (AUTH, SESSION):
        for op in kind.contract.operations.values():
            yield kind, op.operation_id, frozenset(op.security_schemes)


OPERATIONS = list(operations())


def malformed(w: World) -> dict[str, dict[str, str]]:
    key = w.alice.api_key
    return {
        "no scheme value": {"Authorization": "Bearer"},
        "empty bearer": {"Authorization": "Bearer \t-"},
        "basic scheme": {"Authorization": "Basic dXNlcjpwYXNzd29yZA=="},
        "right key wrong scheme": {"Authorization": f"Token {key}"},
        "truncated key": bearer(key[:-1]),
        "padded key": bearer(key + "x"),
        "huge key": bearer("tk_" + "A" * 6000),
        "non-ascii key": {"Authorization": "Bearer tk_\u00e9\u00e8\u00ff".encode("latin-1")},  # type: ignore[dict-item]
        "garbage cookie": {"Cookie": "tether_session=ts_not-a-session"},
        "empty cookie": {"Cookie": "tether_session="},
        "non-ascii cookie": {"Cookie": "tether_session=ts_\u00e9\u00ff".encode("latin-1")},  # type: ignore[dict-item]
    }


def wrong_service(w: World, kind: ServiceKind, schemes: frozenset[str]) -> dict[str, dict[str, str]]:
    if "serviceAuth" in schemes:
        other = w.stack.ingest_key if kind is AUTH else w.stack.auth.service_key
        return {"user key as service key": bearer(w.alice.api_key), "another service's key": bearer(other)}
    return {
        "auth service key as user key": bearer(w.stack.auth.service_key),
        "ingest key as user key": bearer(w.stack.ingest_key),
    }


@pytest.mark.fuzz
@pytest.mark.parametrize(
    ("kind", "operation_id", "schemes"), OPERATIONS, ids=[f"{k.name}-{o}" for k, o, _ in OPERATIONS]
)
def test_F07_missing_malformed_and_wrong_service_credentials_are_refused_everywhere(
    world: World, kind: ServiceKind, operation_id: str, schemes: frozenset[str]
) -> None:
    legit = legit_request(world, kind, operation_id)
    if not schemes:  # public: credentials of any shape are ignored, never an error
        for name, headers in malformed(world).items():
            response = _send(world, kind, Request(legit.method, legit.path, legit.body, {**legit.headers, **headers}))
            REPORT.case(kind.name, f"security {operation_id}", ["public: credentials ignored"])
            assert response.status_code < 400, f"{operation_id} with {name}: {response.status_code} {response.text}"
        return
    code = "service_unauthenticated" if "serviceAuth" in schemes else "unauthenticated"
    variants = {"missing": {}, **malformed(world), **wrong_service(world, kind, schemes)}
    for name, headers in variants.items():
        request = Request(legit.method, legit.path, legit.body, headers)
        probe(world, kind, f"{operation_id}: {name} credentials", request, 401, code)


PROJECT_SCOPED = [
    (k, o)
    for k, o, s in OPERATIONS
    if "bearerAuth" in s and o in ("getProject", "getProjectBySlug", "deleteProject", "listEvents")
]


@pytest.mark.fuzz
@pytest.mark.parametrize(("kind", "operation_id"), PROJECT_SCOPED, ids=[o for _, o in PROJECT_SCOPED])
def test_F03_another_users_project_is_not_found_and_untouched(
    world: World, kind: ServiceKind, operation_id: str
) -> None:
    legit = legit_request(world, kind, operation_id)
    as_bob = Request(legit.method, legit.path, legit.body, bearer(world.bob.api_key))
    probe(world, kind, f"{operation_id}: another user's project", as_bob, 404, "not_found")
    unknown = Request(
        legit.method,
        legit.path.replace(world.project["id"], "0" * 8 + "-0000-4000-8000-" + "0" * 12).replace(
            world.project["slug"], "no-such-slug"
        ),
        None,
        legit.headers,
    )
    probe(world, kind, f"{operation_id}: unknown project", unknown, 404, "not_found")


@pytest.mark.fuzz
def test_F05_replayed_token_and_session_are_refused(world: World) -> None:
    token = world.fresh_token()
    consume = Request("POST", "/v1/tokens/consume", {"token": token}, bearer(world.stack.auth.service_key))
    assert _send(world, AUTH, consume).status_code == 200
    probe(world, AUTH, "consumeToken: replayed token", consume, 409, "token_used")
    probe(world, AUTH, "consumeToken: replayed token again", consume, 409, "token_used")
    login = _send(world, AUTH, Request("POST", "/v1/login", {"api_key": world.alice.api_key}))
    cookie = {"Cookie": f"tether_session={login.cookies['tether_session']}"}
    assert _send(world, AUTH, Request("GET", "/v1/me", headers=cookie)).status_code == 200
    assert _send(world, AUTH, Request("POST", "/v1/logout", headers=cookie)).status_code == 204
    probe(
        world,
        AUTH,
        "me: session cookie replayed after logout",
        Request("GET", "/v1/me", headers=cookie),
        401,
        "unauthenticated",
    )
    probe(
        world,
        SESSION,
        "listProjects: session cookie replayed after logout",
        Request("GET", "/v1/projects", headers=cookie),
        401,
        "unauthenticated",
    )


BODY_OPERATIONS = [(k, o) for k, o, _ in OPERATIONS if "requestBody" in k.contract.operations[o].spec]


def nested(depth: int) -> bytes:
    return b'{"name":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


@pytest.mark.fuzz
@pytest.mark.parametrize(("kind", "operation_id"), BODY_OPERATIONS, ids=[f"{k.name}-{o}" for k, o in BODY_OPERATIONS])
def test_F01_oversized_deep_and_unstorable_bodies_are_refused(
    world: World, kind: ServiceKind, operation_id: str
) -> None:
    legit = legit_request(world, kind, operation_id)
    limit = AUTH_MAX_BODY if kind is AUTH else SESSION_MAX_BODY
    first_field = next(iter(legit.body))
    huge = json.dumps({**legit.body, first_field: "x" * (limit + 1)}).encode()
    cases: dict[str, tuple[bytes, int, str]] = {
        "oversized body": (huge, 413, "body_too_large"),
        "nested 33 deep": (nested(33), 400, "invalid_body"),
        "nested 5000 deep": (nested(5000), 400, "invalid_body"),
        "unpaired surrogate": (json.dumps({**legit.body, first_field: "\ud800x"}).encode(), 400, "invalid_body"),
        "unpaired surrogate in a key": (json.dumps({**legit.body, "\udfff": 1}).encode(), 400, "invalid_body"),
        "not JSON": (b"{'name': 1}", 400, "invalid_body"),
        "not UTF-8": (b'{"name": "\xff\xfe"}', 400, "invalid_body"),
        "NaN": (b'{"name": NaN}', 400, "invalid_body"),
        "number beyond float range": (b'{"name": 1e400}', 400, "invalid_body"),
    }
    if kind is SESSION:
        cases["U+0000 in a string"] = (
            json.dumps({**legit.body, first_field: "a\u0000b"}).encode(),
            400,
            "invalid_body",
        )
        if operation_id == "publishEvents":
            event = {"event_id": "nul-1", "kind": "probe", "data": {"text": "a\u0000b"}}
            cases["U+0000 deep in event data"] = (json.dumps({"events": [event]}).encode(), 400, "invalid_body")
            big = b'{"events": [{"event_id": "inf-1", "kind": "probe", "data": {"x": 1e400}}]}'
            cases["1e400 in event data"] = (big, 400, "invalid_body")
    for name, (body, status, code) in cases.items():
        probe(
            world, kind, f"{operation_id}: {name}", Request(legit.method, legit.path, body, legit.headers), status, code
        )
