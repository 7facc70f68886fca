"""The session state machine (``tether_session.protocol``), table-driven (F01, F04).

Everything here is generated from the service's own tables and the contract files, so a
new transition, a new input or a new close-code entry cannot go untested:

* every ``(state, input)`` pair: allowed ones (``TRANSITIONS``) move to their target,
  reached by a real path from the initial state; disallowed ones raise ``SessionError``
  naming both the state and the input (``unexpected_frame`` for client frames — F04: the
  first frame must be INIT — and ``internal_error`` for the handler's own events);
* ``fail()`` maps every catalogue entry to its close code, error frame, ``retryable`` and
  ``action`` (F01), and the frame validates against ``frames/error.json``;
* every ``SessionError("<name>")`` the service source raises names a catalogue entry;
* ``TokenBucket`` (rate limits) with an explicit clock.
"""

from __future__ import annotations

import json
import re
from collections import deque
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tether_session import protocol
from tether_session.protocol import (
    FRAME_INPUTS,
    TRANSITIONS,
    CloseCatalogue,
    CloseCode,
    Input,
    Limits,
    SessionError,
    SessionMachine,
    SessionState,
    TokenBucket,
)

REPO = Path(__file__).resolve().parents[2]
CONTRACT = REPO / "contracts" / "session"
CLOSE_CODES = json.loads((CONTRACT / "close-codes.json").read_text())["codes"]
ERROR_FRAME = jsonschema.Draft202012Validator(json.loads((CONTRACT / "frames" / "error.json").read_text()))
SERVICE_SRC = Path(protocol.__file__).resolve().parent
# auth_client.py maps auth-token answers through a table rather than literals
FRAME_NAMES_FROM_AUTH = {"token_unknown", "token_used", "token_expired"}

LIMITS = Limits(
    max_connections=10,
    max_connections_per_user=2,
    init_timeout_ms=300,
    heartbeat_timeout_ms=500,
    session_lifetime_s=60.0,
    drain_window_ms=2000,
)

ALL_PAIRS = [(s, i) for s in SessionState for i in Input]
ALLOWED = [pair for pair in ALL_PAIRS if pair in TRANSITIONS]
# (CLOSED, client_closed) is the one pair outside the table that is not an error: a
# client going away after the server closed is idempotent.
IDEMPOTENT = {(SessionState.CLOSED, Input.CLIENT_CLOSED)}
DISALLOWED = [pair for pair in ALL_PAIRS if pair not in TRANSITIONS and pair not in IDEMPOTENT]


def _pair_id(pair: tuple[SessionState, Input]) -> str:
    return f"{pair[0].value}-{pair[1].value}"


@pytest.fixture(scope="module")
def catalogue() -> CloseCatalogue:
    return CloseCatalogue.load(CONTRACT / "close-codes.json")


def _feed(machine: SessionMachine, event: Input) -> SessionState:
    """Feed ``event`` through the machine's public API (the way the handler does)."""
    if event in FRAME_INPUTS.values():
        return machine.receive(event.value)
    if event is Input.AUTH_OK:
        return machine.authenticated()
    if event is Input.FAILURE:
        machine.fail(SessionError("invalid_frame", "test"))
        return machine.state
    if event is Input.CLOSE_SENT:
        return machine.close_sent()
    if event is Input.CLIENT_CLOSED:
        return machine.client_closed()
    raise AssertionError(f"input {event} has no driver in this test: add one")


def _path_to(target: SessionState) -> list[Input]:
    """The shortest sequence of inputs leading from AWAITING_INIT to ``target`` (BFS over TRANSITIONS)."""
    queue: deque[tuple[SessionState, list[Input]]] = deque([(SessionState.AWAITING_INIT, [])])
    seen = {SessionState.AWAITING_INIT}
    while queue:
        state, path = queue.popleft()
        if state is target:
            return path
        for (source, event), dest in TRANSITIONS.items():
            if source is state and dest not in seen:
                seen.add(dest)
                queue.append((dest, [*path, event]))
    raise AssertionError(f"state {target} is unreachable from AWAITING_INIT")


