"""SQL of the auth-token service.  Every write is one transaction; failpoints sit after
each writing statement so QA can prove a failed write leaves nothing behind."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from tether_kit.db import Connection
from tether_kit.errors import TetherError

from .secrets import SESSION_PREFIX, TOKEN_PREFIX, digest, new_secret

Failpoint = Callable[[str], None]
SCHEMA = "auth"  # the PostgreSQL schema of this service's tables


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    name: str


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_at: dt.datetime
    project_id: uuid.UUID | None
    user: User


@dataclass(frozen=True)
class ConsumedToken:
    user_id: uuid.UUID
    project_id: uuid.UUID | None
    issued_at: dt.datetime
    expires_at: dt.datetime


async def user_by_api_key(conn: Connection, api_key: str) -> User | None:
    row = await conn.fetchrow(
        """SELECT u.id, u.name FROM api_keys k JOIN users u ON u.id = k.user_id
           WHERE k.key_hash = $1 AND k.revoked_at IS NULL""",
        digest(api_key),
    )
    return User(row["id"], row["name"]) if row else None


async def user_by_session(conn: Connection, session: str) -> User | None:
    row = await conn.fetchrow(
        """SELECT u.id, u.name FROM web_sessions s JOIN users u ON u.id = s.user_id
           WHERE s.session_hash = $1 AND s.expires_at > now()""",
        digest(session),
    )
    return User(row["id"], row["name"]) if row else None


async def create_session(conn: Connection, user: User, ttl_s: int, failpoint: Failpoint) -> tuple[str, dt.datetime]:
    session = new_secret(SESSION_PREFIX)
    expires_at: dt.datetime = await conn.fetchval(
        """INSERT INTO web_sessions (session_hash, user_id, expires_at)
           VALUES ($1, $2, now() + make_interval(secs => $3)) RETURNING expires_at""",
        digest(session),
        user.id,
        ttl_s,
    )
    failpoint("login.after_insert_session")
    return session, expires_at


async def delete_session(conn: Connection, session: str, failpoint: Failpoint) -> None:
    await conn.execute("DELETE FROM web_sessions WHERE session_hash = $1", digest(session))
    failpoint("logout.after_delete_session")


@dataclass(frozen=True)
class IssueRequest:
    """One ``POST /v1/tokens``: the caller's credential (an API key, or a browser session when
    ``via_session``) and the project the token is bound to."""

    credential: str
    via_session: bool
    project_id: uuid.UUID | None


@dataclass(frozen=True)
class Refused:
    """A request :func:`issue_tokens` issued nothing for, and whose user it was when known."""

    error: TetherError
    user: User | None


IssueOutcome = IssuedToken | Refused


def rate_limited(per_minute: int) -> TetherError:
    return TetherError(
        "rate_limited",
        f"at most {per_minute} connection tokens per minute",
        extras={"limit": "token_issue"},
        retry_after_s=5,
    )


def unauthenticated() -> TetherError:
    return TetherError("unauthenticated", "a valid API key (Bearer) or session cookie is required")


async def issue_tokens(
    conn: Connection, requests: list[IssueRequest], ttl_s: int, per_minute: int, *, timeout: float | None = None
) -> list[IssueOutcome]:
    """Issue a token for every request that authenticates and fits under its user's cap, in one
    statement (the ``issue_tokens`` function of migration 0002): per request, in order, the token
    or ``unauthenticated`` / ``rate_limited``."""
    tokens = [new_secret(TOKEN_PREFIX) for _ in requests]
    rows = await conn.fetch(
        "SELECT * FROM issue_tokens($1, $2, $3, $4, $5, $6)",
        [digest(r.credential) for r in requests],
        [r.via_session for r in requests],
        [digest(token) for token in tokens],
        [r.project_id for r in requests],
        ttl_s,
        per_minute,
        timeout=timeout,
    )
    assert len(rows) == len(requests)  # one row per position
    results: list[IssueOutcome] = []
    for request, token, row in zip(requests, tokens, rows, strict=True):
        if row["o_user"] is None:
            results.append(Refused(unauthenticated(), None))
            continue
        user = User(row["o_user"], row["o_name"])
        if row["o_issued"]:
            results.append(IssuedToken(token, row["o_expires"], request.project_id, user))
        else:
            results.append(Refused(rate_limited(per_minute), user))
    return results


async def issue_token(
    conn: Connection, request: IssueRequest, ttl_s: int, per_minute: int, failpoint: Failpoint
) -> IssueOutcome:
    """:func:`issue_tokens` for one request, with the failpoint after the insert: the caller's
    transaction is the request's own, so an armed failpoint rolls back its token alone."""
    (outcome,) = await issue_tokens(conn, [request], ttl_s, per_minute)
    if isinstance(outcome, IssuedToken):
        failpoint("tokens.issue.after_insert")
    return outcome


