"""SQL of the session service: projects, and the event log's append and reads."""

from __future__ import annotations

import datetime as dt
import json
import re
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tether_kit.db import Connection
from tether_kit.errors import TetherError

Failpoint = Callable[[str], None]
NOTIFY_CHANNEL = "tether_events"


@dataclass(frozen=True)
class Project:
    id: uuid.UUID
    owner_id: uuid.UUID
    slug: str
    name: str
    created_at: dt.datetime
    last_seq: int

    def public(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "slug": self.slug,
            "name": self.name,
            "created_at": self.created_at.isoformat(),
            "last_seq": self.last_seq,
        }


# Records built once per event on the hot path: slotted and mutable, which is cheaper to build than frozen.
@dataclass(slots=True)
class NewEvent:
    event_id: str
    kind: str
    data: dict[str, Any]


@dataclass(slots=True)
class Appended:
    """One event's outcome: stored now at ``seq``; or its id is stored at ``seq`` with the same
    kind and data (``duplicate``: a retry); or with another kind or data (``conflict``: the
    client re-used the id for another event, nothing was stored)."""

    event_id: str
    seq: int
    duplicate: bool
    conflict: bool

    @property
    def stored(self) -> bool:
        return not (self.duplicate or self.conflict)


@dataclass(slots=True)
class StoredEvent:
    seq: int
    event_id: str
    kind: str
    data_json: str
    ts: dt.datetime


_PROJECT_COLS = "id, owner_id, slug, name, created_at, last_seq"


def _project(row: Any) -> Project:
    return Project(row["id"], row["owner_id"], row["slug"], row["name"], row["created_at"], row["last_seq"])


def slug_base(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    base = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:50].strip("-")
    return base or "project"


async def create_project(
    conn: Connection, owner: uuid.UUID, name: str, idempotency_key: str | None, failpoint: Failpoint
) -> tuple[Project, bool]:
    """Create a project with a slug unique per owner.  Returns (project, replayed)."""
    # Creates of one owner serialise here, so slug choice and the idempotency check
    # see every committed create of that owner.
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('tether.projects.' || $1::uuid::text))", owner)
    if idempotency_key is not None:
        row = await conn.fetchrow(
            f"""SELECT i.name AS requested, {", ".join("p." + c for c in _PROJECT_COLS.split(", "))}
                FROM project_idempotency i JOIN projects p ON p.id = i.project_id
                WHERE i.owner_id = $1 AND i.key = $2""",
            owner,
            idempotency_key,
        )
        if row is not None:
            # names are stored in NFC (names.project_name); a key's row may predate that
            if unicodedata.normalize("NFC", row["requested"]) != name:
                raise TetherError("idempotency_conflict", "Idempotency-Key was used with a different name")
            return _project(row), True
    base = slug_base(name)
    taken = {
        r["slug"]
        for r in await conn.fetch(
            "SELECT slug FROM projects WHERE owner_id = $1 AND (slug = $2 OR slug LIKE $2 || '-%')", owner, base
        )
    }
    slug, n = base, 1
    while slug in taken:
        n += 1
        slug = f"{base}-{n}"
    row = await conn.fetchrow(
        f"INSERT INTO projects (owner_id, slug, name) VALUES ($1, $2, $3) RETURNING {_PROJECT_COLS}", owner, slug, name
    )
    failpoint("projects.create.after_insert_project")
    project = _project(row)
    if idempotency_key is not None:
        await conn.execute(
            "INSERT INTO project_idempotency (owner_id, key, name, project_id) VALUES ($1, $2, $3, $4)",
            owner,
            idempotency_key,
            name,
            project.id,
        )
        failpoint("projects.create.after_insert_idempotency")
    return project, False


async def list_projects(conn: Connection, owner: uuid.UUID) -> list[Project]:
    rows = await conn.fetch(
        f"SELECT {_PROJECT_COLS} FROM projects WHERE owner_id = $1 ORDER BY created_at DESC, id", owner
    )
    return [_project(r) for r in rows]


async def project_by_id(conn: Connection, owner: uuid.UUID, project_id: uuid.UUID) -> Project | None:
    row = await conn.fetchrow(
        f"SELECT {_PROJECT_COLS} FROM projects WHERE id = $1 AND owner_id = $2", project_id, owner
    )
    return _project(row) if row else None


