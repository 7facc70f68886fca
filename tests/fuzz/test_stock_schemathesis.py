"""A stock ``schemathesis run --checks all`` against both services reports 0 failures (F06, F40).

What a new user would run: the schemathesis CLI as installed, every check it has (ST202
"schema-valid request rejected" included), none of Tether's hooks or checks, no
``allow-x00: false``.  Its only configuration is the credentials (the contract's security
schemes).  A body the service refuses although the contract says it is valid (U+0000 in an
event's ``data`` before the contract said so) fails this test; so does any 5xx.

Budget: ``TETHER_FUZZ_EXAMPLES`` per operation (default 20; about a minute for both
services on the development machine), a fixed seed so that a failure reproduces.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.auth import AUTH_CONTRACT
from tests.support.session import SESSION_CONTRACT, Stack, StackFactory
from tests.support.waiting import scaled

EXAMPLES = int(os.environ.get("TETHER_FUZZ_EXAMPLES", "20"))
SEED = "245304421602256059621083551476203440921"


@pytest.fixture(scope="module")
def stock_stack(module_stack_factory: StackFactory) -> Stack:
    return module_stack_factory.start(session_env={"TETHER_TEST_MODE": "0"})


def _run(
    contract: Path, base_url: str, user_key: str, service_key: str, workdir: Path
) -> subprocess.CompletedProcess[str]:
    config = workdir / "schemathesis.toml"
    config.write_text(
        f'[auth.openapi.bearerAuth]\nbearer = "{user_key}"\n[auth.openapi.serviceAuth]\nbearer = "{service_key}"\n',
        encoding="utf-8",
    )
    # No SCHEMATHESIS_HOOKS or other project setting may leak in: this is the stock tool.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS_")}
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(config),
        "run",
        str(contract),
        "--url",
        base_url,
        "--checks",
        "all",
        "--workers",
        "1",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        SEED,
        "--no-color",
    ]
    return subprocess.run(
        command, cwd=workdir, env=env, capture_output=True, text=True, timeout=scaled(300), check=False
    )


@pytest.mark.fuzz
@pytest.mark.parametrize("service", ["auth-token", "session"])
def test_F06_stock_schemathesis_all_checks_reports_no_failure(stock_stack: Stack, service: str, tmp_path: Path) -> None:
    user = stock_stack.make_user(f"stock-{service}")
    if service == "session":
        result = _run(SESSION_CONTRACT, stock_stack.session.url, user.api_key, stock_stack.ingest_key, tmp_path)
    else:
        result = _run(AUTH_CONTRACT, stock_stack.auth.url, user.api_key, stock_stack.auth.service_key, tmp_path)
    output = result.stdout + result.stderr
    summary = "\n".join(output.strip().splitlines()[-25:])
    assert result.returncode == 0, f"schemathesis run --checks all on {service} failed:\n{output[-6000:]}"
    assert "No issues found" in output, summary
