"""The benchmark harness keeps working: ``python -m bench.run --tiny`` against real services.

Tiny sizes, so the numbers mean nothing and nothing here asserts on timing.  What must
hold: every scenario runs to the end against a real Postgres, auth-token and session
replica, reports numbers, and delivers every event exactly once (lost = 0, duplicates = 0:
the delivery guarantees of F20/F22 under the harness' loads).  When the peers are already
set up in ``/tmp/tether-peers`` one peer runs too, so the side-by-side path is exercised.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.support.contract import REPO_ROOT
from tests.support.waiting import scaled

PEERS_ROOT = Path(os.environ.get("TETHER_PEERS_ROOT", "/tmp/tether-peers"))

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
                "--peers-root",
                str(PEERS_ROOT),
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
    assert "## Variants: delivery framing, batched publish, bulk agent, permessage-deflate" in proc.stdout
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
    # every Tether row carries the whole system's CPU (session + PostgreSQL + auth-token) and the framing granted
    for name in ("fanout", "stream", "stream_rate", "agent", "echo", "catchup"):
        r = t[name]
        _numbers(r, "system_us", "system_cores", "auth_us")
        assert r["system_us"] >= r["session_us"], (name, r)
        assert "batch_granted" in r, (name, r)
        assert "events_per_message" in r, (name, r)
    _numbers(t["storm"], "connect_system_us", "reconnect_system_us")
    # the headline fan-out does the peers' work: one event per publish, one frame per event
    fan = t["fanout"]
    assert fan["batch"] == 1, fan
    assert fan["batch_frames"] is False
    assert fan["batch_granted"] == 0
    assert fan["event_messages"] == fan["deliveries"] == fan["expected"], fan
    # the built-in agent streams: several answers at once, chunks produced apart in time
    agent = t["agent"]
    assert agent["streams"] >= 2, agent
    assert agent["delay_ms"] > 0, agent
    _numbers(agent, "chunk_gap_p50_ms", "first_chunk_p50_ms")
    # the variant rows: batching (fan-out, catch-up), the bulk agent, permessage-deflate offered (fan-out, idle)
    variants = {(v["scenario"], v["variant"]): v for v in t["variants"]}
    assert set(variants) == {
        ("fanout", "events frames (INIT batch: true)"),
        ("fanout", "events frames + batched publish (5 events per request)"),
        ("fanout", "permessage-deflate offered"),
        ("agent", "bulk insert: 1 answer of 20 chunks, no delay"),
        ("catchup", "events frames (INIT batch: true)"),
        ("idle", "permessage-deflate offered"),
    }, sorted(variants)
    for key, v in variants.items():
        assert "error" not in v, (key, v)
        assert v["lost"] == 0, (key, v)
        assert v.get("duplicates", 0) == 0, (key, v)
    batched = variants[("fanout", "events frames + batched publish (5 events per request)")]
    assert batched["batch_frames"] is True
    assert batched["batch_granted"] == batched["sockets"], batched
    assert batched["batch"] == 5
    assert batched["deliveries"] == batched["expected"]
    deflated = variants[("fanout", "permessage-deflate offered")]
    assert deflated["deflate"] is True
    assert isinstance(deflated["extensions"], str)  # what Hypercorn negotiated, recorded for the report
    assert deflated["deliveries"] == deflated["expected"]
    assert variants[("catchup", "events frames (INIT batch: true)")]["events"] == t["catchup"]["events"]
    _numbers(t["storm"], "connects_per_s", "recover_secs", "connect_session_us")
    assert t["storm"]["lost"] == 0
    assert t["storm"]["duplicates"] == 0
    # 5b reconnects paced like tether.js: every session made at least one attempt, each with a token
    # fetched inside the window, and all came back
    detail = t["storm"]["reconnect_detail"]
    assert t["storm"]["reconnect_pacing"] == "tether.js"
    assert detail["attempts"]["total"] >= t["storm"]["n"], detail
    assert detail["tokens_fetched"] == detail["attempts"]["total"], detail
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
        _numbers(peer["echo"], "session_us", "cores")
        _numbers(peer["bcast"], "session_us", "cores")
        assert peer["bcast"]["lost"] == 0
