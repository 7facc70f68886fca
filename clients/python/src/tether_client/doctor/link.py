"""The raw WebSocket the doctor's steps use: one socket, the ``error`` frame before a close
remembered, the items of an ``events`` frame handed out one by one."""

from __future__ import annotations

from collections import deque
from typing import Any

import trio
import trio_websocket

from ..agent import answers
from ..closing import CloseCatalogue, CloseDecision, decide_close
from ..frames import ErrorFrame, Event, Events, ServerFrame, encode, parse_server_frame
from ..outcome import close_code_of
from .report import StepFailed


class Closed(Exception):
    def __init__(self, decision: CloseDecision) -> None:
        super().__init__(decision.describe())
        self.decision = decision


class Link:
    """One WebSocket, held open by a task in the doctor's nursery until :meth:`close`,
    with the ``error`` frame that preceded its close remembered."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, catalogue: CloseCatalogue, done: trio.Event) -> None:
        self.ws = ws
        self.catalogue = catalogue
        self.error: ErrorFrame | None = None
        self._done = done
        self._batched: deque[Event] = deque()  # the rest of an `events` frame

    async def send(self, frame: dict[str, Any]) -> None:
        try:
            await self.ws.send_message(encode(frame))
        except trio_websocket.ConnectionClosed as exc:
            raise Closed(self._decide(exc)) from None

    async def receive(self) -> ServerFrame:
        """The next frame; an ``error`` frame is remembered and skipped (the close follows).
        The items of an ``events`` frame are returned one by one, as if each had arrived alone."""
        while True:
            if self._batched:
                return self._batched.popleft()
            try:
                raw = await self.ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                raise Closed(self._decide(exc)) from None
            frame = parse_server_frame(raw)
            if isinstance(frame, ErrorFrame):
                self.error = frame
                continue
            if isinstance(frame, Events):
                self._batched.extend(frame.events)
                continue
            return frame

    def _decide(self, exc: trio_websocket.ConnectionClosed) -> CloseDecision:
        return decide_close(self.catalogue, close_code_of(exc), self.error)

    async def close(self) -> None:
        try:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await self.ws.aclose(1000, "doctor")
        finally:
            self._done.set()


async def hold_websocket(
    url: str,
    headers: list[tuple[bytes, bytes]] | None,
    timeout_s: float,
    done: trio.Event,
    *,
    task_status: trio.TaskStatus[trio_websocket.WebSocketConnection] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Open ``url`` and keep it open until ``done``; connect errors are raised by ``nursery.start``."""
    async with trio_websocket.open_websocket_url(
        url, extra_headers=headers, connect_timeout=timeout_s, disconnect_timeout=2
    ) as ws:
        task_status.started(ws)
        await done.wait()


class EventLog:
    """The events the doctor has seen, each checked: in order, no gap, no duplicate (F20-F22)."""

    def __init__(self) -> None:
        self.last_seq = 0
        self.seen: list[Event] = []

    def accept(self, event: Event) -> None:
        if event.seq <= self.last_seq:
            raise StepFailed(
                f"duplicate event: seq {event.seq} after seq {self.last_seq}",
                code="duplicate_event",
                hint="the session service delivered an event twice: a server bug (F21); check its log",
            )
        if event.seq != self.last_seq + 1:
            raise StepFailed(
                f"gap in the event stream: expected seq {self.last_seq + 1}, got {event.seq}",
                code="event_gap",
                hint="the session service skipped events: a server bug (F20/F22); check its log",
            )
        self.last_seq = event.seq
        self.seen.append(event)

    def done_for(self, prompt_seq: int) -> Event | None:
        """The ``agent_done`` that ends the answer to the prompt stored at ``prompt_seq``."""
        return next((e for e in self.seen if e.kind == "agent_done" and answers(e, prompt_seq)), None)
