"""JSON Schema validation on the hot path.

``jsonschema`` (pure Python) is the reference: it decides every rejection and writes the
error messages (value-free, see :func:`tether_kit.http.schema_error_message`).  Most
instances are valid, though, and for those jsonschema-rs answers in a few microseconds
instead of tens to hundreds: :class:`FastSchema` asks it first and only falls back to the
reference when it says "invalid".  Behaviour is therefore exactly the reference's.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import jsonschema_rs


class FastSchema:
    def __init__(self, reference: jsonschema.Draft202012Validator, compiled_schema: dict[str, Any]) -> None:
        self.reference = reference
        self.fast = jsonschema_rs.Draft202012Validator(compiled_schema, validate_formats=True)

    def first_error(self, instance: Any) -> jsonschema.ValidationError | None:
        if self.fast.is_valid(instance):
            return None
        return next(iter(self.reference.iter_errors(instance)), None)
