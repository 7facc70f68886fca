"""F22, F31 and F05 in a real browser: the demo page survives losing its replica, keeps its
handlers, and takes a fresh single-use token for every connect.

Each test runs two session replicas on one database behind one auth-token service; the
page's ``/demo/config.json`` lists both WebSocket URLs and the client rotates through them
on reconnect.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, Route, expect

from tests.support.auth import AUTH_CONTRACT, bearer
from tests.support.contract import sync_client
from tests.support.secrets import find_leaks, remember, remember_from_response
from tests.support.session import StackFactory
from tests.support.waiting import scaled, wait_until

from .demo import (
    DemoStack,
    WsRecorder,
    answer_bubble,
    chunk_spans,
    client_info,
    create_project,
    login,
    ms,
    open_project,
    send_prompt,
    shot,
    split_answer,
    start_demo_stack,
    transcript_seqs,
    wait_ready,
    watch_page_errors,
)

pytestmark = pytest.mark.browser

TOKEN_CLOSES = ("token_unknown", "token_expired", "token_used")


def wait_js(page: Page, expression: str, timeout: float = 20) -> None:
    page.wait_for_function(expression, timeout=ms(timeout))


# ------------------------------------------------------------------ F22 + F31


def test_F22_F31_kill_replica_mid_stream_page_resumes_every_chunk_once(
    stack_factory: StackFactory, context: BrowserContext
) -> None:
    chunks = 60
    demo = start_demo_stack(
        stack_factory,
        replicas=2,
        own_ws_first=True,  # a page served by replica i connects to replica i first
        session_env={"TETHER_AGENT_CHUNKS": str(chunks), "TETHER_AGENT_DELAY_MS": "30"},
    )
    user = demo.stack.make_user()
    name = "test_F22_F31_kill_replica_mid_stream_page_resumes_every_chunk_once"

    # The watcher is the page under test; its replica will die mid-answer.  The builtin agent
    # runs on the replica that stored the prompt, so the prompt is typed in a second tab that
    # is connected to the other replica (the answer reaches the watcher through fan-out).
    watcher = context.new_page()
    watcher_errors = watch_page_errors(watcher)
    sockets = WsRecorder(watcher)
    login(watcher, demo.origins[0], user.api_key)
    project = create_project(watcher, "Resume demo")
    open_project(watcher, demo.origins[0], project.slug)
    writer = context.new_page()
    writer_errors = watch_page_errors(writer)
    open_project(writer, demo.origins[1], project.slug)

    watcher_id = client_info(watcher)["clientId"]
    victim = demo.wait_holder(watcher_id)
    survivor = demo.wait_holder(client_info(writer)["clientId"])
    assert victim != survivor, "both pages are on one replica: the test would kill the agent"

    # F31: handlers subscribed before the drop must keep firing after it.
    watcher.evaluate(
        """() => {
            const c = window.__tether.client;
            window.__f31 = {events: [], states: []};
            c.on('event', (ev) => window.__f31.events.push(ev.seq));
            c.on('state', (s) => window.__f31.states.push(s.state));
        }"""
    )

    prompt = "Keep streaming while a replica dies"
    send_prompt(writer, prompt)
    wait_js(watcher, "() => document.querySelectorAll('#transcript span[data-kind=agent_chunk]').length >= 12")
    demo.replica(victim).proc.kill()  # SIGKILL: no drain, no close frame; the socket just dies
    shot(watcher, name, "1-replica-killed")

    wait_js(watcher, "() => window.__tether.client.stats.reconnects >= 1 && window.__tether.client.state === 'ready'")
    bubble = answer_bubble(watcher, prompt)
    expect(bubble).to_have_attribute("data-done", "true", timeout=ms(20))
    expect(watcher.locator("#conn-message")).to_have_text("Connected to Resume demo.")
    shot(watcher, name, "2-resumed-and-done")

    # Every chunk exactly once, in order, visible.
    prompt_seq = int(bubble.get_attribute("data-prompt-seq") or "0")
    spans = [s for s in chunk_spans(watcher) if s["promptSeq"] == str(prompt_seq)]
    indices = [s["index"] for s in spans]
    duplicates = len(indices) - len(set(indices))
    losses = len(set(range(chunks)) - set(indices))
    info = client_info(watcher)
    first, *later = sockets.sockets
    before_kill = [f for f in first.events() if f.get("kind") == "agent_chunk"]
    resume_init = later[0].of_type("init", sent=True)[0] if later else {}
    assert all(init.get("batch") is True for init in sockets.inits())  # the demo opts in to batched delivery
    print(
        f"\nF22: {len(before_kill)} of {chunks} chunks arrived before the kill; the page resumed from seq "
        f"{resume_init.get('resume_from')} on replica {survivor}; DOM: {len(indices)} chunk spans, "
        f"duplicates={duplicates}, losses={losses}; client dropped {info['stats']['duplicatesDropped']} "
        f"replayed duplicate(s); sockets opened={len(sockets.sockets)}; stats={info['stats']}"
    )
    assert duplicates == 0, indices
    assert losses == 0, indices
    assert indices == list(range(chunks)), indices
    assert [s["seq"] for s in spans] == list(range(prompt_seq + 1, prompt_seq + 1 + chunks))
    assert [s["text"] for s in spans] == split_answer(prompt, chunks)
    assert all(s["visible"] for s in spans)
    expect(bubble.locator(".body")).to_have_text(f"You said: {prompt}")
    seqs = transcript_seqs(watcher)
    assert seqs == sorted(set(seqs)), seqs

    # It really was mid-stream, and the page resumed from where it was (F22).
    assert 0 < len(before_kill) < chunks, len(before_kill)
    last_before = max(f["seq"] for f in first.events())
    assert resume_init.get("resume_from") == last_before, resume_init
    assert prompt_seq < last_before < prompt_seq + chunks
    resumed = demo.log(survivor, "ws_ready", client_id=watcher_id)
    assert [line["resume_from"] for line in resumed] == [last_before], resumed

    # F31: the handlers subscribed before the drop saw the reconnect and every later event.
    f31: dict[str, list[Any]] = watcher.evaluate("() => window.__f31")
    assert "reconnecting" in f31["states"], f31["states"]
    assert f31["states"][-1] == "ready", f31["states"]
    events = f31["events"]
    assert events == list(range(events[0], events[0] + len(events))), events
    assert events[-1] == prompt_seq + chunks + 1, events  # through agent_done
    assert any(seq > last_before for seq in events), "no handler fired after the reconnect"

    # The writer (never disconnected) saw the same answer.
    writer_bubble = answer_bubble(writer, prompt)
    expect(writer_bubble).to_have_attribute("data-done", "true", timeout=ms(10))
    expect(writer_bubble.locator(".body")).to_have_text(f"You said: {prompt}")
    assert client_info(writer)["stats"]["reconnects"] == 0
    assert watcher_errors == []
    assert writer_errors == []


# ------------------------------------------------------------------ F05


def cors_headers(origin: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
        "Content-Type": "application/json",
    }


def issue(demo: DemoStack, api_key: str, project_id: str) -> dict[str, Any]:
    with sync_client(
        AUTH_CONTRACT, demo.stack.auth.url, timeout=scaled(10), on_response=remember_from_response
    ) as http:
        response = http.post("/v1/tokens", json={"project_id": project_id}, headers=bearer(api_key))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def consume(demo: DemoStack, token: str) -> None:
    with sync_client(AUTH_CONTRACT, demo.stack.auth.url, timeout=scaled(10)) as http:
        response = http.post("/v1/tokens/consume", json={"token": token}, headers=bearer(demo.stack.auth.service_key))
    assert response.status_code == 200, response.text


def token_closes(demo: DemoStack) -> list[dict[str, Any]]:
    return [line for line in demo.log_all("ws_close") if line.get("reason") in TOKEN_CLOSES]


def test_F05_expired_or_used_token_fetches_a_fresh_one(stack_factory: StackFactory, context: BrowserContext) -> None:
    ttl_s = 2
    # Short-lived tokens, so that one can expire within the test (the page uses its own at once).
    demo = start_demo_stack(
        stack_factory,
        replicas=2,
        session_env={"TETHER_DRAIN_WINDOW_MS": "300"},
        auth_env={"TETHER_TOKEN_TTL_S": str(ttl_s)},
    )
    user = demo.stack.make_user()
    name = "test_F05_expired_or_used_token_fetches_a_fresh_one"
    page = context.new_page()
    page_errors = watch_page_errors(page)
    sockets = WsRecorder(page)
    origin = demo.origins[1]  # served by replica 1; the client tries replica 0 first
    login(page, origin, user.api_key)
    project = create_project(page, "Token demo")

    # A used token (issued for this very project, then consumed) and an expired one.
    used = issue(demo, user.api_key, project.id)["token"]
    consume(demo, used)
    expiring = issue(demo, user.api_key, project.id)
    expires_at = dt.datetime.fromisoformat(expiring["expires_at"]).timestamp()
    assert expires_at - time.time() <= ttl_s + 1, expiring
    wait_until(lambda: time.time() > expires_at + 0.2, timeout=ttl_s + 5, what="the token's expiry")
    remember(used, expiring["token"])

    # The page's getToken() is a POST to the auth service: its first two answers are replaced
    # by the expired and the used token; every later call goes through untouched.
    injected = [expiring["token"], used]
    posts: list[str] = []

    def tokens(route: Route) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        posts.append(route.request.url)
        if len(posts) <= len(injected):
            body = {"token": injected[len(posts) - 1], "expires_at": expiring["expires_at"], "ttl_s": ttl_s}
            route.fulfill(status=201, headers=cors_headers(origin), body=json.dumps(body))
        else:
            route.continue_()

    page.route(f"{demo.stack.auth.url}/v1/tokens", tokens)
    page.goto(f"{origin}/p/{project.slug}")
    wait_ready(page)
    shot(page, name, "1-recovered-from-bad-tokens")

    # Expired, then used: each refused with its own code, and each time a fresh token was fetched.
    info = client_info(page)
    inits = sockets.inits()
    errors = sockets.errors()
    assert [e["code"] for e in errors] == ["token_expired", "token_used"], errors
    assert [e["close_code"] for e in errors] == [4011, 4012], errors
    assert [i["token"] for i in inits][:2] == injected
    assert info["stats"]["connectAttempts"] == 3, info
    assert info["stats"]["tokensFetched"] == 3, info
    assert len(posts) == 3
    assert len(inits) == 3
    closes = token_closes(demo)
    assert sorted(line["reason"] for line in closes) == ["token_expired", "token_used"], closes
    # Each refusal was logged by the replica that socket went to (the error frame carries no
    # connection id, so the socket's URL names the replica).
    refused_on = [demo.ws_urls.index(s.url) for s in sockets.sockets[:2]]
    logged_on = [
        (line["ts"], line["reason"], i)
        for i in range(len(demo.origins))
        for line in demo.log(i, "ws_close")
        if line.get("reason") in TOKEN_CLOSES
    ]
    assert [(reason, i) for _ts, reason, i in sorted(logged_on)] == [
        ("token_expired", refused_on[0]),
        ("token_used", refused_on[1]),
    ], logged_on

    # A drop (SIGTERM: the replica drains with a retryable close): the next connect fetches a
    # fresh token first, and the server never sees a stale one.
    holder = demo.wait_holder(info["clientId"])
    demo.replica(holder).proc.terminate()
    wait_js(page, "() => window.__tether.client.stats.connectAttempts >= 4 && window.__tether.client.state === 'ready'")
    shot(page, name, "2-reconnected-after-drain")
    after = client_info(page)
    inits = sockets.inits()
    tokens_sent = [i["token"] for i in inits]
    remember(*tokens_sent)
    print(
        f"\nF05: connects={after['stats']['connectAttempts']} tokensFetched={after['stats']['tokensFetched']} "
        f"token POSTs={len(posts)} distinct tokens sent={len(set(tokens_sent))}/{len(tokens_sent)}; "
        f"server token closes: {[line['reason'] for line in token_closes(demo)]}"
    )
    assert after["stats"]["tokensFetched"] == after["stats"]["connectAttempts"] == len(posts) == len(inits)
    assert len(set(tokens_sent)) == len(tokens_sent), "a token was sent twice"
    assert [e["code"] for e in sockets.errors()][2:] == ["draining"]
    assert len(token_closes(demo)) == 2, token_closes(demo)  # nothing new after the drop
    assert demo.log(holder, "ws_close", client_id=info["clientId"], reason="draining")
    other = 1 - holder
    assert demo.log(other, "ws_ready", client_id=info["clientId"])

    # F07 on the way: no token reached a log file.
    logs = [p.proc.log_path for p in demo.stack.replicas] + [demo.stack.auth.proc.log_path]
    logs += [p.proc.out_path for p in demo.stack.replicas] + [demo.stack.auth.proc.out_path]
    assert find_leaks(logs, tokens_sent) == []
    assert page_errors == []
