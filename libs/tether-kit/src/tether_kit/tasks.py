"""Tasks that outlive whatever request or connection happened to start them.

``asyncio.create_task`` copies the current :mod:`contextvars` context, and the log context
(``tether_kit.logs``) is a context variable: a worker started lazily by the first request
would write that request's id (or a connection's ``connection_id``/``user_id``) on every
line for the rest of the process.  :func:`detached` starts the task in a fresh, empty
context instead (F40).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def detached(work: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
    """``asyncio.create_task`` in a fresh context: no request's or connection's log fields."""
    return asyncio.get_running_loop().create_task(work, name=name, context=contextvars.Context())
