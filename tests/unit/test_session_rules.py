"""The session rules of ``tether_session.rules`` (F10, F03, F22, F25, F06), generated from its tables.

* every :data:`ADMISSION_CHECKS` row refuses exactly when its condition holds, in table order
  (an earlier row wins), with a ``retry_after_ms`` inside its jitter range, and every name
  is a retryable catalogue entry;
* every dependency in :data:`DEPENDENCY_CLOSES` maps to a retryable catalogue close with a
  jittered ``retry_after_ms`` and the dependency in the log fields;
* the resume cursor, the retention gap, the per-user cap, token binding, reauth and the
  Origin check, over their boundaries.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import uuid
from pathlib import Path

import pytest

from tests.unit.test_protocol import LIMITS
from tether_session.protocol import CloseCatalogue, SessionError
from tether_session.rules import (
    ADMISSION_CHECKS,
    DEPENDENCY_CLOSES,
    Admission,
    Rules,
    origin_refusal,
    resume_cursor,
    retention_gap,
)

CONTRACT = Path(__file__).resolve().parents[2] / "contracts" / "session"
FINE = Admission(ready=True, draining=False, open_connections=3, ip_allowed=True)
# The measurement that trips each row (and nothing before it).
TRIPS = {
    "starting_up": {"ready": False},
    "draining": {"draining": True},
    "overloaded": {"open_connections": LIMITS.max_connections + 1},
    "rate_limited": {"ip_allowed": False},
}


@pytest.fixture(scope="module")
def rules() -> Rules:
    return Rules(CloseCatalogue.load(CONTRACT / "close-codes.json"), LIMITS, random.Random(7))


def test_every_admission_row_has_a_trip_and_a_retryable_catalogue_entry(rules: Rules) -> None:
    assert [c.name for c in ADMISSION_CHECKS] == list(TRIPS)
    for check in ADMISSION_CHECKS:
        assert rules.catalogue[check.name].retryable, check.name


def test_F10_a_healthy_arrival_is_admitted(rules: Rules) -> None:
    assert rules.admission(FINE) is None
    last_seat = dataclasses.replace(FINE, open_connections=LIMITS.max_connections)
    assert rules.admission(last_seat) is None, "the arriving connection (counted) may take the last seat"


@pytest.mark.parametrize("row", range(len(ADMISSION_CHECKS)), ids=[c.name for c in ADMISSION_CHECKS])
def test_F10_each_admission_row_refuses_with_its_name_and_jittered_retry(rules: Rules, row: int) -> None:
    check = ADMISSION_CHECKS[row]
    low, high = check.retry_after_ms(LIMITS)
    seen = set()
    for _ in range(50):
        refusal = rules.admission(dataclasses.replace(FINE, **TRIPS[check.name]))  # type: ignore[arg-type]
        assert refusal is not None
        assert refusal.name == check.name
        assert refusal.retry_after_ms is not None
        assert low <= refusal.retry_after_ms <= max(low, high)
        seen.add(refusal.retry_after_ms)
    assert len(seen) > 10, "retry_after_ms is spread, not synchronised"


@pytest.mark.parametrize("pair", list(itertools.combinations(range(len(ADMISSION_CHECKS)), 2)))
def test_F10_the_earlier_admission_row_wins(rules: Rules, pair: tuple[int, int]) -> None:
    first, second = (ADMISSION_CHECKS[i] for i in pair)
    both = dataclasses.replace(FINE, **TRIPS[first.name], **TRIPS[second.name])  # type: ignore[arg-type]
    refusal = rules.admission(both)
    assert refusal is not None
    assert refusal.name == first.name


def test_per_user_cap(rules: Rules) -> None:
    assert rules.user_admission(LIMITS.max_connections_per_user - 1) is None
    refusal = rules.user_admission(LIMITS.max_connections_per_user)
    assert refusal is not None
    assert refusal.name == "too_many_connections"
    assert refusal.retry_after_ms


@pytest.mark.parametrize("dependency", sorted(DEPENDENCY_CLOSES))
def test_F06_a_failed_dependency_gets_its_retryable_close(rules: Rules, dependency: str) -> None:
    error = rules.dependency_failure(dependency, "down")
    assert error.name == DEPENDENCY_CLOSES[dependency]
    assert rules.catalogue[error.name].retryable
    assert error.log_fields == {"dependency": dependency}
    assert error.retry_after_ms is not None
    assert 500 <= error.retry_after_ms <= 2000


def test_an_unknown_dependency_is_an_internal_error(rules: Rules) -> None:
    assert rules.dependency_failure("redis", "?").name == "internal_error"


def test_F03_token_binding_and_reauth() -> None:
    user, other_user, project, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert Rules.token_binding(None, project) is None
    assert Rules.token_binding(project, project) is None
    refusal = Rules.token_binding(other, project)
    assert refusal is not None
    assert refusal.name == "forbidden"
    assert Rules.reauth(user, None, user, project) is None
    assert Rules.reauth(user, project, user, project) is None
    for token_user, token_project in ((other_user, None), (user, other)):
        refusal = Rules.reauth(token_user, token_project, user, project)
        assert refusal is not None
        assert refusal.name == "forbidden"


@pytest.mark.parametrize(
    ("resume_from", "last_seq", "first_seq", "expected"),
    [
        (None, 7, 1, 7),  # no resume: live from the head
        (None, 0, None, 0),
        (0, 7, 1, 0),  # everything
        (7, 7, 1, 7),  # at the head
        (3, 7, 4, 3),  # exactly the oldest retained event is next
        (2, 7, 4, "resume_unavailable"),  # pruned below
        (8, 7, 1, "resume_unavailable"),  # beyond the log
        (0, 0, None, 0),  # empty log
    ],
)
def test_F22_resume_cursor(resume_from: int | None, last_seq: int, first_seq: int | None, expected: object) -> None:
    if isinstance(expected, int):
        assert resume_cursor(resume_from, last_seq, first_seq) == expected
        return
    with pytest.raises(SessionError) as raised:
        resume_cursor(resume_from, last_seq, first_seq)
    assert raised.value.name == expected


def test_retention_gap_is_shared_by_the_socket_and_http() -> None:
    assert retention_gap(0, None) is None
    assert retention_gap(3, 4) is None
    assert retention_gap(2, 4) == "events before seq 4 are no longer retained"


def test_F07_origin_rule() -> None:
    allowed = frozenset({"https://app.example"})
    assert origin_refusal("https://app.example", allowed, required=True) is None
    assert origin_refusal(None, allowed, required=False) is None
    assert origin_refusal(None, allowed, required=True) == "an Origin header is required"
    refusal = origin_refusal("https://evil.example" + "x" * 200, allowed, required=False)
    assert refusal is not None
    assert len(refusal) < 140