def _machine_in(state: SessionState, catalogue: CloseCatalogue) -> SessionMachine:
    machine = SessionMachine(catalogue)
    for event in _path_to(state):
        _feed(machine, event)
    assert machine.state is state
    return machine


# -- the transition table -----------------------------------------------------------------


def test_every_state_is_reachable_and_every_input_is_used() -> None:
    for state in SessionState:
        _path_to(state)
    assert {i for _, i in TRANSITIONS} == set(Input), "an input no state accepts is dead code"
    assert SessionMachine(CloseCatalogue([])).state is SessionState.AWAITING_INIT


def test_F04_only_init_is_accepted_first_and_closed_is_terminal() -> None:
    first = [i for (s, i) in TRANSITIONS if s is SessionState.AWAITING_INIT and i in FRAME_INPUTS.values()]
    assert first == [Input.INIT]
    assert [i for (s, i) in TRANSITIONS if s is SessionState.CLOSED] == []
    assert TRANSITIONS[(SessionState.AWAITING_INIT, Input.INIT)] is SessionState.AUTHENTICATING
    assert TRANSITIONS[(SessionState.AUTHENTICATING, Input.AUTH_OK)] is SessionState.READY


@pytest.mark.parametrize("pair", ALLOWED, ids=_pair_id)
def test_allowed_transition_moves_to_its_target(pair: tuple[SessionState, Input], catalogue: CloseCatalogue) -> None:
    state, event = pair
    machine = _machine_in(state, catalogue)
    assert _feed(machine, event) is TRANSITIONS[pair]
    assert machine.state is TRANSITIONS[pair]
    assert machine.is_live is (
        machine.state in (SessionState.AWAITING_INIT, SessionState.AUTHENTICATING, SessionState.READY)
    )


@pytest.mark.parametrize("pair", DISALLOWED, ids=_pair_id)
def test_F04_disallowed_input_raises_naming_state_and_input(
    pair: tuple[SessionState, Input], catalogue: CloseCatalogue
) -> None:
    state, event = pair
    machine = _machine_in(state, catalogue)
    with pytest.raises(SessionError) as raised:
        _feed(machine, event)
    expected = "unexpected_frame" if event in FRAME_INPUTS.values() else "internal_error"
    assert raised.value.name == expected
    assert state.value in raised.value.detail, raised.value.detail
    assert event.value in raised.value.detail, raised.value.detail
    assert machine.state is state, "a refused input must not move the machine"
    assert raised.value.name in catalogue.by_name


def test_client_closed_after_closed_is_idempotent(catalogue: CloseCatalogue) -> None:
    machine = _machine_in(SessionState.CLOSED, catalogue)
    assert machine.client_closed() is SessionState.CLOSED
    assert {p for p in ALL_PAIRS if p not in TRANSITIONS and p not in DISALLOWED} == IDEMPOTENT


@pytest.mark.parametrize("frame_type", ["ready", "error", "event", "pong", "bogus", ""])
def test_F04_a_non_client_frame_type_is_unexpected_in_every_live_state(
    frame_type: str, catalogue: CloseCatalogue
) -> None:
    for state in (SessionState.AWAITING_INIT, SessionState.AUTHENTICATING, SessionState.READY):
        machine = _machine_in(state, catalogue)
        with pytest.raises(SessionError) as raised:
            machine.receive(frame_type)
        assert raised.value.name == "unexpected_frame"
        assert repr(frame_type) in raised.value.detail
        assert machine.state is state


def test_frame_inputs_are_exactly_the_client_frames_of_the_contract() -> None:
    client_frames = {
        json.loads(p.read_text())["properties"]["type"]["const"]
        for p in (CONTRACT / "frames").glob("*.json")
        if json.loads(p.read_text())["x-direction"] == "client_to_server"
    }
    assert set(FRAME_INPUTS) == client_frames


# -- failures and the close-code catalogue ---------------------------------------------------


