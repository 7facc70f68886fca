"""The Python client (SDK, CLI, example) against the real services and Postgres.

The SDK's own records (stats, events delivered) are compared with the services' records
(the event log and the token table in Postgres): fresh tokens consumed once (F05), the
log delivered in order with no gap and no duplicate across a replica's drain (F20-F22),
prompts stored once however a reconnect cuts them (F21), terminal errors that stop
instead of looping (F32).
"""

from __future__ import annotations

import json
import os
import random
import selectors
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from tests.delivery.helpers import log_seqs, note_events
from tests.support.pg import aquery
from tests.support.session import ALLOWED_ORIGIN, Stack, StackFactory
from tests.support.waiting import await_until, scaled
from tether_client import AuthClient, CloseCatalogue, SessionHttp, TetherClosed, TetherHTTPError, open_session
from tether_client.agent import answers, event_text

from .cli import cli_env, run_example, run_tether
from .pacing import pause


def ws_url(stack: Stack, replica: int = 0) -> str:
    return stack.replicas[replica].ws_url


async def tokens_of(stack: Stack, user_id: str) -> tuple[int, int]:
    rows = await aquery(
        stack.dsn,
        "SELECT count(*) AS issued, count(consumed_at) AS consumed FROM auth.connection_tokens WHERE user_id = $1",
        uuid.UUID(user_id),
    )
    return int(rows[0]["issued"]), int(rows[0]["consumed"])


async def prompts_by_text(stack: Stack, project_id: str) -> dict[str, int]:
    rows = await aquery(
        stack.dsn,
        "SELECT data->>'text' AS text, count(*) AS n FROM session.events "
        "WHERE project_id = $1 AND kind = 'prompt' GROUP BY 1",
        uuid.UUID(project_id),
    )
    return {str(r["text"]): int(r["n"]) for r in rows}


async def until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    async def holds() -> bool:
        return condition()

    await await_until(holds, timeout=timeout, what=what)


# -- SDK -----------------------------------------------------------------------------------


@pytest.mark.trio
async def test_F05_sdk_fetches_a_new_token_for_every_connect_each_consumed_once(stack: Stack) -> None:
    user = stack.make_user()
    async with SessionHttp(stack.session.url, user.api_key) as http, AuthClient(stack.auth.url, user.api_key) as auth:
        project = await http.create_project("fresh tokens")
        async with open_session(ws_url(stack), project.id, auth.token_source(project.id)) as session:
            for expected in (2, 3, 4):
                await session.reconnect()

                def reconnected(readies: int = expected) -> bool:
                    return session.stats.readies == readies and session.connected

                await until(reconnected, "the session to reconnect")
            stats = session.stats
            assert stats.connects == stats.tokens_fetched == stats.readies == 4
    assert await tokens_of(stack, user.user_id) == (4, 4)


@pytest.mark.trio
async def test_F21_sdk_prompt_round_trip_streams_the_answer(stack: Stack) -> None:
    user = stack.make_user()
    async with SessionHttp(stack.session.url, user.api_key) as http, AuthClient(stack.auth.url, user.api_key) as auth:
        project = await http.create_project("round trip")
        async with open_session(
            ws_url(stack), project.slug, auth.token_source(project.id), origin=ALLOWED_ORIGIN
        ) as session:
            with trio.fail_after(scaled(20)):
                seq = await session.send("build me a todo app")
                chunks: list[str] = []
                async for event in session.events():
                    if answers(event, seq) and event.kind == "agent_chunk":
                        chunks.append(event_text(event))
                    if answers(event, seq) and event.kind == "agent_done":
                        break
    assert "".join(chunks) == "You said: build me a todo app"
    assert await prompts_by_text(stack, project.id) == {"build me a todo app": 1}


@pytest.mark.trio
async def test_F21_sdk_prompts_are_stored_once_wherever_a_reconnect_cuts_them(stack: Stack) -> None:
    user = stack.make_user()
    rng = random.Random(35)
    async with SessionHttp(stack.session.url, user.api_key) as http, AuthClient(stack.auth.url, user.api_key) as auth:
        project = await http.create_project("outbox")
        async with open_session(ws_url(stack), project.id, auth.token_source(project.id)) as session:
            seqs: dict[str, int] = {}

            async def send(text: str) -> None:
                seqs[text] = await session.send(text)

            with trio.fail_after(scaled(60)):
                for n in range(8):
                    await until(lambda: session.connected, "the session to be connected")
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(send, f"prompt {n}")
                        await pause(rng.uniform(0, 0.02))  # where the cut lands is what varies
                        await session.reconnect()
            assert session.stats.readies >= 8  # every cut but the last was followed by a new connection
    stored = await prompts_by_text(stack, project.id)
    assert stored == {f"prompt {n}": 1 for n in range(8)}
    assert len(set(seqs.values())) == 8


