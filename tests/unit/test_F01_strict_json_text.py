"""Strict JSON text for HTTP bodies and WebSocket frames (F01), on the real parsers.

An object with a key twice means different things to different readers (Python keeps the
last value, others the first): ``{"type":"prompt","type":"init"}`` must not be an INIT
here and a prompt in a proxy.  It is ``invalid_body`` (HTTP 400) and ``invalid_frame``.
Integer fields of client frames spelled ``1.0`` / ``1e0`` are read as the integer (JSON
Schema counts them as integers) and never stay floats.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tether_kit.errors import TetherError
from tether_kit.jsontext import parse_json_text
from tether_session.frames import Frames
from tether_session.protocol import SessionError

FRAMES = Path(__file__).resolve().parents[2] / "contracts" / "session" / "frames"
INIT = '"token":"tt_x","project":{"slug":"demo"},"client_id":"tab-1"'


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1,"a":1}',
        '{"a":1,"b":2,"a":3}',
        '[{"ok":1},{"x":{"y":1,"y":2}}]',
        '{"outer":{"inner":[{"k":true,"k":false}]}}',
        '{"":1,"":2}',
        '{"\\u0061":1,"a":2}',  # the same key, once escaped
    ],
)
def test_F01_duplicate_keys_are_invalid_body(text: str) -> None:
    with pytest.raises(TetherError) as caught:
        parse_json_text(text)
    assert caught.value.code == "invalid_body"
    assert "duplicate key" in caught.value.detail


def test_F01_distinct_keys_and_equal_values_are_fine() -> None:
    assert parse_json_text('{"a":{"x":1},"b":{"x":1},"c":[{"x":1},{"x":1}]}') == {
        "a": {"x": 1},
        "b": {"x": 1},
        "c": [{"x": 1}, {"x": 1}],
    }


def test_F01_duplicate_key_frame_is_invalid_frame_not_the_last_value() -> None:
    frames = Frames(FRAMES, validate_outgoing=True)
    with pytest.raises(SessionError) as caught:
        frames.parse('{"type":"prompt","type":"init","v":1,' + INIT + "}", max_bytes=65536)
    assert caught.value.name == "invalid_frame"


@pytest.mark.parametrize("spelling", ["1.0", "1e0", "1E0", "10e-1", "0.1e1"])
def test_F22_integral_resume_from_is_read_as_an_int(spelling: str) -> None:
    frames = Frames(FRAMES, validate_outgoing=True)
    frame = frames.parse('{"type":"init","v":1.0,' + INIT + ',"resume_from":' + spelling + "}", max_bytes=65536)
    assert frame["resume_from"] == 1
    assert type(frame["resume_from"]) is int
    assert type(frame["v"]) is int


@pytest.mark.parametrize("spelling", ["1.5", "0.999", "-1.0", "1e400"])
def test_F22_resume_from_with_a_fraction_or_out_of_range_is_invalid_frame(spelling: str) -> None:
    frames = Frames(FRAMES, validate_outgoing=True)
    with pytest.raises(SessionError) as caught:
        frames.parse('{"type":"init","v":1,' + INIT + ',"resume_from":' + spelling + "}", max_bytes=65536)
    assert caught.value.name == "invalid_frame"