@pytest.mark.parametrize("entry", CLOSE_CODES, ids=[e["name"] for e in CLOSE_CODES])
def test_F01_fail_maps_every_catalogue_entry_to_its_close_plan(
    entry: dict[str, Any], catalogue: CloseCatalogue
) -> None:
    for state in (SessionState.AWAITING_INIT, SessionState.AUTHENTICATING, SessionState.READY):
        machine = _machine_in(state, catalogue)
        error = SessionError(entry["name"])
        plan = machine.fail(error)
        assert machine.state is SessionState.CLOSING
        assert machine.failure is error
        assert plan.close_code == entry["code"]
        assert plan.frame == {
            "type": "error",
            "v": 1,
            "code": entry["name"],
            "close_code": entry["code"],
            "message": entry["message"],
            "retryable": entry["retryable"],
            "action": entry["action"],
        }
        ERROR_FRAME.validate(plan.frame)
        assert plan.level == entry["log_level"]
        assert entry["cause"] == "server" or plan.level == "warning", "a client's fault is never an error line"
        assert machine.close_sent() is SessionState.CLOSED
        assert not machine.is_live

    # detail replaces the generic message; retry_after_ms is carried when given
    machine = SessionMachine(catalogue)
    plan = machine.fail(SessionError(entry["name"], "why exactly", retry_after_ms=1234))
    assert plan.frame["message"] == "why exactly"
    assert plan.frame["retry_after_ms"] == 1234
    ERROR_FRAME.validate(plan.frame)


def test_F01_internal_error_close_plan_is_an_error_level_failure(catalogue: CloseCatalogue) -> None:
    """internal_error has no honest black-box trigger besides a misconfiguration (tested in
    tests/session/test_close_codes.py); its plan is proven here."""
    plan = _machine_in(SessionState.READY, catalogue).fail(SessionError("internal_error", "boom"))
    assert (plan.close_code, plan.level, plan.frame["retryable"], plan.frame["action"]) == (
        4500,
        "error",
        True,
        "backoff",
    )


@pytest.mark.parametrize("state", [SessionState.CLOSING, SessionState.CLOSED])
def test_fail_after_the_session_ended_is_refused(state: SessionState, catalogue: CloseCatalogue) -> None:
    machine = _machine_in(state, catalogue)
    with pytest.raises(SessionError) as raised:
        machine.fail(SessionError("heartbeat_timeout"))
    assert raised.value.name == "internal_error"
    assert machine.state is state


def test_F01_every_name_the_service_raises_is_in_the_catalogue(catalogue: CloseCatalogue) -> None:
    """A SessionError whose name is not in the catalogue would make fail() raise KeyError
    while closing: a silent close.  Scan the service source for every literal name."""
    pattern = re.compile(r"SessionError\(\s*\"([a-z_]+)\"")
    conditional = re.compile(r"\"([a-z_]+)\"\s+if\s+.+?\s+else\s+\"([a-z_]+)\"")
    raised: set[str] = set()
    for path in SERVICE_SRC.glob("*.py"):
        text = path.read_text()
        raised.update(pattern.findall(text))
        for line in text.splitlines():
            if "SessionError" in line or "_unavailable" in line:
                for pair in conditional.findall(line):
                    raised.update(pair)
    raised.update(FRAME_NAMES_FROM_AUTH)
    assert len(raised) >= 15, f"the scan found suspiciously few names: {sorted(raised)}"
    unknown = sorted(raised - set(catalogue.by_name))
    assert unknown == [], f"the service raises names missing from close-codes.json: {unknown}"


def test_auth_error_table_names_are_catalogue_entries(catalogue: CloseCatalogue) -> None:
    from tether_session.auth_client import _TOKEN_ERRORS

    assert set(_TOKEN_ERRORS) == FRAME_NAMES_FROM_AUTH
    assert set(_TOKEN_ERRORS) <= set(catalogue.by_name)


