"""Tether's own schemathesis checks catch what they claim to (each check must be able to fail).

* ``error_is_logged`` fails for an error answer whose request id has no log line.
* ``write_is_atomic`` fails when a row appears during a request that answered an error
  (a partial write), and when a success changed more than the contract says.

A ``before_call`` hook registered after the harness' own runs after its "before" snapshot
and plays the buggy service by inserting a row behind its back.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from schemathesis import hooks
from schemathesis.core.failures import FailureGroup

from tests.support.auth import UserCredentials, bearer
from tests.support.session import Stack

from . import harness
from .harness import SESSION, ErrorNotLogged, WriteNotAtomic


@pytest.fixture(scope="module")
def user(normal_stack: Stack) -> UserCredentials:
    return normal_stack.make_user()


@pytest.fixture(scope="module")
def api(normal_stack: Stack, user: UserCredentials) -> Any:
    return harness.api_schema(
        SESSION, normal_stack.session.url, user_key=user.api_key, service_key=normal_stack.ingest_key, examples=1
    )


@pytest.fixture
def sneaky_insert(normal_stack: Stack) -> Iterator[None]:
    """While active, every schemathesis call is preceded by an INSERT the service did not make."""
    owner = uuid.uuid4()

    def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
        harness.PROBE.fetch(
            normal_stack.dsn,
            "INSERT INTO session.projects (owner_id, slug, name) VALUES ($1, $2, 'sneaky') RETURNING id",
            owner,
            f"sneaky-{uuid.uuid4().hex[:8]}",
        )

    schemathesis.hook("before_call")(before_call)
    try:
        with harness.quiet():
            yield
    finally:
        hooks.unregister(before_call)
        harness.PROBE.fetch(normal_stack.dsn, "DELETE FROM session.projects WHERE owner_id = $1 RETURNING 1", owner)


def _failures(exc: pytest.ExceptionInfo[FailureGroup]) -> list[type]:
    return [type(e) for e in exc.value.exceptions]


def test_error_is_logged_fails_for_an_error_without_its_log_line(api: Any) -> None:
    with harness.quiet():
        _error_without_log_line(api)


def _error_without_log_line(api: Any) -> None:
    case = api.find_operation_by_id("listProjects").Case(headers={"Authorization": "Bearer tk_nope"})
    response = case.call()
    assert response.status_code == 401
    case.validate_response(response, checks=[harness.error_is_logged])  # the real answer is logged
    response.headers["x-request-id"] = [f"never-logged-{uuid.uuid4().hex}"]
    with pytest.raises(FailureGroup) as exc:
        case.validate_response(response, checks=[harness.error_is_logged])
    assert _failures(exc) == [ErrorNotLogged]


def test_write_is_atomic_fails_for_a_partial_write_behind_an_error(
    api: Any, user: UserCredentials, sneaky_insert: None
) -> None:
    case = api.find_operation_by_id("createProject").Case(
        body={"name": ""}, media_type="application/json", headers=bearer(user.api_key)
    )
    response = case.call()
    assert response.status_code == 422
    with pytest.raises(FailureGroup) as exc:
        case.validate_response(response, checks=[harness.write_is_atomic])
    assert _failures(exc) == [WriteNotAtomic]
    assert "partial write" in str(exc.value)


def test_write_is_atomic_fails_when_a_success_changes_more_than_the_contract_says(
    api: Any, user: UserCredentials, sneaky_insert: None
) -> None:
    case = api.find_operation_by_id("createProject").Case(
        body={"name": "one project"}, media_type="application/json", headers=bearer(user.api_key)
    )
    response = case.call()
    assert response.status_code == 201
    with pytest.raises(FailureGroup) as exc:
        case.validate_response(response, checks=[harness.write_is_atomic])
    assert _failures(exc) == [WriteNotAtomic]
    assert "projects: " in str(exc.value)
