"""F13: thousands of connect / INIT / disconnect cycles, ending every way a connection can
end, leave nothing registered and no memory growth on the replica."""

from __future__ import annotations

import collections
import itertools
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
from trio_websocket import ConnectionClosed

from tests.support.rawws import RawWs
from tests.support.session import Stack, StackFactory, close_catalogue
from tests.support.waiting import await_until, scaled

from .helpers import TokenSource, note_events, replica_metrics, rss_mb

CONCURRENCY = 50
WARM_UP = 500
CYCLES = 5000
RSS_BOUND_MB = 20.0
KINDS = (
    *("clean_close", "resume_close", "abort_after_ready", "abort_before_init", "refused") * 2,
    "clean_close",
    "prompt_close",
)
CATALOGUE_BY_CODE = {entry["code"]: entry for entry in close_catalogue().values()}
GAUGES = ("tether_ws_connections_open", "tether_fanout_subscribers", "tether_fanout_feeds", "tether_agent_tasks")


@dataclass
class _Reason:
    code: int
    reason: str


class Cycler:
    """Runs connect/INIT/disconnect cycles of every kind in :data:`KINDS`, over a few projects."""

    def __init__(self, stack: Stack, tokens: TokenSource, api_key: str, projects: list[dict[str, Any]]) -> None:
        self.stack = stack
        self.tokens = tokens
        self.api_key = api_key
        self.projects = projects
        url = urlsplit(stack.session.url)
        assert url.hostname is not None
        assert url.port is not None
        self.host, self.port = url.hostname, url.port
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.readies = 0
        self._n = itertools.count()

    async def run(self, cycles: int) -> None:
        todo = iter(range(cycles))

        async def worker() -> None:
            for _ in todo:
                await self.cycle(next(self._n))

        with trio.fail_after(scaled(240)):
            async with trio.open_nursery() as nursery:
                for _ in range(CONCURRENCY):
                    nursery.start_soon(worker)

    async def cycle(self, n: int) -> None:
        try:
            await self._cycle(n)
        except ConnectionClosed as exc:
            # A retryable refusal (the machine is overloaded: database_unavailable, ...) is a
            # legitimate end of a cycle too; it must be documented and retryable.
            code = exc.reason.code
            entry = CATALOGUE_BY_CODE.get(code)
            if entry is None or not entry["retryable"]:
                raise AssertionError(f"cycle {n}: closed with {code} {exc.reason.reason}") from exc
            self.outcomes[f"retryable_close:{entry['name']}"] += 1

    async def _cycle(self, n: int) -> None:
        project = self.projects[n % len(self.projects)]
        kind = KINDS[n % len(KINDS)]
        if kind == "clean_close":  # INIT, ready, clean close by the client
            async with self.stack.ws() as ws:
                await self._ready(await ws.init(await self.tokens.token(self.api_key), {"id": project["id"]}))
        elif kind == "resume_close":  # resume from 0, read some of the replay, then close
            async with self.stack.ws() as ws:
                ready = await ws.init(await self.tokens.token(self.api_key), {"id": project["id"]}, resume_from=0)
                await self._ready(ready)
                await ws.events_until(lambda e: e["seq"] >= min(ready["last_seq"], 5))
        elif kind == "abort_after_ready":  # INIT, ready, then the TCP connection just goes away
            raw = await RawWs.connect(f"ws://{self.host}:{self.port}/v1/ws")
            try:
                await raw.send(self._init(await self.tokens.token(self.api_key), project))
                frames = await raw.read_frames(until=lambda f: f["type"] in ("ready", "error"))
            finally:
                await raw.aclose()
            if frames[-1]["type"] == "error":
                raise ConnectionClosed(_Reason(frames[-1]["close_code"], frames[-1]["code"]))
            await self._ready(frames[-1])
        elif kind == "abort_before_init":  # gone before INIT
            raw = await RawWs.connect(f"ws://{self.host}:{self.port}/v1/ws")
            await raw.aclose()
        elif kind == "refused":  # refused INIT (unknown token): the server closes
            async with self.stack.ws() as ws:
                error = await ws.init("tok_" + secrets.token_urlsafe(24), {"id": project["id"]})
                closed = await ws.closed()
            if error["code"] != "token_unknown":
                raise ConnectionClosed(_Reason(error["close_code"], error["code"]))
            assert closed.code == 4010
        else:  # a prompt (an agent task starts), closed right after the ack
            async with self.stack.ws() as ws:
                await self._ready(await ws.init(await self.tokens.token(self.api_key), {"id": project["id"]}))
                await ws.send({"type": "prompt", "v": 1, "client_msg_id": f"c{n}", "text": f"cycle {n}"})
                await ws.recv_type("prompt_ack")
        self.outcomes[kind] += 1

    async def _ready(self, frame: dict[str, Any]) -> None:
        if frame["type"] != "ready":
            raise ConnectionClosed(_Reason(frame["close_code"], frame["code"]))
        self.readies += 1

    @staticmethod
    def _init(token: str, project: dict[str, Any]) -> dict[str, Any]:
        return {"type": "init", "v": 1, "token": token, "project": {"id": project["id"]}, "client_id": "cycler"}


