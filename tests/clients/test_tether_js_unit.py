"""tether.js's own unit suite (Node's test runner, a fake WebSocket and a fake fetch),
run as part of the Python suite so CI runs it too (F30, F31, F32, F21, F22).

The browser tests prove the same behaviour in Chromium against real services; this suite
pins the edge cases (backoff bounds, retry_after_ms, catalogue decisions, dedup, outbox).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.support.waiting import scaled

JS = Path(__file__).resolve().parents[2] / "clients" / "js"


def test_F31_tether_js_unit_suite_handlers_survive_reconnects_and_all_cases_pass() -> None:
    node = shutil.which("node")
    assert node, "node is required (installed by infra/ensure-system-packages.sh)"
    result = subprocess.run(
        [node, "--test", "--test-timeout=30000", "test/"],
        cwd=JS,
        capture_output=True,
        text=True,
        timeout=scaled(180),
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    passed = int(re.search(r"^# pass (\d+)$", output, re.M).group(1))  # type: ignore[union-attr]
    failed = int(re.search(r"^# fail (\d+)$", output, re.M).group(1))  # type: ignore[union-attr]
    assert failed == 0
    assert passed >= 40, output[-2000:]
    assert "F31 handlers belong to the client and survive reconnects" in output