async def project_by_slug(conn: Connection, owner: uuid.UUID, slug: str) -> Project | None:
    row = await conn.fetchrow(f"SELECT {_PROJECT_COLS} FROM projects WHERE slug = $1 AND owner_id = $2", slug, owner)
    return _project(row) if row else None


async def delete_project(conn: Connection, owner: uuid.UUID, project_id: uuid.UUID, failpoint: Failpoint) -> bool:
    result: str = await conn.execute("DELETE FROM projects WHERE id = $1 AND owner_id = $2", project_id, owner)
    failpoint("projects.delete.after_delete")
    return result.endswith(" 1")


# One round trip per append: the work is a function of migration 0004 (lock, idempotent insert,
# last_seq, NOTIFY in one statement).  Several projects' appends go in one pipelined batch.
APPEND_SQL = "SELECT seqs, fresh, conflicts, ts FROM append_events($1, $2, $3, $4)"
AppendArgs = tuple[uuid.UUID, list[str], list[str], list[str]]
# one encoder for every event (json.dumps with options builds a new one per call)
_encode_data = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass(frozen=True)
class Batch:
    """The outcome of one append: a result per event, and the events it stored, by seq."""

    results: list[Appended]
    stored: list[StoredEvent]


def append_args(project_id: uuid.UUID, events: Sequence[NewEvent]) -> AppendArgs:
    """The arguments of :data:`APPEND_SQL`; ``data`` is serialised here, once: these bytes are
    what the log keeps (a ``json`` column) and what every replica sends."""
    return (
        project_id,
        [e.event_id for e in events],
        [e.kind for e in events],
        [_encode_data(e.data) for e in events],
    )


def append_outcome(args: AppendArgs, row: Any) -> Batch:
    """Read one :data:`APPEND_SQL` row; raises ``not_found`` when the project does not exist."""
    seqs = row["seqs"] if row is not None else None
    if seqs is None:
        raise TetherError("not_found", "no such project")
    _project_id, ids, kinds, datas = args
    ts: dt.datetime = row["ts"]
    results: list[Appended] = []
    stored: list[StoredEvent] = []
    for event_id, kind, data, seq, fresh, conflict in zip(
        ids, kinds, datas, seqs, row["fresh"], row["conflicts"], strict=True
    ):
        results.append(Appended(event_id, seq, not (fresh or conflict), conflict))
        if fresh:
            stored.append(StoredEvent(seq, event_id, kind, data, ts))
    return Batch(results, stored)


async def append_events(
    conn: Connection, project_id: uuid.UUID, events: Sequence[NewEvent], failpoint: Failpoint
) -> Batch:
    """Append events idempotently (by event_id) with gapless seqs; NOTIFY on commit.  An event
    whose id is stored with another kind or data is not stored: its result says ``conflict``.

    Runs as one statement: atomic on its own, or part of the caller's transaction.  The
    project row lock is taken first, so the check for already-stored event ids sees every
    committed append of this project.
    """
    args = append_args(project_id, events)
    batch = append_outcome(args, await conn.fetchrow(APPEND_SQL, *args))
    if batch.stored:
        failpoint("events.append.after_insert")
    return batch


async def read_events(conn: Connection, project_id: uuid.UUID, after: int, limit: int) -> list[StoredEvent]:
    rows = await conn.fetch(
        """SELECT seq, event_id, kind, data::text AS data, created_at FROM events
           WHERE project_id = $1 AND seq > $2 ORDER BY seq LIMIT $3""",
        project_id,
        after,
        limit,
    )
    return [StoredEvent(r["seq"], r["event_id"], r["kind"], r["data"], r["created_at"]) for r in rows]


async def last_seq(conn: Connection, project_id: uuid.UUID) -> int | None:
    value: int | None = await conn.fetchval("SELECT last_seq FROM projects WHERE id = $1", project_id)
    return value


async def first_seq(conn: Connection, project_id: uuid.UUID) -> int | None:
    value: int | None = await conn.fetchval("SELECT min(seq) FROM events WHERE project_id = $1", project_id)
    return value


async def prune(conn: Connection, keep: int) -> int:
    """Retention: keep the last ``keep`` events of every project (older ones are deleted).

    A resume from before what is kept gets ``resume_unavailable``, never a partial replay.
    """
    result: str = await conn.execute(
        "DELETE FROM events e USING projects p WHERE e.project_id = p.id AND e.seq <= p.last_seq - $1", keep
    )
    return int(result.split()[-1])
