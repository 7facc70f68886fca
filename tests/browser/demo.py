"""Driving the demo UI (``clients/js/demo``) in Chromium against a real stack.

* :func:`start_demo_stack` starts the auth-token service and N session replicas on ports
  chosen up front, so the page origin ``http://127.0.0.1:<session port>`` can be put in the
  auth service's CORS allow-list and the replicas' Origin allow-list before they start, and
  every replica's ``/demo/config.json`` names the auth service and every replica's
  WebSocket URL (the client rotates through them on reconnect).
* ``TETHER_TEST_WEB_ROOT`` (optional) points the replicas at another copy of
  ``clients/js`` (e.g. a build, or a deliberately broken copy to prove a test can fail).
* :class:`WsRecorder` records, from the browser's side, every WebSocket a page opens and
  every frame it sends and receives (Playwright's ``websocket`` events).
* The helpers below use only the DOM hooks documented in ``clients/js/README.md``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import httpx
from playwright.sync_api import Page, WebSocket, expect

from tests.support.fixtures import ARTIFACTS
from tests.support.metrics import Metrics, parse_metrics
from tests.support.procs import wait_all_ready
from tests.support.session import SessionReplica, Stack, StackFactory
from tests.support.waiting import scaled, wait_until
from tether_dev.pg import free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = ARTIFACTS / "screenshots"
HOST = "127.0.0.1"


def screenshot_path(test_name: str, step: str) -> str:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{test_name}-{step}")
    return str(SCREENSHOTS / f"{safe}.png")


def shot(page: Page, test_name: str, step: str) -> None:
    """A screenshot kept as a test artifact (``artifacts/screenshots/<test>-<step>.png``)."""
    page.screenshot(path=screenshot_path(test_name, step), full_page=True)


def quiet_window(page: Page, window_ms: float) -> None:
    """Let ``window_ms`` pass with the page running: the test then asserts that nothing happened in it
    (no retry, no connection).  Time passing is the behaviour under test, not a synchronisation."""
    page.wait_for_timeout(window_ms)


def ms(seconds: float) -> float:
    """A scaled timeout in milliseconds, for Playwright."""
    return scaled(seconds) * 1000


# ------------------------------------------------------------------ the stack


@dataclass
class DemoStack:
    stack: Stack
    origins: list[str]  # page origin of each replica: http://127.0.0.1:<port>
    ws_urls: list[str]  # ws://127.0.0.1:<port>/v1/ws of each replica

    def replica(self, i: int) -> SessionReplica:
        return self.stack.replicas[i]

    def log(self, i: int, event: str, **match: Any) -> list[dict[str, Any]]:
        return self.replica(i).proc.events(event, **match)

    def log_all(self, event: str, **match: Any) -> list[dict[str, Any]]:
        return [line for i in range(len(self.origins)) for line in self.log(i, event, **match)]

    def holder(self, client_id: str) -> int:
        """The replica whose log has the latest ``ws_ready`` of ``client_id`` (-1: none)."""
        best, when = -1, ""
        for i in range(len(self.origins)):
            for line in self.log(i, "ws_ready", client_id=client_id):
                if str(line.get("ts", "")) >= when:
                    best, when = i, str(line.get("ts", ""))
        return best

    def wait_holder(self, client_id: str, timeout: float = 5) -> int:
        """:meth:`holder`, once the replica has logged the ``ws_ready`` (it follows the frame)."""
        found = wait_until(
            lambda: self.holder(client_id) + 1, timeout=timeout, what=f"a ws_ready line for client {client_id}"
        )
        return found - 1

    def metrics(self, i: int) -> Metrics:
        with httpx.Client(timeout=scaled(5)) as http:
            response = http.get(self.origins[i] + "/metrics")
        assert response.status_code == 200, response.text
        return parse_metrics(response.text)

    def connects(self, i: int) -> float:
        """``tether_ws_connects_total`` of replica ``i``, summed over every outcome."""
        return sum(v for (name, _labels), v in self.metrics(i).samples.items() if name == "tether_ws_connects_total")


def start_demo_stack(
    factory: StackFactory,
    *,
    replicas: int = 1,
    session_env: dict[str, str] | None = None,
    auth_env: dict[str, str] | None = None,
    own_ws_first: bool = False,
) -> DemoStack:
    """Auth-token + ``replicas`` session replicas, all allowing every replica's page origin.

    Every replica's ``/demo/config.json`` lists every replica's WebSocket URL, in replica
    order, or (``own_ws_first``) with the replica's own URL first, so that a page served by
    replica ``i`` connects to replica ``i`` first.
    """
    ports = [free_port(HOST) for _ in range(replicas)]
    origins = [f"http://{HOST}:{port}" for port in ports]
    ws_urls = [f"ws://{HOST}:{port}/v1/ws" for port in ports]
    stack = factory.start(replicas=0, auth_env={**(auth_env or {}), "TETHER_CORS_ORIGINS": ",".join(origins)})
    for i, (port, origin) in enumerate(zip(ports, origins, strict=True)):
        order = [ws_urls[i], *ws_urls[:i], *ws_urls[i + 1 :]] if own_ws_first else ws_urls
        env = {
            **(
                {"TETHER_WEB_ROOT": os.environ["TETHER_TEST_WEB_ROOT"]}
                if os.environ.get("TETHER_TEST_WEB_ROOT")
                else {}
            ),
            **(session_env or {}),
            "TETHER_SESSION_PORT": str(port),
            "TETHER_PUBLIC_URL": origin,
            "TETHER_PUBLIC_AUTH_URL": stack.auth.url,
            "TETHER_PUBLIC_WS_URLS": ",".join(order),
            "TETHER_ALLOWED_ORIGINS": ",".join(origins),
            "TETHER_CORS_ORIGINS": ",".join(origins),
        }
        stack.add_replica(env, wait=False)
    wait_all_ready([r.proc for r in stack.replicas], 30)
    for replica, port in zip(stack.replicas, ports, strict=True):
        assert replica.proc.port == port, (replica.proc, port)
    return DemoStack(stack, origins, ws_urls)


# ------------------------------------------------------------------ the browser's view of its sockets


def _parse(payload: str | bytes) -> dict[str, Any]:
    if isinstance(payload, bytes):
        return {"type": "<binary>", "size": len(payload)}
    try:
        frame = json.loads(payload)
    except ValueError:
        return {"type": "<not json>", "raw": payload[:200]}
    return frame if isinstance(frame, dict) else {"type": "<not an object>"}


@dataclass
class SocketLog:
    url: str
    sent: list[dict[str, Any]] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False

    def of_type(self, kind: str, *, sent: bool = False) -> list[dict[str, Any]]:
        return [f for f in (self.sent if sent else self.received) if f.get("type") == kind]

    def events(self) -> list[dict[str, Any]]:
        """Every event received, in order: ``event`` frames and the items of ``events`` frames."""
        found: list[dict[str, Any]] = []
        for f in self.received:
            if f.get("type") == "event":
                found.append(f)
            elif f.get("type") == "events":
                found.extend(f["events"])
        return found


class WsRecorder:
    """Every WebSocket the page opens, as the browser saw it (events arrive while Python
    talks to Playwright, so read it after a Playwright wait, not in a busy loop)."""

    def __init__(self, page: Page) -> None:
        self.sockets: list[SocketLog] = []
        page.on("websocket", self._opened)

    def _opened(self, ws: WebSocket) -> None:
        log = SocketLog(ws.url)
        self.sockets.append(log)
        ws.on("framesent", lambda payload: log.sent.append(_parse(payload)))
        ws.on("framereceived", lambda payload: log.received.append(_parse(payload)))
        ws.on("close", lambda _ws: setattr(log, "closed", True))

    def inits(self) -> list[dict[str, Any]]:
        return [f for s in self.sockets for f in s.of_type("init", sent=True)]

    def errors(self) -> list[dict[str, Any]]:
        return [f for s in self.sockets for f in s.of_type("error")]


# ------------------------------------------------------------------ the demo's DOM


def watch_page_errors(page: Page) -> list[str]:
    """Uncaught exceptions of the page (a test asserts the list stays empty)."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


