"""Running the ``tether`` CLI (and the client's examples) as subprocesses.

The CLI gets an explicit environment: the runner's ``TETHER_*`` variables are dropped,
``TETHER_CONFIG_DIR`` points at a per-test directory, and the API key travels in
``TETHER_API_KEY`` (never on the command line).  Every run has a (scaled) timeout.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.contract import REPO_ROOT
from tests.support.session import Stack
from tests.support.waiting import scaled

EXAMPLES = REPO_ROOT / "clients" / "python" / "examples"
# Connection tokens are "tt_" + 43 URL-safe characters (auth-token's secrets.new_secret).
TOKEN_PATTERN = re.compile(r"tt_[A-Za-z0-9_-]{40,}")

STEP_IDS = [
    "auth_healthz",
    "auth_readyz",
    "session_healthz",
    "session_readyz",
    "shedding",
    "credentials",
    "project",
    "token",
    "ws_upgrade",
    "init_ready",
    "prompt_round_trip",
    "resume",
]


@dataclass
class Run:
    code: int
    out: str
    err: str

    def assert_no_secrets(self, *secrets: str) -> None:
        text = self.out + self.err
        for secret in secrets:
            assert secret not in text, "a secret was printed"
        assert not TOKEN_PATTERN.search(text), "a connection token was printed"

    def json(self) -> Any:
        return json.loads(self.out)


def cli_env(stack: Stack | None, config_dir: Path, api_key: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env["TETHER_CONFIG_DIR"] = str(config_dir)
    env["PYTHONUNBUFFERED"] = "1"
    if stack is not None:
        env["TETHER_AUTH_URL"] = stack.auth.url
        env["TETHER_SESSION_URL"] = stack.session.url
    if api_key is not None:
        env["TETHER_API_KEY"] = api_key
    env.update(extra)
    return env


def run_tether(args: list[str], env: dict[str, str], *, stdin: str | None = None, timeout: float = 90.0) -> Run:
    result = subprocess.run(
        [sys.executable, "-m", "tether_client", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=scaled(timeout),
        check=False,
    )
    return Run(result.returncode, result.stdout, result.stderr)


def run_example(name: str, args: list[str], env: dict[str, str], *, timeout: float = 90.0) -> Run:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(timeout),
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return Run(result.returncode, result.stdout, result.stderr)


def step_lines(out: str) -> list[str]:
    """The doctor's step lines (✓ / ! / ✗ / -), in order."""
    return [line for line in out.splitlines() if line[:2] in ("✓ ", "! ", "✗ ", "- ")]
