"""Measure the session handshake and a streamed agent answer (a script, not a test).

    .venv/bin/python -m bench.measure_handshake [--connects 100] [--answers 5]   # from the repository root

Starts its own embedded PostgreSQL (or uses ``DATABASE_URL``), one auth-token service and one
session replica in test mode (so the server also validates every frame it sends, as in the
suite), with ``TETHER_AGENT_CHUNKS=100`` and ``TETHER_AGENT_DELAY_MS=0``, then measures:

1. ``init`` sent -> ``ready`` received, over N fresh connections (the token is fetched and
   the WebSocket opened before the clock starts; the frame is schema-checked after it stops);
2. ``prompt`` sent -> the 100th ``agent_chunk`` and ``agent_done`` received, M times on one
   connection (also: time to ``prompt_ack`` and to the first chunk).

Timing figures only: nothing is asserted.  Logs go to ``artifacts/logs/measure-<time>/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
from pathlib import Path
from typing import Any

import trio
from trio_websocket import open_websocket_url

from tests.support.fixtures import ARTIFACTS
from tests.support.pg import start_pg_server
from tests.support.procs import stop_all
from tests.support.session import ALLOWED_ORIGIN, Stack, StackFactory, check_server_frame

CHUNKS = 100


def _summary(label: str, samples_ms: list[float]) -> str:
    ordered = sorted(samples_ms)
    p90 = ordered[max(0, int(len(ordered) * 0.9) - 1)]
    return (
        f"{label}: n={len(ordered)} median={statistics.median(ordered):.2f} ms "
        f"p90={p90:.2f} ms min={ordered[0]:.2f} ms max={ordered[-1]:.2f} ms"
    )


async def _connects(stack: Stack, user_key: str, project_id: str, count: int) -> list[float]:
    samples: list[float] = []
    headers = [("Origin", ALLOWED_ORIGIN)]
    for i in range(count):
        token = await stack.token(user_key)
        async with open_websocket_url(stack.session.ws_url, extra_headers=headers) as ws:  # type: ignore[arg-type]
            init = {"type": "init", "v": 1, "token": token, "project": {"id": project_id}, "client_id": f"m{i}"}
            text = json.dumps(init)
            started = time.perf_counter()
            await ws.send_message(text)
            raw = await ws.get_message()
            samples.append((time.perf_counter() - started) * 1000)
            frame = check_server_frame(raw)
            if frame["type"] != "ready":
                raise RuntimeError(f"connect {i}: expected ready, got {frame}")
    return samples


async def _answers(stack: Stack, user_key: str, project_id: str, count: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"prompt_ack": [], "first_chunk": [], "complete": []}
    token = await stack.token(user_key)
    headers = [("Origin", ALLOWED_ORIGIN)]
    async with open_websocket_url(stack.session.ws_url, extra_headers=headers) as ws:  # type: ignore[arg-type]
        init = {"type": "init", "v": 1, "token": token, "project": {"id": project_id}, "client_id": "answers"}
        await ws.send_message(json.dumps(init))
        if check_server_frame(await ws.get_message())["type"] != "ready":
            raise RuntimeError("no ready")
        for n in range(count):
            prompt = {"type": "prompt", "v": 1, "client_msg_id": f"a{n}", "text": f"measure answer {n} " + "x" * 200}
            chunks = 0
            marks: dict[str, float] = {}
            raws: list[str] = []
            started = time.perf_counter()
            await ws.send_message(json.dumps(prompt))
            while "complete" not in marks:
                raw = await ws.get_message()
                now = time.perf_counter()
                raws.append(raw)
                frame = json.loads(raw)
                if frame["type"] == "prompt_ack":
                    marks["prompt_ack"] = now
                elif frame["type"] == "event" and frame["kind"] == "agent_chunk":
                    chunks += 1
                    marks.setdefault("first_chunk", now)
                elif frame["type"] == "event" and frame["kind"] == "agent_done":
                    marks["complete"] = now
            for raw in raws:  # schema-check after the clock stopped
                check_server_frame(raw)
            if chunks != CHUNKS:
                raise RuntimeError(f"answer {n}: {chunks} chunks, expected {CHUNKS}")
            for key, mark in marks.items():
                results[key].append((mark - started) * 1000)
    return results


async def measure(connects: int, answers: int) -> None:
    pg = start_pg_server()
    log_dir = ARTIFACTS / "logs" / f"measure-{dt.datetime.now():%Y%m%d-%H%M%S}"
    factory = StackFactory(pg, Path(log_dir))
    try:
        stack = factory.start(
            session_env={
                "TETHER_AGENT_CHUNKS": str(CHUNKS),
                "TETHER_AGENT_DELAY_MS": "0",
                "TETHER_CONNECTS_PER_IP_PER_MINUTE": "1000000",
                "TETHER_PROMPTS_PER_MINUTE": "100000",
            }
        )
        user = stack.make_user()
        project: dict[str, Any] = await stack.create_project(user.api_key, "measure")
        await _connects(stack, user.api_key, project["id"], 5)  # warm-up (pools, caches)
        handshake = await _connects(stack, user.api_key, project["id"], connects)
        streamed = await _answers(stack, user.api_key, project["id"], answers)
        print(_summary("init -> ready", handshake))
        print(_summary("prompt -> prompt_ack", streamed["prompt_ack"]))
        print(_summary("prompt -> first agent_chunk", streamed["first_chunk"]))
        print(_summary(f"prompt -> all {CHUNKS} chunks + agent_done", streamed["complete"]))
        print(f"logs: {log_dir}")
    finally:
        factory.close()
        pg.close(artifacts=Path(log_dir))
        stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--connects", type=int, default=100)
    parser.add_argument("--answers", type=int, default=5)
    args = parser.parse_args()
    trio.run(measure, args.connects, args.answers)


if __name__ == "__main__":
    main()
