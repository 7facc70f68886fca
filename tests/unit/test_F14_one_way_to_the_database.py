"""F14: one way to get a database connection or a transaction, and it is type-checked.

Service code reaches PostgreSQL only through ``tether_kit.db.Database``
(``connection()`` / ``transaction()``, async context managers typed for mypy --strict).
Two places open a connection of their own, on purpose, and only they may:

* the session replica's LISTEN connection (``fanout.py``): a pooled connection cannot
  hold LISTEN state across acquire/release;
* the admin CLI (``tether_auth/cli.py``): a one-shot command, not a service.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCES = [*REPO.glob("services/*/src/**/*.py"), *REPO.glob("libs/*/src/**/*.py")]
ALLOWED = {
    ("libs/tether-kit/src/tether_kit/db.py", "create_pool"),
    ("libs/tether-kit/src/tether_kit/db.py", "acquire"),
    ("services/session/src/tether_session/fanout.py", "connect"),
    ("services/auth-token/src/tether_auth/cli.py", "connect"),
}
FORBIDDEN_CALLS = {"connect", "create_pool", "acquire", "release"}


def _calls(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in FORBIDDEN_CALLS:
            owner = ast.unparse(node.func.value)
            if "asyncpg" in owner or "pool" in owner.lower():
                found.append((node.func.attr, node.lineno))
    return found


def test_F14_database_access_goes_through_the_one_typed_helper() -> None:
    assert SOURCES, "no service sources found"
    offenders = []
    for path in SOURCES:
        rel = path.relative_to(REPO).as_posix()
        offenders += [f"{rel}:{line} {name}" for name, line in _calls(path) if (rel, name) not in ALLOWED]
    assert offenders == [], f"database connections opened outside tether_kit.db: {offenders}"


def test_F14_the_helper_yields_typed_context_managers() -> None:
    source = (REPO / "libs/tether-kit/src/tether_kit/db.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    methods = {
        n.name: n
        for n in ast.walk(tree)
        if isinstance(n, ast.AsyncFunctionDef) and n.name in ("connection", "transaction")
    }
    assert set(methods) == {"connection", "transaction"}
    for method in methods.values():
        decorators = [ast.unparse(d) for d in method.decorator_list]
        assert decorators == ["asynccontextmanager"], decorators
        assert method.returns is not None
        assert ast.unparse(method.returns) == "AsyncIterator[Connection]"


def test_F14_the_checker_catches_a_stray_connection(tmp_path: Path) -> None:
    stray = tmp_path / "stray.py"
    stray.write_text("import asyncpg\nasync def f():\n    return await asyncpg.connect('x')\n", encoding="utf-8")
    assert _calls(stray) == [("connect", 3)]
