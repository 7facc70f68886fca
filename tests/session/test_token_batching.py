"""F05 under a connect storm: the session replica coalesces the token consumes of concurrent
INITs into ``POST /v1/tokens/consume-batch`` requests, and every connection still gets its
own answer: ready for a fresh token, ``token_unknown`` / ``token_used`` for the others, each
logged with the request id of the batch that answered it."""

from __future__ import annotations

import json
import secrets as pysecrets
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.support.metrics import scrape
from tests.support.session import Stack, StackFactory
from tests.support.waiting import await_until, wait_until

FRESH = 40
TWICE = 5  # tokens sent by two sockets each: one ready, one token_used
UNKNOWN = 10


@pytest.fixture
def recorded_stack(stack_factory: StackFactory, tmp_path: Path) -> tuple[Stack, Path]:
    record = tmp_path / "auth-calls.jsonl"
    return stack_factory.start(session_env={"TETHER_RECORD_AUTH_CALLS": str(record)}), record


async def _first_frame(stack: Stack, token: str, project_id: str, go: trio.Event) -> dict[str, Any]:
    async with stack.ws() as ws:
        await go.wait()
        return await ws.init(token, {"id": project_id})


@pytest.mark.trio
async def test_F05_concurrent_connects_are_answered_each_by_fewer_batched_consumes(
    recorded_stack: tuple[Stack, Path],
) -> None:
    stack, record = recorded_stack
    user = stack.make_user()
    project = await stack.create_project(user.api_key, "storm")
    fresh = [await stack.token(user.api_key) for _ in range(FRESH + TWICE)]
    unknown = ["tt_" + pysecrets.token_urlsafe(32) for _ in range(UNKNOWN)]
    tokens = fresh + fresh[FRESH:] + unknown
    async with stack.auth.client() as auth:
        before = await scrape(auth)
        frames: list[tuple[str, dict[str, Any]]] = []
        go = trio.Event()

        async def connect(token: str) -> None:
            frames.append((token, await _first_frame(stack, token, project["id"], go)))

        async def all_open() -> bool:
            return len(stack.session.proc.events("ws_open")) >= len(tokens)

        async with trio.open_nursery() as nursery:
            for token in tokens:
                nursery.start_soon(connect, token)
            # every socket is open and waiting (the replica counts it) before the INITs go
            await await_until(all_open, timeout=30, what="every socket open on the replica")
            go.set()
        after = await scrape(auth)

    outcomes = Counter(frame["type"] if frame["type"] == "ready" else frame["code"] for _, frame in frames)
    assert outcomes == {"ready": FRESH + TWICE, "token_used": TWICE, "token_unknown": UNKNOWN}, outcomes
    assert {token for token, frame in frames if frame["type"] == "ready"} == set(fresh)
    assert all(frame["code"] == "token_unknown" for token, frame in frames if token in unknown)

    # the auth-token service answered every token, in fewer requests than there were connects
    batches = after.delta(before, "tether_token_consume_batches_total")
    assert after.delta(before, "tether_token_consume_total", outcome="ok") == FRESH + TWICE
    assert after.delta(before, "tether_token_consume_total", outcome="token_unknown") == UNKNOWN
    assert after.delta(before, "tether_token_consume_total", outcome="token_used") == TWICE
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    consumes = [c for c in calls if c["path"] == "/v1/tokens/consume-batch"]
    assert [c["path"] for c in calls if c not in consumes] == ["/v1/me"], "only the project creation's /v1/me"
    sizes = [len(c["request_body"]["tokens"]) for c in consumes]
    assert sum(sizes) == len(tokens)
    assert all(c["status"] == 200 for c in consumes)
    assert len(consumes) == batches < len(tokens), f"{len(tokens)} connects took {batches} requests: {sizes}"
    assert max(sizes) <= 100

    # each refused connection's close line names the batch that answered it
    batch_ids = {c["response_headers"]["x-request-id"] for c in consumes}
    closes = wait_until(
        lambda: [e for e in stack.session.proc.events("ws_close") if e["reason"] in ("token_used", "token_unknown")],
        timeout=10,
        what="the close lines of the refused connections",
    )
    assert len(closes) == TWICE + UNKNOWN
    assert {line["auth_request_id"] for line in closes} <= batch_ids