def login(page: Page, origin: str, api_key: str) -> None:
    page.goto(origin + "/")
    expect(page.locator("body")).to_have_attribute("data-view", "login", timeout=ms(10))
    page.fill("#api-key", api_key)
    page.click("#login-btn")
    expect(page.locator("body")).to_have_attribute("data-view", "projects", timeout=ms(10))


class ProjectRef(NamedTuple):
    slug: str
    id: str


def create_project(page: Page, name: str) -> ProjectRef:
    """Create a project with the form; return its slug and id (from the new list item)."""
    page.fill("#project-name", name)
    page.click("#create-btn")
    item = page.locator("#projects li[data-slug]").filter(has=page.get_by_role("link", name=name, exact=True))
    expect(item).to_have_count(1, timeout=ms(10))
    slug = item.get_attribute("data-slug")
    project_id = item.get_attribute("data-project-id")
    assert slug, "the new project's list item has no data-slug"
    assert project_id, "the new project's list item has no data-project-id"
    return ProjectRef(slug, project_id)


def open_project(page: Page, origin: str, slug: str) -> None:
    """Open ``/p/<slug>`` and wait until the page's client is ready."""
    page.goto(f"{origin}/p/{slug}")
    expect(page.locator("body")).to_have_attribute("data-view", "project", timeout=ms(10))
    wait_ready(page)


