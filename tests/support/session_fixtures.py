"""Fixtures for tests that need the whole system (registered in ``tests/conftest.py``).

=======================  =======  ======================================================
fixture                  scope    what it gives
=======================  =======  ======================================================
``stack_factory``        function :class:`~tests.support.session.StackFactory` (per test)
``module_stack_factory`` module   the same, for module-scoped stacks
``stack``                module   auth-token + one session replica, fresh database
=======================  =======  ======================================================
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .pg import PgServer
from .session import Stack, StackFactory


@pytest.fixture
def stack_factory(pg_server: PgServer, log_dir: Path) -> Iterator[StackFactory]:
    factory = StackFactory(pg_server, log_dir)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def module_stack_factory(pg_server: PgServer, log_dir: Path) -> Iterator[StackFactory]:
    factory = StackFactory(pg_server, log_dir)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def stack(module_stack_factory: StackFactory) -> Stack:
    return module_stack_factory.start()
