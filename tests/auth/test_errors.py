"""F40: every error is problem+json with the request id, in the response and in exactly one
structured log line.  Bad request bodies are 4xx with a stable code, never a 500."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.support.auth import AuthService, UserCredentials, bearer
from tests.support.logs import assert_one_error_line, lines_for_request

REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")


@dataclass(frozen=True)
class Call:
    label: str
    method: str
    path: str
    status: int
    code: str
    content: bytes | None = None
    json_body: object | None = None
    headers: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def user(auth_service: AuthService) -> UserCredentials:
    return auth_service.make_user()


def _error_calls(service: AuthService, user: UserCredentials) -> list[Call]:
    svc = service.service_headers()
    return [
        Call("no credentials", "GET", "/v1/me", 401, "unauthenticated"),
        Call(
            "unknown api key", "POST", "/v1/login", 401, "unauthenticated", json_body={"api_key": "tk_nope_nope_nope"}
        ),
        Call("unknown route", "GET", "/v1/nope", 404, "http_not_found"),
        Call("wrong method", "GET", "/v1/tokens", 405, "http_method_not_allowed"),
        Call(
            "schema", "POST", "/v1/tokens", 422, "validation_failed", json_body={"x": 1}, headers=bearer(user.api_key)
        ),
        Call(
            "not json",
            "POST",
            "/v1/login",
            400,
            "invalid_body",
            content=b"{",
            headers={"Content-Type": "application/json"},
        ),
        Call(
            "media type",
            "POST",
            "/v1/login",
            415,
            "unsupported_media_type",
            content=b"{}",
            headers={"Content-Type": "text/plain"},
        ),
        Call(
            "too large",
            "POST",
            "/v1/login",
            413,
            "body_too_large",
            content=b'{"api_key": "' + b"a" * 40_000 + b'"}',
            headers={"Content-Type": "application/json"},
        ),
        Call(
            "unknown token",
            "POST",
            "/v1/tokens/consume",
            404,
            "token_unknown",
            json_body={"token": "tt_unknown_token_value"},
            headers=svc,
        ),
        Call(
            "no service key", "POST", "/v1/tokens/consume", 401, "service_unauthenticated", json_body={"token": "tt_x"}
        ),
        Call(
            "failpoint outside test mode",
            "POST",
            "/v1/tokens",
            400,
            "failpoints_disabled",
            json_body={},
            headers={**bearer(user.api_key), "X-Tether-Failpoint": "tokens.issue.after_insert"},
        ),
    ]


async def _send(client: httpx.AsyncClient, call: Call, request_id: str | None) -> httpx.Response:
    headers = dict(call.headers)
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    if call.json_body is not None:
        return await client.request(call.method, call.path, json=call.json_body, headers=headers)
    return await client.request(call.method, call.path, content=call.content, headers=headers)


@pytest.mark.trio
async def test_F40_every_error_has_request_id_and_one_log_line(
    auth_service: AuthService, user: UserCredentials
) -> None:
    calls = _error_calls(auth_service, user)
    async with auth_service.client() as client:
        for call in calls:
            # a well-formed caller id is echoed in the header, the body and the log line
            mine = f"t40-{uuid.uuid4().hex}"
            response = await _send(client, call, mine)
            assert response.status_code == call.status, f"{call.label}: {response.status_code} {response.text}"
            assert response.headers["content-type"].startswith("application/problem+json"), call.label
            assert response.headers["X-Request-ID"] == mine, call.label
            body = response.json()
            assert (body["code"], body["request_id"], body["status"]) == (call.code, mine, call.status), call.label
            assert_one_error_line(auth_service.proc, mine, call.code, status=call.status, path=call.path)

        for bad_id in ("short", "has space in it", "x" * 129, "semi;colon;id", "ünïcödé-request-id"):
            call = calls[0]
            response = await client.get(call.path, headers=[(b"X-Request-ID", bad_id.encode())])
            assert response.status_code == call.status
            replaced = response.headers["X-Request-ID"]
            assert replaced != bad_id
            assert REQUEST_ID_PATTERN.match(replaced), replaced
            assert response.json()["request_id"] == replaced
            assert_one_error_line(auth_service.proc, replaced, call.code)
            assert lines_for_request(auth_service.proc, bad_id) == []

        # no caller id at all: a fresh one per request
        ids = set()
        for _ in range(3):
            response = await _send(client, calls[0], None)
            ids.add(response.headers["X-Request-ID"])
        assert len(ids) == 3

        # success responses carry the id too, and so do their log lines
        mine = f"t40-ok-{uuid.uuid4().hex}"
        ok = await client.post("/v1/tokens", json={}, headers={**bearer(user.api_key), "X-Request-ID": mine})
        assert ok.status_code == 201
        assert ok.headers["X-Request-ID"] == mine
        issued = [line for line in lines_for_request(auth_service.proc, mine) if line["event"] == "token_issued"]
        assert len(issued) == 1
        assert issued[0]["user_id"] == user.user_id


def _bad_bodies() -> Iterator[tuple[str, bytes, str, int, str]]:
    """(label, body, content type, expected status, expected code) for the login body."""
    json_ct = "application/json"
    yield "not json", b"api_key=tk_x", json_ct, 400, "invalid_body"
    yield "empty", b"", json_ct, 400, "invalid_body"
    yield "truncated", b'{"api_key": "tk_', json_ct, 400, "invalid_body"
    yield "not utf-8", b'{"api_key": "\xff\xfe\xfd"}', json_ct, 400, "invalid_body"
    yield "utf-16", '{"api_key": "tk_x"}'.encode("utf-16"), json_ct, 400, "invalid_body"
    yield "NaN", b'{"api_key": NaN}', json_ct, 400, "invalid_body"
    yield "Infinity", b'{"api_key": Infinity}', json_ct, 400, "invalid_body"
    yield "nesting 40", b'{"api_key": ' + b"[" * 40 + b"]" * 40 + b"}", json_ct, 400, "invalid_body"
    yield "nesting 5000", b"[" * 5000 + b"]" * 5000, json_ct, 400, "invalid_body"
    yield "too large", b'{"api_key": "' + b"k" * 100_000 + b'"}', json_ct, 413, "body_too_large"
    yield "text/plain", b'{"api_key": "tk_x"}', "text/plain", 415, "unsupported_media_type"
    yield "form", b"api_key=tk_x", "application/x-www-form-urlencoded", 415, "unsupported_media_type"
    yield "json-ish suffix", b'{"api_key": "tk_x"}', "application/merge-patch+json", 415, "unsupported_media_type"
    yield "array", b"[]", json_ct, 422, "validation_failed"
    yield "null", b"null", json_ct, 422, "validation_failed"
    yield "wrong type", b'{"api_key": 5}', json_ct, 422, "validation_failed"
    yield "missing field", b"{}", json_ct, 422, "validation_failed"
    yield "extra field", b'{"api_key": "tk_x", "admin": true}', json_ct, 422, "validation_failed"
    yield "too long", b'{"api_key": "' + b"k" * 300 + b'"}', json_ct, 422, "validation_failed"


BAD_BODIES = list(_bad_bodies())


@pytest.mark.trio
@pytest.mark.parametrize("operation", ["login", "issueToken", "consumeToken"])
async def test_F40_bad_bodies_are_4xx_never_500(
    auth_service: AuthService, user: UserCredentials, operation: str
) -> None:
    path, headers = {
        "login": ("/v1/login", {}),
        "issueToken": ("/v1/tokens", bearer(user.api_key)),
        "consumeToken": ("/v1/tokens/consume", auth_service.service_headers()),
    }[operation]
    field_name = {"login": "api_key", "issueToken": "project_id", "consumeToken": "token"}[operation]
    async with auth_service.client() as client:
        for label, raw, content_type, status, code in BAD_BODIES:
            body = raw.replace(b'"api_key"', f'"{field_name}"'.encode())
            if operation == "issueToken" and label in ("missing field",):
                continue  # every field of a token request is optional: {} is valid
            if operation == "issueToken" and label in ("wrong type", "too long"):
                body = b'{"project_id": "not-a-uuid"}' if label == "too long" else b'{"project_id": 5}'
            response = await client.post(path, content=body, headers={**headers, "Content-Type": content_type})
            assert response.status_code == status, (
                f"{operation} / {label}: {response.status_code} {response.text[:300]}"
            )
            assert response.json()["code"] == code, f"{operation} / {label}"
            assert_one_error_line(auth_service.proc, response.headers["X-Request-ID"], code)
    assert auth_service.proc.events("http_error", code="internal_error") == []


@pytest.mark.trio
async def test_F40_errors_before_the_body_is_read_close_the_connection_cleanly(auth_service: AuthService) -> None:
    """An error answered before the request body is read (auth, size, media type) ends the
    connection; the response must say so, or a client reusing it fails at random."""
    body = {"token": "tt_" + "x" * 40}
    async with auth_service.client() as client:
        early = await client.post("/v1/tokens/consume", json=body)
        assert early.status_code == 401
        assert early.headers.get("connection", "").lower() == "close"
        # one keep-alive client, many early errors in a row: never a dropped request
        for i in range(300):
            response = await client.post("/v1/tokens/consume", json=body)
            assert response.status_code == 401, f"request {i}: {response.status_code}"
        # success responses keep the connection
        ok = await client.get("/healthz")
        assert ok.headers.get("connection", "").lower() != "close"