@pytest.mark.trio
async def test_F22_sdk_follows_a_draining_replica_to_another_and_loses_nothing(stack_factory: StackFactory) -> None:
    two = stack_factory.start(replicas=2)
    user = two.make_user()
    total = 300
    async with SessionHttp(two.replicas[1].url, user.api_key) as http, AuthClient(two.auth.url, user.api_key) as auth:
        project = await http.create_project("drain")
        received: list[int] = []
        async with open_session(
            [ws_url(two, 0), ws_url(two, 1)], project.id, auth.token_source(project.id), resume_from=0
        ) as session:

            async def publish() -> None:
                for start in range(1, total + 1, 10):
                    await two.publish(project.id, note_events("drain", start, 10), replica=1)
                    await pause(0.005)  # spread the events over the drain

            async def drain_replica_0() -> None:
                await trio.to_thread.run_sync(two.replicas[0].proc.terminate)

            with trio.fail_after(scaled(60)):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(publish)
                    async for event in session.events():
                        received.append(event.seq)
                        if len(received) == total // 3:
                            # SIGTERM: the replica drains (retryable close), the client resumes on the other.
                            nursery.start_soon(drain_replica_0)
                        if event.seq >= total:
                            break
            stats = session.stats
    assert received == list(range(1, total + 1))
    assert received == await log_seqs(two, project.id)
    assert stats.reconnects >= 1
    assert stats.connects == stats.tokens_fetched


@pytest.mark.trio
async def test_F22_sdk_replays_in_batches_in_order_and_batch_false_gets_one_event_per_frame(stack: Stack) -> None:
    """Batched delivery (the default) and single events deliver the same log, in order, once."""
    user = stack.make_user()
    total = 600
    async with SessionHttp(stack.session.url, user.api_key) as http, AuthClient(stack.auth.url, user.api_key) as auth:
        project = await http.create_project("batches")
        for start in range(1, total + 1, 200):
            await stack.publish(project.id, note_events("batch", start, 200))
        log = await log_seqs(stack, project.id)
        assert len(log) == total
        for batch in (True, False):
            received: list[int] = []
            async with open_session(
                ws_url(stack), project.id, auth.token_source(project.id), resume_from=0, batch=batch
            ) as session:
                assert session.ready.batch is batch
                with trio.fail_after(scaled(30)):
                    async for event in session.events():
                        received.append(event.seq)
                        assert event.data["n"] == event.seq
                        if event.seq >= total:
                            break
                await until(lambda s=session: s.stats.events_delivered == total, f"{total} events delivered")
                stats = session.stats
            assert received == log, batch
            assert (stats.duplicates_dropped, stats.gaps, stats.connects) == (0, 0, 1), batch
            if batch:
                # The replay is ready at once: several events per frame.
                assert 1 <= stats.batches < total, stats
            else:
                assert stats.batches == 0, stats


@pytest.mark.trio
async def test_F32_sdk_stops_on_terminal_errors_without_retrying(stack: Stack) -> None:
    user = stack.make_user()
    async with SessionHttp(stack.session.url, user.api_key) as http, AuthClient(stack.auth.url, user.api_key) as auth:
        calls = 0

        async def counting_token() -> str:
            nonlocal calls
            calls += 1
            return (await auth.issue_token()).token

        with pytest.raises(TetherClosed) as missing, trio.fail_after(scaled(20)):
            async with open_session(ws_url(stack), "no-such-project", counting_token):
                pytest.fail("a missing project must not open")
        assert (missing.value.code, missing.value.name, missing.value.action) == (
            4040,
            "project_not_found",
            "show_message",
        )
        assert missing.value.message == "Project not found."
        assert calls == 1

        mine = await http.create_project("mine")
        other = await http.create_project("other")
        with pytest.raises(TetherClosed) as forbidden, trio.fail_after(scaled(20)):
            async with open_session(ws_url(stack), other.id, auth.token_source(mine.id)):
                pytest.fail("a token bound to another project must not open")
        assert (forbidden.value.code, forbidden.value.name) == (4030, "forbidden")

        with pytest.raises(TetherHTTPError) as refused, trio.fail_after(scaled(20)):
            async with open_session(ws_url(stack), mine.id, auth.token_source(mine.id), origin="https://evil.example"):
                pytest.fail("a refused origin must not open")
        assert (refused.value.status, refused.value.code) == (403, "origin_not_allowed")

    async with AuthClient(stack.auth.url, "tk_not-a-real-key-0123456789") as bad:
        with pytest.raises(TetherHTTPError) as unauthenticated, trio.fail_after(scaled(20)):
            async with open_session(ws_url(stack), mine.id, bad.token_source()):
                pytest.fail("a refused API key must not open")
        assert unauthenticated.value.status == 401


