"""The write side of the event log: ingest, prompts and the agents that answer them.

Every append goes through the group-committing :class:`~tether_session.appender.Appender`
(concurrent appends share one transaction, one savepoint per project); a request that arms
a failpoint (test mode) gets a transaction of its own, so the failure it asks for cannot
fail other requests' events.  A new prompt is stored with its durable agent job in one
savepoint and the agent is started on it; the sweep takes over jobs whose replica stopped
heart-beating (F15).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

from prometheus_client import Counter

from tether_kit.db import Database
from tether_kit.logs import JsonLogger

from . import store
from .agent import AgentRunner, BuiltinAgent, WebhookAgent
from .appender import Appender
from .jobs import MAX_ATTEMPTS, AgentJobs, Job

Agent = BuiltinAgent | WebhookAgent
Failpoint = Callable[[str], None]


class Publisher:
    def __init__(
        self,
        db: Database,
        log: JsonLogger,
        appender: Appender,
        jobs: AgentJobs,
        agents: AgentRunner,
        agent: Agent | None,
        published: Counter,
        failpoint: Failpoint,
    ) -> None:
        self.db = db
        self.log = log
        self.appender = appender
        self.jobs = jobs
        self.agents = agents
        self.agent = agent
        self.published = published
        self.failpoint = failpoint

    async def publish(
        self, project_id: uuid.UUID, events: Sequence[store.NewEvent], *, source: str, own_transaction: bool = False
    ) -> list[store.Appended]:
        """Append ``events`` (idempotent by event id) and hand them to this replica's subscribers."""
        if own_transaction:
            async with self.db.transaction() as conn:
                batch = await store.append_events(conn, project_id, events, self.failpoint)
            self.appender.committed(project_id, batch.stored)
            results = batch.results
        else:
            results = await self.appender.append(project_id, events)
        self.published.labels(source).inc(sum(1 for r in results if r.stored))
        return results

    async def publish_prompt(self, project_id: uuid.UUID, event: store.NewEvent, text: str) -> store.Appended:
        """Store a prompt and its agent job atomically, then start the agent on it."""
        result, job = await self.jobs.publish_prompt(project_id, event, text, with_job=self.agent is not None)
        if job is not None:
            self.start_agent(job)
        return result

    def start_agent(self, job: Job) -> None:
        if self.agent is not None:
            self.agents.start(f"agent-{job.project_id}-{job.prompt_seq}", self.agent.answer(job, self.jobs))

    async def sweep(self) -> None:
        """Claim agent jobs whose replica stopped heart-beating and finish them here (F15)."""
        for job in await self.jobs.claim_stale():
            self.log.warning(
                "agent_job_claimed",
                project_id=str(job.project_id),
                prompt_seq=job.prompt_seq,
                next_index=job.next_index,
                attempts=job.attempts,
            )
            if job.attempts > MAX_ATTEMPTS:
                self.agents.start(f"agent-error-{job.prompt_seq}", self._give_up(job))
            else:
                self.start_agent(job)

    async def _give_up(self, job: Job) -> None:
        """A job interrupted too often ends with an agent_error event, not another retry."""
        reason = f"the answer was interrupted {job.attempts - 1} times"
        error = store.NewEvent(
            f"agent-{job.prompt_seq}-error", "agent_error", {"prompt_seq": job.prompt_seq, "reason": reason}
        )
        await self.jobs.step(job, [error], done=True)

    async def prune(self, keep: int) -> None:
        """Retention: keep the last ``keep`` events of every project's log."""
        async with self.db.transaction() as conn:
            removed = await store.prune(conn, keep)
        if removed:
            self.log.info("events_pruned", count=removed, keep=keep)

    async def aclose(self, timeout_s: float) -> None:
        await self.agents.shutdown(timeout_s)
        await self.appender.close()
        if isinstance(self.agent, WebhookAgent):
            await self.agent.aclose()
