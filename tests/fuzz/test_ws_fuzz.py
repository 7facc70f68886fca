"""The WebSocket protocol fuzzed from its JSON Schemas (F01, F03, F04, F05, F13).

Client frames are generated from ``contracts/session/frames/*.json`` with
hypothesis-jsonschema and sent to a live session replica:

* **valid INITs** (token and project drawn as fresh / unknown / used / bound elsewhere,
  own id / own slug / unknown / someone else's): ``ready``, or exactly the catalogue
  refusal the input calls for (``token_unknown``, ``token_used``, ``project_not_found``,
  ``forbidden``, ``resume_unavailable``);
* **valid sessions**: after ``ready``, generated ping / ack / prompt / reauth frames get
  their answers (``pong`` with the nonce, ``prompt_ack`` with the right ``duplicate``,
  ``reauth_ok``; a reauth with an unknown token is refused with ``token_unknown``);
* **invalid frames**, before INIT and after ``ready``: schema-invalid (mutated) frames,
  text that is not a frame, binary frames, oversize and too-deep frames, frames in the
  wrong order, frames sent after the server's close.

Each refusal is one ``error`` frame whose code, close code, ``retryable`` and ``action``
are the catalogue's, then a close with that code, and exactly **one** ``ws_close`` log line
naming it.  Every frame the server sends validates against its schema (``WsClient``).
The replica stays ready throughout, and when a test ends no connection or fan-out
subscriber is left (``/metrics``: ``tether_ws_connections_open``,
``tether_fanout_subscribers`` back to 0).

Budget: ``TETHER_FUZZ_WS_EXAMPLES`` per scenario (default ``TETHER_FUZZ_EXAMPLES``, 20).
"""

from __future__ import annotations

import copy
import functools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import hypothesis
import jsonschema
import pytest
import trio
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from trio_websocket import ConnectionClosed

from tests.support.auth import UserCredentials, bearer
from tests.support.metrics import parse_metrics
from tests.support.secrets import remember
from tests.support.session import FRAMES_DIR, Stack, StackFactory, WsClient, close_catalogue
from tests.support.waiting import scaled, wait_until

from . import harness
from .report import REPORT

EXAMPLES = int(os.environ.get("TETHER_FUZZ_WS_EXAMPLES", os.environ.get("TETHER_FUZZ_EXAMPLES", "20")))
SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    print_blob=True,
)
MAX_FRAME_BYTES = 64 * 1024  # TETHER_MAX_FRAME_BYTES default
CATALOGUE = close_catalogue()


def _schemas() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(FRAMES_DIR.glob("*.json")):
        schema = json.loads(path.read_text())
        if schema.get("x-direction") == "client_to_server":
            found[schema["properties"]["type"]["const"]] = schema
    return found


CLIENT_SCHEMAS = _schemas()
VALIDATORS = {
    name: jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    for name, schema in CLIENT_SCHEMAS.items()
}


# hypothesis-jsonschema knows the formats of drafts <= 7; "uuid" (2019-09+) needs a strategy.
FORMATS = {"uuid": st.uuids().map(str)}


