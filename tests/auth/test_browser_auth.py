"""F07: token issue works from the browser with credentials and an explicit CORS allow-list;
the session is an HttpOnly, SameSite cookie; tokens never reach a log."""

from __future__ import annotations

from http.cookies import Morsel, SimpleCookie
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.auth import AuthService, AuthServiceFactory, bearer, consume_token, issue_token
from tests.support.pg import PgServer
from tests.support.secrets import find_leaks, remember, remembered

EVIL_ORIGIN = "https://evil.example"
COOKIE = "tether_session"


def _session_cookie(response: httpx.Response) -> Morsel[Any]:
    headers = response.headers.get_list("set-cookie")
    assert len(headers) == 1, headers
    jar: SimpleCookie = SimpleCookie()
    jar.load(headers[0])
    assert COOKIE in jar, headers
    return jar[COOKIE]


def _assert_cors_allowed(response: httpx.Response, origin: str) -> None:
    assert response.headers.get("access-control-allow-origin") == origin, dict(response.headers)
    assert response.headers.get("access-control-allow-credentials") == "true"
    assert "origin" in response.headers.get("vary", "").lower()


def _assert_cors_refused(response: httpx.Response) -> None:
    assert "access-control-allow-origin" not in response.headers, dict(response.headers)
    assert "access-control-allow-credentials" not in response.headers


@pytest.mark.trio
async def test_F07_cors_allow_list_and_cookie_login(auth_service: AuthService) -> None:
    origin = auth_service.cors_origins[0]
    user = auth_service.make_user()
    preflight_headers = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, x-request-id",
    }
    async with auth_service.client() as client:
        # preflight: the allowed origin may send credentials and JSON; another origin may not
        for path in ("/v1/login", "/v1/tokens", "/v1/logout", "/v1/me"):
            allowed = await client.options(path, headers={"Origin": origin, **preflight_headers})
            assert allowed.status_code in (200, 204), allowed.text
            _assert_cors_allowed(allowed, origin)
            assert "POST" in allowed.headers["access-control-allow-methods"]
            allow_headers = allowed.headers["access-control-allow-headers"].lower()
            assert "content-type" in allow_headers
            assert "x-request-id" in allow_headers
            refused = await client.options(path, headers={"Origin": EVIL_ORIGIN, **preflight_headers})
            _assert_cors_refused(refused)

        # log in from the allowed origin: an HttpOnly, SameSite session cookie
        login = await client.post("/v1/login", json={"api_key": user.api_key}, headers={"Origin": origin})
        assert login.status_code == 200, login.text
        _assert_cors_allowed(login, origin)
        assert "x-request-id" in login.headers["access-control-expose-headers"].lower()
        assert login.json()["user"] == {"id": user.user_id, "name": login.json()["user"]["name"]}
        cookie = _session_cookie(login)
        assert cookie["httponly"] is True
        assert cookie["samesite"].lower() in ("lax", "strict")
        assert cookie["path"] == "/"
        assert int(cookie["max-age"]) > 0
        assert not cookie["secure"], "TETHER_COOKIE_SECURE is off in this instance"
        session = cookie.value
        assert session
        client.cookies.clear()  # from here on the cookie travels only where the test puts it
        with_cookie = {"Cookie": f"{COOKIE}={session}", "Origin": origin}

        # the cookie alone authenticates: token issue from the browser
        me = await client.get("/v1/me", headers=with_cookie)
        assert me.status_code == 200
        assert me.json()["id"] == user.user_id
        issued = await client.post("/v1/tokens", json={}, headers=with_cookie)
        assert issued.status_code == 201, issued.text
        _assert_cors_allowed(issued, origin)
        consumed = await consume_token(client, auth_service.service_key, issued.json()["token"])
        assert consumed.json()["user_id"] == user.user_id

        # a request from a non-allowed origin gets no CORS grant (the browser hides the answer)
        evil = await client.post("/v1/tokens", json={}, headers={**with_cookie, "Origin": EVIL_ORIGIN})
        _assert_cors_refused(evil)

        # log out: the cookie is cleared and the session is gone server-side
        logout = await client.post("/v1/logout", headers=with_cookie)
        assert logout.status_code == 204
        _assert_cors_allowed(logout, origin)
        cleared = _session_cookie(logout)
        assert cleared.value == ""
        assert int(cleared["max-age"] or 0) == 0
        client.cookies.clear()
        after_me = await client.get("/v1/me", headers=with_cookie)
        assert after_me.status_code == 401
        after_issue = await client.post("/v1/tokens", json={}, headers=with_cookie)
        assert after_issue.status_code == 401
        assert after_issue.json()["code"] == "unauthenticated"
        # logging out again is harmless
        assert (await client.post("/v1/logout", headers=with_cookie)).status_code == 204


