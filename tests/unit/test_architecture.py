"""The shape of the code (F11, F14): no import cycles, no module importing the app, small modules.

* The import graph of every package (both services, ``tether_kit``, the Python SDK) is read
  from the source with ``ast`` — imports under ``if TYPE_CHECKING:`` included, since a cycle
  hidden there is still a cycle — and must have no cycle.
* Each module imports on its own in a fresh interpreter state for our packages (third-party
  modules stay loaded, so this is quick): a runtime cycle or an order dependence fails here.
* Only a service's ``__main__`` may import its ``app`` module: everything else gets what it
  needs handed in.
* No module in ``services/``, ``libs/`` or ``clients/python/src`` is over 400 lines.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {
    "tether_session": REPO / "services" / "session" / "src" / "tether_session",
    "tether_auth": REPO / "services" / "auth-token" / "src" / "tether_auth",
    "tether_kit": REPO / "libs" / "tether-kit" / "src" / "tether_kit",
    "tether_client": REPO / "clients" / "python" / "src" / "tether_client",
}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The modules of our packages that ``name`` imports (absolute, relative, under TYPE_CHECKING)."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            targets.add(module)
            targets.update(f"{module}.{alias.name}" for alias in node.names)
    return {t for t in targets if t in MODULES and t != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(GRAPH):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_scan_sees_the_packages() -> None:
    assert len(MODULES) > 40, sorted(MODULES)
    assert "tether_session.protocol" in GRAPH["tether_session.connection"]
    assert "tether_kit.logs" in GRAPH["tether_kit.service"]


def test_F11_no_import_cycle_in_any_package() -> None:
    assert _cycle() is None, f"import cycle: {' -> '.join(_cycle() or [])}"


def test_the_cycle_check_finds_a_cycle_under_type_checking(tmp_path: Path) -> None:
    """The check would see a cycle hidden behind ``if TYPE_CHECKING:`` (as ``app`` <-> ``connection`` was)."""
    (tmp_path / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tether_x.b import B\n"
    )
    graph = _imports("tether_session.a", tmp_path / "a.py")
    assert graph == set(), "modules outside the packages are ignored"
    hidden = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .app import SessionApp\n"
    (tmp_path / "c.py").write_text(hidden)
    assert _imports("tether_session.connection", tmp_path / "c.py") == {"tether_session.app"}


@pytest.mark.parametrize("package", ["tether_auth", "tether_session"])  # the packages with an app factory
def test_F11_only_main_imports_the_app_module(package: str) -> None:
    app = f"{package}.app"
    assert app in MODULES
    importers = sorted(name for name, targets in GRAPH.items() if app in targets)
    assert importers in ([], [f"{package}.__main__"]), importers


def test_every_module_imports_on_its_own() -> None:
    names = sorted(n for n in MODULES if not n.endswith("__main__"))
    script = (
        "import importlib, sys\n"
        f"packages = {tuple(PACKAGES)!r}\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] in packages]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *names], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("root", ["services", "libs", "clients/python/src"])
def test_no_module_over_the_size_limit(root: str) -> None:
    sizes = {p: len(p.read_text(encoding="utf-8").splitlines()) for p in (REPO / root).rglob("*.py")}
    assert sizes, root
    over = {str(p.relative_to(REPO)): n for p, n in sizes.items() if n > MAX_LINES}
    assert over == {}, f"modules over {MAX_LINES} lines: {over}"
