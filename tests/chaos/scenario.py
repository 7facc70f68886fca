"""A chaos scenario: many resilient clients streaming agent answers while the test breaks
something, then a verdict against the log itself.

:class:`Scenario` creates the projects, starts two :class:`~tests.chaos.client.ResilientClient`
per project (one starting on each replica), has every client send prompts (the built-in
agent streams ``TETHER_AGENT_CHUNKS`` chunks per answer) while a publisher appends through
the ingest API, runs the test's ``disrupt`` once a share of the stream has been delivered,
then waits for every client to reach its project's last seq and compares:

* **lost** — seqs in the project's log that a client never received;
* **duplicated** — seqs a client received more than once (``resume_from`` is exact, so a
  correct server never resends one);
* **out of order** — a connection's events not running resume_from+1, +2, ...

The figures are printed (``-s`` shows them) and returned for the test's own assertions.
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from tests.delivery.helpers import Publisher, TokenSource, log_seqs, note_events, replica_metrics
from tests.support.pg import aquery
from tests.support.session import Stack
from tests.support.waiting import await_until, scaled

from .client import ResilientClient, dump

CHAOS_ENV = {
    "TETHER_AGENT_CHUNKS": "20",
    "TETHER_AGENT_DELAY_MS": "15",
    "TETHER_CONNECTS_PER_IP_PER_MINUTE": "10000000",
    "TETHER_PROMPTS_PER_MINUTE": "6000",
    "TETHER_DRAIN_WINDOW_MS": "1000",
    "TETHER_AGENT_STALE_S": "1",  # an answer whose replica died is taken over after 1 s
}


@dataclass
class Figures:
    scenario: str
    sent: int  # events in the projects' logs (prompts, agent chunks, ingest)
    expected: int  # deliveries owed: each client x its project's log
    received: int  # distinct seqs the clients hold
    lost: int
    duplicated: int
    out_of_order: int
    reconnects: int
    closes: dict[str, int]
    prompts: int
    answers_unfinished: int
    answers_errored: int

    def line(self) -> str:
        return (
            f"{self.scenario}: sent={self.sent} expected_deliveries={self.expected} received={self.received} "
            f"lost={self.lost} duplicated={self.duplicated} out_of_order={self.out_of_order} "
            f"reconnects={self.reconnects} prompts={self.prompts} answers_unfinished={self.answers_unfinished} "
            f"answers_errored={self.answers_errored} "
            f"closes={self.closes}"
        )


class Scenario:
    def __init__(
        self,
        stack: Stack,
        name: str,
        *,
        projects: int = 25,
        prompts_per_client: int = 3,
        alive: Callable[[int], bool] = lambda _r: True,
    ) -> None:
        self.stack = stack
        self.name = name
        self.project_count = projects
        self.prompts_per_client = prompts_per_client
        self.alive = alive
        self.clients: list[ResilientClient] = []
        self.projects: list[dict[str, Any]] = []
        self.answers: dict[str, int] = {}

    def delivered(self) -> int:
        return sum(len(c.seqs) for c in self.clients)

    async def run(self, disrupt: Callable[[], Awaitable[None]], *, after_deliveries: int) -> Figures:
        stack = self.stack
        user = stack.make_user()
        self.projects = [
            await stack.create_project(user.api_key, f"{self.name} {i}") for i in range(self.project_count)
        ]
        async with TokenSource(stack) as tokens, trio.open_nursery() as nursery:
            for i, project in enumerate(self.projects):
                for start in (0, 1):
                    client = ResilientClient(
                        stack,
                        tokens,
                        user.api_key,
                        project["id"],
                        f"p{i}c{start}",
                        [start, 1 - start],
                        alive=self.alive,
                    )
                    self.clients.append(client)
                    nursery.start_soon(client.run)

            async def all_connected() -> bool:
                return all(c.current is not None for c in self.clients)

            await await_until(all_connected, timeout=30, what="every client connected")
            async with trio.open_nursery() as load:
                for client in self.clients:
                    load.start_soon(self._drive, client)
                load.start_soon(self._ingest)

                async def far_enough() -> bool:
                    return self.delivered() >= after_deliveries

                await await_until(far_enough, timeout=60, what=f"{after_deliveries} deliveries before the disruption")
                await disrupt()
            self.answers = await self._answers_ended()
            await self._agents_idle()
            lasts = {p["id"]: await log_seqs(stack, p["id"]) for p in self.projects}
            for client in self.clients:
                log = lasts[client.project_id]
                target = log[-1] if log else 0
                await client.wait_for(
                    lambda c=client, t=target: c.last_seq >= t,
                    timeout=scaled(60),
                    what=f"seq {target} (holds {client.last_seq}); all: {dump(self.clients)}",
                )
            for client in self.clients:
                client.stop()
        return self._figures(lasts)

    async def _drive(self, client: ResilientClient) -> None:
        for n in range(self.prompts_per_client):
            ack = await client.prompt(f"{client.name}-m{n}", f"{client.name} prompt {n}", timeout=scaled(90))
            closes = len(client.closes)
            # Pace the prompts: the next one once this answer ended, or the client lost its
            # socket meanwhile (the answer is then finished elsewhere; checked at the end).
            with trio.move_on_after(scaled(15)):
                await client.wait_for(
                    lambda c=client, s=ack["seq"], k=closes: s in c.done_prompts or len(c.closes) > k,
                    timeout=scaled(15),
                    what="the answer",
                )

    async def _ingest(self) -> None:
        """Agents elsewhere publish too: 10 batches of 5 per project, spread over both replicas."""
        async with Publisher(self.stack, self.projects[0]["id"], "ing", replicas=[0, 1]) as publisher:
            for round_ in range(10):
                for i, project in enumerate(self.projects):
                    publisher.project_id = project["id"]
                    await publisher.publish(note_events(f"ing-{i}", round_ * 5 + 1, 5))

    async def _answers_ended(self) -> dict[str, int]:
        """Wait until every stored prompt's answer ended (agent_done or agent_error) in the log."""
        ids = [uuid.UUID(p["id"]) for p in self.projects]
        counts: dict[str, int] = {}

        async def ended() -> bool:
            (row,) = await aquery(
                self.stack.dsn,
                """SELECT count(*) FILTER (WHERE kind = 'prompt') AS prompts,
                          count(*) FILTER (WHERE kind IN ('agent_done', 'agent_error')) AS ended,
                          count(*) FILTER (WHERE kind = 'agent_error') AS errored
                   FROM session.events WHERE project_id = ANY($1::uuid[])""",
                ids,
            )
            counts.update(row)
            return bool(row["prompts"] == row["ended"] == len(self.clients) * self.prompts_per_client)

        try:
            await await_until(ended, timeout=60, what="every prompt's answer to end in the log")
        except AssertionError:
            print(f"\n{self.name}: answers did not all end: {counts}")
        return counts

    async def _agents_idle(self) -> None:
        live = [r for r in range(len(self.stack.replicas)) if self.alive(r)]

        async def idle() -> bool:
            for replica in live:
                try:
                    metrics = await replica_metrics(self.stack, replica)
                except (AssertionError, httpx.TransportError):
                    return False  # not answering /metrics yet
                if metrics.value("tether_agent_tasks") != 0:
                    return False
            return True

        await await_until(idle, timeout=60, what="no agent answer in progress")

    def _figures(self, logs: dict[str, list[int]]) -> Figures:
        expected = received = lost = duplicated = disorder = 0
        closes: collections.Counter[str] = collections.Counter()
        for client in self.clients:
            log = logs[client.project_id]
            assert log == list(range(1, len(log) + 1)), f"{client.project_id}: the log itself has a gap"
            held = set(client.seqs)
            expected += len(log)
            received += len(held & set(log))
            lost += len(set(log) - held)
            duplicated += len(client.raw) - len(set(client.raw))
            disorder += len(client.gaps) + sum(1 for a, b in zip(client.seqs, client.seqs[1:], strict=False) if b <= a)
            closes.update(str(c.code) for c in client.closes)
        figures = Figures(
            scenario=self.name,
            sent=sum(len(log) for log in logs.values()),
            expected=expected,
            received=received,
            lost=lost,
            duplicated=duplicated,
            out_of_order=disorder,
            reconnects=sum(len(c.connections) - 1 for c in self.clients),
            closes=dict(closes),
            prompts=len(self.clients) * self.prompts_per_client,
            answers_unfinished=self.answers.get("prompts", 0) - self.answers.get("ended", 0),
            answers_errored=self.answers.get("errored", 0),
        )
        print(f"\nF15 figures — {figures.line()}")
        return figures

    def assert_zero_lost(self, figures: Figures) -> None:
        detail = dump(self.clients)
        assert figures.lost == 0, f"{figures.line()}\n{detail}"
        assert figures.duplicated == 0, f"{figures.line()}\n{detail}"
        assert figures.out_of_order == 0, f"{figures.line()}\n{detail}"
        assert figures.received == figures.expected
        assert figures.prompts == self.answers.get("prompts"), f"prompts stored: {self.answers}"
        assert figures.answers_unfinished == 0, f"answers never finished: {figures.line()}"
        for client in self.clients:
            assert client.seqs == list(range(1, len(client.seqs) + 1)), client.name
