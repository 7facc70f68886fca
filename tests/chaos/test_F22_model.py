"""F22, model-based: random interleavings of prompts, published batches, disconnects and
resumes (exact, or from an earlier seq) on random replicas, checked against a model of the log.

Hypothesis generates a program of steps; each example runs it against a fresh project on two
replicas.  The model is the list of event ids in seq order.  After every step the client's
view (deduplicated by seq) must equal the model, and every connection must deliver exactly
resume_from+1, +2, ... — no loss, no duplicate within a connection, no reordering.  The
built-in agent is off here so the model is exact (agents are covered by the F15 scenarios).
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.delivery.helpers import log_event_ids
from tests.support.auth import UserCredentials
from tests.support.session import Stack, StackFactory, WsClient

Step = tuple[Any, ...]

STEPS = st.one_of(
    st.tuples(st.just("prompt"), st.booleans()),  # (reuse an earlier client_msg_id?)
    st.tuples(st.just("publish"), st.integers(1, 8), st.booleans()),  # (size, retry an old id too?)
    st.tuples(st.just("disconnect")),
    st.tuples(st.just("reconnect"), st.integers(0, 1), st.integers(0, 4)),  # (replica, how far back)
    st.tuples(st.just("resume_beyond"), st.integers(0, 1), st.integers(1, 5)),  # (replica, how far ahead)
)


@pytest.fixture(scope="module")
def model_stack(module_stack_factory: StackFactory) -> tuple[Stack, UserCredentials]:
    stack = module_stack_factory.start(
        replicas=2,
        session_env={
            "TETHER_AGENT_URL": "none",
            "TETHER_PROMPTS_PER_MINUTE": "60000",
            "TETHER_CONNECTS_PER_IP_PER_MINUTE": "10000000",
        },
    )
    return stack, stack.make_user()


@dataclass
class Run:
    stack: Stack
    user: UserCredentials
    project: dict[str, Any]
    model: list[str] = field(default_factory=list)  # event ids in seq order: the log as it must be
    msg_ids: dict[str, int] = field(default_factory=dict)  # client_msg_id -> seq of its prompt
    view: list[str] = field(default_factory=list)  # the client's deduplicated view, in seq order
    ws: WsClient | None = None
    replica: int = 0
    next_seq: int = 1  # the seq the live connection must deliver next
    resources: contextlib.AsyncExitStack | None = None
    counter: itertools.count[int] = field(default_factory=itertools.count)
    duplicates_on_replay: int = 0

    async def connect(self, replica: int, resume_from: int) -> None:
        await self.disconnect()
        self.resources = contextlib.AsyncExitStack()
        ws, ready = await self.resources.enter_async_context(
            self.stack.session_ws(self.user.api_key, self.project, replica=replica, resume_from=resume_from)
        )
        assert ready["resume_from"] == resume_from, ready
        assert ready["last_seq"] == len(self.model), (ready, len(self.model))
        self.ws, self.replica, self.next_seq = ws, replica, resume_from + 1

    async def disconnect(self) -> None:
        if self.resources is not None:
            await self.resources.aclose()
        self.resources, self.ws = None, None

    def on_event(self, frame: dict[str, Any]) -> None:
        seq = frame["seq"]
        assert seq == self.next_seq, f"connection delivered seq {seq}, expected {self.next_seq}"
        self.next_seq += 1
        assert seq <= len(self.model), f"seq {seq} beyond the model's {len(self.model)}"
        assert frame["event_id"] == self.model[seq - 1], (seq, frame["event_id"], self.model[seq - 1])
        if seq <= len(self.view):
            self.duplicates_on_replay += 1  # asked for by resuming from an earlier seq; dropped
        else:
            assert seq == len(self.view) + 1
            self.view.append(frame["event_id"])

    async def sync(self) -> None:
        """Read until the live connection has delivered the whole model, then compare."""
        if self.ws is None:
            return
        while self.next_seq <= len(self.model):
            frame = await self.ws.recv(timeout=10)
            if frame["type"] == "event":
                self.on_event(frame)
            else:
                assert frame["type"] == "prompt_ack", frame
        self.ws.received.clear()
        self.ws.events.clear()
        assert self.view == self.model

    async def step(self, step: Step) -> None:
        kind = step[0]
        if kind == "prompt" and self.ws is not None:
            reuse = bool(step[1] and self.msg_ids)
            msg_id = next(iter(self.msg_ids)) if reuse else f"m{next(self.counter)}"
            if not reuse:  # its event may be delivered before its ack
                self.model.append(f"prompt-{msg_id}")
                self.msg_ids[msg_id] = len(self.model)
            await self.ws.send({"type": "prompt", "v": 1, "client_msg_id": msg_id, "text": f"prompt {msg_id}"})
            while True:  # events of this and earlier steps may come first
                frame = await self.ws.recv(timeout=10)
                if frame["type"] == "event":
                    self.on_event(frame)
                    continue
                assert frame["type"] == "prompt_ack", frame
                break
            if reuse:
                assert frame["duplicate"] is True
                assert frame["seq"] == self.msg_ids[msg_id]
            else:
                assert frame["duplicate"] is False
                assert frame["seq"] == len(self.model)
        elif kind == "publish":
            _, size, retry_old = step
            fresh = [f"e{next(self.counter)}" for _ in range(size)]
            old = [i for i in self.model if i.startswith("e")][:1] if retry_old else []
            events = [{"event_id": i, "kind": "note", "data": {}} for i in old + fresh]
            body = await self.stack.publish(self.project["id"], events, replica=len(self.model) % 2)
            for result in body["results"][: len(old)]:
                assert result["duplicate"] is True
                assert result["seq"] == self.model.index(result["event_id"]) + 1
            self.model.extend(fresh)
            assert [r["seq"] for r in body["results"][len(old) :]] == list(
                range(len(self.model) - size + 1, len(self.model) + 1)
            )
        elif kind == "disconnect":
            await self.disconnect()
        elif kind == "reconnect":
            _, replica, back = step
            await self.connect(replica, max(0, len(self.view) - back))
        elif kind == "resume_beyond":
            _, replica, ahead = step
            token = await self.stack.token(self.user.api_key)
            async with self.stack.ws(replica) as other:
                error = await other.init(token, {"id": self.project["id"]}, resume_from=len(self.model) + ahead)
                closed = await other.closed()
            assert error["code"] == "resume_unavailable", error
            assert closed.code == 4041
        await self.sync()


@pytest.mark.slow
@pytest.mark.trio
@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(program=st.lists(STEPS, min_size=5, max_size=20))
async def test_F22_model_based_random_interleavings(
    model_stack: tuple[Stack, UserCredentials], program: list[Step]
) -> None:
    stack, user = model_stack
    project = await stack.create_project(user.api_key, "model")
    run = Run(stack, user, project)
    try:
        await run.connect(0, 0)
        for step in program:
            await run.step(step)
        # A final resume on the other replica from the client's last seq: nothing missing.
        await run.connect(1 - run.replica, len(run.view))
        await run.sync()
    finally:
        await run.disconnect()
    assert run.view == run.model
    assert await log_event_ids(stack, project["id"]) == run.model