def wait_ready(page: Page, timeout: float = 15) -> None:
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "ready", timeout=ms(timeout))


def send_prompt(page: Page, text: str) -> None:
    page.fill("#prompt-input", text)
    page.click("#send-btn")


def answer_bubble(page: Page, prompt_text: str) -> Any:
    """The agent bubble answering the (stored) prompt whose text is ``prompt_text``."""
    prompt = page.locator("#transcript .msg.user[data-kind=prompt][data-seq]").filter(has_text=prompt_text)
    expect(prompt).to_have_count(1, timeout=ms(10))
    seq = prompt.get_attribute("data-seq")
    return page.locator(f'#transcript .msg.agent[data-prompt-seq="{seq}"]')


def client_info(page: Page) -> dict[str, Any]:
    """State, stats and ids of the page's single client (``window.__tether``)."""
    info: dict[str, Any] = page.evaluate(
        """() => {
            const t = window.__tether;
            const c = t && t.client;
            if (!c) return {client: null, renders: t ? t.renders : null};
            return {client: true, clientId: c.clientId, state: c.state, failure: c.failure,
                    lastSeq: c.lastSeq, stats: c.stats, renders: t.renders};
        }"""
    )
    return info


def chunk_spans(page: Page) -> list[dict[str, Any]]:
    """Every rendered agent chunk, in DOM order: index, seq, text, prompt seq, visibility."""
    spans: list[dict[str, Any]] = page.evaluate(
        """() => [...document.querySelectorAll('#transcript span[data-kind=agent_chunk]')].map((s) => ({
            index: Number(s.dataset.index),
            seq: Number(s.dataset.seq),
            text: s.textContent,
            promptSeq: s.closest('.msg.agent')?.dataset.promptSeq ?? null,
            visible: s.checkVisibility({opacityProperty: true, visibilityProperty: true}),
        }))"""
    )
    return spans


def transcript_seqs(page: Page) -> list[int]:
    """``data-seq`` of every rendered event, in DOM order of arrival (prompts, chunks, done)."""
    seqs: list[int] = page.evaluate(
        "() => [...document.querySelectorAll('#transcript [data-seq]')].map((e) => Number(e.dataset.seq))"
    )
    return seqs


def split_answer(text: str, chunks: int) -> list[str]:
    """The builtin agent's answer ``"You said: <text>"`` in ``chunks`` parts (as the service splits it)."""
    answer = f"You said: {text}"
    size, extra = divmod(len(answer), max(1, chunks))
    parts, start = [], 0
    for i in range(max(1, chunks)):
        end = start + size + (1 if i < extra else 0)
        parts.append(answer[start:end])
        start = end
    return parts
