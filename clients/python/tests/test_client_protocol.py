"""The client's protocol rules, without I/O (tether_client.protocol, .frames, .closing, .agent).

The close-code catalogue used here is the contract file itself, read as test data: in
production the client fetches the same document from ``GET /v1/protocol/close-codes``.
Every client frame the module builds is validated against its JSON Schema in
``contracts/session/frames/``.
"""

from __future__ import annotations

import itertools
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tether_client.agent import answers, event_text, reply_to
from tether_client.closing import CloseCatalogue, decide_close, local_decision
from tether_client.errors import TetherClosed, TetherProtocolError
from tether_client.frames import (
    ErrorFrame,
    Event,
    Events,
    PromptAck,
    Ready,
    UnknownFrame,
    ack_frame,
    encode,
    init_frame,
    parse_server_frame,
    ping_frame,
    project_ref,
    prompt_frame,
    reauth_frame,
)
from tether_client.protocol import Backoff, Outbox, SeqTracker, Verdict, paced_delay, reauth_delay_s

CONTRACTS = Path(__file__).resolve().parents[3] / "contracts" / "session"


def contract_catalogue() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CONTRACTS / "close-codes.json").read_text())
    return data


def frame_schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CONTRACTS / "frames" / f"{name}.json").read_text())
    return schema


