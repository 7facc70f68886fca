"""F32, F33 and F07 in a real browser: terminal refusals are explained and never retried,
a missing project makes no connection attempt, and a page from a foreign origin cannot open
the session WebSocket.

Where the assertion is that something does NOT happen (a retry, a connection), the test
watches a bounded window after the page settled and then counts on both sides: the
browser's own WebSocket events and the replica's log lines and metrics.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Route, expect

from tests.support.session import StackFactory, close_catalogue
from tether_dev.pg import free_port

from .demo import (
    HOST,
    WsRecorder,
    client_info,
    create_project,
    login,
    ms,
    quiet_window,
    shot,
    start_demo_stack,
    watch_page_errors,
)

pytestmark = pytest.mark.browser

# Long enough for several retries of a client that wrongly retried (backoff starts at
# 0-250 ms), short enough to keep the suite fast.
QUIET_WINDOW_MS = 1500


def test_F32_forbidden_project_terminal_message_no_retry(stack_factory: StackFactory, context: BrowserContext) -> None:
    demo = start_demo_stack(stack_factory)
    user = demo.stack.make_user()
    name = "test_F32_forbidden_project_terminal_message_no_retry"
    page = context.new_page()
    page_errors = watch_page_errors(page)
    sockets = WsRecorder(page)
    login(page, demo.origins[0], user.api_key)
    other = create_project(page, "Someone else's room")
    mine = create_project(page, "My room")

    # The page's getToken() asks for a token bound to the project it opens; rewrite the request
    # so the auth service issues a real token bound to the other project instead.
    token_posts: list[dict[str, Any]] = []

    def tokens(route: Route) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        asked = json.loads(route.request.post_data or "{}")
        token_posts.append(asked)
        route.continue_(post_data=json.dumps({**asked, "project_id": other.id}))

    page.route(f"{demo.stack.auth.url}/v1/tokens", tokens)
    page.goto(f"{demo.origins[0]}/p/{mine.slug}")

    forbidden = close_catalogue()["forbidden"]
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "failed", timeout=ms(15))
    message = page.locator("#conn-message")
    expect(message).to_have_text(forbidden["message"])
    expect(message).to_be_visible()
    expect(page.locator("#send-btn")).to_be_disabled()
    shot(page, name, "forbidden")

    quiet_window(page, QUIET_WINDOW_MS)  # no retry may happen within it

    info = client_info(page)
    replica = demo.replica(0)
    closes = replica.proc.events("ws_close")
    print(
        f"\nF32: after {QUIET_WINDOW_MS} ms: state={info['state']} attempts={info['stats']['connectAttempts']} "
        f"token POSTs={len(token_posts)} browser sockets={len(sockets.sockets)} "
        f"server ws_open={len(replica.proc.events('ws_open'))} connects_total={demo.connects(0):g}"
    )
    assert token_posts == [{"project_id": mine.id}]
    assert info["state"] == "failed"
    assert info["failure"] == {
        "code": forbidden["code"],
        "name": "forbidden",
        "message": forbidden["message"],
        "action": forbidden["action"],
    }, info
    assert info["stats"]["connectAttempts"] == 1, info
    assert info["stats"]["reconnects"] == 0, info
    assert len(sockets.sockets) == 1
    assert [e["code"] for e in sockets.errors()] == ["forbidden"]
    assert len(replica.proc.events("ws_open")) == 1
    assert [(line["code"], line["reason"]) for line in closes] == [(forbidden["code"], "forbidden")], closes
    assert closes[0]["level"] in ("warning", "error")
    assert closes[0]["user_id"] == user.user_id
    assert closes[0]["project_id"] == mine.id
    assert demo.connects(0) == 1
    assert demo.metrics(0).value("tether_ws_connects_total", outcome="refused:forbidden") == 1
    assert page_errors == []


def test_F33_missing_project_shows_not_found_and_no_connection_attempts(
    stack_factory: StackFactory, context: BrowserContext
) -> None:
    demo = start_demo_stack(stack_factory)
    user = demo.stack.make_user()
    name = "test_F33_missing_project_shows_not_found_and_no_connection_attempts"
    page = context.new_page()
    page_errors = watch_page_errors(page)
    sockets = WsRecorder(page)
    login(page, demo.origins[0], user.api_key)

    page.goto(f"{demo.origins[0]}/p/no-such-slug")
    expect(page.locator("body")).to_have_attribute("data-view", "not-found", timeout=ms(10))
    expect(page.get_by_text("Project not found", exact=True)).to_be_visible()
    expect(page.locator("#conn-message")).to_have_text("Project not found")
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "failed")
    expect(page.locator("#not-found-view")).to_be_visible()
    shot(page, name, "not-found")

    quiet_window(page, QUIET_WINDOW_MS)  # no connection may be attempted within it

    info = client_info(page)
    replica = demo.replica(0)
    print(
        f"\nF33: after {QUIET_WINDOW_MS} ms: client={info['client']} browser sockets={len(sockets.sockets)} "
        f"server ws_open={len(replica.proc.events('ws_open'))} connects_total={demo.connects(0):g}"
    )
    assert info["client"] is None, info
    assert sockets.sockets == []
    assert replica.proc.events("ws_open") == []
    assert replica.proc.events("ws_rejected") == []
    assert demo.connects(0) == 0
    assert demo.metrics(0).value("tether_ws_connections_open") == 0
    assert page_errors == []


# ------------------------------------------------------------------ F07

# A hostile page: it tries to open the session WebSocket and to get a connection token with the
# visitor's cookies, and reports what happened in window.__probe.
PROBE_JS = """async ({wsUrl, tokenUrl}) => {
    const probe = {opened: false, errored: false, closeCode: null, tokenError: null, token: null};
    await new Promise((resolve) => {
        let ws;
        try {
            ws = new WebSocket(wsUrl);
        } catch (err) {
            probe.errored = String(err);
            resolve();
            return;
        }
        ws.onopen = () => { probe.opened = true; ws.close(1000, 'probe done'); };
        ws.onerror = () => { probe.errored = true; };
        ws.onclose = (ev) => { probe.closeCode = ev.code; resolve(); };
    });
    try {
        const res = await fetch(tokenUrl, {
            method: 'POST', credentials: 'include',
            headers: {'content-type': 'application/json'}, body: '{}',
        });
        probe.token = res.status;
    } catch (err) {
        probe.tokenError = String(err);
    }
    return probe;
}"""


class _EvilSite(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>Totally legit</title><p>Nothing to see here.</p>"
        self.send_response(200 if self.path == "/" else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet: the test asserts on the session replica's log


@pytest.fixture
def evil_origin() -> Iterator[str]:
    """``http://127.0.0.1:<port>``: a static site on another port, i.e. another origin."""
    server = ThreadingHTTPServer((HOST, free_port(HOST)), _EvilSite)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_F07_cross_site_websocket_from_non_allowed_origin_is_refused(
    stack_factory: StackFactory, context: BrowserContext, evil_origin: str
) -> None:
    demo = start_demo_stack(stack_factory)
    user = demo.stack.make_user()
    name = "test_F07_cross_site_websocket_from_non_allowed_origin_is_refused"
    replica = demo.replica(0)
    args = {"wsUrl": demo.ws_urls[0], "tokenUrl": f"{demo.stack.auth.url}/v1/tokens"}

    # The visitor is signed in to Tether (the session cookie is in the browser).
    page = context.new_page()
    login(page, demo.origins[0], user.api_key)

    # Control: the same probe from the allowed origin opens the socket and may get a token.
    allowed: dict[str, Any] = page.evaluate(PROBE_JS, args)
    assert allowed["opened"] is True, allowed
    assert allowed["token"] == 201, allowed

    # The attack: a page on another origin.
    evil = context.new_page()
    evil_errors = watch_page_errors(evil)
    evil.goto(evil_origin + "/")
    refused: dict[str, Any] = evil.evaluate(PROBE_JS, args)
    shot(evil, name, "evil-page")
    print(f"\nF07: allowed origin -> {allowed}; {evil_origin} -> {refused}")
    assert refused["opened"] is False, refused
    assert refused["errored"] is True, refused
    assert refused["closeCode"] == 1006, refused
    assert refused["token"] is None, "the foreign page read a token response"
    assert refused["tokenError"], refused

    rejected = replica.proc.events("ws_rejected")
    assert len(rejected) == 1, rejected
    assert rejected[0]["code"] == "origin_not_allowed", rejected
    assert rejected[0]["level"] == "warning"
    assert evil_origin in rejected[0]["detail"], rejected
    opens = replica.proc.events("ws_open")
    assert [line["origin"] for line in opens] == [demo.origins[0]], opens  # the control only
    assert demo.connects(0) == 0  # nothing past the upgrade from the foreign page (the control sent no INIT)
    assert evil_errors == []