async def settled(stack: Stack) -> dict[str, float]:
    async def zero() -> dict[str, float] | None:
        metrics = await replica_metrics(stack, 0)
        values = {name: metrics.value(name) for name in GAUGES}
        return values if not any(values.values()) else None

    found = await await_until(zero, timeout=30, what=f"{', '.join(GAUGES)} all back to 0")
    assert found is not None
    return found


@pytest.mark.slow
@pytest.mark.trio
async def test_F13_5000_connect_init_disconnect_cycles_leave_no_growth(stack_factory: StackFactory) -> None:
    stack = stack_factory.start(
        session_env={"TETHER_PROMPTS_PER_MINUTE": "6000", "TETHER_CONNECTS_PER_IP_PER_MINUTE": "10000000"}
    )
    user = stack.make_user()  # one user: a leaked per-user count would hit the 100-connection cap
    projects = [await stack.create_project(user.api_key, f"cycles {i}") for i in range(8)]
    for project in projects:
        await stack.publish(project["id"], note_events("seed", 1, 5))
    pid = stack.session.proc.pid
    async with TokenSource(stack) as tokens:
        cycler = Cycler(stack, tokens, user.api_key, projects)
        await cycler.run(WARM_UP)
        await settled(stack)
        rss_before = rss_mb(pid)
        before = await replica_metrics(stack, 0)
        readies_before = cycler.readies
        await cycler.run(CYCLES)
    gauges = await settled(stack)
    rss_after = rss_mb(pid)
    after = await replica_metrics(stack, 0)
    print(
        f"\nF13: {CYCLES} cycles after a {WARM_UP}-cycle warm-up, {CONCURRENCY} at a time: "
        f"RSS {rss_before:.1f} MB -> {rss_after:.1f} MB ({rss_after - rss_before:+.1f} MB); "
        f"outcomes {dict(cycler.outcomes)}; gauges {gauges}"
    )
    assert sum(cycler.outcomes.values()) == WARM_UP + CYCLES
    retryable = sum(v for k, v in cycler.outcomes.items() if k.startswith("retryable_close:"))
    assert retryable < (WARM_UP + CYCLES) // 10, f"too many refused cycles: {dict(cycler.outcomes)}"
    # The replica counted exactly the sessions the clients saw start.
    assert after.delta(before, "tether_ws_connects_total", outcome="ready") == cycler.readies - readies_before
    assert rss_after - rss_before < RSS_BOUND_MB, f"RSS grew {rss_after - rss_before:.1f} MB over {CYCLES} cycles"
    assert stack.session.proc.events("ws_internal_error") == []