def validate(frame: dict[str, Any], name: str) -> None:
    validator = jsonschema.Draft202012Validator(
        frame_schema(name), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    errors = [e.message for e in validator.iter_errors(json.loads(encode(frame)))]
    assert not errors, f"{name} frame violates its schema: {errors}"


# -- backoff (F32) -----------------------------------------------------------------------


def test_F32_backoff_is_full_jitter_between_zero_and_the_capped_exponential() -> None:
    rng = random.Random(1234)
    for attempt in range(40):
        ceiling = min(5.0, 0.1 * 2**attempt)
        samples = []
        for _ in range(200):
            backoff = Backoff(base_s=0.1, cap_s=5.0, attempt=attempt)
            delay = backoff.next_delay(rng.random)
            assert 0.0 <= delay < ceiling or delay == pytest.approx(0.0), (attempt, delay, ceiling)
            assert backoff.attempt == attempt + 1
            samples.append(delay)
        # Full jitter spreads over the whole range, not around the ceiling.
        assert min(samples) < ceiling * 0.1
        assert max(samples) > ceiling * 0.9


def test_F32_backoff_grows_exponentially_then_stays_capped() -> None:
    backoff = Backoff(base_s=0.25, cap_s=15.0)
    top = []
    for _ in range(12):
        top.append(backoff.ceiling())
        backoff.next_delay(lambda: 0.999999)
    assert top[:5] == [0.25, 0.5, 1.0, 2.0, 4.0]
    assert top[-1] == 15.0
    assert all(b >= a for a, b in itertools.pairwise(top))


def test_F32_backoff_waits_retry_after_plus_its_own_jitter() -> None:
    backoff = Backoff(base_s=0.5, cap_s=10.0)
    assert backoff.next_delay(lambda: 0.0, retry_after_s=2.0) == 2.0
    # attempt 1: ceiling 1.0; the jitter is at most the told wait, so 0.1 + 0.5 * min(0.1, 1.0)
    assert backoff.next_delay(lambda: 0.5, retry_after_s=0.1) == pytest.approx(0.15)
    assert backoff.next_delay(lambda: 0.5, retry_after_s=3.0) == pytest.approx(3.0 + 0.5 * 2.0)
    assert backoff.next_delay(lambda: 0.0, retry_after_s=None) == 0.0


def test_F32_paced_delay_is_the_told_wait_capped_plus_jitter_below_it() -> None:
    rng = random.Random(7)
    for told in (0.05, 0.4, 2.0, 30.0):
        delays = [paced_delay(told, 1.0, rng.random, 60.0) for _ in range(500)]
        assert all(told <= d < told + min(told, 1.0) for d in delays), told
        assert max(delays) - min(delays) > 0.8 * min(told, 1.0)  # spread, not one wave
    assert paced_delay(3600.0, 1.0, lambda: 0.0, 60.0) == 60.0  # an hour is capped
    assert paced_delay(3600.0, 1.0, lambda: 0.5, 60.0) == 60.5
    assert Backoff(0.25, 15.0, max_retry_after_s=5.0).next_delay(lambda: 0.0, 3600.0) == 5.0


def test_F32_backoff_reset_and_huge_attempt_counts() -> None:
    backoff = Backoff(base_s=0.25, cap_s=30.0, attempt=100_000)
    assert backoff.ceiling() == 30.0  # no float overflow
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.ceiling() == 0.25
    with pytest.raises(ValueError, match="base_s"):
        Backoff(base_s=0.0)
    with pytest.raises(ValueError, match="base_s"):
        Backoff(base_s=5.0, cap_s=1.0)


# -- catalogue-driven retry decisions (F32) ---------------------------------------------


def test_F32_every_catalogue_code_decides_retry_as_the_catalogue_says() -> None:
    data = contract_catalogue()
    catalogue = CloseCatalogue.from_json(data)
    assert len(catalogue.entries) == len(data["codes"])
    for entry in data["codes"]:
        decision = decide_close(catalogue, entry["code"], None)
        assert decision.retry is entry["retryable"], entry["name"]
        assert decision.name == entry["name"]
        assert decision.action == entry["action"]
        assert decision.message == entry["message"]
        assert decision.code == entry["code"]


def test_F32_retry_decisions_follow_the_served_catalogue_not_a_copy() -> None:
    """Flip every code's retryable flag: every decision flips with it."""
    data = contract_catalogue()
    flipped = {**data, "codes": [{**c, "retryable": not c["retryable"]} for c in data["codes"]]}
    catalogue = CloseCatalogue.from_json(flipped)
    for entry in data["codes"]:
        assert decide_close(catalogue, entry["code"], None).retry is (not entry["retryable"])


def test_F32_terminal_codes_stop_with_a_human_message() -> None:
    catalogue = CloseCatalogue.from_json(contract_catalogue())
    for name in ("forbidden", "project_not_found", "invalid_frame", "unexpected_frame"):
        entry = catalogue.by_name(name)
        assert entry is not None
        decision = decide_close(catalogue, entry.code, None)
        assert decision.retry is False
        error = decision.to_error()
        assert isinstance(error, TetherClosed)
        assert (error.code, error.name, error.message, error.action) == (
            entry.code,
            entry.name,
            entry.message,
            entry.action,
        )
        assert entry.message in str(error)


def test_F32_error_frame_adds_retry_after_and_detail() -> None:
    catalogue = CloseCatalogue.from_json(contract_catalogue())
    draining = catalogue.by_name("draining")
    assert draining is not None
    error = ErrorFrame("draining", draining.code, "replica shutting down", True, "resume", retry_after_ms=1500)
    decision = decide_close(catalogue, draining.code, error)
    assert decision.retry is True
    assert decision.retry_after_s == 1.5
    assert decision.detail == "replica shutting down"


def test_F32_lost_close_frame_uses_the_error_frame_code() -> None:
    """1006 (no close frame) after an error frame: the error frame's code decides."""
    catalogue = CloseCatalogue.from_json(contract_catalogue())
    forbidden = catalogue.by_name("forbidden")
    assert forbidden is not None
    error = ErrorFrame("forbidden", forbidden.code, "not yours", False, "show_message")
    assert decide_close(catalogue, 1006, error).retry is False
    assert decide_close(catalogue, 1006, error).name == "forbidden"
    assert decide_close(catalogue, None, error).retry is False


def test_F32_network_closes_retry_and_unexplained_application_closes_stop() -> None:
    catalogue = CloseCatalogue.from_json(contract_catalogue())
    for code in (None, 1000, 1001, 1006, 1008, 1011, 1012, 3000):
        decision = decide_close(catalogue, code, None)
        assert decision.retry is True, code
        assert decision.name == "connection_lost"
    for code in (4004, 4999):
        decision = decide_close(catalogue, code, None)
        assert decision.retry is False, code
        assert decision.name == "unknown_close_code"
    # An unknown application code that the server explained follows the explanation.
    explained = ErrorFrame("new_thing", 4998, "try later", True, "backoff", retry_after_ms=10)
    decision = decide_close(catalogue, 4998, explained)
    assert decision.retry is True
    assert decision.retry_after_s == pytest.approx(0.01)
    refused = ErrorFrame("new_refusal", 4997, "no", False, "show_message")
    assert decide_close(catalogue, 4997, refused).retry is False


def test_catalogue_loading_rejects_malformed_documents() -> None:
    with pytest.raises(ValueError, match="codes"):
        CloseCatalogue.from_json({"version": 1})
    with pytest.raises(ValueError, match="version"):
        CloseCatalogue.from_json({"codes": []})
    entry = {
        "code": 4000,
        "name": "x",
        "meaning": "m",
        "retryable": True,
        "action": "reconnect",
        "message": "m",
        "cause": "client",
        "log_level": "warning",
    }
    with pytest.raises(ValueError, match='"retryable" is a required property'):
        CloseCatalogue.from_json({"version": 1, "codes": [{k: v for k, v in entry.items() if k != "retryable"}]})
    with pytest.raises(ValueError, match="duplicate code"):
        CloseCatalogue.from_json({"version": 1, "codes": [entry, {**entry, "name": "y"}]})
    with pytest.raises(ValueError, match="duplicate name"):
        CloseCatalogue.from_json({"version": 1, "codes": [entry, {**entry, "code": 4001}]})
    duplicate = entry
    with pytest.raises(ValueError, match="duplicate"):
        CloseCatalogue.from_json({"version": 1, "codes": [duplicate, duplicate]})


def test_local_decisions() -> None:
    gap = local_decision("gap", "expected 3, got 5")
    assert gap.retry is True
    assert gap.code is None
    stop = local_decision("protocol_error", "bad frame", retry=False)
    assert stop.retry is False
    assert stop.to_error().name == "protocol_error"


# -- dedup and ordering (F20, F21, F22) --------------------------------------------------


def test_F21_duplicates_are_dropped_and_counted() -> None:
    tracker = SeqTracker()
    tracker.on_ready(0)
    verdicts = [tracker.accept(seq) for seq in (1, 2, 2, 1, 3, 3)]
    assert verdicts == [
        Verdict.DELIVER,
        Verdict.DELIVER,
        Verdict.DUPLICATE,
        Verdict.DUPLICATE,
        Verdict.DELIVER,
        Verdict.DUPLICATE,
    ]
    assert tracker.last_seq == 3
    assert tracker.duplicates == 3


def test_F20_a_gap_is_never_delivered_and_keeps_the_cursor() -> None:
    tracker = SeqTracker()
    tracker.on_ready(10)
    assert tracker.accept(11) is Verdict.DELIVER
    assert tracker.accept(13) is Verdict.GAP
    assert tracker.last_seq == 11  # resume_from stays at the last event delivered
    assert tracker.gaps == 1
    assert tracker.accept(12) is Verdict.DELIVER
    assert tracker.accept(13) is Verdict.DELIVER


def test_F22_the_cursor_survives_ready_frames_of_later_connections() -> None:
    tracker = SeqTracker()
    tracker.on_ready(5)  # a fresh client adopts the server's cursor
    assert tracker.last_seq == 5
    tracker.accept(6)
    tracker.on_ready(6)  # a resumed connection: the client's cursor stays
    tracker.on_ready(0)  # even if a server said otherwise
    assert tracker.last_seq == 6
    explicit = SeqTracker(last_seq=42)  # `tail --from 42`
    explicit.on_ready(100)
    assert explicit.last_seq == 42


def test_seq_tracker_needs_a_cursor() -> None:
    with pytest.raises(RuntimeError, match="before the first ready"):
        SeqTracker().accept(1)


# -- outbox (F21) -----------------------------------------------------------------------


def test_F21_outbox_resends_unacknowledged_prompts_on_each_new_connection_in_order() -> None:
    outbox = Outbox()
    outbox.add("a", "first")
    outbox.add("b", "second")
    assert [p.client_msg_id for p in outbox.unsent(1)] == ["a", "b"]
    outbox.mark_sent("a", 1)
    outbox.mark_sent("b", 1)
    assert outbox.unsent(1) == []
    outbox.add("c", "third")
    assert [p.client_msg_id for p in outbox.unsent(1)] == ["c"]
    outbox.mark_sent("c", 1)
    acked = outbox.ack("b")
    assert acked is not None
    assert acked.text == "second"
    # Connection 2: everything still pending goes again, in the original order.
    assert [p.client_msg_id for p in outbox.unsent(2)] == ["a", "c"]
    assert len(outbox) == 2
    assert "b" not in outbox
    assert outbox.ack("b") is None  # a late duplicate ack
    outbox.mark_sent("b", 2)  # acknowledged meanwhile: ignored
    assert [p.sends for p in outbox.unsent(2)] == [1, 1]


def test_F21_outbox_holds_a_refused_prompt_and_the_ones_behind_it_until_it_is_due() -> None:
    outbox = Outbox()
    for msg_id in ("a", "b", "c"):
        outbox.add(msg_id, msg_id)
        outbox.mark_sent(msg_id, 1)
    assert outbox.held_until(1) is None
    deferred = outbox.defer("b", 10.0)
    assert deferred is not None
    assert deferred.refusals == 1
    assert outbox.held_until(1) == 10.0
    assert outbox.unsent(1, now=9.9) == []  # b is held; c was already sent on this socket
    outbox.add("d", "d")
    assert outbox.unsent(1, now=9.9) == []  # d waits behind b: the order is kept
    assert [p.client_msg_id for p in outbox.unsent(1, now=10.0)] == ["b", "d"]
    assert [p.client_msg_id for p in outbox.unsent(2, now=5.0)] == ["a"]  # a new socket: still held
    assert outbox.defer("gone", 1.0) is None  # acknowledged meanwhile


def test_F32_request_scoped_error_frame_is_parsed_with_its_prompt() -> None:
    refusal = parse_server_frame(
        json.dumps(
            {
                "type": "error",
                "v": 1,
                "code": "overloaded",
                "close_code": 4503,
                "message": "busy",
                "retryable": True,
                "action": "backoff",
                "retry_after_ms": 250,
                "scope": "request",
                "client_msg_id": "m-1",
            }
        )
    )
    assert isinstance(refusal, ErrorFrame)
    assert (refusal.request_scoped, refusal.client_msg_id, refusal.retry_after_ms) == (True, "m-1", 250)
    plain = parse_server_frame(
        '{"type":"error","v":1,"code":"overloaded","close_code":4503,"message":"m","retryable":true,"action":"backoff"}'
    )
    assert isinstance(plain, ErrorFrame)
    assert (plain.request_scoped, plain.scope) == (False, "connection")
    with pytest.raises(TetherProtocolError, match="scope"):
        parse_server_frame(
            '{"type":"error","v":1,"code":"x","close_code":4503,"message":"m","retryable":true,"action":"backoff","scope":"everything"}'
        )


def test_outbox_refuses_duplicates_and_invalid_prompts() -> None:
    outbox = Outbox()
    outbox.add("a", "x")
    with pytest.raises(ValueError, match="already pending"):
        outbox.add("a", "y")
    with pytest.raises(ValueError, match="1 to 16000"):
        outbox.add("b", "")
    with pytest.raises(ValueError, match="1 to 16000"):
        outbox.add("c", "x" * 16001)


# -- frames -------------------------------------------------------------------------------


def test_client_frames_match_their_schemas() -> None:
    validate(init_frame("t" * 43, {"id": "0b9e4c7e-3f7a-4d55-9d0c-8f6f0e9b1a2c"}, "py-1", None), "init")
    validate(init_frame("t" * 43, {"slug": "my-project"}, "py-1", 17), "init")
    validate(init_frame("t" * 43, {"slug": "my-project"}, "py-1", 17, batch=True), "init")
    assert init_frame("t", {"slug": "p"}, "c", None, batch=True)["batch"] is True
    assert "batch" not in init_frame("t", {"slug": "p"}, "c", None)
    validate(prompt_frame("6f1c1c3e-0c51-4a8d-9a55-1f0d1b5d3b70", "hello"), "prompt")
    validate(ping_frame(), "ping")
    validate(ping_frame("n1"), "ping")
    validate(reauth_frame("t" * 43), "reauth")
    validate(ack_frame(3), "ack")
    assert "resume_from" not in init_frame("t", {"slug": "p"}, "c", None)
    with pytest.raises(ValueError, match="client_id"):
        init_frame("t", {"slug": "p"}, "has space", None)


def _ready(**over: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "ready",
        "v": 1,
        "session_id": "0b9e4c7e-3f7a-4d55-9d0c-8f6f0e9b1a2c",
        "connection_id": "c1",
        "project": {"id": "0b9e4c7e-3f7a-4d55-9d0c-8f6f0e9b1a2d", "slug": "p", "name": "P"},
        "last_seq": 7,
        "resume_from": 3,
        "heartbeat": {"interval_ms": 15000, "timeout_ms": 45000},
        "session_expires_at": "2030-01-01T00:00:00+00:00",
        "server_time": "2029-12-31T23:00:00Z",
        "limits": {"max_frame_bytes": 65536, "prompts_per_minute": 120},
    }
    frame.update(over)
    validate(frame, "ready")
    return frame


def test_server_frames_parse_into_typed_values() -> None:
    ready = parse_server_frame(json.dumps(_ready()))
    assert isinstance(ready, Ready)
    assert (ready.last_seq, ready.resume_from, ready.heartbeat_timeout_ms) == (7, 3, 45000)
    assert ready.server_time.tzinfo is not None
    event = parse_server_frame(
        '{"type":"event","v":1,"seq":4,"event_id":"e4","kind":"agent_chunk","data":{"text":"hi","prompt_seq":3},"ts":"2030-01-01T00:00:00Z"}'
    )
    assert isinstance(event, Event)
    assert (event.seq, reply_to(event), event_text(event)) == (4, 3, "hi")
    ack = parse_server_frame('{"type":"prompt_ack","v":1,"client_msg_id":"m","seq":3,"duplicate":true}')
    assert ack == PromptAck("m", 3, True)
    error = parse_server_frame(
        '{"type":"error","v":1,"code":"draining","close_code":4502,"message":"bye","retryable":true,"action":"resume","retry_after_ms":50}'
    )
    assert isinstance(error, ErrorFrame)
    assert error.retry_after_ms == 50
    unknown = parse_server_frame('{"type":"novelty","v":1}')
    assert isinstance(unknown, UnknownFrame)
    assert ready.batch is False  # absent: one event per frame
    granted = parse_server_frame(json.dumps(_ready(batch=True)))
    assert isinstance(granted, Ready)
    assert granted.batch is True


def _event(seq: int) -> dict[str, Any]:
    return {
        "type": "event",
        "v": 1,
        "seq": seq,
        "event_id": f"e{seq}",
        "kind": "agent_chunk",
        "data": {"text": f"t{seq}", "prompt_seq": 1},
        "ts": "2030-01-01T00:00:00Z",
    }


def test_events_frames_parse_into_the_same_events_as_event_frames() -> None:
    frame = {"type": "events", "v": 1, "events": [_event(2), _event(3), _event(4)]}
    validate(frame, "events")
    batch = parse_server_frame(json.dumps(frame))
    assert isinstance(batch, Events)
    assert batch.events == tuple(parse_server_frame(json.dumps(_event(s))) for s in (2, 3, 4))
    assert [event_text(e) for e in batch.events] == ["t2", "t3", "t4"]


def test_the_client_parses_every_server_frame_type_of_the_contract() -> None:
    """A frame type the server may send and this client does not know would be ignored as an
    UnknownFrame: every server_to_client schema in contracts/ must parse into its own type."""
    samples: dict[str, dict[str, Any]] = {
        "ready": _ready(batch=True),
        "event": _event(1),
        "events": {"type": "events", "v": 1, "events": [_event(1), _event(2)]},
        "prompt_ack": {"type": "prompt_ack", "v": 1, "client_msg_id": "m", "seq": 3, "duplicate": False},
        "pong": {"type": "pong", "v": 1, "server_time": "2030-01-01T00:00:00Z"},
        "reauth_ok": {"type": "reauth_ok", "v": 1, "session_expires_at": "2030-01-01T00:00:00Z"},
        "error": {
            "type": "error",
            "v": 1,
            "code": "draining",
            "close_code": 4502,
            "message": "bye",
            "retryable": True,
            "action": "resume",
        },
    }
    server_types = {
        schema["properties"]["type"]["const"]
        for path in (CONTRACTS / "frames").glob("*.json")
        if (schema := json.loads(path.read_text()))["x-direction"] == "server_to_client"
    }
    assert server_types == set(samples)
    for name, frame in samples.items():
        validate(frame, name)
        assert not isinstance(parse_server_frame(json.dumps(frame)), UnknownFrame), name


@pytest.mark.parametrize(
    ("events", "match"),
    [
        (None, r'"events" is a required property'),
        ([], "has less than 1 item"),
        ({"0": _event(1)}, r'is not of type "array"'),
        ([_event(1), "e2"], r'events\.1: "e2" is not of type "object"'),
        ([_event(1), {**_event(2), "type": "prompt"}], r"events\.1\.type"),
        ([_event(1), {**_event(2), "v": 2}], r"events\.1\.v"),
        ([{**_event(1), "seq": 0}], r"events\.0\.seq"),
        ([_event(1), {**_event(2), "data": []}], r"events\.1\.data"),
    ],
)
def test_malformed_events_frames_are_protocol_errors(events: object, match: str) -> None:
    frame: dict[str, Any] = {"type": "events", "v": 1}
    if events is not None:
        frame["events"] = events
    with pytest.raises(TetherProtocolError, match=match):
        parse_server_frame(json.dumps(frame))


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b'{"type":"pong","v":1}', "binary"),
        ("not json", "not JSON"),
        ("[1]", "frame object"),
        ('{"type":"pong","v":2,"server_time":"x"}', "protocol version"),
        ('{"type":"event","v":1,"seq":0,"event_id":"e","kind":"k","data":{},"ts":"t"}', "seq"),
        ('{"type":"event","v":1,"seq":true,"event_id":"e","kind":"k","data":{},"ts":"t"}', "seq"),
        ('{"type":"event","v":1,"seq":1,"event_id":"e","kind":"k","data":[],"ts":"t"}', "data"),
        ('{"type":"prompt_ack","v":1,"client_msg_id":"m","seq":1}', "duplicate"),
        ('{"type":"reauth_ok","v":1,"session_expires_at":"2030-01-01T00:00:00"}', "time zone"),
    ],
)
def test_malformed_server_frames_are_protocol_errors(raw: str | bytes, match: str) -> None:
    with pytest.raises(TetherProtocolError, match=match):
        parse_server_frame(raw)


