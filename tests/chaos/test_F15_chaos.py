"""F15 under fire: a replica killed with SIGKILL, Postgres restarted, a replica drained with
SIGTERM — each while 50 clients stream agent answers.  Verdict for every client of every
project: it holds exactly the project's log 1..last, nothing lost, nothing twice, in order."""

from __future__ import annotations

import pytest
import trio

from tests.support.pg import PgServer
from tests.support.session import StackFactory, close_catalogue
from tests.support.waiting import await_until

from .scenario import CHAOS_ENV, Scenario

DELIVERIES_BEFORE_DISRUPTION = 1500


@pytest.mark.slow
@pytest.mark.trio
async def test_F15_kill_9_replica_mid_stream_zero_lost(stack_factory: StackFactory) -> None:
    stack = stack_factory.start(replicas=2, session_env=CHAOS_ENV)
    victim = stack.replicas[1].proc
    scenario = Scenario(stack, "kill -9", alive=lambda r: stack.replicas[r].proc.is_running())
    on_victim: list[str] = []

    async def disrupt() -> None:
        on_victim.extend(c.name for c in scenario.clients if c.current == 1)
        await trio.to_thread.run_sync(victim.kill)

    figures = await scenario.run(disrupt, after_deliveries=DELIVERIES_BEFORE_DISRUPTION)
    scenario.assert_zero_lost(figures)
    assert victim.returncode == -9
    assert on_victim, "no client was on the killed replica"
    for client in scenario.clients:
        if client.name in on_victim:
            assert client.connections[-1] == 0, f"{client.name} did not move to the surviving replica"
            # No close frame can come from a killed process: the socket just breaks (1006).
            assert any(c.replica == 1 and c.code in (1006, None) for c in client.closes), client.closes


@pytest.mark.slow
@pytest.mark.trio
async def test_F15_postgres_restart_under_load_zero_lost(stack_factory: StackFactory, pg_server: PgServer) -> None:
    pg_server.require_restartable()
    stack = stack_factory.start(replicas=2, session_env=CHAOS_ENV)
    scenario = Scenario(stack, "postgres restart")
    not_ready: dict[int, int] = {}

    async def disrupt() -> None:
        await trio.to_thread.run_sync(pg_server.stop)
        try:
            for replica in (0, 1):

                async def down(r: int = replica) -> bool:
                    async with stack.http(r) as http:
                        response = await http.get("/readyz")
                    not_ready[r] = response.status_code
                    return response.status_code == 503

                await await_until(down, timeout=15, what=f"replica {replica} /readyz 503 while Postgres is down")
            # Half the clients lose their sockets now: they must come back (fresh token,
            # resume_from) through an auth service and replicas that have no database.
            for client in scenario.clients[::2]:
                client.drop()
        finally:
            await trio.to_thread.run_sync(pg_server.start)
        for replica in stack.replicas:
            await replica.proc.wait_ready_async(30)
        await stack.auth.proc.wait_ready_async(30)

    figures = await scenario.run(disrupt, after_deliveries=DELIVERIES_BEFORE_DISRUPTION)
    scenario.assert_zero_lost(figures)
    assert not_ready == {0: 503, 1: 503}
    assert figures.reconnects >= len(scenario.clients) // 2
    for replica in stack.replicas:
        assert replica.proc.events("listen_lost"), "the replica never noticed its LISTEN connection was gone"
        assert replica.proc.events("listen_connected")[-1]["reconnects"] >= 1


@pytest.mark.slow
@pytest.mark.trio
async def test_F15_sigterm_drain_clients_resume_elsewhere_zero_lost(stack_factory: StackFactory) -> None:
    stack = stack_factory.start(replicas=2, session_env=CHAOS_ENV)
    victim = stack.replicas[1].proc
    draining = trio.Event()
    scenario = Scenario(stack, "sigterm drain", alive=lambda r: not (r == 1 and draining.is_set()))
    on_victim: list[str] = []
    exit_code: list[int] = []
    window_ms = int(CHAOS_ENV["TETHER_DRAIN_WINDOW_MS"])
    entry = close_catalogue()["draining"]

    async def disrupt() -> None:
        on_victim.extend(c.name for c in scenario.clients if c.current == 1)
        draining.set()
        exit_code.append(await trio.to_thread.run_sync(victim.terminate))

    figures = await scenario.run(disrupt, after_deliveries=DELIVERIES_BEFORE_DISRUPTION)
    scenario.assert_zero_lost(figures)
    assert exit_code == [0], f"the drained replica exited with {exit_code}\n{victim.tail()}"
    assert on_victim, "no client was on the drained replica"
    for client in scenario.clients:
        on_1 = [c for c in client.closes if c.replica == 1]
        if client.name not in on_victim:
            assert not on_1, f"{client.name} was never on the drained replica: {on_1}"
            continue
        assert len(on_1) == 1, f"{client.name}: {on_1}"
        close = on_1[0]
        assert close.code == entry["code"] == 4502, f"{client.name} closed with {close.code}, not draining"
        assert close.error is not None
        assert close.error["code"] == "draining"
        assert close.error["retryable"] is True
        assert close.error["action"] == "resume"
        assert 0 <= close.error["retry_after_ms"] <= window_ms
        assert client.connections[-1] == 0
    (started,) = victim.events("drain_started")
    assert started["connections"] == len(on_victim)
    (finished,) = victim.events("drain_finished")
    assert finished["remaining"] == 0
    closes = [line for line in victim.events("ws_close") if line.get("reason") == "draining"]
    assert len(closes) == len(on_victim)
    assert all(line["code"] == 4502 for line in closes)
