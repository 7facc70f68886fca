"""WebSocket frames: parsed and validated against the contract's JSON Schemas.

Every incoming frame is checked (size, UTF-8 JSON, duplicate keys, depth, version, schema)
and any failure becomes a :class:`~tether_session.protocol.SessionError` with a catalogue
name.  Outgoing frames are encoded once; in test mode each one is validated against
its schema too, so the suite proves the server only sends what the contract allows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

from tether_kit.errors import TetherError
from tether_kit.http import schema_error_message
from tether_kit.jsontext import parse_json_text
from tether_kit.schemas import FastSchema

from .protocol import SessionError
from .store import StoredEvent

PROTOCOL_VERSION = 1


class FrameContractError(RuntimeError):
    pass


def integer_fields(schema: dict[str, Any]) -> tuple[str, ...]:
    """Top-level properties a frame schema declares integer (``"type": "integer"`` or an integer
    ``const``).  JSON Schema counts ``1.0`` as an integer, and JSON has one number type, so
    these are normalised to ``int`` after parsing: a float must never reach a comparison, a
    query or an echo (``ready.resume_from: 1.0``)."""
    found = []
    for name, prop in schema.get("properties", {}).items():
        const = prop.get("const")
        if prop.get("type") == "integer" or (isinstance(const, int) and not isinstance(const, bool)):
            found.append(name)
    return tuple(found)


class Frames:
    def __init__(self, folder: Path, *, validate_outgoing: bool) -> None:
        self.client: dict[str, FastSchema] = {}
        self.integers: dict[str, tuple[str, ...]] = {}
        self.server: dict[str, jsonschema.Draft202012Validator] = {}
        for path in sorted(folder.glob("*.json")):
            schema = json.loads(path.read_text(encoding="utf-8"))
            try:
                jsonschema.Draft202012Validator.check_schema(schema)
            except jsonschema.SchemaError as exc:
                raise FrameContractError(f"invalid frame schema {path.name}: {exc.message}") from exc
            name = schema["properties"]["type"]["const"]
            if name != path.stem:
                raise FrameContractError(f"{path.name} declares type {name!r}")
            validator = jsonschema.Draft202012Validator(
                schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
            )
            direction = schema.get("x-direction")
            if direction == "client_to_server":
                self.client[name] = FastSchema(validator, schema)
                self.integers[name] = integer_fields(schema)
            elif direction == "server_to_client":
                self.server[name] = validator
            else:
                raise FrameContractError(f"{path.name} has no valid x-direction")
        if not self.client or not self.server:
            raise FrameContractError(f"no frame schemas found in {folder}")
        self.validate_outgoing = validate_outgoing

    def parse(self, raw: str | bytes, *, max_bytes: int) -> dict[str, Any]:
        if isinstance(raw, bytes):
            raise SessionError("invalid_frame", "binary frames are not part of the protocol")
        if len(raw) > max_bytes or len(raw.encode("utf-8")) > max_bytes:
            raise SessionError("frame_too_large", f"frame larger than {max_bytes} bytes")
        try:
            value = parse_json_text(raw, allow_nul=False)  # prompt text goes to a jsonb column
        except TetherError as exc:
            name = "frame_too_large" if "nesting" in exc.detail else "invalid_frame"
            raise SessionError(name, exc.detail) from exc
        if not isinstance(value, dict) or not isinstance(value.get("type"), str):
            raise SessionError("invalid_frame", "a frame is a JSON object with a string 'type'")
        kind = value["type"]
        validator = self.client.get(kind)
        if validator is None:
            raise SessionError("invalid_frame", f"unknown frame type {kind[:40]!r}")
        for name in self.integers[kind]:
            number = value.get(name)
            if isinstance(number, float) and number.is_integer():
                value[name] = int(number)
        version = value.get("v")
        if isinstance(version, int) and not isinstance(version, bool) and version != PROTOCOL_VERSION:
            raise SessionError("unsupported_version", f"protocol version {version} is not supported (this server: 1)")
        error = validator.first_error(value)
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            raise SessionError("invalid_frame", f"{kind} frame invalid at {where}: {schema_error_message(error)[:200]}")
        return value

    def encode(self, frame: dict[str, Any]) -> str:
        if self.validate_outgoing:
            validator = self.server.get(frame.get("type", ""))
            if validator is None:
                raise FrameContractError(f"server frame type {frame.get('type')!r} is not in the contract")
            validator.validate(frame)
        return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)

    def encode_event(self, event: StoredEvent) -> str:
        """An ``event`` frame, built around the log's stored JSON text (no re-encode of data)."""
        frame = '{"type":"event","v":1,"seq":%d,"event_id":%s,"kind":"%s","data":%s,"ts":"%s"}' % (  # noqa: UP031
            event.seq,
            json.dumps(event.event_id),
            event.kind,  # ^[a-z][a-z0-9_.]{0,63}$ (contract): nothing to escape
            event.data_json,
            event.ts.isoformat(),
        )
        if self.validate_outgoing:
            self.encode(json.loads(frame))
        return frame

    def encode_batch(self, event_frames: list[str]) -> str:
        """An ``events`` frame around already encoded ``event`` frames (joined, not re-encoded)."""
        frame = '{"type":"events","v":1,"events":[' + ",".join(event_frames) + "]}"
        if self.validate_outgoing:
            self.encode(json.loads(frame))
        return frame
