"""Overload (F25, F06, F41): a replica past its capacity says so at once, and paces the retries.

* A connect storm at 3x the configured connect capacity, on a replica whose core is shared
  with a CPU hog (bounded in time), every client fetching a fresh token per attempt as the
  clients do: every attempt is answered — ``ready``, or ``overloaded`` with a
  ``retry_after_ms`` — none waits out its own timeout; every client is served within a bound
  computed from the capacity; every client then replays the whole log (0 lost).
* Ingest while appends are over their limit: every request of a burst is answered, ``200`` or
  ``503 overloaded`` with ``Retry-After`` (before its body is read) and one bounded ``load_shed``
  line per second, none left to the client's timeout; the events of the accepted requests are
  all in the log.  (Latency under overload is measured in the benchmark, not asserted here.)
* A prompt while appends are over their limit: an ``error`` frame with ``scope: "request"``
  naming the prompt; the socket stays open and works.
* Sheds are counted in ``tether_load_shed_total`` and logged once per reason per second.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, HandshakeError

from tests.support.auth import bearer
from tests.support.metrics import scrape
from tests.support.secrets import remember
from tests.support.session import Stack, StackFactory, WsClient, new_client_msg_id
from tests.support.waiting import await_until, pace, scaled

from .helpers import ws_to

CAPACITY = 30  # connects per second the replica is configured to pace retries at
HANDSHAKES = 2  # handshakes in flight beyond which a connect is shed
STORM_S = 2.0
EVENTS = 20


def _hog(seconds: float, cpu: int) -> subprocess.Popen[bytes]:
    """A busy loop on ``cpu`` that ends by itself after ``seconds`` (and is stopped by PID anyway)."""
    code = f"import os, time\nos.sched_setaffinity(0, {{{cpu}}})\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass\n"
    return subprocess.Popen([sys.executable, "-c", code])


@pytest.mark.slow
@pytest.mark.trio
async def test_F25_a_connect_storm_at_3x_capacity_is_paced_never_timed_out(stack_factory: StackFactory) -> None:
    stack = stack_factory.start(
        session_env={
            "TETHER_CONNECT_CAPACITY_PER_S": str(CAPACITY),
            "TETHER_SHED_HANDSHAKES": str(HANDSHAKES),
            # every client of this test comes from 127.0.0.1; a real storm comes from many addresses
            "TETHER_CONNECTS_PER_IP_PER_MINUTE": "100000",
        }
    )
    user = stack.make_user()
    project = await stack.create_project(user.api_key, "storm")
    await stack.publish(project["id"], [{"event_id": f"e{i}", "kind": "note", "data": {"i": i}} for i in range(EVENTS)])
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(stack.session.proc.pid, {cpus[0]})
    clients = 3 * CAPACITY * int(STORM_S)
    connect_timeout = scaled(10)
    bound = STORM_S + 1.5 * clients / CAPACITY + scaled(15)
    outcomes: Counter[str] = Counter()
    retry_delays: list[int] = []
    retries_at: list[float] = []  # when each shed client was told to come back
    served_at: list[float] = []
    replayed: list[list[int]] = []
    hog = _hog(bound + 30, cpus[0])
    started = trio.current_time()
    try:

        async def fresh_token() -> str | None:
            """A fresh token per attempt, as the clients do; a 503/429 from auth-token is paced too."""
            while True:
                try:
                    response = await auth.post("/v1/tokens", json={}, headers=bearer(user.api_key))
                except httpx.TimeoutException:
                    return None
                if response.status_code == 201:
                    token: str = response.json()["token"]
                    remember(token)
                    return token
                assert response.status_code in (429, 503), response.text
                await pace(int(response.headers["retry-after"]))

        async def client(n: int) -> None:
            while True:
                token = await fresh_token()
                if token is None:
                    outcomes["token_timed_out"] += 1
                    return
                try:
                    with trio.fail_after(connect_timeout):
                        async with ws_to(stack.session, connect_timeout=10) as ws:
                            first = await _init(ws, token, project["id"], f"c{n}")
                            if first["type"] == "ready":
                                served_at.append(trio.current_time() - started)
                                events = await ws.events_until(lambda e: e["seq"] == EVENTS)
                                replayed.append([e["seq"] for e in events])
                                outcomes["ready"] += 1
                                return
                            assert first["type"] == "error", first
                            assert first["code"] == "overloaded", first
                            assert first["retry_after_ms"] > 0, first
                            outcomes["overloaded"] += 1
                            retry_delays.append(first["retry_after_ms"])
                            retries_at.append(trio.current_time() - started + first["retry_after_ms"] / 1000)
                except trio.TooSlowError:
                    outcomes["timed_out"] += 1
                    return
                except (ConnectionClosed, HandshakeError) as exc:
                    outcomes[f"closed:{type(exc).__name__}"] += 1
                    return
                await pace(retry_delays[-1] / 1000)  # the pacing the server asked for

        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        with trio.fail_after(bound + 30):
            async with (
                httpx.AsyncClient(base_url=stack.auth.url, limits=limits, timeout=connect_timeout) as auth,
                trio.open_nursery() as nursery,
            ):
                waves = 10
                for wave in range(waves):  # bursts: each wave arrives at once
                    for n in range(wave * clients // waves, (wave + 1) * clients // waves):
                        nursery.start_soon(client, n)
                    await pace(STORM_S / waves)
    finally:
        hog.kill()
        hog.wait(10)

    assert outcomes["timed_out"] == 0, outcomes
    assert outcomes["token_timed_out"] == 0, outcomes
    assert outcomes["ready"] == clients, outcomes
    assert outcomes["overloaded"] > 0, f"the storm never went over the limits: {outcomes}"
    assert max(served_at) <= bound, f"the last client was served after {max(served_at):.1f}s (bound {bound:.1f}s)"
    assert all(seqs == list(range(1, EVENTS + 1)) for seqs in replayed), "every client replays the whole log"
    # The retry wave fits the capacity: the server hands out one slot per 1/CAPACITY s.  Seen from the
    # clients, each delay starts when its answer arrived, which varies under load: hence the 1.5.
    busiest = max(sum(1 for t in retries_at if start <= t < start + 1) for start in retries_at)
    assert busiest <= 1.5 * CAPACITY, f"{busiest} retries scheduled within one second (capacity {CAPACITY}/s)"
    metrics = await _metrics(stack)
    assert metrics.value("tether_load_shed_total", reason="connect:handshakes") == outcomes["overloaded"]
    _assert_bounded_lines(stack, "connect:handshakes", outcomes["overloaded"])
    assert not stack.session.proc.events("ws_close", reason="overloaded"), "a shed is not one log line each"


async def _init(ws: WsClient, token: str, project_id: str, client_id: str) -> dict[str, Any]:
    """INIT and its answer; a connection shed on arrival is closed before the INIT goes out, and its
    error frame is still there to read (as a browser gets onmessage, then onclose)."""
    init = {"type": "init", "v": 1, "token": token, "project": {"id": project_id}, "client_id": client_id}
    init["resume_from"] = 0
    with contextlib.suppress(ConnectionClosed):
        await ws.send(init)
    return await ws.recv()


def _assert_bounded_lines(stack: Stack, reason: str, sheds: int) -> None:
    """One load_shed line per reason per second at most, and their counts add up to every shed."""
    lines = stack.session.proc.events("load_shed", reason=reason)
    assert lines, "sheds are logged"
    assert sum(line["count"] for line in lines) <= sheds
    seconds = {line["ts"][:19] for line in lines}
    assert len(lines) <= len(seconds) + 1, "at most one line per reason per second"


async def _metrics(stack: Stack) -> Any:
    async with stack.http() as http:
        return await scrape(http)


@pytest.mark.trio
async def test_F25_ingest_over_the_append_limit_is_answered_503_at_once_and_nothing_is_lost(
    stack_factory: StackFactory,
) -> None:
    stack = stack_factory.start(session_env={"TETHER_SHED_APPEND_QUEUE": "2"})
    user = stack.make_user()
    project = await stack.create_project(user.api_key, "ingest storm")
    answers: list[tuple[int, float, dict[str, Any], dict[str, str]]] = []
    accepted: set[str] = set()

    async def publish(http: httpx.AsyncClient, n: int) -> None:
        began = time.perf_counter()
        response = await http.post(
            f"/v1/projects/{project['id']}/events",
            json={"events": [{"event_id": f"i{n}", "kind": "note", "data": {"n": n}}]},
            headers=bearer(stack.ingest_key),
        )
        answers.append((response.status_code, time.perf_counter() - began, response.json(), dict(response.headers)))
        if response.status_code == 200:
            accepted.add(f"i{n}")

    # one plain client, a connection per request (a contract-checking client per request would make the
    # test process itself the bottleneck being timed, and a smaller pool would time the client's own queue)
    limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
    async with (
        httpx.AsyncClient(base_url=stack.session.url, limits=limits, timeout=scaled(10)) as http,
        trio.open_nursery() as nursery,
    ):
        for n in range(300):
            nursery.start_soon(publish, http, n)

    statuses = Counter(status for status, *_ in answers)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[503] > 0, f"the append queue never went over 2: {statuses}"
    for status, seconds, body, headers in answers:
        # Answered, never left to the client's own timeout (how fast is the benchmark's to measure).
        assert seconds < scaled(10.0), f"an answer took {seconds:.2f}s"
        if status == 503:
            assert body["code"] == "overloaded"
            assert int(headers["retry-after"]) >= 1
            assert body["retry_after_ms"] > 0
            assert not stack.session.proc.events("http_error", request_id=body["request_id"]), "logged per second"
    async with stack.http() as http:
        page = await http.get(f"/v1/projects/{project['id']}/events?limit=1000", headers=bearer(user.api_key))
    stored = {e["event_id"] for e in page.json()["events"]}
    assert stored == accepted, "exactly the accepted events are in the log"
    metrics = await _metrics(stack)
    assert metrics.value("tether_load_shed_total", reason="ingest:append_queue") == statuses[503]
    await await_until(
        _async(lambda: sum(line["count"] for line in stack.session.proc.events("load_shed")) == statuses[503]),
        timeout=10,
        what="the bounded load_shed lines to account for every shed",
    )
    _assert_bounded_lines(stack, "ingest:append_queue", statuses[503])


def _async(check: Any) -> Any:
    async def run() -> Any:
        return check()

    return run


@pytest.mark.trio
async def test_F25_a_prompt_over_the_append_limit_is_refused_for_that_request_only(
    stack_factory: StackFactory,
) -> None:
    stack = stack_factory.start(session_env={"TETHER_SHED_APPEND_QUEUE": "0"})  # every append is over
    user = stack.make_user()
    project = await stack.create_project(user.api_key, "prompt shed")
    async with stack.session_ws(user.api_key, project) as (ws, _ready):
        msg_id = new_client_msg_id()
        await ws.send({"type": "prompt", "v": 1, "client_msg_id": msg_id, "text": "hello"})
        refusal = await ws.recv_type("error")
        assert refusal["scope"] == "request"
        assert refusal["client_msg_id"] == msg_id
        assert refusal["code"] == "overloaded"
        assert refusal["retry_after_ms"] > 0
        assert refusal["retryable"] is True
        await ws.send({"type": "ping", "v": 1, "nonce": "still-open"})  # the session goes on
        pong = await ws.recv_type("pong")
        assert pong["nonce"] == "still-open"
    assert not [line for line in stack.session.proc.events("ws_close") if line.get("reason") == "overloaded"]
    metrics = await _metrics(stack)
    assert metrics.value("tether_load_shed_total", reason="prompt:append_queue") == 1
    assert math.isclose(metrics.value("tether_load_shedding", signal="append_queue"), 1.0)
