"""The contracts are what runs: served documents, and the session service as a consumer.

* Each service serves ``/openapi.json`` byte for byte equal to its file in ``contracts/``.
* Consumer contract (the session service consumes the auth-token contract): a session
  replica runs with ``TETHER_RECORD_AUTH_CALLS=<file>`` (one JSON line per call it makes to
  the auth-token service, token values replaced by same-length placeholders) during a
  black-box run that exercises success and every token error (``token_unknown``,
  ``token_used``, ``token_expired``) and both answers of ``/v1/me``; then every recorded
  request and response is validated against ``contracts/auth-token/openapi.json``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.support.auth import AUTH_CONTRACT, bearer
from tests.support.contract import load_contract
from tests.support.session import SESSION_CONTRACT, Stack, StackFactory
from tests.support.waiting import scaled

from . import harness
from .report import REPORT


@pytest.fixture(scope="module")
def recording(module_stack_factory: StackFactory, log_dir: Path) -> tuple[Stack, Path]:
    record = log_dir / "auth-calls.jsonl"
    record.unlink(missing_ok=True)
    stack = module_stack_factory.start(session_env={"TETHER_RECORD_AUTH_CALLS": str(record)})
    return stack, record


@pytest.mark.fuzz
@pytest.mark.parametrize("which", ["auth-token", "session"])
def test_served_openapi_json_is_the_contract_file_byte_for_byte(recording: tuple[Stack, Path], which: str) -> None:
    stack, _ = recording
    url, path = (stack.auth.url, AUTH_CONTRACT) if which == "auth-token" else (stack.session.url, SESSION_CONTRACT)
    served = httpx.get(f"{url}/openapi.json", timeout=scaled(10))
    REPORT.case(which, "contract: served /openapi.json", ["byte-for-byte equal"])
    assert served.status_code == 200
    assert served.content == path.read_bytes(), f"{which} serves a document that differs from {path}"


async def _init(stack: Stack, token: str, project_id: str) -> dict[str, Any]:
    """INIT with ``token``: the ready frame, or the error frame the server closed with."""
    async with stack.ws() as ws:
        first = await ws.init(token, {"id": project_id})
        if first["type"] == "ready":
            return first
        closed = await ws.closed()
        assert closed.code == first["close_code"]
        return first


async def _reauth(stack: Stack, init_token: str, token: str, project_id: str) -> dict[str, Any]:
    async with stack.ws() as ws:
        assert (await ws.init(init_token, {"id": project_id}))["type"] == "ready"
        await ws.send({"type": "reauth", "v": 1, "token": token})
        return await ws.recv_type("reauth_ok")


def _expire(stack: Stack, token: str) -> None:
    digest = hashlib.sha256(token.encode()).digest()
    rows = harness.PROBE.fetch(
        stack.dsn,
        "UPDATE auth.connection_tokens SET expires_at = now() - interval '1 second' WHERE token_hash = $1 RETURNING 1",
        digest,
    )
    assert rows, "the token to expire is not in the auth database"


@pytest.mark.fuzz
def test_F05_session_service_calls_auth_token_exactly_as_its_contract_says(recording: tuple[Stack, Path]) -> None:
    stack, record = recording
    user = stack.make_user()
    project = trio.run(stack.create_project, user.api_key, "consumer contract")  # GET /v1/me 200 (bearer)
    pid = project["id"]
    # consume: success (INIT and reauth), unknown, used, expired
    assert trio.run(_init, stack, trio.run(stack.token, user.api_key), pid)["type"] == "ready"
    trio.run(_reauth, stack, trio.run(stack.token, user.api_key), trio.run(stack.token, user.api_key), pid)
    assert trio.run(_init, stack, "tt_" + secrets.token_urlsafe(32), pid)["code"] == "token_unknown"
    used = trio.run(stack.token, user.api_key)
    assert trio.run(_init, stack, used, pid)["type"] == "ready"
    assert trio.run(_init, stack, used, pid)["code"] == "token_used"
    expired = trio.run(stack.token, user.api_key)
    _expire(stack, expired)
    assert trio.run(_init, stack, expired, pid)["code"] == "token_expired"
    # me: a session cookie, a bad key
    with httpx.Client(timeout=scaled(10)) as http:
        login = http.post(f"{stack.auth.url}/v1/login", json={"api_key": user.api_key})
        cookie = {"Cookie": f"tether_session={login.cookies['tether_session']}"}
        http.cookies.clear()
        assert http.get(f"{stack.session.url}/v1/projects", headers=cookie).status_code == 200
        assert http.get(f"{stack.session.url}/v1/projects", headers=bearer("tk_not-a-key")).status_code == 401

    contract = load_contract(AUTH_CONTRACT)
    calls = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
    seen: set[tuple[str, str, int]] = set()
    outcomes: set[str] = set()
    for call in calls:
        label = f"{call['method']} {call['path']} -> {call['status']}"
        op = contract.find(call["method"], call["path"])
        assert op is not None, f"the session service calls {call['method']} {call['path']}, which the contract lacks"
        REPORT.case("session", f"consumer contract {op.operation_id} {call['status']}", ["request", "response"])
        # the request
        if "requestBody" in op.spec:
            assert call["request_content_type"] == "application/json", label
            validator = contract.validator(f"{op.pointer}/requestBody/content/application~1json/schema")
            errors = [e.message for e in validator.iter_errors(call["request_body"])]
            assert not errors, f"{label}: request body violates the contract: {errors}"
        else:
            assert call["request_body"] is None, f"{label}: the contract has no request body"
        # the response, rebuilt and put through the same check as every live response
        response = httpx.Response(
            call["status"],
            headers={
                "content-type": call["response_content_type"],
                **{k: v for k, v in call["response_headers"].items() if v},
            },
            content=json.dumps(call["response_body"]).encode(),
            request=httpx.Request(call["method"], f"http://auth-token{call['path']}"),
        )
        contract.check(response, op.operation_id)
        seen.add((op.operation_id, call["path"], call["status"]))
        if op.operation_id == "consumeTokenBatch" and call["status"] == 200:
            outcomes.update(r.get("code", r["status"]) for r in call["response_body"]["results"])
    statuses = {(op, status) for op, _, status in seen}
    wanted = {("consumeTokenBatch", 200), ("me", 200), ("me", 401)}
    assert wanted <= statuses, f"the run did not exercise {sorted(wanted - statuses)}"
    # consume-batch answers 200 for every token; the per-token outcomes are in the body
    wanted_outcomes = {"consumed", "token_unknown", "token_used", "token_expired"}
    assert wanted_outcomes <= outcomes, f"the run did not exercise {sorted(wanted_outcomes - outcomes)}"
