"""JSON text as Tether reads it, for HTTP bodies and WebSocket frames alike.

Strict where ``json.loads`` is lenient: no NaN/Infinity, numbers within float range, no
duplicate keys (``{"type":"prompt","type":"init"}`` is refused, never "last one wins"),
bounded nesting, strings PostgreSQL can store.  Every refusal is a
:class:`~tether_kit.errors.TetherError` ``invalid_body`` whose detail says why.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import TetherError

MAX_JSON_DEPTH = 32


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_depth(value: Any, limit: int) -> int:
    """Depth of a parsed JSON value (a scalar is 1, ``[1]`` is 2), stopping early once past ``limit``.

    Level by level: one type check per value, no per-value tuples (this runs on every ingest
    body and every WebSocket frame).
    """
    level = [value]
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return depth
        below: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                below.extend(item.values())
            elif isinstance(item, list):
                below.extend(item)
        level = below
    return depth


def _finite_float(text: str) -> float:
    """A JSON number Python reads as infinity (``1e400``) would be written back as ``Infinity``,
    which is not JSON (PostgreSQL refused it: a 500).  Refused here as invalid."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number out of range: {text[:40]}")
    return value


class DuplicateKeyError(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object with a key twice has no meaning every reader agrees on (Python keeps the last,
    some parsers the first): ``{"type":"prompt","type":"init"}`` must not be an INIT here
    and a prompt elsewhere."""
    value = dict(pairs)
    if len(value) != len(pairs):
        raise DuplicateKeyError("duplicate key in a JSON object")
    return value


# Built once: json.loads with any option builds a new decoder on every call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float, object_pairs_hook=_unique_keys)


def parse_json_text(raw: bytes | str, *, max_depth: int = MAX_JSON_DEPTH, allow_nul: bool = True) -> Any:
    """Strict JSON parsing shared by HTTP bodies and WebSocket frames.

    Raises :class:`TetherError` ``invalid_body`` for bytes that are not UTF-8 JSON, for an
    object with a duplicate key, for strings with unpaired surrogates (``"\\ud800"``: not encodable as UTF-8) and, unless
    ``allow_nul``, for strings with U+0000 (PostgreSQL text and jsonb cannot hold it).
    """
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value = _DECODER.decode(text)
    except RecursionError as exc:  # only far past max_depth: name it so, as the depth check below does
        raise TetherError("invalid_body", f"JSON nesting deeper than {max_depth}") from exc
    except DuplicateKeyError as exc:
        raise TetherError("invalid_body", str(exc)) from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise TetherError("invalid_body", f"body is not UTF-8 JSON: {type(exc).__name__}") from exc
    # deeper than max_depth takes at least max_depth brackets: most texts are not walked at all
    if text.count("[") + text.count("{") >= max_depth and json_depth(value, max_depth) > max_depth:
        raise TetherError("invalid_body", f"JSON nesting deeper than {max_depth}")
    if "\\u" in text and not _encodable(value, allow_nul):
        what = "unpaired surrogates" if allow_nul else "U+0000 or unpaired surrogates"
        raise TetherError("invalid_body", f"JSON strings must not contain {what}")
    return value


def _encodable(value: Any, allow_nul: bool) -> bool:
    """Every string (keys too) is UTF-8 encodable (and free of U+0000 unless ``allow_nul``).

    Only ``\\u`` escapes can smuggle either in (raw control characters and invalid UTF-8 are
    already refused), so the caller checks this only when the text has one.  Found by the
    fuzz suite: ``"\\u0000"`` in an event's data reached a jsonb column and answered 500.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not allow_nul and "\x00" in item:
                return False
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True
