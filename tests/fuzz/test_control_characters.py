"""NUL and other control characters in every path, query and header parameter of both
contracts (F06, F40): never a 500, always the documented status and catalogue code, one log
line, nothing changed in either service's tables.

schemathesis cannot send U+0000 in a header and rarely draws control characters in a path
parameter, so this suite sends them on purpose, parameter by parameter, from the contracts (a new parameter is covered or
the suite fails for want of a legit value):

* a path parameter holding a control character (percent-encoded, alone or inside a valid
  value) is outside its schema: 404 ``not_found`` before the handler runs (it used to reach
  PostgreSQL: ``CharacterNotInRepertoireError``, a 500);
* a query parameter holding one is 422 ``validation_failed``;
* a header parameter holding one (sent on a raw socket: HTTP clients refuse to) is answered
  as the contract says for that header: ``X-Request-ID`` is replaced, ``Idempotency-Key``
  is 422;
* the demo's static route (outside the contract) answers a problem+json 404 for
  ``/demo/%00`` (``ValueError: embedded null byte`` was a 500).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
import trio

from tests.support.waiting import scaled

from . import test_security_fuzz
from .harness import AUTH, SESSION, ServiceKind
from .report import REPORT
from .test_security_fuzz import Request, World, legit_request, probe

world = test_security_fuzz.world  # the security suite's fixture (two users, a project), one per module here

CONTROL = ["\x00", "\x01", "\x08", "\t", "\n", "\r", "\x1b", "\x1f", "\x7f"]


def _encoded(char: str) -> str:
    return f"%{ord(char):02X}"


def parameters(where: str) -> Iterator[tuple[ServiceKind, str, str]]:
    for kind in (AUTH, SESSION):
        contract = kind.contract
        for op in contract.operations.values():
            for index, _ in enumerate(op.spec.get("parameters", [])):
                _, parameter = contract.resolve(f"{op.pointer}/parameters/{index}")
                if parameter["in"] == where:
                    yield kind, op.operation_id, parameter["name"]


PATH = list(parameters("path"))
QUERY = list(parameters("query"))
HEADER = list(parameters("header"))


def _path_value(w: World, name: str) -> str:
    values = {"project_id": w.project["id"], "slug": w.project["slug"]}
    assert name in values, f"no legit value for the path parameter {name!r}: add one here"
    return values[name]


def _hostile(w: World, legit: Request, location: str, name: str) -> Iterator[tuple[str, Request]]:
    """``(label, request)``: ``legit`` with a control character in the parameter, alone and inside a
    valid value."""
    value = _path_value(w, name) if location == "path" else "1"
    assert location == "query" or value in legit.path
    for char in CONTROL:
        for hostile in (_encoded(char), value[:3] + _encoded(char), value + _encoded(char)):
            if location == "path":
                label, path = f"{name}={hostile}", legit.path.replace(value, hostile)
            else:
                label, path = f"?{name}={hostile}", f"{legit.path}?{name}={hostile}"
            yield label, Request(legit.method, path, legit.body, legit.headers)


# A path value outside its schema names nothing; a query value outside it is a bad request.
EXPECTED = {"path": (404, "not_found"), "query": (422, "validation_failed")}
PATH_AND_QUERY = [(*p, "path") for p in PATH] + [(*q, "query") for q in QUERY]


@pytest.mark.fuzz
@pytest.mark.parametrize(
    ("kind", "operation_id", "name", "location"), PATH_AND_QUERY, ids=[f"{o}-{n}" for _, o, n, _ in PATH_AND_QUERY]
)
def test_F06_control_characters_in_path_and_query_parameters_are_refused(
    world: World, kind: ServiceKind, operation_id: str, name: str, location: str
) -> None:
    legit = legit_request(world, kind, operation_id)
    status, code = EXPECTED[location]
    for label, request in _hostile(world, legit, location, name):
        probe(world, kind, f"{operation_id}: {label}", request, status, code)


def _raw_request(base_url: str, method: str, path: str, headers: dict[str, str], body: bytes) -> httpx.Response:
    """One HTTP/1.1 request on a plain socket (header values an HTTP client would refuse to send)."""
    url = urlsplit(base_url)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {url.netloc}", "Connection: close", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection((url.hostname, url.port), timeout=scaled(10)) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, content = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = [tuple(part.strip() for part in line.split(":", 1)) for line in header_lines]
    return httpx.Response(
        int(status_line.split()[1]),
        headers=parsed,
        content=content,
        request=httpx.Request(method, base_url + quote(path, safe="/")),  # httpx refuses the raw path itself
    )


EXPECTED_HEADER_ANSWER: dict[str, tuple[int | None, str | None]] = {
    "X-Request-ID": (None, None),  # never refused: the operation's own answer, with a new id
    "Idempotency-Key": (422, "validation_failed"),
}


@pytest.mark.fuzz
@pytest.mark.parametrize(("kind", "operation_id", "name"), HEADER, ids=[f"{k.name}-{o}-{n}" for k, o, n in HEADER])
def test_F06_control_characters_in_header_parameters_get_the_documented_answer(
    world: World, kind: ServiceKind, operation_id: str, name: str
) -> None:
    assert name in EXPECTED_HEADER_ANSWER, f"no expectation for the header parameter {name!r}: add one here"
    status, code = EXPECTED_HEADER_ANSWER[name]
    contract = kind.contract
    for char in [c for c in CONTROL if c not in "\x00\t\n\r"]:  # those end or split a header line
        legit = legit_request(world, kind, operation_id)
        if legit.method == "DELETE":  # a project of its own for every deletion; the module's one stays
            doomed = trio.run(world.stack.create_project, world.alice.api_key, "doomed")
            legit.path = legit.path.replace(world.project["id"], doomed["id"])
        body = b"" if legit.body is None else httpx.Request("POST", "http://x", json=legit.body).content
        headers = {**legit.headers, name: f"abcdefgh{char}ijkl"}
        if legit.body is not None:
            headers["Content-Type"] = "application/json"
        response = _raw_request(world.url(kind), legit.method, legit.path, headers, body)
        answer: Any = contract.check(response)
        REPORT.case(kind.name, f"control characters {operation_id}", ["status", "contract"])
        label = f"{operation_id}: {name} with {char!r}"
        assert response.status_code < 500, f"{label}: {response.status_code} {response.text[:300]}"
        if status is None:
            assert response.status_code < 400, f"{label}: {response.status_code} {response.text[:300]}"
            assert response.headers["X-Request-ID"] != headers.get("X-Request-ID")
        else:
            assert (response.status_code, answer["code"]) == (status, code), f"{label}: {response.text[:300]}"


@pytest.mark.fuzz
def test_F40_malformed_request_line_is_answered_with_problem_json(world: World) -> None:
    response = _raw_request(world.url(SESSION), "GET", "/v1/projects/by-slug/a\x01b", {"X-Request-ID": "a\x00b"}, b"")
    assert response.status_code == 400
    assert response.headers.get("content-type") == "application/problem+json", response.headers
    body = response.json()
    assert body["code"] == "http_bad_request"
    assert body["request_id"] == response.headers["x-request-id"]
    lines = world.stack.session.proc.events("http_error", request_id=body["request_id"])
    assert [(line["code"], line["status"]) for line in lines] == [("http_bad_request", 400)]


@pytest.mark.fuzz
@pytest.mark.parametrize("hostile", [_encoded(c) for c in CONTROL] + ["app.js" + _encoded("\x00")])
def test_F06_control_characters_in_demo_asset_names_are_not_found(world: World, hostile: str) -> None:
    response = world.clients[SESSION.name].get(f"/demo/{hostile}")
    REPORT.case(SESSION.name, "control characters demo", ["status", "contract"])
    assert response.status_code == 404, f"/demo/{hostile}: {response.status_code} {response.text[:300]}"
    assert response.json()["code"] == "http_not_found"
