"""Token issue under overload (issue 19): answered at once, counted, logged at a bounded rate.

Concurrent ``POST /v1/tokens`` on a replica are issued in batches (one statement for many
requests); a request beyond the replica's bound on waiting requests is refused at once with
503 ``overloaded`` and ``Retry-After`` (F06, F25), never left to wait; the per-user cap is
exact across replicas under concurrent batches (F25); sheds are counted in ``/metrics`` by
reason and logged as one ``load_shed`` line per reason per second with a count instead of
one ``http_error`` line each (F41).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import threading
import time
from typing import Any

import asyncpg
import httpx
import pytest
import trio

from tests.support.auth import AuthService, AuthServiceFactory, UserCredentials, bearer
from tests.support.logs import assert_one_error_line
from tests.support.metrics import Metrics, scrape
from tests.support.pg import aquery
from tests.support.waiting import await_until, scaled

MAX_PENDING = 8
STORM_WORKERS = 4 * MAX_PENDING  # requests per wave: 4x what the replica lets wait
ANSWER_BOUND_S = 1.0


class Answer:
    def __init__(self, response: httpx.Response, elapsed: float) -> None:
        self.status = response.status_code
        self.elapsed = elapsed
        self.request_id = response.headers["X-Request-ID"]
        self.retry_after = response.headers.get("Retry-After")
        self.body: dict[str, Any] = response.json()


async def _issue(client: httpx.AsyncClient, user: UserCredentials) -> Answer:
    started = time.monotonic()
    response = await client.post("/v1/tokens", json={}, headers=bearer(user.api_key))
    return Answer(response, time.monotonic() - started)


class UserRowLock:
    """Holds ``FOR NO KEY UPDATE`` on user rows (as a concurrent issue batch would) from a thread
    of its own (asyncpg needs asyncio; the test runs on trio) until :meth:`release`."""

    def __init__(self, dsn: str, user_ids: list[str]) -> None:
        self.dsn = dsn
        self.user_ids = user_ids
        self.locked = threading.Event()
        self.released = threading.Event()

    async def _hold(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            async with conn.transaction():
                await conn.execute(
                    "SELECT 1 FROM auth.users WHERE id = ANY($1::uuid[]) FOR NO KEY UPDATE", self.user_ids
                )
                self.locked.set()
                await asyncio.get_running_loop().run_in_executor(None, self.released.wait, scaled(30))
        finally:
            await conn.close()

    def run(self) -> None:
        asyncio.run(self._hold())

    def release(self) -> None:
        self.released.set()


async def _wave(service: AuthService, client: httpx.AsyncClient, users: list[UserCredentials]) -> list[Answer]:
    """STORM_WORKERS requests at once while the users' rows are locked (the database is slow):
    the replica lets MAX_PENDING wait and must refuse the rest at once; once they are answered
    the lock goes and the waiting ones are issued."""
    answers: list[Answer] = []
    lock = UserRowLock(service.dsn, [u.user_id for u in users])

    async def one(index: int) -> None:
        answers.append(await _issue(client, users[index % len(users)]))

    async def enough() -> bool:
        return len(answers) >= STORM_WORKERS - MAX_PENDING

    async with trio.open_nursery() as holder:
        holder.start_soon(trio.to_thread.run_sync, lock.run)
        try:
            await await_until(_async(lock.locked.is_set), timeout=10, what="the user rows locked")
            async with trio.open_nursery() as nursery:
                for index in range(STORM_WORKERS):
                    nursery.start_soon(one, index)
                try:
                    await await_until(enough, timeout=ANSWER_BOUND_S, what="the requests over capacity answered")
                finally:
                    lock.release()
        finally:
            lock.release()
    return answers


async def _storm(service: AuthService, users: list[UserCredentials], waves: int = 3) -> list[Answer]:
    answers: list[Answer] = []
    limits = httpx.Limits(max_connections=STORM_WORKERS, max_keepalive_connections=STORM_WORKERS)
    async with service.client(limits=limits) as client:
        # open every connection first, so the storm is requests, not TCP handshakes
        async with trio.open_nursery() as nursery:
            for _ in range(STORM_WORKERS):
                nursery.start_soon(client.get, "/healthz")
        for _ in range(waves):
            answers += await _wave(service, client, users)
    return answers


def _check_answers(answers: list[Answer]) -> tuple[list[Answer], list[Answer]]:
    """Every answer fast and either a token or a refusal with Retry-After; (issued, shed)."""
    slow = [a.elapsed for a in answers if a.elapsed > scaled(ANSWER_BOUND_S)]
    assert not slow, f"{len(slow)} of {len(answers)} answers took over {ANSWER_BOUND_S} s: {sorted(slow)[-5:]}"
    issued = [a for a in answers if a.status == 201]
    shed = [a for a in answers if a.status == 503]
    assert len(issued) + len(shed) == len(answers), {a.status for a in answers}
    for answer in shed:
        assert answer.body["code"] == "overloaded", answer.body
        assert answer.body["reason"] == "issue_pending", answer.body
        assert answer.body["request_id"] == answer.request_id
        assert answer.retry_after is not None
        assert 1 <= int(answer.retry_after) <= 3, answer.retry_after
    assert len({a.body["token"] for a in issued}) == len(issued)
    return issued, shed


def _ts(line: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(line["ts"])


@pytest.mark.trio
async def test_F06_F25_issue_storm_over_capacity_is_answered_at_once(auth_factory: AuthServiceFactory) -> None:
    """4x the replica's bound of waiting issue requests, for 2 s: every request is answered
    within 1 s, with a token or 503 overloaded + Retry-After; some are refused (the storm is
    over capacity) and many are issued (the replica keeps serving at capacity)."""
    service = auth_factory.start(
        env={"TETHER_TOKEN_ISSUE_MAX_PENDING": str(MAX_PENDING), "TETHER_TOKEN_ISSUE_PER_MINUTE": "100000"}
    )
    users = [service.make_user() for _ in range(4)]
    answers = await _storm(service, users)
    issued, shed = _check_answers(answers)
    assert shed, f"no request was refused in a storm of {len(answers)} at {STORM_WORKERS // MAX_PENDING}x capacity"
    assert len(issued) >= MAX_PENDING, f"only {len(issued)} tokens issued during the storm"
    # the tokens are real: the database has each, for its user
    rows = await aquery(service.dsn, "SELECT count(*) AS n FROM auth.connection_tokens")
    assert rows[0]["n"] == len(issued)


@pytest.mark.trio
async def test_F41_sheds_are_counted_and_logged_once_per_reason_per_second(auth_factory: AuthServiceFactory) -> None:
    """Every shed is in ``tether_load_shed_total{reason}`` (and the errors by code); the log has
    no ``http_error`` line per shed but one ``load_shed`` line per reason per second whose
    counts add up to the sheds and whose sampled request ids are shed requests."""
    service = auth_factory.start(
        env={"TETHER_TOKEN_ISSUE_MAX_PENDING": str(MAX_PENDING), "TETHER_TOKEN_ISSUE_PER_MINUTE": "100000"}
    )
    users = [service.make_user() for _ in range(4)]
    async with service.client() as client:
        before = await scrape(client)
    answers = await _storm(service, users)
    issued, shed = _check_answers(answers)
    assert shed, "the storm was not over capacity: nothing to count"
    async with service.client() as client:
        after: Metrics = await scrape(client)
    assert after.delta(before, "tether_load_shed_total", reason="issue_pending") == len(shed)
    assert after.delta(before, "tether_http_errors_total", code="overloaded") == len(shed)
    assert after.delta(before, "tether_tokens_issued_total") == len(issued)
    assert after.delta(before, "tether_token_issue_batches_total") < len(issued)  # coalesced

    def logged() -> list[dict[str, Any]]:
        lines = service.proc.events("load_shed", reason="issue_pending")
        return lines if sum(line["count"] for line in lines) >= len(shed) else []

    lines = await await_until(_async(logged), timeout=10, what=f"load_shed lines counting {len(shed)} sheds")
    assert sum(line["count"] for line in lines) == len(shed)
    assert all(line["level"] == "warning" for line in lines)
    shed_ids = {a.request_id for a in shed}
    for line in lines:
        assert 1 <= len(line["sample"]) <= min(5, line["count"]), line
        assert set(line["sample"]) <= shed_ids, line
    gaps = [(_ts(b) - _ts(a)).total_seconds() for a, b in itertools.pairwise(lines)]
    assert all(gap >= 0.9 for gap in gaps), f"more than one load_shed line per second: {gaps}"
    errors = {line.get("request_id") for line in service.proc.events("http_error")}
    assert not errors & shed_ids, "a shed request also has its own http_error line"


def _async(check: Any) -> Any:
    async def condition() -> Any:
        return check()

    return condition


@pytest.mark.trio
async def test_F25_per_user_cap_is_exact_under_concurrent_batches_on_two_replicas(
    auth_factory: AuthServiceFactory,
) -> None:
    """120 concurrent issues for one user, half on each of two replicas, with a cap of 25 per
    minute: exactly 25 tokens exist and are answered 201, every other request is 429
    rate_limited with Retry-After (the requests of one batch are counted in order, and the
    user's row lock orders the batches of both replicas)."""
    cap, attempts = 25, 120
    first, second = auth_factory.start_many(2, env={"TETHER_TOKEN_ISSUE_PER_MINUTE": str(cap)})
    user = first.make_user()
    other = first.make_user()
    answers: list[Answer] = []
    limits = httpx.Limits(max_connections=attempts, max_keepalive_connections=attempts)
    async with first.client(limits=limits) as a, second.client(limits=limits) as b:
        start = trio.Event()

        async def one(client: httpx.AsyncClient) -> None:
            await start.wait()
            answers.append(await _issue(client, user))

        async with trio.open_nursery() as nursery:
            for index in range(attempts):
                nursery.start_soon(one, a if index % 2 == 0 else b)
            start.set()
        other_answer = await _issue(a, other)
    statuses = sorted(answer.status for answer in answers)
    assert statuses.count(201) == cap, statuses
    assert statuses.count(429) == attempts - cap, statuses
    for answer in answers:
        if answer.status == 429:
            assert answer.body["code"] == "rate_limited"
            assert answer.retry_after is not None
            assert int(answer.retry_after) > 0
    rows = await aquery(
        first.dsn, "SELECT count(*) AS n FROM auth.connection_tokens WHERE user_id = $1::uuid", user.user_id
    )
    assert rows[0]["n"] == cap
    assert other_answer.status == 201  # the cap is the user's alone
    refused = next(answer for answer in answers if answer.status == 429)
    assert_one_error_line([first.proc, second.proc], refused.request_id, "rate_limited", user_id=user.user_id)


@pytest.mark.trio
async def test_F41_one_batch_answers_each_request_with_its_own_outcome(auth_factory: AuthServiceFactory) -> None:
    """Issues arriving together (one batch slot, so they queue behind each other) with valid API
    keys, a browser session, an unknown key and a project binding: each gets its own answer,
    and fewer statements ran than requests were issued."""
    service = auth_factory.start(env={"TETHER_TOKEN_ISSUE_BATCHES": "1", "TETHER_TOKEN_ISSUE_PER_MINUTE": "1000"})
    users = [service.make_user() for _ in range(3)]
    project = "6f1c1c8e-2b7e-4d55-9a57-0c7c3f1d2e10"
    limits = httpx.Limits(max_connections=64)
    async with service.client(limits=limits) as client, service.client(limits=limits) as browser:
        login = await browser.post("/v1/login", json={"api_key": users[0].api_key})
        assert login.status_code == 200, login.text  # the browser client keeps the session cookie
        before = await scrape(client)
        results: dict[str, list[httpx.Response]] = {"key": [], "cookie": [], "unknown": [], "bound": []}
        start = trio.Event()

        async def send(kind: str, index: int) -> None:
            await start.wait()
            if kind == "cookie":
                response = await browser.post("/v1/tokens", json={})
            elif kind == "unknown":
                response = await client.post("/v1/tokens", json={}, headers=bearer(f"tk_unknown{index:040d}"))
            elif kind == "bound":
                response = await client.post(
                    "/v1/tokens", json={"project_id": project}, headers=bearer(users[1].api_key)
                )
            else:
                response = await client.post("/v1/tokens", json={}, headers=bearer(users[index % 3].api_key))
            results[kind].append(response)

        async with trio.open_nursery() as nursery:
            for index in range(40):
                nursery.start_soon(send, ("key", "key", "cookie", "unknown", "bound")[index % 5], index)
            start.set()
        after = await scrape(client)
        me = await client.get("/v1/me", headers=bearer(users[1].api_key))
    assert [r.status_code for r in results["key"]] == [201] * 16
    assert [r.status_code for r in results["cookie"]] == [201] * 8
    assert [r.status_code for r in results["bound"]] == [201] * 8
    assert all(r.json()["project_id"] == project for r in results["bound"])
    assert all(r.json()["project_id"] is None for r in results["key"] + results["cookie"])
    assert [r.status_code for r in results["unknown"]] == [401] * 8
    assert all(r.json()["code"] == "unauthenticated" for r in results["unknown"])
    issued = after.delta(before, "tether_tokens_issued_total")
    assert issued == 32
    assert 1 <= after.delta(before, "tether_token_issue_batches_total") < 40
    owners = await aquery(
        service.dsn,
        "SELECT user_id::text AS u, project_id::text AS p, count(*) AS n FROM auth.connection_tokens GROUP BY 1, 2",
    )
    counts = {(row["u"], row["p"]): row["n"] for row in owners}
    assert counts[(me.json()["id"], project)] == 8
    assert counts[(users[0].user_id, None)] == 6 + 8  # its share of the API-key requests, and the cookie ones
    cookie_line = results["cookie"][0].headers["X-Request-ID"]
    issued_lines = service.proc.events("token_issued", request_id=cookie_line)
    assert [line.get("user_id") for line in issued_lines] == [users[0].user_id]


@pytest.mark.trio
async def test_F06_requests_queued_past_the_wait_bound_are_refused_while_the_database_stalls(
    auth_factory: AuthServiceFactory,
) -> None:
    """The database stalls (the user's row is locked) with one batch out and nine requests
    queued behind it: once they have waited TETHER_TOKEN_ISSUE_MAX_WAIT_MS they are refused
    with 503 overloaded (reason issue_wait) and Retry-After, while the database is still
    stalled, instead of waiting on it; the batch that was out is issued once the lock goes."""
    service = auth_factory.start(
        env={
            "TETHER_TOKEN_ISSUE_BATCHES": "1",
            "TETHER_TOKEN_ISSUE_MAX_WAIT_MS": "200",
            "TETHER_TOKEN_ISSUE_PER_MINUTE": "1000",
        }
    )
    user = service.make_user()
    lock = UserRowLock(service.dsn, [user.user_id])
    answers: list[Answer] = []
    async with service.client(limits=httpx.Limits(max_connections=16)) as client:

        def pending(count: int) -> Any:
            async def reached() -> bool:
                return (await scrape(client)).value("tether_token_issue_pending") == count

            return reached

        async def refused() -> bool:
            return len(answers) == 9

        async with trio.open_nursery() as holder:
            holder.start_soon(trio.to_thread.run_sync, lock.run)
            try:
                await await_until(_async(lock.locked.is_set), timeout=10, what="the user row locked")
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_collect, client, user, answers)  # goes out alone, and waits on the lock
                    await await_until(pending(1), timeout=10, what="the first request out")
                    for _ in range(9):
                        nursery.start_soon(_collect, client, user, answers)
                    await await_until(refused, timeout=ANSWER_BOUND_S + 1, what="the queued requests refused")
                    assert lock.locked.is_set()
                    assert not lock.released.is_set()  # refused while the database was still stalled
                    lock.release()
            finally:
                lock.release()
        after = await scrape(client)
    statuses = [a.status for a in answers]
    assert statuses == [503] * 9 + [201], statuses
    for answer in answers[:9]:
        assert answer.body["code"] == "overloaded"
        assert answer.body["reason"] == "issue_wait"
        assert answer.retry_after is not None
        assert answer.elapsed < scaled(ANSWER_BOUND_S)
    assert after.value("tether_load_shed_total", reason="issue_wait") == 9
    rows = await aquery(service.dsn, "SELECT count(*) AS n FROM auth.connection_tokens")
    assert rows[0]["n"] == 1


