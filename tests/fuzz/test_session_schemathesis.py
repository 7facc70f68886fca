"""schemathesis against the LIVE session service, over HTTP: every operation, and its links.

* Every operation of ``contracts/session/openapi.json``, all of schemathesis' default checks
  plus Tether's ``error_is_logged`` and ``write_is_atomic`` (:mod:`tests.fuzz.harness`).
  User operations authenticate with a real user's API key (validated by the real auth-token
  service), the ingest operation with the ingest key; schemathesis also probes without.
* The operations on one project (``publishEvents``, ``listEvents``) fuzzed against a project
  that exists, so the fuzzer reaches the event log and not only the 404 path.
* Stateful: the contract's OpenAPI links (createProject → getProject / getProjectBySlug /
  deleteProject) drive schemathesis' state machine; the test proves each link was followed
  to a 2xx at least once.

The service runs in normal mode (test mode off) on a database of its own; examples run
sequentially, so the before/after snapshots of ``write_is_atomic`` are meaningful.
Budget: ``TETHER_FUZZ_EXAMPLES`` per operation (default 20).
"""

from __future__ import annotations

import os
import unicodedata
from collections import Counter
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from tests.support.auth import UserCredentials
from tests.support.fuzzing import unique_request_ids
from tests.support.session import SESSION_CONTRACT, Stack, StackFactory
from tests.support.waiting import scaled
from tether_session.names import invisible

from .report import REPORT

EXAMPLES = int(os.environ.get("TETHER_FUZZ_EXAMPLES", "20"))
SETTINGS = hypothesis.settings(
    deadline=None, database=None, suppress_health_check=list(hypothesis.HealthCheck), print_blob=True
)


@pytest.fixture(scope="module")
def fuzz_stack(module_stack_factory: StackFactory) -> Stack:
    """auth-token + one session replica in normal mode, on a database of their own."""
    return module_stack_factory.start(session_env={"TETHER_TEST_MODE": "0"})


@pytest.fixture(scope="module")
def fuzz_user(fuzz_stack: Stack) -> UserCredentials:
    return fuzz_stack.make_user("fuzz-session-user")


@pytest.fixture(scope="module")
def session_api(fuzz_stack: Stack, fuzz_user: UserCredentials) -> Any:
    config = SchemathesisConfig.from_dict(
        {
            "base-url": fuzz_stack.session.url,
            "request-timeout": scaled(10),
            # U+0000 included: the schemas say where it is refused (NulFreeJson, names), so
            # positive cases never hold it there and negative ones may.
            "generation": {"max-examples": EXAMPLES},
            # Stateful: the contract's own links only.  Links inferred from listProjects answers
            # make which rule can run depend on all earlier tests' data (a flaky strategy).
            "phases": {"stateful": {"inference": {"algorithms": []}}},
            "auth": {
                "auto-signup": False,
                "openapi": {
                    "bearerAuth": {"bearer": fuzz_user.api_key},
                    "serviceAuth": {"bearer": fuzz_stack.ingest_key},
                },
            },
        }
    )
    # From the contract file (identical to the served /openapi.json: test_contract_conformance).
    return schemathesis.openapi.from_path(SESSION_CONTRACT, config=config)


@pytest.fixture(scope="module")
def request_ids() -> Iterator[list[str]]:
    with unique_request_ids("fuzz-session") as sent:
        yield sent


schema = schemathesis.pytest.from_fixture("session_api")


@pytest.mark.fuzz
@schema.parametrize()
@SETTINGS
def test_F02_session_api_conforms_is_logged_and_atomic_under_fuzzing(case: Any, request_ids: list[str]) -> None:
    case.call_and_validate()


@pytest.fixture(scope="module")
def real_project(fuzz_stack: Stack, fuzz_user: UserCredentials) -> dict[str, Any]:
    """A project of the fuzz user that nothing deletes (the stateful test makes its own)."""
    import trio

    return trio.run(fuzz_stack.create_project, fuzz_user.api_key, "Fuzz target (kept)")


@pytest.mark.fuzz
@pytest.mark.parametrize("operation_id", ["publishEvents", "listEvents"])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
def test_F02_event_log_operations_on_a_real_project_under_fuzzing(
    session_api: Any, real_project: dict[str, Any], request_ids: list[str], operation_id: str, mode: GenerationMode
) -> None:
    """Generated bodies and queries against a project that exists: the event log itself is fuzzed."""
    operation = session_api.find_operation_by_id(operation_id)
    strategy = operation.as_strategy(generation_mode=mode, path_parameters={"project_id": real_project["id"]})

    @hypothesis.settings(SETTINGS, max_examples=EXAMPLES)
    @hypothesis.given(case=strategy)
    def run(case: Any) -> None:
        case.call_and_validate()

    run()


