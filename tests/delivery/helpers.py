"""Helpers shared by the delivery and chaos suites (black box: HTTP, WebSocket, SQL, /proc).

* :func:`log_seqs` / :func:`log_event_ids` read a project's event log straight from
  Postgres: the truth every client's view is compared with.
* :class:`Publisher` appends events through the ingest API, retrying a batch with the
  *same* event ids until it is acknowledged (so a retry can only ever be a duplicate).
* :class:`TokenSource` issues connection tokens on one reused, contract-checked client
  and retries while the auth-token service answers 503 (Postgres down).
* :func:`replica_metrics` scrapes a replica's ``/metrics``; :func:`rss_mb` reads VmRSS.
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from typing import Any

import httpx
import trio

from tests.support.auth import bearer
from tests.support.metrics import Metrics, scrape
from tests.support.pg import aquery
from tests.support.secrets import remember
from tests.support.session import Stack
from tests.support.waiting import apoll_pause, scaled

RETRY_PAUSE_S = 0.05  # pause between attempts against a dependency that is down


async def log_seqs(stack: Stack, project_id: str) -> list[int]:
    """Every seq in the project's log, in order (straight from the database)."""
    rows = await aquery(
        stack.dsn, "SELECT seq FROM session.events WHERE project_id = $1 ORDER BY seq", uuid.UUID(project_id)
    )
    return [int(r["seq"]) for r in rows]


async def log_event_ids(stack: Stack, project_id: str) -> list[str]:
    """The event ids of the project's log in seq order."""
    rows = await aquery(
        stack.dsn, "SELECT event_id FROM session.events WHERE project_id = $1 ORDER BY seq", uuid.UUID(project_id)
    )
    return [str(r["event_id"]) for r in rows]


def note_events(prefix: str, start: int, count: int, *, pad: int = 0) -> list[dict[str, Any]]:
    """``count`` ingest events with ids ``<prefix>-<n>`` for n in [start, start+count)."""
    filler = "x" * pad
    return [
        {"event_id": f"{prefix}-{n}", "kind": "note", "data": {"n": n, **({"pad": filler} if pad else {})}}
        for n in range(start, start + count)
    ]


def describe_gaps(seqs: list[int], last: int) -> str:
    """A short account of how ``seqs`` differs from 1..last (for assertion messages)."""
    seen: dict[int, int] = {}
    for s in seqs:
        seen[s] = seen.get(s, 0) + 1
    missing = [s for s in range(1, last + 1) if s not in seen]
    dups = sorted(s for s, c in seen.items() if c > 1)
    disorder = sum(1 for a, b in itertools.pairwise(seqs) if b <= a)
    return f"missing={missing[:20]} ({len(missing)}), duplicated={dups[:20]} ({len(dups)}), out_of_order={disorder}"


async def replica_metrics(stack: Stack, replica: int) -> Metrics:
    async with stack.http(replica) as http:
        return await scrape(http)


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (``VmRSS`` from /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class TokenSource:
    """Issues connection tokens on one reused client; retries 503s (the auth store is down).

    Every response still goes through the contract check (``async_client``).
    """

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self._client: httpx.AsyncClient | None = None
        self.issued = 0
        self.unavailable = 0

    async def __aenter__(self) -> TokenSource:
        self._client = self.stack.auth.client()
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._client is not None
        await self._client.__aexit__(None, None, None)

    async def token(self, api_key: str, *, timeout: float = 30.0, project_id: str | None = None) -> str:
        assert self._client is not None, "use TokenSource as an async context manager"
        body: dict[str, Any] = {} if project_id is None else {"project_id": project_id}
        with trio.fail_after(scaled(timeout)):
            while True:
                try:
                    response = await self._client.post("/v1/tokens", json=body, headers=bearer(api_key))
                except httpx.TransportError:
                    self.unavailable += 1
                    await apoll_pause(RETRY_PAUSE_S)
                    continue
                if response.status_code == 503:
                    self.unavailable += 1
                    await apoll_pause(RETRY_PAUSE_S)
                    continue
                assert response.status_code == 201, response.text
                token: str = response.json()["token"]
                remember(token)
                self.issued += 1
                return token


class Publisher:
    """Publishes events to one project through the ingest API of the given replicas.

    A batch is retried (same event ids, next replica) on 503 or a transport error until it
    is acknowledged, so :attr:`sent` counts every distinct event the log must hold.  Use
    it as an async context manager: it keeps one contract-checked client per replica.
    """

    def __init__(self, stack: Stack, project_id: str, prefix: str, replicas: list[int] | None = None) -> None:
        self.stack = stack
        self.project_id = project_id
        self.prefix = prefix
        self.replicas = replicas or [0]
        self.retries = 0
        self.acked: dict[str, int] = {}  # event id -> seq
        self._clients: dict[int, httpx.AsyncClient] = {}
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    @property
    def sent(self) -> int:
        """Distinct events acknowledged (stored by this publisher, possibly on an earlier attempt)."""
        return len(self.acked)

    async def _client(self, replica: int) -> httpx.AsyncClient:
        if replica not in self._clients:
            self._clients[replica] = await self._stack.enter_async_context(self.stack.http(replica))
        return self._clients[replica]

    async def publish(self, events: list[dict[str, Any]], *, timeout: float = 60.0) -> dict[str, Any]:
        attempt = 0
        with trio.fail_after(scaled(timeout)):
            while True:
                replica = self.replicas[(len(self.acked) + attempt) % len(self.replicas)]
                attempt += 1
                http = await self._client(replica)
                try:
                    response = await http.post(
                        f"/v1/projects/{self.project_id}/events",
                        json={"events": events},
                        headers=bearer(self.stack.ingest_key),
                    )
                except httpx.TransportError:
                    self.retries += 1
                    await apoll_pause(RETRY_PAUSE_S)
                    continue
                if response.status_code == 503:
                    self.retries += 1
                    await apoll_pause(RETRY_PAUSE_S)
                    continue
                assert response.status_code == 200, response.text
                body: dict[str, Any] = response.json()
                self.acked.update((r["event_id"], r["seq"]) for r in body["results"])
                return body
