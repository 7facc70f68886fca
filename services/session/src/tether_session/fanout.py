"""Cross-replica fan-out: one LISTEN connection per replica, one shared feed per project.

The log is the truth; a NOTIFY is only a wake-up.  Every append commits its events and
then ``pg_notify('tether_events', '<project>:<last_seq>')``.  Each replica's
:class:`Listener` hears it and asks that project's :class:`Feed` to read the new events
from the log *once*, encode them *once* and keep the most recent ones in a bounded
cache; each subscribed connection pulls from the cache with its own cursor, or from the
log directly while it is catching up (resume, a slow reader, a cache miss).  Memory per
connection is a cursor and a wake-up event, whatever the backlog.

Events appended by this replica are pushed into the feed right after their commit
(:meth:`Hub.appended`), so the replica that wrote them does not read them back; the
NOTIFY that follows is then already covered.  A client that asked for batches gets
the events ready at once in one ``events`` frame; subscribers at the same cursor share
one joined frame (:meth:`Feed.chunks_after`).

A lost LISTEN connection is detected (termination callback + a periodic probe) and
re-established; on every (re)connect each feed re-reads its project's ``last_seq`` so
events committed while nobody listened are delivered too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from tether_kit.db import Database, is_connectivity_error
from tether_kit.errors import DependencyUnavailable
from tether_kit.logs import JsonLogger
from tether_kit.tasks import detached

from . import store

Encode = Callable[[store.StoredEvent], str]
EncodeBatch = Callable[[list[str]], str]
Chunk = tuple[int, str]  # (last seq in the frame, frame text)

# A batched frame stops growing past either bound (at least one event each).
BATCH_MAX_EVENTS = 500
# After this replica's own NOTIFY, how long its local push may take before the feed reads the log.
OWN_NOTIFY_GRACE_S = 0.25
BATCH_MAX_CHARS = 128 * 1024
# How many cursors' batched frames a feed keeps until its head moves (shared by every subscriber there).
SHARED_CURSORS = 4


def chunk_frames(frames: list[tuple[int, str]], encode_batch: EncodeBatch) -> list[Chunk]:
    """Group consecutive event frames into ``events`` frames, bounded in events and size."""
    chunks: list[Chunk] = []
    texts: list[str] = []
    size = 0
    for seq, text in frames:
        if texts and (len(texts) >= BATCH_MAX_EVENTS or size + len(text) > BATCH_MAX_CHARS):
            chunks.append((seq - 1, encode_batch(texts)))
            texts, size = [], 0
        texts.append(text)
        size += len(text) + 1
    if texts:
        chunks.append((frames[-1][0], encode_batch(texts)))
    return chunks


class Wake:
    """``asyncio.Event`` for exactly one waiter (the connection's writer), without its deque of
    waiters: it lives as long as the session, so its size counts once per idle session."""

    __slots__ = ("_flag", "_waiter")

    def __init__(self) -> None:
        self._flag = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._flag = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._flag = False

    async def wait(self) -> None:
        if self._flag:
            return
        if self._waiter is not None:
            raise RuntimeError("Wake has one waiter at a time")
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


@dataclass(eq=False, slots=True)
class Subscriber:
    """One connection's registration with a feed: a wake-up flag, nothing buffered."""

    connection_id: str
    wake: Wake = field(default_factory=Wake)


class Feed:
    def __init__(self, project_id: uuid.UUID, hub: Hub) -> None:
        self.project_id = project_id
        self.hub = hub
        self.head = -1  # highest seq read into the cache; -1 until first refresh
        self.cache: deque[tuple[int, str]] = deque(maxlen=hub.cache_size)
        self.subscribers: set[Subscriber] = set()
        self._lock = asyncio.Lock()
        self._pending = False
        self._task: asyncio.Task[None] | None = None
        self._batches: dict[int, list[Chunk]] = {}  # cursor -> batched frames up to head; cleared as head moves
        self._expected = 0  # highest seq announced by this replica's own NOTIFY
        self._expect_timer: asyncio.TimerHandle | None = None

    def frames_after(self, cursor: int) -> list[tuple[int, str]] | None:
        """Cached frames with seq > cursor; None when the cache does not reach back to cursor+1.

        Seqs in the cache are contiguous (refresh reads every event after ``head``).
        """
        if cursor >= self.head:
            return []
        if not self.cache or self.cache[0][0] > cursor + 1:
            return None
        return list(itertools.islice(self.cache, cursor + 1 - self.cache[0][0], None))

    def chunks_after(self, cursor: int) -> list[Chunk] | None:
        """Like :meth:`frames_after` as batched ``events`` frames, built once per cursor for every subscriber."""
        chunks = self._batches.get(cursor)
        if chunks is None:
            frames = self.frames_after(cursor)
            if not frames:
                return frames
            chunks = chunk_frames(frames, self.hub.encode_batch)
            # Kept only for the few cursors subscribers share (fan-out moves in lockstep); a
            # straggler's frames are its own, and up to the whole cache each: not kept.
            if len(self._batches) < SHARED_CURSORS:
                self._batches[cursor] = chunks
        return chunks

    def _extend(self, events: list[store.StoredEvent]) -> None:
        """Add events with seq > head (contiguous from head + 1) to the cache and wake every subscriber."""
        encode = self.hub.encode
        for event in events:
            if event.seq == self.head + 1:
                self.cache.append((event.seq, encode(event)))
                self.head = event.seq
        self._batches.clear()
        self.wake_all()

    def push(self, events: list[store.StoredEvent]) -> None:
        """Events this replica just committed: cached at once when they continue the head, else a refresh."""
        if self.head >= 0 and events[0].seq == self.head + 1:
            self._extend(events)
        elif events[-1].seq > self.head:
            self.poke(events[-1].seq)

    def expect(self, seq: int) -> None:
        """This replica's own NOTIFY: its appender pushes those events right after the commit
        (:meth:`push`), so no read is needed; one is made only if they have not arrived soon."""
        if seq <= self.head:
            return
        self._expected = max(self._expected, seq)
        if self._expect_timer is None:
            self._expect_timer = asyncio.get_running_loop().call_later(OWN_NOTIFY_GRACE_S, self._check_expected)

    def _check_expected(self) -> None:
        self._expect_timer = None
        if self._expected > self.head:
            self.poke(self._expected)

    def close(self) -> None:
        if self._expect_timer is not None:
            self._expect_timer.cancel()
            self._expect_timer = None
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def poke(self, seq: int | None) -> None:
        """A NOTIFY (or a reconnect) says the log may have grown: refresh in the background."""
        if seq is not None and seq <= self.head:
            return
        self._pending = True
        if self._task is None or self._task.done():
            self._task = detached(self._refresh_loop(), name=f"feed-{self.project_id}")

    async def _refresh_loop(self) -> None:
        while self._pending:
            self._pending = False
            try:
                await self.refresh()
            except Exception as exc:  # logged; the next poke retries; subscribers read the log themselves
                if not (isinstance(exc, DependencyUnavailable) or is_connectivity_error(exc)):
                    self.hub.log.exception("feed_refresh_failed", exc, project_id=str(self.project_id))
                else:
                    self.hub.log.warning("feed_refresh_failed", project_id=str(self.project_id), reason=str(exc))
                self.wake_all()
                return

    async def refresh(self) -> None:
        async with self._lock:
            if self.head < 0:
                async with self.hub.db.connection() as conn:
                    last = await store.last_seq(conn, self.project_id)
                self.head = last or 0
                self.wake_all()
                return
            while True:
                async with self.hub.db.connection() as conn:
                    events = await store.read_events(conn, self.project_id, self.head, self.hub.page)
                if not events:
                    break
                # a push may have moved the head while this read was in flight
                fresh = [e for e in events if e.seq > self.head]
                if fresh and fresh[0].seq != self.head + 1:
                    raise RuntimeError(f"log gap in feed refresh: head {self.head}, read from {fresh[0].seq}")
                if fresh:
                    self._extend(fresh)
                if len(events) < self.hub.page:
                    break

    def wake_all(self) -> None:
        for sub in self.subscribers:
            sub.wake.set()


class Hub:
    """The replica's registry of feeds and subscribers (F13: everything is released)."""

    def __init__(
        self,
        db: Database,
        log: JsonLogger,
        encode: Encode,
        encode_batch: EncodeBatch,
        *,
        cache_size: int = 2048,
        page: int = 500,
    ):
        self.db = db
        self.log = log
        self.encode = encode
        self.encode_batch = encode_batch
        self.cache_size = cache_size
        self.page = page
        self.feeds: dict[uuid.UUID, Feed] = {}

    def subscribe(self, project_id: uuid.UUID, connection_id: str) -> tuple[Feed, Subscriber]:
        feed = self.feeds.get(project_id)
        if feed is None:
            feed = self.feeds[project_id] = Feed(project_id, self)
            feed.poke(None)
        sub = Subscriber(connection_id)
        feed.subscribers.add(sub)
        return feed, sub

    def unsubscribe(self, feed: Feed, sub: Subscriber) -> None:
        feed.subscribers.discard(sub)
        if not feed.subscribers and self.feeds.get(feed.project_id) is feed:
            del self.feeds[feed.project_id]
            feed.close()

    def appended(self, project_id: uuid.UUID, events: list[store.StoredEvent]) -> None:
        """This replica committed ``events`` (ascending seqs) to the project's log."""
        feed = self.feeds.get(project_id)
        if feed is not None and events:
            feed.push(events)

    def notified(self, payload: str, *, own: bool = False) -> None:
        """A NOTIFY ``<project>:<last_seq>``; ``own`` when one of this replica's connections sent it."""
        project, _, seq = payload.partition(":")
        try:
            project_id, last = uuid.UUID(project), int(seq)
        except ValueError:
            self.log.warning("notify_payload_invalid", payload=payload[:100])
            return
        feed = self.feeds.get(project_id)
        if feed is not None:
            if own:
                feed.expect(last)
            else:
                feed.poke(last)

    def poke_all(self) -> None:
        for feed in self.feeds.values():
            feed.poke(None)

    @property
    def subscriber_count(self) -> int:
        return sum(len(f.subscribers) for f in self.feeds.values())


class Listener:
    """The replica's single LISTEN connection, kept alive and re-established when lost."""

    def __init__(self, dsn: str, hub: Hub, log: JsonLogger, *, probe_interval_s: float = 2.0) -> None:
        self.dsn = dsn
        self.hub = hub
        self.log = log
        self.probe_interval_s = probe_interval_s
        self.connected = asyncio.Event()
        self.reconnects = 0
        self._lost = asyncio.Event()

    def _on_notify(self, _conn: Any, pid: int, _channel: str, payload: object) -> None:
        self.hub.notified(str(payload), own=pid in self.hub.db.backend_pids)

    def _on_termination(self, _conn: Any) -> None:
        self._lost.set()

    async def run(self) -> None:
        delay = 0.05
        while True:
            conn: asyncpg.Connection[asyncpg.Record] | None = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=3)
                conn.add_termination_listener(self._on_termination)
                await conn.add_listener(store.NOTIFY_CHANNEL, self._on_notify)
                self._lost.clear()
                self.connected.set()
                self.log.info("listen_connected", reconnects=self.reconnects)
                self.hub.poke_all()  # deliver what was committed while nobody listened
                delay = 0.05
                while not self._lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._lost.wait(), self.probe_interval_s)
                    if not self._lost.is_set():
                        await conn.fetchval("SELECT 1", timeout=self.probe_interval_s)
                raise ConnectionError("LISTEN connection terminated")
            except Exception as exc:
                if not is_connectivity_error(exc):
                    self.log.exception("listen_failed", exc)
                was_connected = self.connected.is_set()
                self.connected.clear()
                if was_connected:
                    self.reconnects += 1
                self.log.warning("listen_lost", reason=f"{type(exc).__name__}: {exc}"[:200], retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                if conn is not None and not conn.is_closed():
                    conn.terminate()
