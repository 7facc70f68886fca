"""F01: every entry of the close-code catalogue, provoked for real against running services.

The test is parametrized from ``contracts/session/close-codes.json``: a new entry without a
scenario here fails the suite.  For every provocation the client must get the catalogue's
``error`` frame (``code``, ``close_code``, ``retryable``, ``action``) as the last frame,
then a close with that code; the replica must write exactly one ``ws_open`` and one
``ws_close`` line for that connection, at warning level (error for server-side causes),
with ``reason`` = the name, the ``connection_id``, and ``user_id`` / ``project_id`` exactly
when they were known (``tests/session/helpers.py``: ``assert_closed_as``).

======================  ==================================================================
code                    how it is provoked (scenario function below)
======================  ==================================================================
invalid_frame           not JSON; binary; empty binary; JSON array; unknown type; INIT
                        without token; INIT with a non-uuid project id (``_invalid_frame``)
unexpected_frame        prompt / ping / reauth before INIT; a second INIT after ready
unsupported_version     INIT with ``v: 2``; ping with ``v: 99`` before INIT
frame_too_large         TETHER_MAX_FRAME_BYTES=1024: a 2 kB INIT, a 2 kB prompt after
                        ready; JSON nested 40 deep on the default limit
init_timeout            TETHER_INIT_TIMEOUT_MS=300, nothing sent
token_unknown           a well-formed token nobody issued
token_expired           a token from an auth-token replica with TETHER_TOKEN_TTL_S=1, used
                        once the database says it expired
token_used              a token that already opened a session
session_expired         TETHER_SESSION_LIFETIME_S=1, no reauth
forbidden               a token bound to project A in an INIT for project B (same user)
project_not_found       another user's project by id and by slug; a random id; a missing slug
resume_unavailable      resume_from > last_seq; resume_from before what retention kept
                        (TETHER_RETENTION_EVENTS=2)
heartbeat_timeout       TETHER_HEARTBEAT_TIMEOUT_MS=500, silent client after ready
slow_consumer           a raw socket with a 4 kB receive buffer that stops reading while
                        ~1 MB of events is published; TETHER_SEND_TIMEOUT_MS=200
idempotency_conflict    a prompt, then a prompt with its client_msg_id and other text
rate_limited            TETHER_PROMPTS_PER_MINUTE=1 (second prompt);
                        TETHER_CONNECTS_PER_IP_PER_MINUTE=1 (second connect)
too_many_connections    TETHER_MAX_CONNECTIONS_PER_USER=1, a second session of the user
internal_error          a replica whose auth-token service key is wrong (auth answers 401:
                        the service cannot do its job) — the only honest trigger; the
                        state-machine side is in tests/unit/test_protocol.py
starting_up             a replica whose auth-token service is not up yet,
                        TETHER_STARTUP_WAIT_MS=300
draining                SIGTERM to a replica holding a ready socket
overloaded              TETHER_MAX_CONNECTIONS=1, a second socket on the replica
auth_unavailable        the replica's auth-token instance stopped after the replica is ready
database_unavailable    PostgreSQL stopped under a ready socket, then a prompt (restarted after)
======================  ==================================================================

Two sweeps run after the scenarios: ``test_F01_no_silent_close_in_any_log_of_this_module``
(every connection of every replica: one ``ws_open``, one ``ws_close``, a server close always
with its catalogue code at warning/error level) and
``test_F13_every_close_path_released_its_registrations`` (no connection, subscriber, feed
or agent task left on any replica after all those close paths).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from tests.support.auth import UserCredentials, issue_token
from tests.support.contract import async_client, sync_client
from tests.support.metrics import Metrics, parse_metrics, scrape
from tests.support.pg import PgServer, aquery
from tests.support.procs import ServiceProcess
from tests.support.rawws import RawWs
from tests.support.session import (
    CLOSE_CODES_PATH,
    SESSION_CONTRACT,
    SessionReplica,
    Stack,
    StackFactory,
    WsClient,
    new_client_msg_id,
)
from tests.support.waiting import await_until, scaled, wait_until
from tether_dev.pg import free_port

from .helpers import (
    CATALOGUE,
    NewConnection,
    assert_closed_as,
    init_frame,
    ws_to,
)

CODE_NAMES = [entry["name"] for entry in json.loads(CLOSE_CODES_PATH.read_text())["codes"]]


@dataclass
class Ctx:
    stack: Stack
    factory: StackFactory
    pg: PgServer
    cached: dict[frozenset[tuple[str, str]], SessionReplica] = field(default_factory=dict)
    checked: int = 0

    @property
    def default(self) -> SessionReplica:
        return self.stack.session

    def replica(self, **env: str) -> SessionReplica:
        """A ready replica of the module's stack with ``env`` (started once per env)."""
        key = frozenset(env.items())
        if key not in self.cached or not self.cached[key].proc.is_running():
            self.cached[key] = self.stack.add_replica(env)
        return self.cached[key]

    async def user_project(self, name: str = "close codes") -> tuple[UserCredentials, dict[str, Any]]:
        user = self.stack.make_user()
        return user, await self.stack.create_project(user.api_key, name)

    async def provoke(
        self,
        replica: SessionReplica,
        name: str,
        action: Callable[[WsClient], Awaitable[None]],
        *,
        user_id: str | None = None,
        project_id: str | None = None,
    ) -> dict[str, Any]:
        """Open a socket, run ``action``, read to the close; check both sides; return the error frame."""
        tracker = NewConnection(replica.proc)
        async with ws_to(replica) as client:
            await action(client)
            closed = await client.closed()
        error, _line = assert_closed_as(
            closed, replica.proc, tracker.id(), name, user_id=user_id, project_id=project_id
        )
        self.checked += 1
        return error

    async def ready_then(
        self,
        replica: SessionReplica,
        name: str,
        action: Callable[[WsClient], Awaitable[None]] | None = None,
        *,
        user: UserCredentials | None = None,
        project: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A socket past INIT, then ``action``; the close must be ``name`` with user and project known."""
        if user is None or project is None:
            user, project = await self.user_project()
        token = await self.stack.token(user.api_key)
        u, p = user, project

        async def go(client: WsClient) -> None:
            ready = await client.init(token, {"id": p["id"]})
            assert ready["type"] == "ready", ready
            if action is not None:
                await action(client)

        return await self.provoke(replica, name, go, user_id=u.user_id, project_id=p["id"])


@pytest.fixture(scope="module")
def ctx(module_stack_factory: StackFactory, pg_server: PgServer) -> Ctx:
    return Ctx(module_stack_factory.start(), module_stack_factory, pg_server)


def _send(payload: dict[str, Any] | str | bytes) -> Callable[[WsClient], Awaitable[None]]:
    async def action(client: WsClient) -> None:
        await client.send(payload)

    return action


async def _nothing(client: WsClient) -> None:
    return None


# -- scenarios, one per catalogue entry ------------------------------------------------------------


async def _invalid_frame(ctx: Ctx) -> None:
    _user, project = await ctx.user_project()
    token = "tt_" + "x" * 43
    payloads: list[str | bytes] = [
        "not json{",
        b"\x00\x01binary",
        b"",
        "[]",
        '{"type": 5, "v": 1}',
        '{"type": "bogus", "v": 1}',
        '{"type": "init", "v": 1, "token": "t"}',
        json.dumps({"type": "init", "v": 1, "project": {"id": project["id"]}, "client_id": "t"}),
        json.dumps(init_frame(token, {"id": "not-a-uuid"})),
        json.dumps({**init_frame(token, {"id": project["id"]}), "extra": 1}),
        '{"type": "init", "v": NaN}',
    ]
    for payload in payloads:
        error = await ctx.provoke(ctx.default, "invalid_frame", _send(payload))
        assert error["retryable"] is False


async def _unexpected_frame(ctx: Ctx) -> None:
    for frame in (
        {"type": "prompt", "v": 1, "client_msg_id": "m1", "text": "too early"},
        {"type": "ping", "v": 1},
        {"type": "reauth", "v": 1, "token": "tt_" + "y" * 43},
        {"type": "ack", "v": 1, "seq": 0},
    ):
        error = await ctx.provoke(ctx.default, "unexpected_frame", _send(frame))
        assert frame["type"] in error["message"], error
        assert "awaiting_init" in error["message"], error
    user, project = await ctx.user_project()
    second = await ctx.stack.token(user.api_key)

    async def second_init(client: WsClient) -> None:
        await client.send(init_frame(second, {"id": project["id"]}))

    error = await ctx.ready_then(ctx.default, "unexpected_frame", second_init, user=user, project=project)
    assert "init" in error["message"], error
    assert "ready" in error["message"], error


async def _unsupported_version(ctx: Ctx) -> None:
    user, project = await ctx.user_project()
    token = await ctx.stack.token(user.api_key)
    error = await ctx.provoke(ctx.default, "unsupported_version", _send(init_frame(token, {"id": project["id"]}, v=2)))
    assert "2" in error["message"]
    await ctx.provoke(ctx.default, "unsupported_version", _send({"type": "ping", "v": 99}))


async def _frame_too_large(ctx: Ctx) -> None:
    small = ctx.replica(TETHER_MAX_FRAME_BYTES="1024")
    await ctx.provoke(small, "frame_too_large", _send(init_frame("t", {"slug": "a"}, client_id="x" * 2000)))

    async def big_prompt(client: WsClient) -> None:
        await client.send({"type": "prompt", "v": 1, "client_msg_id": "big", "text": "y" * 2000})

    await ctx.ready_then(small, "frame_too_large", big_prompt)
    nested: Any = 1
    for _ in range(40):
        nested = [nested]
    await ctx.provoke(ctx.default, "frame_too_large", _send({"type": "init", "v": 1, "deep": nested}))


async def _init_timeout(ctx: Ctx) -> None:
    replica = ctx.replica(TETHER_INIT_TIMEOUT_MS="300")
    tracker = NewConnection(replica.proc)
    async with ws_to(replica) as client:
        closed = await client.closed()
    _error, line = assert_closed_as(closed, replica.proc, tracker.id(), "init_timeout")
    assert line["duration_ms"] >= 300, line
    ctx.checked += 1


async def _token_unknown(ctx: Ctx) -> None:
    _user, project = await ctx.user_project()
    await ctx.provoke(ctx.default, "token_unknown", _send(init_frame("tt_" + "z" * 43, {"id": project["id"]})))


async def _token_expired_in_db(dsn: str, token: str) -> bool:
    rows = await aquery(
        dsn,
        "SELECT expires_at <= now() AS expired FROM auth.connection_tokens "
        "WHERE token_hash = sha256(convert_to($1, 'UTF8'))",
        token,
    )
    assert len(rows) == 1, rows
    return bool(rows[0]["expired"])


async def _token_expired(ctx: Ctx) -> None:
    user, project = await ctx.user_project()
    short = ctx.factory.auth_factory.start(
        ctx.stack.dsn, env={"TETHER_TOKEN_TTL_S": "1"}, service_key=ctx.stack.auth.service_key
    )
    try:
        async with short.client() as http:
            issued = await issue_token(http, user.api_key)
    finally:
        short.proc.stop()
    assert issued["ttl_s"] == 1
    token = issued["token"]
    await await_until(
        lambda: _token_expired_in_db(ctx.stack.dsn, token), timeout=10, what="the 1 s token to expire in the database"
    )
    await ctx.provoke(ctx.default, "token_expired", _send(init_frame(token, {"id": project["id"]})))


async def _token_used(ctx: Ctx) -> None:
    user, project = await ctx.user_project()
    token = await ctx.stack.token(user.api_key)
    async with ws_to(ctx.default) as client:
        assert (await client.init(token, {"id": project["id"]}))["type"] == "ready"
    await ctx.provoke(ctx.default, "token_used", _send(init_frame(token, {"id": project["id"]})))


async def _session_expired(ctx: Ctx) -> None:
    replica = ctx.replica(TETHER_SESSION_LIFETIME_S="1")
    error = await ctx.ready_then(replica, "session_expired")
    assert error["action"] == "refresh_token"


async def _forbidden(ctx: Ctx) -> None:
    user = ctx.stack.make_user()
    project_a = await ctx.stack.create_project(user.api_key, "A")
    project_b = await ctx.stack.create_project(user.api_key, "B")
    bound = await ctx.stack.token(user.api_key, project_id=project_a["id"])
    await ctx.provoke(
        ctx.default,
        "forbidden",
        _send(init_frame(bound, {"id": project_b["id"]})),
        user_id=user.user_id,
        project_id=project_b["id"],
    )


async def _project_not_found(ctx: Ctx) -> None:
    _owner, theirs = await ctx.user_project("someone else's")
    user = ctx.stack.make_user()
    for project in (
        {"id": theirs["id"]},
        {"slug": theirs["slug"]},
        {"id": str(uuid.uuid4())},
        {"slug": "no-such-slug"},
    ):
        token = await ctx.stack.token(user.api_key)
        await ctx.provoke(ctx.default, "project_not_found", _send(init_frame(token, project)), user_id=user.user_id)


async def _events_pruned(dsn: str, project_id: str) -> bool:
    rows = await aquery(
        dsn, "SELECT min(seq) AS first FROM session.events WHERE project_id = $1", uuid.UUID(project_id)
    )
    return rows[0]["first"] is not None and rows[0]["first"] > 1


async def _resume_unavailable(ctx: Ctx) -> None:
    user, project = await ctx.user_project()
    token = await ctx.stack.token(user.api_key)
    await ctx.provoke(
        ctx.default,
        "resume_unavailable",
        _send(init_frame(token, {"id": project["id"]}, resume_from=project["last_seq"] + 1)),
        user_id=user.user_id,
        project_id=project["id"],
    )
    # before what retention kept: a partial replay would lose events, so it is refused too
    pruning = ctx.stack.add_replica({"TETHER_RETENTION_EVENTS": "2", "TETHER_RETENTION_INTERVAL_S": "0.1"})
    try:
        await ctx.stack.publish(
            project["id"], [{"event_id": f"r{i}", "kind": "note", "data": {"i": i}} for i in range(5)]
        )
        await await_until(lambda: _events_pruned(ctx.stack.dsn, project["id"]), timeout=10, what="retention to prune")
        token = await ctx.stack.token(user.api_key)
        error = await ctx.provoke(
            pruning,
            "resume_unavailable",
            _send(init_frame(token, {"id": project["id"]}, resume_from=0)),
            user_id=user.user_id,
            project_id=project["id"],
        )
        assert "retained" in error["message"], error
    finally:
        pruning.proc.stop()


async def _heartbeat_timeout(ctx: Ctx) -> None:
    replica = ctx.replica(TETHER_HEARTBEAT_TIMEOUT_MS="500", TETHER_HEARTBEAT_INTERVAL_MS="200")
    await ctx.ready_then(replica, "heartbeat_timeout")


async def _slow_consumers(replica: SessionReplica) -> float:
    async with async_client(SESSION_CONTRACT, replica.url, timeout=scaled(10)) as http:
        return (await scrape(http)).value("tether_slow_consumers_total")


async def _slow_consumer(ctx: Ctx) -> None:
    replica = ctx.replica(TETHER_SEND_TIMEOUT_MS="200")
    user, project = await ctx.user_project()
    token = await ctx.stack.token(user.api_key)
    before = await _slow_consumers(replica)
    raw = await RawWs.connect(replica.ws_url, rcvbuf=4096)
    try:
        await raw.send(init_frame(token, {"id": project["id"]}))
        ready = await raw.recv_frame()
        assert ready["type"] == "ready", ready
        connection_id = ready["connection_id"]
        # The client reads nothing from now on.  Publish ~100 kB events until the replica
        # gives up on it (each publish paces the loop; the bound keeps it finite).
        blob = "x" * 100_000
        for batch in range(40):
            await ctx.stack.publish(
                project["id"],
                [{"event_id": f"big-{batch}-{i}", "kind": "blob", "data": {"blob": blob}} for i in range(5)],
            )
            if await _slow_consumers(replica) > before:
                break
        else:
            raise AssertionError("20 MB published and the replica never declared a slow consumer")
        # the replica finished closing (one ws_close line) while the client still read nothing
        await await_until(
            lambda: _has_close_line(replica.proc, connection_id), timeout=15, what="the slow consumer's ws_close line"
        )
        closed = await raw.read_until_closed(timeout=60)
    finally:
        raw.close()
    events = [f for f in closed.frames if f["type"] == "event"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), "events before the close arrive in order"
    assert_closed_as(
        closed.as_closed(),
        replica.proc,
        connection_id,
        "slow_consumer",
        user_id=user.user_id,
        project_id=project["id"],
        send_may_time_out=True,  # the error frame waits behind what the client has not read
    )
    ctx.checked += 1


async def _has_close_line(proc: ServiceProcess, connection_id: str) -> bool:
    return bool(proc.events("ws_close", connection_id=connection_id))


async def _rate_limited(ctx: Ctx) -> None:
    replica = ctx.replica(TETHER_PROMPTS_PER_MINUTE="1")

    async def two_prompts(client: WsClient) -> None:
        await client.send({"type": "prompt", "v": 1, "client_msg_id": new_client_msg_id(), "text": "one"})
        await client.recv_type("prompt_ack")
        await client.send({"type": "prompt", "v": 1, "client_msg_id": new_client_msg_id(), "text": "two"})

    error = await ctx.ready_then(replica, "rate_limited", two_prompts)
    assert error["retry_after_ms"] > 0

    per_ip = ctx.replica(TETHER_CONNECTS_PER_IP_PER_MINUTE="1")
    user, project = await ctx.user_project()
    token = await ctx.stack.token(user.api_key)
    async with ws_to(per_ip) as client:  # takes the only connect of this minute
        assert (await client.init(token, {"id": project["id"]}))["type"] == "ready"
    error = await ctx.provoke(per_ip, "rate_limited", _nothing)
    assert error["retry_after_ms"] > 0
    assert "connection attempts" in error["message"]


async def _too_many_connections(ctx: Ctx) -> None:
    replica = ctx.replica(TETHER_MAX_CONNECTIONS_PER_USER="1")
    user, project = await ctx.user_project()
    first = await ctx.stack.token(user.api_key)
    second = await ctx.stack.token(user.api_key)
    async with ws_to(replica) as holder:
        assert (await holder.init(first, {"id": project["id"]}))["type"] == "ready"
        error = await ctx.provoke(
            replica, "too_many_connections", _send(init_frame(second, {"id": project["id"]})), user_id=user.user_id
        )
        assert error["retry_after_ms"] > 0
    # F13: both the refused and the closed connection released the user's count
    third = await ctx.stack.token(user.api_key)
    async with ws_to(replica) as again:
        assert (await again.init(third, {"id": project["id"]}))["type"] == "ready"


async def _internal_error(ctx: Ctx) -> None:
    replica = ctx.replica(TETHER_AUTH_SERVICE_KEY="svc_not_the_key_auth_token_knows_0123")
    user, project = await ctx.user_project()
    token = await ctx.stack.token(user.api_key)
    await ctx.provoke(replica, "internal_error", _send(init_frame(token, {"id": project["id"]})))


async def _readyz_status(replica: SessionReplica) -> int:
    async with async_client(SESSION_CONTRACT, replica.url, timeout=scaled(10)) as http:
        return (await http.get("/readyz")).status_code


async def _starting_up(ctx: Ctx) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    replica = ctx.factory.spawn_session(ctx.stack, {"TETHER_AUTH_URL": nowhere, "TETHER_STARTUP_WAIT_MS": "300"})
    try:
        await trio.to_thread.run_sync(replica.proc.wait_listening)
        assert await _readyz_status(replica) == 503
        tracker = NewConnection(replica.proc)
        started = trio.current_time()
        async with ws_to(replica) as client:
            closed = await client.closed()
        waited = trio.current_time() - started
        error, _line = assert_closed_as(closed, replica.proc, tracker.id(), "starting_up")
        assert waited >= 0.3, f"the socket must wait TETHER_STARTUP_WAIT_MS first, waited {waited:.3f}s"
        assert error["retry_after_ms"] > 0
        ctx.checked += 1
    finally:
        replica.proc.stop()
        ctx.stack.replicas.remove(replica)


async def _draining(ctx: Ctx) -> None:
    replica = ctx.stack.add_replica({"TETHER_DRAIN_WINDOW_MS": "500"})
    try:
        user, project = await ctx.user_project()
        token = await ctx.stack.token(user.api_key)
        tracker = NewConnection(replica.proc)
        exit_code: list[int] = []
        async with ws_to(replica) as client:
            assert (await client.init(token, {"id": project["id"]}))["type"] == "ready"
            async with trio.open_nursery() as nursery:

                async def terminate() -> None:
                    exit_code.append(await trio.to_thread.run_sync(replica.proc.terminate))

                nursery.start_soon(terminate)
                closed = await client.closed()
        error, _line = assert_closed_as(
            closed, replica.proc, tracker.id(), "draining", user_id=user.user_id, project_id=project["id"]
        )
        assert 0 <= error["retry_after_ms"] <= 500
        assert exit_code == [0], f"a drained replica exits cleanly: {exit_code}"
        ctx.checked += 1
    finally:
        replica.proc.stop()
        ctx.stack.replicas.remove(replica)


async def _overloaded(ctx: Ctx) -> None:
    replica = ctx.replica(TETHER_MAX_CONNECTIONS="1")
    user, project = await ctx.user_project()
    token = await ctx.stack.token(user.api_key)
    async with ws_to(replica) as holder:
        assert (await holder.init(token, {"id": project["id"]}))["type"] == "ready"
        error = await ctx.provoke(replica, "overloaded", _nothing)
    assert error["retry_after_ms"] > 0
    # F13: once the holder is gone the replica has room again
    token = await ctx.stack.token(user.api_key)
    await await_until(lambda: _open_connections(replica, 0), timeout=10, what="the holder's connection released")
    async with ws_to(replica) as again:
        assert (await again.init(token, {"id": project["id"]}))["type"] == "ready"


async def _open_connections(replica: SessionReplica, expected: float) -> bool:
    async with async_client(SESSION_CONTRACT, replica.url, timeout=scaled(10)) as http:
        return (await scrape(http)).value("tether_ws_connections_open") == expected


async def _auth_unavailable(ctx: Ctx) -> None:
    own_auth = ctx.factory.auth_factory.start(ctx.stack.dsn, service_key=ctx.stack.auth.service_key)
    replica = ctx.stack.add_replica({"TETHER_AUTH_URL": own_auth.url})
    try:
        user, project = await ctx.user_project()
        token = await ctx.stack.token(user.api_key)
        own_auth.proc.stop()
        error = await ctx.provoke(replica, "auth_unavailable", _send(init_frame(token, {"id": project["id"]})))
        assert error["retry_after_ms"] > 0
        lines = replica.proc.events("ws_close", reason="auth_unavailable")
        assert lines[-1]["dependency"] == "auth-token", lines[-1]
    finally:
        replica.proc.stop()
        ctx.stack.replicas.remove(replica)


async def _database_unavailable(ctx: Ctx) -> None:
    ctx.pg.require_restartable()
    user, project = await ctx.user_project()

    async def prompt_without_database(client: WsClient) -> None:
        ctx.pg.stop()
        await client.send({"type": "prompt", "v": 1, "client_msg_id": new_client_msg_id(), "text": "hello?"})

    try:
        error = await ctx.ready_then(
            ctx.default, "database_unavailable", prompt_without_database, user=user, project=project
        )
    finally:
        if not ctx.pg.is_running():
            ctx.pg.start()
        for proc in ctx.stack.procs():
            if proc.is_running():
                await proc.wait_ready_async(30)
    assert error["retry_after_ms"] > 0
    line = ctx.default.proc.events("ws_close", reason="database_unavailable")[-1]
    assert line["dependency"] == "postgres", line
    assert line["level"] == "warning", "each close an outage causes is a warning; the outage is one error line"
    lost = [e for e in ctx.default.proc.events("dependency_lost") if e.get("dependency") == "postgres"]
    assert lost, "the outage itself is logged once at error"
    assert all(e["level"] == "error" for e in lost)


async def _idempotency_conflict(ctx: Ctx) -> None:
    msg_id = new_client_msg_id()

    async def same_id_other_text(client: WsClient) -> None:
        await client.send({"type": "prompt", "v": 1, "client_msg_id": msg_id, "text": "first"})
        ack = await client.recv_type("prompt_ack")
        assert ack["duplicate"] is False, ack
        await client.send({"type": "prompt", "v": 1, "client_msg_id": msg_id, "text": "second"})

    error = await ctx.ready_then(ctx.default, "idempotency_conflict", same_id_other_text)
    assert msg_id in error["message"], error
    line = ctx.default.proc.events("ws_close", reason="idempotency_conflict")[-1]
    assert line["client_msg_id"] == msg_id, line


SCENARIOS: dict[str, Callable[[Ctx], Awaitable[None]]] = {
    "invalid_frame": _invalid_frame,
    "unexpected_frame": _unexpected_frame,
    "unsupported_version": _unsupported_version,
    "frame_too_large": _frame_too_large,
    "init_timeout": _init_timeout,
    "token_unknown": _token_unknown,
    "token_expired": _token_expired,
    "token_used": _token_used,
    "session_expired": _session_expired,
    "forbidden": _forbidden,
    "project_not_found": _project_not_found,
    "resume_unavailable": _resume_unavailable,
    "heartbeat_timeout": _heartbeat_timeout,
    "slow_consumer": _slow_consumer,
    "idempotency_conflict": _idempotency_conflict,
    "rate_limited": _rate_limited,
    "too_many_connections": _too_many_connections,
    "internal_error": _internal_error,
    "starting_up": _starting_up,
    "draining": _draining,
    "overloaded": _overloaded,
    "auth_unavailable": _auth_unavailable,
    "database_unavailable": _database_unavailable,
}


def test_every_catalogue_entry_has_a_scenario_and_the_docstring_lists_it() -> None:
    assert sorted(SCENARIOS) == sorted(CODE_NAMES)
    assert sorted(CATALOGUE) == sorted(CODE_NAMES)
    table = __doc__ or ""
    missing = [name for name in CODE_NAMES if f"\n{name} " not in table]
    assert missing == [], f"the module docstring's table misses {missing}"


@pytest.mark.trio
@pytest.mark.parametrize("name", CODE_NAMES)
async def test_F01_every_catalogue_code_sends_error_frame_closes_and_logs_once(ctx: Ctx, name: str) -> None:
    scenario = SCENARIOS.get(name)
    assert scenario is not None, f"close code {name} has no scenario in this module"
    before = ctx.checked
    await scenario(ctx)
    assert ctx.checked > before, f"the {name} scenario checked no connection"


def test_F15_sigterm_exits_zero_without_a_traceback(ctx: Ctx) -> None:
    replica = ctx.stack.add_replica()
    try:
        code = replica.proc.terminate()
    finally:
        ctx.stack.replicas.remove(replica)
    assert replica.proc.events("drain_finished"), replica.proc.tail()
    assert "Traceback" not in replica.proc.out_path.read_text(), replica.proc.tail()
    assert code == 0


def test_F01_no_silent_close_in_any_log_of_this_module(ctx: Ctx) -> None:
    """Every connection any replica of this module saw: one ws_open, one ws_close; a server
    close names a catalogue reason with its own code at warning/error level; a close without
    a code is the client's; no unexpected exception and no failed close send (except behind a
    slow consumer's unread data)."""
    replicas = ctx.factory.sessions
    assert len(replicas) >= 10, "run with the whole module: this sweeps what the scenarios left in the logs"
    closes_seen = 0
    for replica in replicas:
        proc = replica.proc
        opened = [line["connection_id"] for line in proc.events("ws_open")]
        assert len(opened) == len(set(opened)), f"{proc.name}: a connection id was opened twice"
        if opened:
            # everything opened has been closed by now (the scenarios closed their sockets)
            wait_until(
                lambda p=proc, o=opened: {line["connection_id"] for line in p.events("ws_close")} >= set(o),
                timeout=10,
                what=f"{proc.name}: a ws_close line for every ws_open",
            )
        closes = proc.events("ws_close")
        assert sorted(line["connection_id"] for line in closes) == sorted(opened), proc.name
        slow = set()
        for line in closes:
            closes_seen += 1
            if line["code"] is None:
                assert line["reason"] == "client_closed", line
                assert line["level"] == "info", line
                continue
            entry = CATALOGUE[line["reason"]]
            assert line["code"] == entry["code"], line
            assert line["level"] in ("warning", "error"), line
            if line["reason"] == "slow_consumer":
                slow.add(line["connection_id"])
        assert proc.events("ws_internal_error") == [], proc.name
        failed = {line["connection_id"] for line in proc.events("ws_close_send_failed")}
        assert failed <= slow, f"{proc.name}: close sends failed outside slow consumers: {failed - slow}"
    assert closes_seen >= 40  # the scenarios above open ~48 sockets


def test_F13_every_close_path_released_its_registrations(ctx: Ctx) -> None:
    """After every scenario above (every close path of the catalogue), each replica still
    running holds no connection, no fan-out subscriber and no feed."""
    running = [r for r in ctx.factory.sessions if r.proc.is_running()]
    assert len(running) >= 5, "run with the whole module"
    for replica in running:

        def released(r: SessionReplica = replica) -> Metrics | None:
            with sync_client(SESSION_CONTRACT, r.url, timeout=scaled(10)) as http:
                response = http.get("/metrics")
            metrics = parse_metrics(response.text)
            gauges = ("tether_ws_connections_open", "tether_fanout_subscribers", "tether_fanout_feeds")
            return metrics if all(metrics.value(g) == 0 for g in gauges) else None

        metrics = wait_until(released, timeout=10, what=f"{replica.proc.name} to release every registration")
        assert metrics.value("tether_agent_tasks") == 0
