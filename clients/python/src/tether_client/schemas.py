"""The session contract as this package ships it: frame JSON Schemas and the close-code catalogue.

``contract/`` holds exact copies of ``contracts/session/frames/*.json`` and
``close-codes.json`` (:mod:`tether_client._sync_contract` refreshes them; a test fails
when they differ).  Validation is jsonschema-rs (a few microseconds per event frame).  Every limit the client enforces (prompt length, id patterns, protocol
version) is read from these schemas, never written down a second time.

Client-to-server frames are checked exactly as the contract says.  Server-to-client frames
are checked with the same schemas minus ``additionalProperties: false``: a newer server
may add members, and this client ignores what it does not know (as it ignores unknown
frame types).  ``format`` is not asserted here; the values the client uses (date-times) are
parsed where they are used.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import jsonschema_rs

CONTRACT = resources.files(__package__) / "contract"
SERVER_TO_CLIENT = "server_to_client"
CLIENT_TO_SERVER = "client_to_server"


@functools.cache
def document(name: str) -> Any:
    """A shipped contract file (``"close-codes.json"``, ``"frames/ready.json"``) as JSON."""
    return json.loads((CONTRACT / name).read_text(encoding="utf-8"))


def frame_schema(frame_type: str) -> dict[str, Any]:
    schema: dict[str, Any] = document(f"frames/{frame_type}.json")
    return schema


@functools.cache
def frame_types(direction: str) -> frozenset[str]:
    """The frame types the contract defines in one direction."""
    names = (entry.name.removesuffix(".json") for entry in (CONTRACT / "frames").iterdir())
    return frozenset(n for n in names if frame_schema(n).get("x-direction") == direction)


def schema_value(frame_type: str, *path: str | int) -> Any:
    """A value inside a frame schema, e.g. ``schema_value("prompt", "properties", "text", "maxLength")``."""
    node: Any = frame_schema(frame_type)
    for key in path:
        node = node[key]
    return node


def _tolerant(node: Any) -> Any:
    """``node`` without ``additionalProperties: false`` anywhere (see the module docstring)."""
    if isinstance(node, dict):
        return {k: _tolerant(v) for k, v in node.items() if not (k == "additionalProperties" and v is False)}
    if isinstance(node, list):
        return [_tolerant(v) for v in node]
    return node


@functools.cache
def _validator(frame_type: str) -> jsonschema_rs.Validator:
    schema = frame_schema(frame_type)
    if schema.get("x-direction") == SERVER_TO_CLIENT:
        schema = _tolerant(schema)
    return jsonschema_rs.validator_for(schema)


@functools.cache
def _catalogue_validator() -> jsonschema_rs.Validator:
    # Tolerant of extra members per entry: the contract grows (cause, log_level, ...).
    return jsonschema_rs.validator_for(_tolerant(document("close-codes.schema.json")))


def first_error(validator: jsonschema_rs.Validator, instance: object, what: str) -> str | None:
    """``"<what>: <member path>: <rule broken>"`` for the first violation, or ``None``."""
    error = next(validator.iter_errors(instance), None)
    if error is None:
        return None
    where = ".".join(str(p) for p in error.instance_path) or "(top)"
    return f"{what}: {where}: {error.message:.200}"


def frame_error(frame_type: str, frame: object) -> str | None:
    """Why ``frame`` does not match the schema of ``frame_type``, or ``None``."""
    return first_error(_validator(frame_type), frame, f"{frame_type} frame")


def catalogue_error(document: object) -> str | None:
    """Why a close-code catalogue document does not match the contract's schema, or ``None``."""
    return first_error(_catalogue_validator(), document, "close-code catalogue")
