"""The benchmark harness keeps working: ``python -m bench.run --tiny`` against real services.

Tiny sizes, so the numbers mean nothing and nothing here asserts on timing.  What must
hold: every scenario runs to the end against a real Postgres, auth-token and session
replica, reports numbers, and delivers every event exactly once (lost = 0, duplicates = 0:
the delivery guarantees of F20/F22 under the harness' loads).  When the peers are already
set up in ``/tmp/tether-peers`` one peer runs too, so the side-by-side path is exercised.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.support.contract import REPO_ROOT
from tests.support.waiting import scaled

PEERS_ROOT = Path("/tmp/tether-peers")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("node") is None, reason="the load client needs Node"),
]


def _numbers(d: dict[str, Any], *keys: str) -> None:
    for key in keys:
        assert isinstance(d.get(key), int | float), f"{key} missing or not a number in {d}"


@pytest.mark.timeout(scaled(900))
def test_bench_harness_runs_every_scenario_and_loses_nothing(log_dir: Path) -> None:
    peers = "websockets" if (PEERS_ROOT / "venv" / "bin" / "python").exists() else "none"
    work = Path(tempfile.mkdtemp(prefix="tether-bench-smoke-"))  # Postgres data: under /tmp, never the repo
    out_json = log_dir / "bench-results.json"
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.run",
                "--tiny",
                "--peers",
                peers,
                "--out",
                "-",
                "--json",
                str(out_json),
                "--workdir",
                str(work),
                "--logs",
                str(log_dir / "bench"),
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=scaled(800),
            check=False,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (log_dir / "bench-stderr.txt").write_text(proc.stderr)
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    assert "| **Tether**" in proc.stdout, proc.stdout[-2000:]
    assert "## Variants: delivery framing and permessage-deflate" in proc.stdout
    assert "### 5b: where the time goes" in proc.stdout

    data = json.loads(out_json.read_text())
    t = data["tether"]
    for name in ("fanout", "stream", "stream_rate", "agent", "echo", "catchup", "storm", "cold_start"):
        assert name in t, f"scenario {name} did not report"
        assert "error" not in t[name], f"{name}: {t[name]}"
    for name in ("fanout", "stream", "stream_rate", "agent", "echo", "catchup"):
        _numbers(t[name], "session_us", "pg_us", "events_per_s" if name != "echo" else "msgs_per_s")
        assert t[name]["lost"] == 0, f"{name} lost events: {t[name]}"
        assert t[name]["duplicates"] == 0, f"{name} duplicated events: {t[name]}"
    assert t["fanout"]["deliveries"] == t["fanout"]["expected"]
    # the load client asks for batched delivery like Tether's clients, and the server grants it
    fan = t["fanout"]
    assert fan["batch_frames"] is True
    assert fan["batch_granted"] == fan["sockets"], fan
    assert fan["event_messages"] >= 1
    # the variant rows: the other framing (fan-out, catch-up) and permessage-deflate offered (fan-out, idle)
    variants = {(v["scenario"], v["variant"]): v for v in t["variants"]}
    assert set(variants) == {
        ("fanout", "per-event frames"),
        ("fanout", "permessage-deflate offered"),
        ("catchup", "per-event frames"),
        ("idle", "permessage-deflate offered"),
    }, sorted(variants)
    for key, v in variants.items():
        assert "error" not in v, (key, v)
        assert v["lost"] == 0, (key, v)
    per_event = variants[("fanout", "per-event frames")]
    assert per_event["batch_frames"] is False
    assert per_event["batch_granted"] == 0
    assert per_event["event_messages"] == per_event["deliveries"] == per_event["expected"], per_event
    assert per_event["duplicates"] == 0
    deflated = variants[("fanout", "permessage-deflate offered")]
    assert deflated["deflate"] is True
    assert isinstance(deflated["extensions"], str)  # what Hypercorn negotiated, recorded for the report
    assert deflated["deliveries"] == deflated["expected"]
    assert variants[("catchup", "per-event frames")]["events"] == t["catchup"]["events"]
    _numbers(t["storm"], "connects_per_s", "recover_secs", "connect_session_us")
    assert t["storm"]["lost"] == 0
    assert t["storm"]["duplicates"] == 0
    # 5b reconnects paced like tether.js: every session made at least one attempt, all came back
    detail = t["storm"]["reconnect_detail"]
    assert t["storm"]["reconnect_pacing"] == "tether.js"
    assert detail["attempts"]["total"] >= t["storm"]["n"], detail
    assert sum(x["ready"] for x in detail["timeline_per_s"]) == t["storm"]["n"], detail
    assert len(t["idle"]) == 2
    for idle in t["idle"]:
        assert "error" not in idle, idle
        assert idle["live"] == idle["n"], idle
        _numbers(idle, "kb_per_conn", "rss_mb")
    _numbers(t["cold_start"], "median_s")
    if peers != "none":
        (peer,) = data["peers"]
        assert "error" not in peer, peer
        _numbers(peer["echo"], "session_us")
        _numbers(peer["bcast"], "session_us")
        assert peer["bcast"]["lost"] == 0