@pytest.mark.trio
async def test_F32_the_sdk_catalogue_is_the_one_the_service_serves(stack: Stack) -> None:
    """The SDK decides with the contract's catalogue shipped in the package; the service
    serves the same contract file, so both must be equal entry for entry."""
    user = stack.make_user()
    async with SessionHttp(stack.session.url, user.api_key) as http, AuthClient(stack.auth.url, user.api_key) as auth:
        served = await http.close_codes()
        project = await http.create_project("catalogue")
        async with open_session(ws_url(stack), project.id, auth.token_source(project.id)) as session:
            assert session.catalogue == served == CloseCatalogue.bundled()
    assert {e.name for e in served.entries} >= {"forbidden", "project_not_found", "draining", "token_used"}


@pytest.mark.trio
async def test_sdk_http_errors_carry_the_problem_details(stack: Stack) -> None:
    user = stack.make_user()
    async with SessionHttp(stack.session.url, user.api_key) as http:
        with pytest.raises(TetherHTTPError) as missing:
            await http.get_project_by_slug("nothing-here")
        assert (missing.value.status, missing.value.code) == (404, "not_found")
        assert missing.value.request_id
        created = await http.create_project("Idempotent", idempotency_key="same-key-1")
        again = await http.create_project("Idempotent", idempotency_key="same-key-1")
        assert created.id == again.id
        assert [p.id for p in await http.list_projects()] == [created.id]
        await http.delete_project(created.id)
        assert await http.list_projects() == []


# -- CLI and example ---------------------------------------------------------------------


def test_F05_cli_login_stores_the_key_privately_and_never_prints_it(stack: Stack, tmp_path: Path) -> None:
    user = stack.make_user()
    config = tmp_path / "config"
    login = run_tether(["login"], cli_env(stack, config), stdin=user.api_key + "\n")
    assert login.code == 0, login.err
    login.assert_no_secrets(user.api_key)
    stored = config / "credentials"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert json.loads(stored.read_text())["api_key"] == user.api_key
    # Later commands use the stored key.
    created = run_tether(["projects", "create", "From stored key"], cli_env(stack, config))
    assert created.code == 0, created.err
    assert "from-stored-key" in created.out
    refused = run_tether(["login"], cli_env(stack, tmp_path / "other"), stdin="tk_wrong-key-0123456789\n")
    assert refused.code == 1
    assert "401" in refused.err
    assert not (tmp_path / "other" / "credentials").exists()


def test_cli_projects_send_connect_and_tail(stack: Stack, tmp_path: Path) -> None:
    user = stack.make_user()
    env = cli_env(stack, tmp_path, user.api_key, TETHER_ORIGIN=ALLOWED_ORIGIN)
    created = run_tether(["projects", "create", "CLI app"], env)
    assert created.code == 0, created.err
    listed = run_tether(["projects", "list"], env)
    assert "cli-app" in listed.out

    sent = run_tether(["send", "cli-app", "hello there"], env)
    assert sent.code == 0, sent.err
    assert sent.out == "You said: hello there\n"

    chat = run_tether(["connect", "cli-app"], env, stdin="first line\nsecond line\n")
    assert chat.code == 0, chat.err
    assert chat.out.splitlines() == [
        "> first line",
        "You said: first line",
        "> second line",
        "You said: second line",
    ]

    missing = run_tether(["send", "nope", "x"], env)
    assert missing.code == 1
    assert "not found" in missing.err

    lines = tail_lines(env, ["tail", "cli-app", "--from", "0"], until_kinds=3)
    events = [json.loads(line) for line in lines]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    single = [
        json.loads(line) for line in tail_lines(env, ["tail", "cli-app", "--from", "0", "--no-batch"], until_kinds=3)
    ]
    assert single[: len(events)] == events  # one event per frame: the same log
    assert events[0]["kind"] == "prompt"
    assert events[0]["data"]["text"] == "hello there"
    for run in (created, listed, sent, chat):
        run.assert_no_secrets(user.api_key)


def tail_lines(env: dict[str, str], args: list[str], *, until_kinds: int, timeout: float = 30.0) -> list[str]:
    """Run a never-ending command until ``until_kinds`` agent_done lines; stop it by its PID."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tether_client", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    buffer = b""
    try:
        deadline = time.monotonic() + scaled(timeout)
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while buffer.count(b'"agent_done"') < until_kinds:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"tail printed only: {buffer.decode()[-300:]}"
                if selector.select(remaining):
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    assert chunk, f"tail exited early: {buffer.decode()[-300:]}"
                    buffer += chunk
    finally:
        proc.terminate()
        proc.wait(timeout=scaled(10))
        proc.stdout.close()
    return [line for line in buffer.decode().splitlines() if line.strip()]


def test_example_chat_once_prints_the_streamed_answer(stack: Stack, tmp_path: Path) -> None:
    user = stack.make_user()
    env = cli_env(stack, tmp_path, user.api_key, TETHER_ORIGIN=ALLOWED_ORIGIN)
    first = run_example("chat_once.py", [], env)  # creates its own project
    assert first.code == 0, first.err
    assert first.out == "You said: Hello, Tether!\n"
    again = run_example("chat_once.py", ["chat-once", "once more"], env)
    assert again.code == 0, again.err
    assert again.out == "You said: once more\n"
