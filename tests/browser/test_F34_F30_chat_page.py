"""F34 and F30 in a real browser: the demo's chat page shows the agent's streamed answer,
and re-rendering it a hundred times never opens a second WebSocket.

Each test gets its own stack (fresh database, auth-token service, one session replica), so
every connection the replica logs or counts is the page's.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import BrowserContext, expect

from tests.support.session import StackFactory

from .demo import (
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
    watch_page_errors,
)

pytestmark = pytest.mark.browser

# Records, for every chunk span the moment it enters the DOM: is it visible, is the answer
# already done, and what text the bubble shows.  Proves the text streams in chunk by chunk.
CHUNK_OBSERVER = """() => {
    window.__chunkLog = [];
    const seen = new WeakSet(); // a new bubble and its first span arrive in one batch
    const observer = new MutationObserver((mutations) => {
        for (const m of mutations) {
            for (const n of m.addedNodes) {
                if (!(n instanceof Element)) continue;
                const spans = n.matches('span[data-kind=agent_chunk]') ? [n] : [...n.querySelectorAll('span[data-kind=agent_chunk]')];
                for (const s of spans) {
                    if (seen.has(s)) continue;
                    seen.add(s);
                    const bubble = s.closest('.msg.agent');
                    window.__chunkLog.push({
                        index: Number(s.dataset.index),
                        visible: s.checkVisibility({opacityProperty: true, visibilityProperty: true}),
                        bubbleVisible: bubble.checkVisibility({opacityProperty: true, visibilityProperty: true}),
                        bubbleText: bubble.querySelector('.body').textContent,
                        done: bubble.dataset.done === 'true',
                        chunksSoFar: bubble.querySelectorAll('span[data-kind=agent_chunk]').length,
                    });
                }
            }
        }
    });
    observer.observe(document.getElementById('transcript'), {childList: true, subtree: true});
}"""


def assert_answer_complete(page: Any, prompt: str, chunks: int) -> list[dict[str, Any]]:
    """The answer to ``prompt``: every chunk exactly once, in order, visible; returns the spans."""
    bubble = answer_bubble(page, prompt)
    expect(bubble).to_have_attribute("data-done", "true", timeout=ms(20))
    prompt_seq = int(bubble.get_attribute("data-prompt-seq") or "0")
    spans = [s for s in chunk_spans(page) if s["promptSeq"] == str(prompt_seq)]
    indices = [s["index"] for s in spans]
    seqs = [s["seq"] for s in spans]
    assert indices == list(range(chunks)), f"chunk indices {indices}"
    assert seqs == list(range(prompt_seq + 1, prompt_seq + 1 + chunks)), f"chunk seqs {seqs}"
    assert [s["text"] for s in spans] == split_answer(prompt, chunks)
    assert all(s["visible"] for s in spans), spans
    expect(bubble.locator(".body")).to_have_text(f"You said: {prompt}")
    return spans


def test_F34_streamed_answer_is_visible(stack_factory: StackFactory, context: BrowserContext) -> None:
    chunks = 8
    demo = start_demo_stack(
        stack_factory, session_env={"TETHER_AGENT_CHUNKS": str(chunks), "TETHER_AGENT_DELAY_MS": "60"}
    )
    user = demo.stack.make_user()
    page = context.new_page()
    page_errors = watch_page_errors(page)
    name = "test_F34_streamed_answer_is_visible"

    login(page, demo.origins[0], user.api_key)
    slug = create_project(page, "Streaming demo").slug
    shot(page, name, "1-projects")
    open_project(page, demo.origins[0], slug)
    expect(page.locator("#conn-message")).to_have_text("Connected to Streaming demo.")

    page.evaluate(CHUNK_OBSERVER)
    prompt = "Is the streamed answer visible?"
    send_prompt(page, prompt)
    bubble = answer_bubble(page, prompt)

    # Chunk by chunk, as the user sees it: each chunk becomes visible in turn.
    for i in range(chunks):
        expect(bubble.locator(f"span[data-kind=agent_chunk][data-index='{i}']")).to_be_visible(timeout=ms(10))
        if i == chunks // 2:
            shot(page, name, "2-mid-stream")
    spans = assert_answer_complete(page, prompt, chunks)
    shot(page, name, "3-answer-done")

    # While it streamed: every chunk was visible the moment it arrived, the bubble showed the
    # text so far (a prefix that grows one chunk at a time), and "done" came only after all.
    log: list[dict[str, Any]] = page.evaluate("() => window.__chunkLog")
    parts = split_answer(prompt, chunks)
    assert [entry["index"] for entry in log] == list(range(chunks)), log
    for entry in log:
        k = entry["index"]
        assert entry["visible"], entry
        assert entry["bubbleVisible"], entry
        assert entry["chunksSoFar"] == k + 1, entry
        assert entry["bubbleText"] == "".join(parts[: k + 1]), entry
        assert not entry["done"], entry

    # The whole transcript: data-seq strictly increasing, no element twice.
    seqs = transcript_seqs(page)
    assert seqs == sorted(set(seqs)), seqs
    assert len(spans) == chunks
    assert page_errors == []


def test_F30_hundred_rerenders_one_connection(stack_factory: StackFactory, context: BrowserContext) -> None:
    demo = start_demo_stack(stack_factory, session_env={"TETHER_AGENT_CHUNKS": "6", "TETHER_AGENT_DELAY_MS": "10"})
    user = demo.stack.make_user()
    page = context.new_page()
    page_errors = watch_page_errors(page)
    sockets = WsRecorder(page)
    name = "test_F30_hundred_rerenders_one_connection"

    login(page, demo.origins[0], user.api_key)
    slug = create_project(page, "Storm test").slug
    open_project(page, demo.origins[0], slug)
    before = client_info(page)
    assert before["stats"]["connectAttempts"] == 1, before

    # A hundred full re-renders, each re-subscribing the view's handlers (off + on) and, like a
    # component effect would, calling connect() again.  None may touch the connection.
    result: dict[str, Any] = page.evaluate(
        """() => {
            const t = window.__tether;
            const states = [];
            for (let i = 0; i < 100; i++) {
                t.rerender();
                const fn = (s) => states.push(s.state);
                const off = t.client.on('state', fn);
                t.client.connect();
                off();
            }
            return {renders: t.renders, state: t.client.state, stats: t.client.stats, states};
        }"""
    )
    assert result["renders"] >= 101, result
    assert result["state"] == "ready", result
    assert result["states"] == [], "re-rendering changed the connection state"

    # The re-subscribed handlers are the live ones, exactly once each: a prompt's answer
    # renders every chunk once (a leaked handler would render it twice).
    prompt = "after a hundred renders"
    send_prompt(page, prompt)
    assert_answer_complete(page, prompt, 6)
    shot(page, name, "after-100-rerenders")

    after = client_info(page)
    replica = demo.replica(0)
    ws_open = replica.proc.events("ws_open")
    ws_ready = replica.proc.events("ws_ready", client_id=after["clientId"])
    connects = demo.connects(0)
    print(
        f"\nF30: after {after['renders']} renders the server saw {len(ws_open)} ws_open line(s), "
        f"{len(ws_ready)} ws_ready for the page, tether_ws_connects_total={connects:g}; "
        f"browser opened {len(sockets.sockets)} WebSocket(s); client.stats={after['stats']}"
    )
    assert after["stats"]["connectAttempts"] == 1, after
    assert after["stats"]["reconnects"] == 0, after
    assert after["stats"]["tokensFetched"] == 1, after
    assert len(ws_open) == 1, ws_open
    assert len(ws_ready) == 1, ws_ready
    assert ws_ready[0]["user_id"] == user.user_id
    assert connects == 1
    assert demo.metrics(0).value("tether_ws_connections_open") == 1
    assert len(sockets.sockets) == 1, [s.url for s in sockets.sockets]
    assert not replica.proc.events("ws_close"), "the page's only connection was closed"
    assert page_errors == []