@pytest.mark.trio
async def test_F07_secure_cookie_when_configured(auth_service: AuthService, auth_factory: AuthServiceFactory) -> None:
    secure = auth_factory.start(auth_service.dsn, env={"TETHER_COOKIE_SECURE": "1"})
    user = secure.make_user()
    async with secure.client() as client:
        login = await client.post("/v1/login", json={"api_key": user.api_key})
        assert login.status_code == 200
        cookie = _session_cookie(login)
        assert cookie["secure"] is True
        assert cookie["httponly"] is True


def _log_files(run_log_dir: Path, pg_server: PgServer) -> list[Path]:
    """Every log file of this run: each service's stdout/stderr and JSON log, and Postgres'."""
    files = sorted(p for p in run_log_dir.rglob("*") if p.is_file())
    if pg_server.log_file is not None:
        files.append(pg_server.log_file)
    return files


@pytest.mark.trio
async def test_F07_tokens_never_in_logs(
    auth_service: AuthService, pg_server: PgServer, run_log_dir: Path, tmp_path: Path
) -> None:
    user = auth_service.make_user()
    other = auth_service.make_user()
    async with auth_service.client() as client:
        login = await client.post("/v1/login", json={"api_key": user.api_key})
        session = _session_cookie(login).value
        client.cookies.clear()
        token = (await issue_token(client, user.api_key))["token"]
        spare = (await issue_token(client, other.api_key))["token"]
        assert {user.api_key, other.api_key, session, token, spare, auth_service.service_key} <= remembered()
        # secrets sent where they do not belong, on every error path we have
        misuse: list[httpx.Response] = [
            await client.post("/v1/tokens/consume", json={"token": token}, headers=bearer(token)),
            await client.post(
                "/v1/tokens/consume", json={"token": user.api_key}, headers=auth_service.service_headers()
            ),
            await client.post("/v1/login", json={"api_key": token}),
            await client.get("/v1/me", headers=bearer(session)),
            await client.get("/v1/me", headers={"Cookie": f"{COOKIE}={token}"}),
            await client.get(f"/v1/no-such-route?token={token}&api_key={user.api_key}"),
            await client.post("/v1/tokens", json={"project_id": token}, headers=bearer(user.api_key)),
            await client.post("/v1/tokens", json={}, headers={**bearer(user.api_key), "X-Tether-Failpoint": token}),
            await client.post(
                "/v1/login",
                content=f'{{"api_key": "{user.api_key}"'.encode(),
                headers={"Content-Type": "application/json"},
            ),
        ]
        assert all(r.status_code >= 400 for r in misuse), [r.status_code for r in misuse]
        assert (await consume_token(client, auth_service.service_key, token)).status_code == 200
        assert (await consume_token(client, auth_service.service_key, token)).status_code == 409
        assert (await client.post("/v1/logout", headers={"Cookie": f"{COOKIE}={session}"})).status_code == 204

    files = _log_files(run_log_dir, pg_server)
    own_log = auth_service.proc.log_path
    assert own_log in files
    assert user.user_id in own_log.read_text(), "scanning the wrong files: the user's id is not in its service log"
    leaks = find_leaks(files, remembered())
    assert leaks == [], f"secrets written to logs: {leaks}"

    # the scanner itself finds a planted secret
    planted = tmp_path / "planted.jsonl"
    planted.write_text(f'{{"event": "oops", "note": "{token}"}}\n')
    remember(token)
    assert find_leaks([planted], remembered()) != []
