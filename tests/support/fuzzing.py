"""schemathesis helpers shared by the fuzz suites of both services.

:func:`unique_request_ids` gives every request schemathesis sends a fresh, well-formed
``X-Request-ID`` so that each error answer can be matched to its log line by id.

Why not let schemathesis generate the header: the contracts declare the ``X-Request-ID``
*parameter* with the pattern of ids that are echoed, while the documented behaviour is
that any other value is *replaced*, not rejected.  Fuzzed malformed ids therefore make
schemathesis report "schema-violating request accepted" on every operation.  The
replace-not-reject behaviour is covered by ``tests/auth/test_errors.py`` (F40); the fix
belongs in the contracts (drop the ``pattern`` from the parameter schema and keep it in
the description).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import schemathesis
from schemathesis import hooks

REQUEST_ID_HEADER = "X-Request-ID"


@contextmanager
def unique_request_ids(prefix: str = "fuzz") -> Iterator[list[str]]:
    """While active, each schemathesis call carries ``X-Request-ID: <prefix>-<uuid>``.

    Yields the list of ids sent, in order (a global ``before_call`` hook, removed on exit).
    """
    sent: list[str] = []

    def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
        request_id = f"{prefix}-{uuid.uuid4().hex}"
        sent.append(request_id)
        case.headers = {**(case.headers or {}), REQUEST_ID_HEADER: request_id}

    schemathesis.hook("before_call")(before_call)
    try:
        yield sent
    finally:
        hooks.unregister(before_call)