@pytest.mark.trio
async def test_F06_a_stalled_issue_statement_is_answered_503_with_retry_after(auth_factory: AuthServiceFactory) -> None:
    """The issue statement waits on a lock past TETHER_TOKEN_ISSUE_STATEMENT_TIMEOUT_MS: it is
    cancelled and its request answered 503 dependency_unavailable (postgres) with Retry-After,
    with nothing stored; once the database answers again so does the replica."""
    service = auth_factory.start(env={"TETHER_TOKEN_ISSUE_STATEMENT_TIMEOUT_MS": "300"})
    user = service.make_user()
    lock = UserRowLock(service.dsn, [user.user_id])
    async with service.client() as client:
        async with trio.open_nursery() as holder:
            holder.start_soon(trio.to_thread.run_sync, lock.run)
            try:
                await await_until(_async(lock.locked.is_set), timeout=10, what="the user row locked")
                stalled = await _issue(client, user)
            finally:
                lock.release()
        assert stalled.status == 503, stalled.body
        assert stalled.body["code"] == "dependency_unavailable"
        assert stalled.body["dependency"] == "postgres"
        assert stalled.retry_after is not None
        assert stalled.elapsed < scaled(ANSWER_BOUND_S)
        assert_one_error_line(service.proc, stalled.request_id, "dependency_unavailable")
        rows = await aquery(service.dsn, "SELECT count(*) AS n FROM auth.connection_tokens")
        assert rows[0]["n"] == 0
        assert (await _issue(client, user)).status == 201


async def _collect(client: httpx.AsyncClient, user: UserCredentials, answers: list[Answer]) -> None:
    answers.append(await _issue(client, user))