# One statement consumes: the UPDATE's WHERE is re-checked under the row lock, so of
# any number of concurrent consumes exactly one gets the row back.  The CTE ``before``
# reads the statement's snapshot and tells the losers why they lost.
_CONSUME = """
WITH before AS (
    SELECT consumed_at, expires_at <= now() AS expired
    FROM connection_tokens WHERE token_hash = $1
), won AS (
    UPDATE connection_tokens SET consumed_at = now(), consumed_by = $2
    WHERE token_hash = $1 AND consumed_at IS NULL AND expires_at > now()
    RETURNING user_id, project_id, issued_at, expires_at
)
SELECT (SELECT count(*) FROM before) AS known,
       (SELECT consumed_at IS NOT NULL FROM before) AS used,
       (SELECT expired FROM before) AS expired,
       won.*
FROM (SELECT 1) AS one LEFT JOIN won ON true
"""


async def consume_token(conn: Connection, token: str, service: str, failpoint: Failpoint) -> ConsumedToken:
    row = await conn.fetchrow(_CONSUME, digest(token), service)
    assert row is not None  # the query always returns one row
    if row["user_id"] is not None:
        failpoint("tokens.consume.after_update")
        return ConsumedToken(row["user_id"], row["project_id"], row["issued_at"], row["expires_at"])
    raise _lost(row["known"], row["used"], row["expired"])


# The batch form of _CONSUME, still one statement.  ``locked`` takes the row locks of every
# consumable token of the batch in token_hash order (LockRows sits above the Sort), so two
# batches sharing tokens wait for each other instead of deadlocking; under READ COMMITTED a
# row another transaction consumed meanwhile is re-checked and skipped, so of any number of
# concurrent consumes of one token exactly one gets it.  ``before`` reads the statement's
# snapshot and tells the losers why they lost.  One row per input position, in order.
_CONSUME_BATCH = """
WITH input AS (
    SELECT t.hash, t.pos FROM unnest($1::bytea[]) WITH ORDINALITY AS t(hash, pos)
), locked AS (
    SELECT token_hash FROM connection_tokens
    WHERE token_hash = ANY($1::bytea[]) AND consumed_at IS NULL AND expires_at > now()
    ORDER BY token_hash
    FOR UPDATE
), won AS (
    UPDATE connection_tokens c SET consumed_at = now(), consumed_by = $2
    FROM locked
    WHERE c.token_hash = locked.token_hash AND c.consumed_at IS NULL
    RETURNING c.token_hash, c.user_id, c.project_id, c.issued_at, c.expires_at
), before AS (
    SELECT token_hash, consumed_at IS NOT NULL AS used, expires_at <= now() AS expired
    FROM connection_tokens WHERE token_hash = ANY($1::bytea[])
)
SELECT input.pos,
       before.token_hash IS NOT NULL AS known,
       before.used,
       before.expired,
       won.user_id, won.project_id, won.issued_at, won.expires_at
FROM input
LEFT JOIN before ON before.token_hash = input.hash
LEFT JOIN won ON won.token_hash = input.hash
ORDER BY input.pos
"""


async def consume_tokens(
    conn: Connection, tokens: list[str], service: str, failpoint: Failpoint
) -> list[ConsumedToken | TetherError]:
    """Consume every token of ``tokens`` in one statement: per token, in order, what
    :func:`consume_token` would have returned or raised.  A token repeated in the batch is
    consumed by its first occurrence; the later ones are ``token_used``."""
    digests = [digest(token) for token in tokens]
    rows = await conn.fetch(_CONSUME_BATCH, digests, service)
    assert len(rows) == len(tokens)  # one row per input position
    failpoint("tokens.consume_batch.after_update")
    results: list[ConsumedToken | TetherError] = []
    first: dict[bytes, int] = {}
    for index, (token_hash, row) in enumerate(zip(digests, rows, strict=True)):
        if first.setdefault(token_hash, index) != index:
            results.append(TetherError("token_used", "connection token was already used"))
        elif row["user_id"] is not None:
            results.append(ConsumedToken(row["user_id"], row["project_id"], row["issued_at"], row["expires_at"]))
        else:
            results.append(_lost(row["known"], row["used"], row["expired"]))
    return results


def _lost(known: bool, used: bool | None, expired: bool | None) -> TetherError:
    """Why a consume got no row: the same answers as :func:`consume_token`."""
    if not known:
        return TetherError("token_unknown", "no such connection token")
    if used:
        return TetherError("token_used", "connection token was already used")
    if expired:
        return TetherError("token_expired", "connection token expired; fetch a new one")
    # Unused and unexpired in our snapshot, yet the UPDATE found it taken: a concurrent
    # consume won the row lock first.
    return TetherError("token_used", "connection token was already used")


async def purge_expired(conn: Connection, older_than_s: int) -> int:
    result: str = await conn.execute(
        "DELETE FROM connection_tokens WHERE expires_at < now() - make_interval(secs => $1)", older_than_s
    )
    return int(result.split()[-1])


async def create_user(conn: Connection, name: str) -> User:
    row = await conn.fetchrow("INSERT INTO users (name) VALUES ($1) RETURNING id, name", name)
    assert row is not None
    return User(row["id"], row["name"])


async def find_user(conn: Connection, name: str) -> User | None:
    row = await conn.fetchrow("SELECT id, name FROM users WHERE name = $1", name)
    return User(row["id"], row["name"]) if row else None


async def add_api_key(conn: Connection, user: User, api_key: str) -> None:
    await conn.execute("INSERT INTO api_keys (key_hash, user_id) VALUES ($1, $2)", digest(api_key), user.id)
