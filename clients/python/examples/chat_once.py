"""Connect to a project, send one prompt, print the agent's streamed answer.

    TETHER_API_KEY=... python clients/python/examples/chat_once.py [PROJECT] [TEXT]

PROJECT is a project id or slug (default: $TETHER_PROJECT, else a new project named
"chat-once" is created).  The services' URLs come from TETHER_AUTH_URL and
TETHER_SESSION_URL (defaults: http://127.0.0.1:8001 and http://127.0.0.1:8002);
TETHER_ORIGIN, when set, is sent on the WebSocket upgrade.
"""

from __future__ import annotations

import os
import sys

import trio

from tether_client import AuthClient, SessionHttp, open_session, ws_url
from tether_client.agent import answers, event_text


async def chat_once(project_ref: str | None, text: str) -> None:
    auth_url = os.environ.get("TETHER_AUTH_URL", "http://127.0.0.1:8001")
    session_url = os.environ.get("TETHER_SESSION_URL", "http://127.0.0.1:8002")
    api_key = os.environ["TETHER_API_KEY"]

    async with AuthClient(auth_url, api_key) as auth, SessionHttp(session_url, api_key) as http:
        if project_ref:
            project = await http.resolve_project(project_ref)
        else:
            project = await http.create_project("chat-once")

        # Every (re)connect asks the token source for a NEW single-use token.
        with trio.fail_after(120):
            await _converse(auth, project.id, session_url, text)


async def _converse(auth: AuthClient, project_id: str, session_url: str, text: str) -> None:
    async with open_session(
        ws_url(session_url),
        project_id,
        auth.token_source(project_id),
        origin=os.environ.get("TETHER_ORIGIN"),
        max_reconnects=5,
    ) as session:
        prompt_seq = await session.send(text)
        async for event in session.events():
            if not answers(event, prompt_seq):
                continue
            if event.kind == "agent_chunk":
                print(event_text(event), end="", flush=True)
            elif event.kind == "agent_done":
                print()
                return
            elif event.kind == "agent_error":
                raise SystemExit(f"the agent failed: {event.data}")


def main() -> None:
    project = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("TETHER_PROJECT")
    text = sys.argv[2] if len(sys.argv) > 2 else "Hello, Tether!"
    trio.run(chat_once, project, text)


if __name__ == "__main__":
    main()
