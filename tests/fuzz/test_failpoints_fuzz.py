"""Every failpoint of every write endpoint, armed while schemathesis fuzzes that endpoint (F02).

For each ``x-failpoints`` name of both contracts, schemathesis generates schema-valid
requests for its operation, aimed so that the write reaches the failpoint (a real project,
a real unconsumed token, a fresh Idempotency-Key), and sends each with
``X-Tether-Failpoint: <name>``.  Every answer must be the catalogue error 500 ``failpoint``
naming that failpoint, conform to the contract, have exactly one log line
(``error_is_logged``), and leave the service's tables exactly as they were
(``write_is_atomic``, plus an explicit snapshot here).  Afterwards the same request without
the header succeeds: the failed attempts broke nothing.

Outside test mode nothing can arm a failpoint: on every write operation of both services
the header is refused with 400 ``failpoints_disabled``, logged, and nothing changes.

The cases come from the contracts: a failpoint with no scenario here fails the suite.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import hypothesis
import pytest
import trio
from hypothesis import strategies as st

from tests.support.auth import UserCredentials
from tests.support.fuzzing import unique_request_ids
from tests.support.session import Stack, StackFactory

from . import harness
from .harness import AUTH, SESSION, ServiceKind

EXAMPLES = max(3, int(os.environ.get("TETHER_FUZZ_EXAMPLES", "20")) // 4)
FAILPOINT_HEADER = "X-Tether-Failpoint"
FAILPOINTS = [(kind, op, fp) for kind in (AUTH, SESSION) for op, fp in kind.contract.failpoints()]
SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    print_blob=True,
)


@pytest.fixture(scope="module")
def fp_stack(module_stack_factory: StackFactory) -> Stack:
    """Both services in test mode (failpoints armable), on a database of their own."""
    return module_stack_factory.start(auth_env={"TETHER_TEST_MODE": "1"})


@pytest.fixture(scope="module")
def request_ids() -> Iterator[list[str]]:
    with unique_request_ids("fuzz-fp") as sent:
        yield sent


@dataclass
class Target:
    """What a scenario needs: the stack, one user, and schemathesis schemas of both services."""

    stack: Stack
    user: UserCredentials
    apis: dict[str, Any]

    @classmethod
    def of(cls, stack: Stack) -> Target:
        user = stack.make_user()
        apis = {
            AUTH.name: harness.api_schema(
                AUTH, stack.auth.url, user_key=user.api_key, service_key=stack.auth.service_key, examples=EXAMPLES
            ),
            SESSION.name: harness.api_schema(
                SESSION, stack.session.url, user_key=user.api_key, service_key=stack.ingest_key, examples=EXAMPLES
            ),
        }
        return cls(stack, user, apis)

    def operation(self, kind: ServiceKind, operation_id: str) -> Any:
        return self.apis[kind.name].find_operation_by_id(operation_id)

    def project(self, name: str = "failpoint target") -> dict[str, Any]:
        return trio.run(self.stack.create_project, self.user.api_key, name)

    def token(self) -> str:
        return trio.run(self.stack.token, self.user.api_key)

    def session_cookie(self) -> str:
        response = httpx.post(f"{self.stack.auth.url}/v1/login", json={"api_key": self.user.api_key}, timeout=10)
        assert response.status_code == 200, response.text
        return response.cookies["tether_session"]


@dataclass
class Scenario:
    """Generated cases that reach the failpoint; ``prepare`` finishes a drawn case."""

    strategy: Any
    prepare: Callable[[Any], None] = lambda case: None


def _fresh_idempotency_key(case: Any) -> None:
    case.headers = {**(case.headers or {}), "Idempotency-Key": f"fp-{uuid.uuid4().hex}"}


def scenario(t: Target, kind: ServiceKind, operation_id: str) -> Scenario:
    op = t.operation(kind, operation_id)
    if operation_id == "login":
        return Scenario(op.as_strategy(body={"api_key": t.user.api_key}))
    if operation_id == "logout":
        return Scenario(op.as_strategy(cookies={"tether_session": t.session_cookie()}))
    if operation_id == "issueToken":
        return Scenario(op.as_strategy())
    if operation_id == "consumeToken":  # a failed consume leaves the token unconsumed: one serves all
        return Scenario(op.as_strategy(body={"token": t.token()}))
    if operation_id == "consumeTokenBatch":  # likewise: a failed batch consumes none of its tokens
        return Scenario(op.as_strategy(body={"tokens": [t.token(), t.token()]}))
    if operation_id == "createProject":
        return Scenario(op.as_strategy(), _fresh_idempotency_key)
    if operation_id in ("deleteProject", "publishEvents"):
        return Scenario(op.as_strategy(path_parameters={"project_id": t.project()["id"]}))
    raise AssertionError(f"no failpoint scenario for {kind.name} {operation_id}: add one here")


@pytest.fixture(scope="module")
def fp_target(fp_stack: Stack) -> Target:
    return Target.of(fp_stack)


def test_F02_every_failpoint_of_both_contracts_is_covered() -> None:
    assert {AUTH.name, SESSION.name} <= {kind.name for kind, _, _ in FAILPOINTS}
    writes = {
        (kind.name, op.operation_id)
        for kind in (AUTH, SESSION)
        for op in kind.contract.operations.values()
        if op.method in ("POST", "PUT", "PATCH", "DELETE")
    }
    armed = {(kind.name, op) for kind, op, _ in FAILPOINTS}
    assert writes == armed, f"write operations without a failpoint: {sorted(writes - armed)}"


@pytest.mark.fuzz
@pytest.mark.parametrize(("kind", "operation_id", "failpoint"), FAILPOINTS, ids=[fp for _, _, fp in FAILPOINTS])
def test_F02_armed_failpoint_answers_500_is_logged_and_changes_nothing(
    fp_target: Target, request_ids: list[str], kind: ServiceKind, operation_id: str, failpoint: str
) -> None:
    service = harness.service_at(fp_target.stack.auth.url if kind is AUTH else fp_target.stack.session.url)
    assert service is not None
    plan = scenario(fp_target, kind, operation_id)
    seen: list[Any] = []

    @SETTINGS
    @hypothesis.given(case=plan.strategy)
    def armed(case: Any) -> None:
        plan.prepare(case)
        before = harness.snapshot(service)
        with harness.labelled(f"failpoint {failpoint}"):
            response = case.call(headers={FAILPOINT_HEADER: failpoint})
            case.validate_response(response, checks=[*harness.CONFORMANCE_CHECKS, *harness.TETHER_CHECKS])
        body = response.json()
        assert (response.status_code, body.get("code"), body.get("failpoint")) == (500, "failpoint", failpoint), body
        assert "set-cookie" not in response.headers, "a failed write must not set a cookie"
        request_id = response.headers["x-request-id"][0]
        [line] = harness.error_lines(service.proc, request_id)
        assert line["failpoint"] == failpoint, line
        assert harness.snapshot(service) == before, f"{failpoint} left a partial write behind"
        seen.append(case)

    armed()
    assert seen, "no case reached the failpoint"
    # The failed attempts broke nothing: the last request, sent again unarmed, succeeds.
    last = seen[-1]
    response = last.call()
    last.validate_response(response, checks=[*harness.CONFORMANCE_CHECKS, *harness.TETHER_CHECKS])
    assert response.status_code < 300, f"{operation_id} fails unarmed after {failpoint}: {response.text}"


@pytest.fixture(scope="module")
def normal_target(normal_stack: Stack) -> Target:
    """The session-wide normal-mode stack (``tests/fuzz/conftest.py``): arming must be refused."""
    return Target.of(normal_stack)


# Reads have no failpoint and ignore the header; every write refuses it in normal mode.
WRITE_OPERATIONS = [
    (kind, op.operation_id)
    for kind in (AUTH, SESSION)
    for op in kind.contract.operations.values()
    if op.method in ("POST", "PUT", "PATCH", "DELETE")
]


@pytest.mark.fuzz
@pytest.mark.parametrize(("kind", "operation_id"), WRITE_OPERATIONS, ids=[f"{k.name}-{o}" for k, o in WRITE_OPERATIONS])
def test_F02_failpoint_header_refused_outside_test_mode_on_every_write(
    normal_target: Target, request_ids: list[str], kind: ServiceKind, operation_id: str
) -> None:
    stack = normal_target.stack
    service = harness.service_at(stack.auth.url if kind is AUTH else stack.session.url)
    assert service is not None
    op = normal_target.operation(kind, operation_id)
    names = [fp for _, fp in kind.contract.failpoints()]

    @SETTINGS
    @hypothesis.given(case=op.as_strategy(), failpoint=st.sampled_from(names))
    def refused(case: Any, failpoint: str) -> None:
        before = harness.snapshot(service)
        with harness.labelled(f"failpoint refused {op.label}"):
            response = case.call(headers={FAILPOINT_HEADER: failpoint})
            # The header is outside the contract, so is the 400: only Tether's checks apply.
            case.validate_response(response, checks=list(harness.TETHER_CHECKS))
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "failpoints_disabled"
        assert harness.snapshot(service) == before, "a refused request wrote something"

    refused()
    assert [line for line in service.proc.log_lines() if line.get("code") == "failpoint"] == []