def test_malformed_ready_names_the_member() -> None:
    with pytest.raises(TetherProtocolError, match=r"ready frame: heartbeat\.interval_ms"):
        parse_server_frame(json.dumps({**_ready(), "heartbeat": {"interval_ms": 0, "timeout_ms": 1}}))


def test_project_refs() -> None:
    assert project_ref("0B9E4C7E-3F7A-4D55-9D0C-8F6F0E9B1A2C") == {"id": "0b9e4c7e-3f7a-4d55-9d0c-8f6f0e9b1a2c"}
    assert project_ref("my-project-2") == {"slug": "my-project-2"}
    for bad in ("", "Has Caps", "-lead", "a" * 65, "../x"):
        with pytest.raises(ValueError, match="neither"):
            project_ref(bad)


def test_reauth_is_scheduled_before_expiry() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert reauth_delay_s(now, now + timedelta(hours=1), 60) == pytest.approx(3540)
    assert reauth_delay_s(now, now + timedelta(seconds=4), 60) == pytest.approx(3)  # a quarter margin
    assert reauth_delay_s(now, now - timedelta(seconds=1), 60) == 0.0


def test_answers_matches_agent_events_to_their_prompt() -> None:
    def ev(seq: int, **data: Any) -> Event:
        return Event(seq, f"e{seq}", "agent_chunk", data, "2030-01-01T00:00:00Z")

    assert answers(ev(5, prompt_seq=4), 4)
    assert not answers(ev(5, prompt_seq=3), 4)  # another prompt's answer
    assert not answers(ev(4, prompt_seq=4), 4)  # not after the prompt
    assert answers(ev(6), 4)  # an agent that does not say: taken as the latest prompt's
    assert reply_to(ev(6, prompt_seq=True)) is None