def test_catalogue_loads_from_the_contract_and_rejects_bad_tables(catalogue: CloseCatalogue) -> None:
    assert sorted(catalogue.by_name) == sorted(e["name"] for e in CLOSE_CODES)
    assert catalogue["draining"].code == 4502

    def code(number: int, name: str, level: str = "warning") -> CloseCode:
        return CloseCode(number, name, "m", True, "backoff", "msg", "client", level)

    entry = code(4000, "a")
    with pytest.raises(ValueError, match="duplicate"):
        CloseCatalogue([entry, code(4001, "a")])
    with pytest.raises(ValueError, match="duplicate"):
        CloseCatalogue([entry, code(4000, "b")])
    for number in (3999, 5000, 1000):
        with pytest.raises(ValueError, match="outside"):
            CloseCatalogue([code(number, "x")])
    with pytest.raises(ValueError, match="log_level"):
        CloseCatalogue([code(4000, "x", "info")])


# -- deadlines -------------------------------------------------------------------------------


def test_F04_F24_deadlines_and_timeout_errors_by_state(catalogue: CloseCatalogue) -> None:
    expected = {SessionState.AWAITING_INIT: (0.3, False), SessionState.READY: (0.5, False)}
    for state in SessionState:
        machine = _machine_in(state, catalogue)
        machine.expires_at = 1e9
        assert machine.receive_deadline(100.0, LIMITS) == expected.get(state, (None, False))
    assert _machine_in(SessionState.AWAITING_INIT, catalogue).timeout_error(False).name == "init_timeout"
    assert _machine_in(SessionState.READY, catalogue).timeout_error(False).name == "heartbeat_timeout"


def test_session_lifetime_bounds_the_receive_when_it_ends_first_and_reauth_renews_it(
    catalogue: CloseCatalogue,
) -> None:
    machine = SessionMachine(catalogue)
    machine.receive("init")
    machine.authenticated(now=1000.0, lifetime_s=2.0)
    assert machine.expires_at == 1002.0
    assert machine.receive_deadline(1000.0, LIMITS) == (0.5, False)  # heartbeat first
    assert machine.receive_deadline(1001.8, LIMITS) == pytest.approx((0.2, True))  # lifetime first
    assert machine.receive_deadline(1005.0, LIMITS) == (0.0, True)  # already over: no negative wait
    assert machine.timeout_error(True).name == "session_expired"
    machine.renewed(now=1001.9, lifetime_s=2.0)
    assert machine.receive_deadline(1001.9, LIMITS) == (0.5, False)


def test_session_error_str_names_the_catalogue_entry() -> None:
    assert str(SessionError("forbidden", "bound to another project")) == "forbidden: bound to another project"


# -- TokenBucket ------------------------------------------------------------------------------


def test_token_bucket_burst_then_refill_at_rate() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=3.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after_ms() == 500  # one token at 2/s
    assert bucket.take(100.25) is False  # half a token
    assert bucket.retry_after_ms() == 250
    assert bucket.take(100.5) is True
    assert bucket.take(100.5) is False
    # refill never exceeds the burst
    assert [bucket.take(1000.0) for _ in range(4)] == [True, True, True, False]


def test_token_bucket_first_use_starts_full_whatever_the_clock() -> None:
    bucket = TokenBucket(rate_per_s=1 / 60, burst=1.0)
    assert bucket.take(0.0) is True
    assert bucket.take(30.0) is False
    assert 29_000 <= bucket.retry_after_ms() <= 30_000
    assert bucket.take(60.0) is True


def test_token_bucket_zero_rate_never_refills() -> None:
    bucket = TokenBucket(rate_per_s=0.0, burst=1.0)
    assert bucket.take(5.0) is True
    assert bucket.take(1e9) is False
    assert bucket.retry_after_ms() == 60000


def test_token_bucket_retry_after_is_at_least_one_ms() -> None:
    bucket = TokenBucket(rate_per_s=1e9, burst=1.0)
    assert bucket.take(0.0) is True
    assert bucket.retry_after_ms() >= 1


def test_prompt_bucket_as_configured_by_the_connection() -> None:
    """The connection builds its bucket with ``per_minute``: with 1 prompt a minute the first
    prompt passes and the second is limited (the black-box rate_limited test relies on this)."""
    bucket = TokenBucket.per_minute(1)
    assert (bucket.rate_per_s, bucket.burst) == (1 / 60, 1.0)
    assert bucket.take(10.0) is True
    assert bucket.take(10.1) is False
