"""Agents answer prompts by publishing events to the log through the same append path
as the HTTP ingest endpoint (they never write to sockets).

* :class:`BuiltinAgent`: a deterministic streaming echo (``TETHER_AGENT_URL=builtin``):
  the answer "You said: <text>" split into ``agent_chunks`` ``agent_chunk`` events,
  ``agent_delay_ms`` apart, then one ``agent_done``.  Event ids are derived from the
  prompt's seq, so a retried publish is stored once.
* Both run as durable jobs (:mod:`tether_session.jobs`): chunks are published in the
  same transaction that advances the job (the chunks ready together in one), so another
  replica can finish an answer whose replica died, from the next chunk not committed.
* :class:`WebhookAgent`: POSTs each prompt to an agent running elsewhere (a serverless
  function) with the URL of the ingest endpoint to call back; if the agent cannot be
  reached after retries, an ``agent_error`` event says so in the log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import httpx

from tether_kit.logs import JsonLogger
from tether_kit.tasks import detached

from .jobs import AgentJobs, Job, JobLost
from .store import NewEvent


def split_answer(text: str, chunks: int) -> list[str]:
    """``"You said: <text>"`` in ``chunks`` contiguous parts (sizes differ by at most one)."""
    answer = f"You said: {text}"
    count = max(1, chunks)
    size, extra = divmod(len(answer), count)
    parts, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        parts.append(answer[start:end])
        start = end
    return parts


class AgentRunner:
    """Owns the agents' tasks: started per prompt, awaited or cancelled at shutdown."""

    def __init__(self, log: JsonLogger) -> None:
        self.log = log
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self, name: str, work: Awaitable[None]) -> None:
        async def guarded() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except JobLost as exc:  # another replica took the job over: it finishes the answer
                self.log.info("agent_job_lost", task=name, reason=str(exc))
            except Exception as exc:  # logged; the agent's failure is also visible in the log as agent_error
                self.log.exception("agent_failed", exc, task=name)

        task = detached(guarded(), name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def shutdown(self, timeout_s: float) -> None:
        if self.tasks:
            _done, pending = await asyncio.wait(set(self.tasks), timeout=timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)


class BuiltinAgent:
    """The streaming echo.  Chunks are produced by one task and committed by another: whatever
    is ready when a commit ends goes into the next one (one transaction, one WAL flush), so an
    agent that produces faster than the disk flushes is not held to one chunk per flush, and
    one that produces slower still has each chunk committed as soon as it exists."""

    MAX_CHUNKS_PER_STEP = 500  # bounds a step's transaction (and the first frames' wait behind it)

    def __init__(self, *, chunks: int, delay_ms: int) -> None:
        self.chunks = chunks
        self.delay_s = delay_ms / 1000

    async def answer(self, job: Job, jobs: AgentJobs) -> None:
        parts = split_answer(job.text, self.chunks)
        seq = job.prompt_seq
        ready: list[NewEvent] = []
        produced = asyncio.Event()

        async def produce() -> None:
            for index in range(job.next_index, len(parts)):
                # a real model yields between tokens; so does this one, also without a delay
                await asyncio.sleep(self.delay_s)
                ready.append(
                    NewEvent(
                        f"agent-{seq}-{index}", "agent_chunk", {"text": parts[index], "index": index, "prompt_seq": seq}
                    )
                )
                produced.set()

        producer = asyncio.create_task(produce(), name=f"agent-produce-{job.project_id}-{seq}")
        try:
            next_index = job.next_index
            while next_index < len(parts):
                if not ready:
                    produced.clear()
                    await _either(produced, producer)
                    if not ready:  # the producer ended without its chunks: raise its error
                        producer.result()
                        raise RuntimeError("the agent's producer ended early")
                step = ready[: self.MAX_CHUNKS_PER_STEP]
                del ready[: len(step)]
                next_index += len(step)
                await jobs.step(job, step, next_index=next_index)
        finally:
            producer.cancel()
            await asyncio.wait({producer})  # its error, if any, was raised above (producer.result())
        done = NewEvent(f"agent-{seq}-done", "agent_done", {"prompt_seq": seq, "chunks": len(parts)})
        await jobs.step(job, [done], done=True)


async def _either(produced: asyncio.Event, producer: asyncio.Task[None]) -> None:
    """Wait for the next chunk, or for the producer to end (a failure must not leave us waiting)."""
    waiter = asyncio.ensure_future(produced.wait())
    try:
        await asyncio.wait({waiter, producer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


class WebhookAgent:
    def __init__(self, log: JsonLogger, *, url: str, key: str, public_url: str, timeout_s: float) -> None:
        self.log = log
        self.url = url
        self.key = key
        self.public_url = public_url
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=min(2.0, timeout_s)))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def answer(self, job: Job, jobs: AgentJobs) -> None:
        """Hand the prompt to the external agent; it publishes through the ingest endpoint.

        The job ends when the agent accepted the prompt (2xx), or with an ``agent_error``
        event after three failed attempts.
        """
        body: dict[str, Any] = {
            "project_id": str(job.project_id),
            "prompt_seq": job.prompt_seq,
            "text": job.text,
            "callback_url": f"{self.public_url}/v1/projects/{job.project_id}/events",
        }
        reason = ""
        for attempt in range(3):
            await jobs.step(job, [])  # heartbeat: this replica is still working on it
            try:
                response = await self.http.post(self.url, json=body, headers={"Authorization": f"Bearer {self.key}"})
            except httpx.HTTPError as exc:
                reason = f"{type(exc).__name__}"
            else:
                if response.status_code < 300:
                    await jobs.step(job, [], done=True)
                    return
                reason = f"agent answered {response.status_code}"
            self.log.warning("agent_webhook_failed", attempt=attempt + 1, reason=reason, project_id=str(job.project_id))
            await asyncio.sleep(0.2 * 2**attempt)
        error = NewEvent(
            f"agent-{job.prompt_seq}-error", "agent_error", {"prompt_seq": job.prompt_seq, "reason": reason}
        )
        await jobs.step(job, [error], done=True)
