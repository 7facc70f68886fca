"""F12: the project-name rule of the session service (``tether_session.names``) and the
contract's ``ProjectCreate.name`` pattern are the same rule, code point by code point, in
both validators the service runs (jsonschema with Python ``re``, and jsonschema-rs)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import jsonschema_rs
import pytest

from tether_kit.errors import TetherError
from tether_session.names import invisible, project_name

CONTRACT = Path(__file__).resolve().parents[2] / "contracts" / "session" / "openapi.json"
NAME_SCHEMA = json.loads(CONTRACT.read_text())["components"]["schemas"]["ProjectCreate"]["properties"]["name"]
SURROGATES = range(0xD800, 0xE000)  # refused before any schema (invalid_body): no str of one reaches the rule


def code_points() -> list[str]:
    return [chr(cp) for cp in range(sys.maxunicode + 1) if cp not in SURROGATES]


def expected_pattern() -> str:
    """The rule as one negated class: BMP code points as \\u escapes, the others as themselves."""
    ranges: list[list[int]] = []
    for ch in code_points():
        if invisible(ch):
            cp = ord(ch)
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1][1] = cp
            else:
                ranges.append([cp, cp])

    def one(cp: int) -> str:
        return f"\\u{cp:04x}" if cp < 0x10000 else chr(cp)

    return "[^" + "".join(one(a) if a == b else f"{one(a)}-{one(b)}" for a, b in ranges) + "]"


def test_F12_contract_name_pattern_is_the_service_rule() -> None:
    wanted = expected_pattern()
    assert NAME_SCHEMA["pattern"] == wanted, "regenerate the pattern: " + json.dumps(wanted)


def test_F12_both_validators_read_the_name_pattern_as_the_rule_for_every_code_point() -> None:
    python = re.compile(NAME_SCHEMA["pattern"])
    rust = jsonschema_rs.Draft202012Validator({"type": "string", "pattern": NAME_SCHEMA["pattern"]})
    wrong = [
        f"U+{ord(ch):04X}"
        for ch in code_points()
        if (python.search(ch) is None) != invisible(ch) or rust.is_valid(ch) == invisible(ch)
    ]
    assert wrong == []


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("Cafe\u0301", "Caf\u00e9"),
        ("  Caf\u00e9\t", "Caf\u00e9"),
        ("\u212b ngstr\u00f6m", "\u00c5 ngstr\u00f6m"),  # a singleton decomposition: ANGSTROM SIGN
        ("\u2764\ufe0f", "\u2764\ufe0f"),
        ("\U0001f600", "\U0001f600"),
        ("\ue000", "\ue000"),  # private use: drawn as something
    ],
)
def test_F12_names_are_stored_in_nfc_without_surrounding_white_space(raw: str, stored: str) -> None:
    assert project_name(raw) == stored


@pytest.mark.parametrize(
    "raw",
    ["", " ", "\ufe0f", "\u0301", "\u200b\u200d", "\u115f\u1160", "\uffa0", "\u2800", "\U000e0001\U000e0062", "\x85"],
)
def test_F12_a_name_with_nothing_visible_is_validation_failed(raw: str) -> None:
    with pytest.raises(TetherError) as refused:
        project_name(raw)
    assert refused.value.code == "validation_failed"