class _LinkTracker:
    """Which links of the contract the state machine followed to a 2xx answer."""

    def __init__(self) -> None:
        self.created: set[str] = set()
        self.slugs: set[str] = set()
        self.followed: Counter[str] = Counter()

    def after_call(self, response: Any, case: Any) -> None:
        status, op = response.status_code, case.operation.label
        body = response.json() if 200 <= status < 300 and response.content else None
        project_id = str(case.path_parameters.get("project_id")) if case.path_parameters else None
        if op == "POST /v1/projects" and status == 201:
            self.created.add(body["id"])
            self.slugs.add(body["slug"])
        elif op == "GET /v1/projects/{project_id}" and status == 200 and project_id in self.created:
            self.followed["createProject -> getProject"] += 1
        elif op == "GET /v1/projects/by-slug/{slug}" and status == 200 and case.path_parameters["slug"] in self.slugs:
            self.followed["createProject -> getProjectBySlug"] += 1
        elif op == "DELETE /v1/projects/{project_id}" and status == 204 and project_id in self.created:
            self.followed["createProject -> deleteProject"] += 1


@pytest.mark.fuzz
def test_F33_project_links_followed_statefully_create_get_by_id_get_by_slug_delete(
    session_api: Any, request_ids: list[str]
) -> None:
    tracker = _LinkTracker()
    base = session_api.as_state_machine()

    class ProjectLifecycle(base):  # type: ignore[misc, valid-type]
        def before_call(self, case: Any) -> None:
            super().before_call(case)
            # Which rules can run next depends on earlier answers; an Idempotency-Key's answer
            # (201 new, 201 replayed, 409) depends on every earlier run too, and hypothesis
            # reports that as a flaky strategy.  Keys are fuzzed by the stateless test.
            if case.headers:
                case.headers.pop("Idempotency-Key", None)

        def after_call(self, response: Any, case: Any) -> None:
            super().after_call(response, case)
            tracker.after_call(response, case)

    ProjectLifecycle.run(
        settings=hypothesis.settings(
            # generate only, as schemathesis' own stateful default: a replay for shrinking meets a
            # server whose state has moved on, which hypothesis reports as a flaky strategy.
            SETTINGS,
            max_examples=max(EXAMPLES, 10),
            stateful_step_count=8,
            phases=[hypothesis.Phase.generate],
        )
    )
    for link, count in tracker.followed.items():
        REPORT.case("session", f"stateful link {link}", ["links", "use_after_free"], count)
    expected = {"createProject -> getProject", "createProject -> getProjectBySlug", "createProject -> deleteProject"}
    assert expected <= set(tracker.followed), (
        f"links never followed to a 2xx: {sorted(expected - set(tracker.followed))}"
    )


NAMES = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=100
).filter(lambda s: not all(invisible(ch) for ch in s))  # the contract's rule: at least one visible character


@pytest.mark.fuzz
@hypothesis.given(name=NAMES)
@hypothesis.settings(SETTINGS, max_examples=max(3, EXAMPLES // 4))
def test_F33_a_created_project_is_found_by_id_and_by_slug(
    session_api: Any, fuzz_user: UserCredentials, request_ids: list[str], name: str
) -> None:
    """The link sequence once per example, deterministically: create → by id → by slug → delete."""
    auth = {"Authorization": f"Bearer {fuzz_user.api_key}"}

    def case(operation_id: str, **kwargs: Any) -> Any:
        return session_api.find_operation_by_id(operation_id).Case(headers=auth, **kwargs)

    created = case("createProject", body={"name": name}, media_type="application/json").call_and_validate()
    assert created.status_code == 201, created.text
    project = created.json()
    assert project["name"] == unicodedata.normalize("NFC", name).strip()
    by_id = case("getProject", path_parameters={"project_id": project["id"]})
    assert by_id.call_and_validate().json() == project
    by_slug = case("getProjectBySlug", path_parameters={"slug": project["slug"]})
    assert by_slug.call_and_validate().json() == project
    assert case("deleteProject", path_parameters={"project_id": project["id"]}).call_and_validate().status_code == 204
    gone = by_id.call_and_validate()
    assert gone.status_code == 404, gone.text
