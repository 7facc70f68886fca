"""Durable agent jobs: an answer survives the death of the replica that was producing it.

A job row is written in the transaction that stores the prompt.  Each step an agent
takes (publishing a chunk, finishing) runs in one transaction with the job's bookkeeping:
``next_index`` and the heartbeat advance with the chunk, and ``agent_done`` deletes the
job.  A step whose job now belongs to another replica fails and rolls back
(:class:`JobLost`), so two replicas never both publish.  Every replica sweeps for jobs
whose heartbeat is older than the stale bound and claims them with ``FOR UPDATE SKIP
LOCKED`` (exactly one claimant); the claimant continues at ``next_index``.  A job that
keeps being interrupted ends with an ``agent_error`` event instead of looping.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tether_kit.db import Connection, Database
from tether_kit.errors import TetherError

from . import store
from .appender import Appender

Failpoint = Callable[[str], None]
Published = Callable[[str, int], None]  # (source, count of newly stored events) for /metrics
MAX_ATTEMPTS = 3


class JobLost(RuntimeError):
    """This replica no longer owns the job (it was claimed after a stale heartbeat)."""


@dataclass(frozen=True)
class Job:
    project_id: uuid.UUID
    prompt_seq: int
    text: str
    next_index: int
    attempts: int


class AgentJobs:
    def __init__(
        self,
        db: Database,
        appender: Appender,
        owner: str,
        failpoint: Failpoint,
        *,
        stale_s: float,
        published: Published,
    ) -> None:
        self.db = db
        self.appender = appender
        self.published = published
        self.owner = owner
        self.failpoint = failpoint
        self.stale_s = stale_s

    async def publish_prompt(
        self, project_id: uuid.UUID, event: store.NewEvent, text: str, *, with_job: bool
    ) -> tuple[store.Appended, Job | None]:
        """Store a prompt and, when new and an agent is configured, its job — atomically
        (the job row is written in the prompt's own savepoint of the group commit).  A duplicate
        or a conflict (the result says which) stores neither."""
        jobs: list[Job] = []

        async def add_job(conn: Connection, results: list[store.Appended]) -> None:
            (stored,) = results
            if with_job and stored.stored:
                await conn.execute(
                    "INSERT INTO agent_jobs (project_id, prompt_seq, text, owner) VALUES ($1, $2, $3, $4)",
                    project_id,
                    stored.seq,
                    text,
                    self.owner,
                )
                jobs.append(Job(project_id, stored.seq, text, 0, 1))

        # without an agent there is nothing to write with the prompt: the plain (pipelined) path
        (result,) = await self.appender.append(project_id, [event], after=add_job if with_job else None)
        self.published("prompt", 1 if result.stored else 0)
        return result, (jobs[0] if jobs else None)

    async def step(
        self, job: Job, events: Sequence[store.NewEvent], *, next_index: int | None = None, done: bool = False
    ) -> list[store.Appended]:
        """Publish ``events`` and advance (or finish) the job in one transaction.

        An agent that has several chunks ready passes them together: one transaction (one WAL
        flush) for all, with ``next_index`` after the last; a takeover resumes after it.
        """
        batch: store.Batch | None = None
        async with self.db.transaction() as conn:
            if events:
                batch = await store.append_events(conn, job.project_id, events, self.failpoint)
                conflicts = [r.event_id for r in batch.results if r.conflict]
                if conflicts:  # an agent's ids are derived from its job: one stored with other data is a bug
                    raise TetherError(
                        "idempotency_conflict",
                        f"{len(conflicts)} agent event id(s) stored with other data, first {conflicts[0]}",
                    )
            if done:
                status: str = await conn.execute(
                    "DELETE FROM agent_jobs WHERE project_id = $1 AND prompt_seq = $2 AND owner = $3",
                    job.project_id,
                    job.prompt_seq,
                    self.owner,
                )
            else:
                status = await conn.execute(
                    """UPDATE agent_jobs SET next_index = $4, heartbeat_at = now()
                       WHERE project_id = $1 AND prompt_seq = $2 AND owner = $3""",
                    job.project_id,
                    job.prompt_seq,
                    self.owner,
                    next_index if next_index is not None else job.next_index,
                )
            if status.endswith(" 0"):
                raise JobLost(f"job {job.project_id}/{job.prompt_seq} is owned by another replica")
        if batch is None:
            return []
        self.appender.committed(job.project_id, batch.stored)
        self.published("agent", len(batch.stored))
        return batch.results

    async def claim_stale(self, limit: int = 20) -> list[Job]:
        async with self.db.transaction() as conn:
            rows = await conn.fetch(
                """UPDATE agent_jobs j SET owner = $1, heartbeat_at = now(), attempts = j.attempts + 1
                   FROM (SELECT project_id, prompt_seq FROM agent_jobs
                         WHERE heartbeat_at < now() - make_interval(secs => $2)
                         ORDER BY heartbeat_at LIMIT $3 FOR UPDATE SKIP LOCKED) stale
                   WHERE j.project_id = stale.project_id AND j.prompt_seq = stale.prompt_seq
                   RETURNING j.project_id, j.prompt_seq, j.text, j.next_index, j.attempts""",
                self.owner,
                self.stale_s,
                limit,
            )
        return [Job(r["project_id"], r["prompt_seq"], r["text"], r["next_index"], r["attempts"]) for r in rows]