@functools.cache
def frames_of(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    """Schema-valid client frames of ``kind``, from the contract's JSON Schema (built once)."""
    schema = {k: v for k, v in CLIENT_SCHEMAS[kind].items() if k not in ("$schema", "$id") and not k.startswith("x-")}
    strategy = from_schema(schema, custom_formats=FORMATS)
    return strategy.filter(is_valid_frame)  # the server validates with the real format checker


def is_valid_frame(value: Any) -> bool:
    if not isinstance(value, dict) or not isinstance(value.get("type"), str) or value["type"] not in VALIDATORS:
        return False
    return VALIDATORS[value["type"]].is_valid(value)


def has_nul(value: Any) -> bool:
    """U+0000 anywhere (keys too): the server refuses it (PostgreSQL text cannot hold it)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_nul(v) for v in value)
    return False


# -- the target ---------------------------------------------------------------------------------


@dataclass
class WsWorld:
    stack: Stack
    alice: UserCredentials
    bob: UserCredentials
    project: dict[str, Any]  # Alice's, the one sessions open
    other_own: dict[str, Any]  # another of Alice's (tokens bound to it are forbidden on `project`)
    bobs: dict[str, Any]  # Bob's
    http: httpx.Client
    prompts: dict[str, str] = field(default_factory=dict)  # client_msg_id -> text stored in `project` so far

    def token(self, project_id: str | None = None) -> str:
        body = {} if project_id is None else {"project_id": project_id}
        response = self.http.post(f"{self.stack.auth.url}/v1/tokens", json=body, headers=bearer(self.alice.api_key))
        assert response.status_code == 201, response.text
        token: str = response.json()["token"]
        remember(token)  # the F07 scan proves no service log ever shows it
        return token

    def used_token(self) -> str:
        token = self.token()
        response = self.http.post(
            f"{self.stack.auth.url}/v1/tokens/consume",
            json={"token": token},
            headers=bearer(self.stack.auth.service_key),
        )
        assert response.status_code == 200, response.text
        return token

    def last_seq(self) -> int:
        response = self.http.get(
            f"{self.stack.session.url}/v1/projects/{self.project['id']}", headers=bearer(self.alice.api_key)
        )
        assert response.status_code == 200, response.text
        seq: int = response.json()["last_seq"]
        return seq

    def assert_ready(self) -> None:
        response = self.http.get(f"{self.stack.session.url}/readyz")
        assert response.status_code == 200, f"the replica is not ready after the example: {response.text}"

    def gauges(self) -> tuple[float, float]:
        metrics = parse_metrics(self.http.get(f"{self.stack.session.url}/metrics").text)
        return metrics.value("tether_ws_connections_open"), metrics.value("tether_fanout_subscribers")


@pytest.fixture(scope="module")
def ws_world(module_stack_factory: StackFactory) -> Iterator[WsWorld]:
    # The fuzzer opens hundreds of connections a minute from one address: lift both limits.
    stack = module_stack_factory.start(
        session_env={"TETHER_PROMPTS_PER_MINUTE": "100000", "TETHER_CONNECTS_PER_IP_PER_MINUTE": "1000000"}
    )
    alice, bob = stack.make_user(), stack.make_user()
    project = trio.run(stack.create_project, alice.api_key, "WS fuzz target")
    other_own = trio.run(stack.create_project, alice.api_key, "WS fuzz other")
    bobs = trio.run(stack.create_project, bob.api_key, "Bob's project")
    with httpx.Client(timeout=scaled(10)) as http:
        world = WsWorld(stack, alice, bob, project, other_own, bobs, http)
        yield world
        # No connection or subscriber outlives the tests (F13).
        wait_until(lambda: world.gauges() == (0.0, 0.0), timeout=10, what="ws connections and subscribers back to 0")


@pytest.fixture
def no_leaks(ws_world: WsWorld) -> Iterator[None]:
    yield
    wait_until(lambda: ws_world.gauges() == (0.0, 0.0), timeout=10, what="ws connections and subscribers back to 0")
    REPORT.case(
        "session",
        "ws resources released (metrics back to 0)",
        ["tether_ws_connections_open", "tether_fanout_subscribers"],
    )


# -- one connection -----------------------------------------------------------------------------


@dataclass
class Outcome:
    received: list[dict[str, Any]]
    close_code: int | None
    error: dict[str, Any] | None


async def _converse(world: WsWorld, script: list[Any], *, expect_close: bool, answers: list[str | None]) -> Outcome:
    """Send ``script`` (frames: dict/str/bytes); for each, wait for its answer type (None: none).

    With ``expect_close`` the remaining frames are sent back to back (some may land after the
    server's close) and the conversation is read to the end.
    """
    received: list[dict[str, Any]] = []
    async with world.stack.ws() as ws:
        client: WsClient = ws
        if expect_close:
            for frame in script:
                try:
                    await client.send(frame)
                except ConnectionClosed:
                    break  # the server closed already: the rest are "after close" by definition
            closed = await client.closed(timeout=10)
            return Outcome(closed.frames, closed.code, closed.error)
        for frame, answer in zip(script, answers, strict=True):
            await client.send(frame)
            if answer is not None:
                while True:
                    got = await client.recv(timeout=10)
                    if got["type"] == answer:
                        break
                    assert got["type"] == "event", f"expected {answer}, got {got}"
        received = client.received
    return Outcome(received, None, None)


def converse(
    world: WsWorld, script: list[Any], *, expect_close: bool, answers: list[str | None] | None = None
) -> tuple[Outcome, list[dict[str, Any]]]:
    """Run one connection; return its outcome and the ``ws_close`` log lines it produced."""
    proc = world.stack.session.proc
    offset = harness.log_size(proc)
    outcome = trio.run(
        lambda: _converse(world, script, expect_close=expect_close, answers=answers or [None] * len(script))
    )

    def closes() -> list[dict[str, Any]]:
        return [line for line in harness.log_lines_since(proc, offset) if line.get("event") == "ws_close"]

    # ws_close is the last thing a connection's handler writes, so once it is there, all is.
    lines = wait_until(closes, timeout=5, what="the connection's ws_close log line")
    for frame in outcome.received:
        REPORT.case("session", f"server frame {frame['type']}", ["schema (WsClient)"])
    return outcome, lines


def assert_refused(outcome: Outcome, lines: list[dict[str, Any]], name: str, sent: Any) -> None:
    """One catalogue error frame, the close with its code, one ws_close line naming it."""
    entry = CATALOGUE[name]
    where = f"sent: {json.dumps(sent, default=repr)[:600]}"
    assert outcome.error is not None, f"no error frame before the close (code {outcome.close_code}); {where}"
    error = outcome.error
    assert error["code"] == name, f"expected {name}, got {error}; {where}"
    assert (error["close_code"], error["retryable"], error["action"]) == (
        entry["code"],
        entry["retryable"],
        entry["action"],
    ), f"error frame disagrees with the catalogue entry {entry}: {error}"
    assert outcome.close_code == entry["code"], f"closed with {outcome.close_code}, error frame says {entry['code']}"
    errors = [f for f in outcome.received if f["type"] == "error"]
    assert len(errors) == 1, f"expected exactly one error frame, got {errors}; {where}"
    assert len(lines) == 1, f"expected exactly one ws_close log line, got {lines}; {where}"
    line = lines[0]
    assert (line.get("code"), line.get("reason")) == (entry["code"], name), f"log line {line} does not name {name}"
    assert line.get("level") in ("warning", "error"), line


def assert_clean_close(lines: list[dict[str, Any]], sent: Any) -> None:
    assert len(lines) == 1, f"expected exactly one ws_close log line, got {lines}; sent {sent}"
    assert lines[0].get("reason") == "client_closed", lines[0]


def record(kind: str, *checks: str) -> None:
    REPORT.case("session", f"frame {kind}", list(checks))


# -- valid INITs --------------------------------------------------------------------------------

TOKEN_KINDS = ("fresh", "generated", "used", "bound_elsewhere")
PROJECT_KINDS = ("own_id", "own_slug", "generated", "someone_elses")


@pytest.mark.fuzz
@SETTINGS
@hypothesis.given(
    frame=frames_of("init"), token_kind=st.sampled_from(TOKEN_KINDS), project_kind=st.sampled_from(PROJECT_KINDS)
)
def test_F05_valid_init_gets_ready_or_the_refusal_that_matches_it(
    ws_world: WsWorld, no_leaks: None, frame: dict[str, Any], token_kind: str, project_kind: str
) -> None:
    w = ws_world
    frame = copy.deepcopy(frame)
    if token_kind == "fresh":
        frame["token"] = w.token()
    elif token_kind == "used":
        frame["token"] = w.used_token()
    elif token_kind == "bound_elsewhere":
        frame["token"] = w.token(w.other_own["id"])
    if project_kind == "own_id":
        frame["project"] = {"id": w.project["id"]}
    elif project_kind == "own_slug":
        frame["project"] = {"slug": w.project["slug"]}
    elif project_kind == "someone_elses":
        frame["project"] = {"id": w.bobs["id"]}
    own = frame["project"] in ({"id": w.project["id"]}, {"slug": w.project["slug"]})
    hypothesis.assume(frame["project"] not in ({"id": w.other_own["id"]}, {"slug": w.other_own["slug"]}))
    last_seq = w.last_seq()
    # The order the server checks in: token, project (ownership hides others'), binding, resume.
    if token_kind == "generated":
        expected = "token_unknown"
    elif token_kind == "used":
        expected = "token_used"
    elif not own:
        expected = "project_not_found"
    elif token_kind == "bound_elsewhere":
        expected = "forbidden"
    elif frame.get("resume_from", 0) > last_seq:
        expected = "resume_unavailable"
    else:
        expected = "ready"
    record("init", f"valid init -> {expected}")
    if expected == "ready":
        outcome, lines = converse(w, [frame], expect_close=False, answers=["ready"])
        ready = outcome.received[-1]
        assert ready["project"]["id"] == w.project["id"], ready
        assert ready["resume_from"] == frame.get("resume_from", ready["last_seq"]), ready
        assert_clean_close(lines, frame)
    else:
        outcome, lines = converse(w, [frame], expect_close=True)
        assert_refused(outcome, lines, expected, frame)
    w.assert_ready()


# -- valid sessions -----------------------------------------------------------------------------

SESSION_FRAME = st.one_of(
    frames_of("ping"),
    frames_of("ack"),
    frames_of("prompt"),
    frames_of("reauth").map(lambda f: {**f, "token": "fresh"}),
    frames_of("reauth"),  # a generated token: unknown
)


@pytest.mark.fuzz
@SETTINGS
@hypothesis.given(frames=st.lists(SESSION_FRAME, min_size=1, max_size=5))
def test_F21_valid_frames_after_ready_get_their_answers(
    ws_world: WsWorld, no_leaks: None, frames: list[dict[str, Any]]
) -> None:
    w = ws_world
    script: list[Any] = [
        {"type": "init", "v": 1, "token": w.token(), "project": {"id": w.project["id"]}, "client_id": "fuzz"}
    ]
    answers: list[str | None] = ["ready"]
    refusal: str | None = None
    stored: dict[str, str] = {}  # prompts (client_msg_id -> text) the server handles before any refusal
    for frame in frames:
        frame = dict(frame)
        record(frame["type"], "valid frame answered")
        if frame["type"] == "reauth":
            if frame["token"] == "fresh":
                frame["token"] = w.token()
            else:
                refusal = "token_unknown"
        if has_nul(frame):
            refusal = "invalid_frame"
        elif (
            frame["type"] == "prompt"
            and {**w.prompts, **stored}.get(frame["client_msg_id"], frame["text"]) != frame["text"]
        ):
            refusal = "idempotency_conflict"  # a used client_msg_id with other text
        script.append(frame)
        if refusal is not None:
            break
        if frame["type"] == "prompt":
            stored.setdefault(frame["client_msg_id"], frame["text"])
        answers.append({"ping": "pong", "prompt": "prompt_ack", "reauth": "reauth_ok", "ack": None}[frame["type"]])
    if refusal is not None:
        outcome, lines = converse(w, script, expect_close=True)
        w.prompts.update(stored)  # handled (stored) before the refused frame
        assert outcome.received[0]["type"] == "ready", outcome.received
        assert_refused(outcome, lines, refusal, script[1:])
        w.assert_ready()
        return
    script.append({"type": "ping", "v": 1, "nonce": "sentinel"})  # proves every frame before it was handled
    answers.append("pong")
    outcome, lines = converse(w, script, expect_close=False, answers=answers)
    answered = [f for f in outcome.received if f["type"] != "event"]
    assert [f["type"] for f in answered] == [a for a in answers if a is not None], answered
    for frame, answer in zip([f for f, a in zip(script, answers, strict=True) if a], answered, strict=True):
        if frame["type"] == "ping":
            assert answer.get("nonce") == frame.get("nonce"), (frame, answer)
        if frame["type"] == "prompt":
            assert answer["client_msg_id"] == frame["client_msg_id"], (frame, answer)
            assert answer["duplicate"] is (frame["client_msg_id"] in w.prompts), (frame, answer, "duplicate flag")
            w.prompts.setdefault(frame["client_msg_id"], frame["text"])
    assert_clean_close(lines, script)
    w.assert_ready()


# -- invalid frames -----------------------------------------------------------------------------

ANY_VALID = st.sampled_from(sorted(CLIENT_SCHEMAS)).flatmap(frames_of)
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


@st.composite
def mutated_frames(draw: st.DrawFn) -> dict[str, Any]:
    """A valid frame with one mutation that makes it schema-invalid."""
    frame = dict(draw(ANY_VALID))
    how = draw(st.sampled_from(["drop", "extra", "retype", "version", "unknown_type", "too_long"]))
    if how == "drop":
        key = draw(st.sampled_from(sorted(k for k in frame if k in CLIENT_SCHEMAS[frame["type"]]["required"])))
        del frame[key]
    elif how == "extra":
        frame[draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in frame))] = draw(JUNK)
    elif how == "retype":
        key = draw(st.sampled_from(sorted(frame)))
        frame[key] = draw(JUNK)
    elif how == "version":
        frame["v"] = draw(st.integers().filter(lambda v: v != 1))
    elif how == "unknown_type":
        frame["type"] = draw(st.text(max_size=20).filter(lambda t: t not in CLIENT_SCHEMAS))
    else:
        string_keys = sorted(k for k, v in frame.items() if isinstance(v, str) and k not in ("type",))
        hypothesis.assume(string_keys)
        frame[draw(st.sampled_from(string_keys))] = "x" * 300
    hypothesis.assume(not is_valid_frame(frame))
    return frame


def expected_refusal(frame: Any) -> str:
    """What the server must answer to a schema-invalid frame (frames.py's order of checks)."""
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str) or frame["type"] not in CLIENT_SCHEMAS:
        return "invalid_frame"
    version = frame.get("v")
    if isinstance(version, float) and version.is_integer():  # read as the integer it spells (frames.py)
        version = int(version)
    if isinstance(version, int) and not isinstance(version, bool) and version != 1:
        return "unsupported_version"
    return "invalid_frame"


def _ready_prefix(w: WsWorld) -> list[Any]:
    return [{"type": "init", "v": 1, "token": w.token(), "project": {"id": w.project["id"]}, "client_id": "fuzz"}]


@pytest.mark.fuzz
@SETTINGS
@hypothesis.given(frame=mutated_frames(), after_ready=st.booleans())
def test_F01_schema_invalid_frames_are_refused_with_the_catalogue_code(
    ws_world: WsWorld, no_leaks: None, frame: dict[str, Any], after_ready: bool
) -> None:
    w = ws_world
    expected = expected_refusal(frame)
    kind = frame.get("type")
    record(
        kind if isinstance(kind, str) and kind in CLIENT_SCHEMAS else "unknown type", f"schema-invalid -> {expected}"
    )
    prefix = _ready_prefix(w) if after_ready else []
    outcome, lines = converse(w, [*prefix, frame], expect_close=True)
    if after_ready:
        assert outcome.received[0]["type"] == "ready", outcome.received
    assert_refused(outcome, lines, expected, frame)
    w.assert_ready()


def _deep(depth: int) -> str:
    return '{"type":"ping","v":1,"nonce":' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


def _not_a_frame(text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return True
    return not is_valid_frame(value)


RAW = st.one_of(
    st.tuples(st.just("not JSON"), st.text(max_size=200).filter(_not_a_frame), st.just("invalid_frame")),
    st.tuples(st.just("binary"), st.binary(max_size=200), st.just("invalid_frame")),
    st.tuples(
        st.just("oversize"),
        st.integers(MAX_FRAME_BYTES - 20, MAX_FRAME_BYTES * 2).map(
            lambda n: json.dumps({"type": "ping", "v": 1, "nonce": "x" * n})
        ),
        st.just("frame_too_large"),
    ),
    st.tuples(st.just("too deep"), st.integers(33, 3000).map(_deep), st.just("frame_too_large")),
    st.tuples(
        st.just("U+0000 / unpaired surrogate"),
        st.sampled_from(
            [
                '{"type":"ping","v":1,"nonce":"\\u0000"}',
                '{"type":"ping","v":1,"nonce":"\\ud800"}',
                '{"type":"ping","v":1,"\\udfff":1}',
            ]
        ),
        st.just("invalid_frame"),
    ),
)


@pytest.mark.fuzz
@SETTINGS
@hypothesis.given(raw=RAW, after_ready=st.booleans())
def test_F01_text_that_is_no_frame_binary_oversize_and_deep_frames_are_refused(
    ws_world: WsWorld, no_leaks: None, raw: tuple[str, str | bytes, str], after_ready: bool
) -> None:
    w = ws_world
    what, payload, expected = raw
    record(what, f"-> {expected}")
    prefix = _ready_prefix(w) if after_ready else []
    outcome, lines = converse(w, [*prefix, payload], expect_close=True)
    assert_refused(outcome, lines, expected, {"kind": what, "payload": payload[:300]})
    w.assert_ready()


@pytest.mark.fuzz
@SETTINGS
@hypothesis.given(
    frame=st.sampled_from(sorted(set(CLIENT_SCHEMAS) - {"init"})).flatmap(frames_of),
    init_again=st.booleans(),
    init=frames_of("init"),
)
def test_F04_frames_in_the_wrong_order_are_unexpected(
    ws_world: WsWorld, no_leaks: None, frame: dict[str, Any], init_again: bool, init: dict[str, Any]
) -> None:
    """A non-INIT frame first, or a second INIT after ready: ``unexpected_frame``."""
    w = ws_world
    if init_again:
        record("init", "init after ready -> unexpected_frame")
        hypothesis.assume(not has_nul(init))
        script = [*_ready_prefix(w), init]
    else:
        record(frame["type"], "before init -> unexpected_frame")
        hypothesis.assume(not has_nul(frame))
        script = [frame]
    outcome, lines = converse(w, script, expect_close=True)
    assert_refused(outcome, lines, "unexpected_frame", script[-1])
    w.assert_ready()


@pytest.mark.fuzz
@SETTINGS
@hypothesis.given(
    bad=mutated_frames(),
    after=st.lists(st.one_of(ANY_VALID, mutated_frames(), st.binary(max_size=20)), min_size=1, max_size=5),
)
def test_F01_frames_after_the_close_change_nothing(
    ws_world: WsWorld, no_leaks: None, bad: dict[str, Any], after: list[Any]
) -> None:
    """An invalid frame and more frames right behind it: one error, one close, one log line."""
    w = ws_world
    record("after close", "ignored after the close")
    outcome, lines = converse(w, [bad, *after], expect_close=True)
    assert_refused(outcome, lines, expected_refusal(bad), [bad, *after])
    w.assert_ready()


def test_every_client_frame_type_is_fuzzed() -> None:
    assert set(CLIENT_SCHEMAS) == {"init", "prompt", "ack", "ping", "reauth"}, sorted(CLIENT_SCHEMAS)
