"""The auth-token service app factory: ``create_app()``; no module-level app."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge
from quart import Quart, Response, current_app, request

from tether_kit import logs, migrate
from tether_kit.contract import check_routes
from tether_kit.db import Connection, Database
from tether_kit.errors import TetherError
from tether_kit.http import FAILPOINT_HEADER, HttpKit, bearer_token
from tether_kit.lifecycle import Startup, database_phases
from tether_kit.service import (
    Background,
    add_metrics,
    add_readyz,
    authenticate_service,
    build_core,
    database_check,
    json_response,
)
from tether_kit.shedding import ShedLog

from . import store
from .catalogue import CATALOGUE
from .config import Config
from .issuer import Overloaded, TokenIssuer
from .store import SCHEMA

SERVICE = "auth-token"
COOKIE = "tether_session"


@dataclass
class State:
    config: Config
    log: logs.JsonLogger
    db: Database
    kit: HttpKit
    startup: Startup
    registry: CollectorRegistry
    tokens_issued: Counter
    token_consumes: Counter
    token_consume_batches: Counter
    logins: Counter
    issuer: TokenIssuer
    shed: ShedLog


def state() -> State:
    return cast(State, current_app.extensions["tether"])


def create_app(config: Config | None = None) -> Quart:
    config = config or Config.from_env()
    core = build_core(SERVICE, __name__, config, schema=SCHEMA, catalogue=CATALOGUE, contract=config.contract)
    app, log, registry, db, kit = core.http, core.log, core.registry, core.db, core.kit
    # Every answer here is a few hundred bytes, written to the socket buffer without waiting
    # on the client; Quart's per-response timeout would cost a task per request on the
    # token-issue path for nothing (slow clients are bounded by Hypercorn's timeouts).
    app.config["RESPONSE_TIMEOUT"] = None
    all_migrations = migrate.load_package("tether_auth")

    startup = Startup(log, registry, database_phases(db, SCHEMA, all_migrations, log))
    st = State(
        config,
        log,
        db,
        kit,
        startup,
        registry,
        tokens_issued=Counter("tether_tokens_issued_total", "Connection tokens issued", registry=registry),
        token_consumes=Counter(
            "tether_token_consume_total", "Token consume attempts by outcome", ["outcome"], registry=registry
        ),
        token_consume_batches=Counter(
            "tether_token_consume_batches_total", "consume-batch requests answered 200", registry=registry
        ),
        logins=Counter("tether_logins_total", "Browser log-ins by outcome", ["outcome"], registry=registry),
        issuer=TokenIssuer(
            db,
            log,
            ttl_s=config.token_ttl_s,
            per_minute=config.token_issue_per_minute,
            limits=config.token_issue,
            batches=Counter(
                "tether_token_issue_batches_total", "issue_tokens statements (one per batch)", registry=registry
            ),
        ),
        shed=ShedLog(log, registry),
    )
    app.extensions["tether"] = st
    kit.add_common_routes()

    async def migrations_done() -> bool:
        return startup.done("migrations")

    add_readyz(app, {"migrations": migrations_done, "postgres": database_check(db)})
    pending = Gauge("tether_token_issue_pending", "Token requests queued or in flight", registry=registry)
    add_metrics(app, registry, db, refresh=lambda: pending.set(st.issuer.pending))
    _routes(app)
    check_routes(app, kit.contract, outside_contract=set())
    background = Background(log)

    @app.before_serving
    async def _start() -> None:
        log.info("starting", port=config.port, test_mode=config.test_mode)
        startup.start()
        background.periodic("tokens_purge", 60, lambda: _purge(st), after=startup.ready)
        background.periodic("load_shed_log", 1, lambda: _flush_sheds(st))

    @app.after_serving
    async def _stop() -> None:
        await background.stop()
        await st.issuer.stop()
        st.shed.flush_due(float("inf"))  # what is left of the last second
        await startup.stop()
        await db.close()
        log.close()

    return app


async def _flush_sheds(st: State) -> None:
    st.shed.flush_due(time.monotonic())


async def _purge(st: State) -> None:
    """Delete tokens that expired more than an hour ago."""
    async with st.db.transaction() as conn:
        removed = await store.purge_expired(conn, 3600)
    if removed:
        st.log.info("tokens_purged", count=removed)


# -- authentication helpers ------------------------------------------------------------


async def authenticate_user(conn: Connection) -> store.User:
    credential, via_session = user_credential()
    lookup = store.user_by_session if via_session else store.user_by_api_key
    user = await lookup(conn, credential)
    if user is None:
        raise store.unauthenticated()
    logs.bind(user_id=str(user.id))
    return user


def user_credential() -> tuple[str, bool]:
    """The request's user credential, not yet checked: (API key, False) from a Bearer
    header, else (browser session, True) from the cookie; ``unauthenticated`` without one."""
    header = request.headers.get("Authorization")
    if header is not None:
        key = bearer_token(header)
        if key:
            return key, False
    else:
        session = request.cookies.get(COOKIE)
        if session:
            return session, True
    raise store.unauthenticated()


def _service_caller() -> str:
    return authenticate_service(state().config.service_keys)


def _ts(value: Any) -> str:
    return str(value.isoformat())


def _routes(app: Quart) -> None:
    @app.post("/v1/login")
    async def login() -> Response:
        st = state()
        body = await st.kit.json_body("login")
        async with st.db.transaction() as conn:
            user = await store.user_by_api_key(conn, body["api_key"])
            if user is None:
                st.logins.labels("rejected").inc()
                raise TetherError("unauthenticated", "unknown API key")
            logs.bind(user_id=str(user.id))
            session, expires_at = await store.create_session(
                conn, user, st.config.web_session_ttl_s, st.kit.failpoints.hit
            )
        st.logins.labels("ok").inc()
        st.log.info("login", user_id=str(user.id))
        response = json_response({"user": {"id": str(user.id), "name": user.name}, "expires_at": _ts(expires_at)})
        response.set_cookie(
            COOKIE,
            session,
            max_age=st.config.web_session_ttl_s,
            httponly=True,
            samesite="Lax",
            secure=st.config.cookie_secure,
            path="/",
        )
        return response

    @app.post("/v1/logout")
    async def logout() -> Response:
        st = state()
        session = request.cookies.get(COOKIE)
        if session:
            async with st.db.transaction() as conn:
                await store.delete_session(conn, session, st.kit.failpoints.hit)
        response = Response("", status=204)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="Lax", secure=st.config.cookie_secure)
        return response

    @app.get("/v1/me")
    async def me() -> Response:
        st = state()
        async with st.db.connection() as conn:
            user = await authenticate_user(conn)
        return json_response({"id": str(user.id), "name": user.name})

    @app.post("/v1/tokens")
    async def issue_token() -> Response:
        st = state()
        credential, via_session = user_credential()
        try:
            body = await st.kit.json_body("issueToken")
        except TetherError:
            async with st.db.connection() as conn:  # a bad credential is answered first, as on every route
                await authenticate_user(conn)
            raise
        project_id = uuid.UUID(body["project_id"]) if "project_id" in body else None
        ask = store.IssueRequest(credential, via_session, project_id)
        if st.kit.failpoints.enabled and FAILPOINT_HEADER in request.headers:
            # an armed failpoint must roll back this request's token alone: its own transaction
            async with st.db.transaction() as conn:
                outcome = await store.issue_token(
                    conn, ask, st.config.token_ttl_s, st.config.token_issue_per_minute, st.kit.failpoints.hit
                )
        else:
            try:
                outcome = await st.issuer.issue(ask)
            except Overloaded as exc:  # counted and logged once a second (ShedLog), not one http_error line each
                st.shed.shed(exc.reason, time.monotonic(), ref=str(logs.context().get("request_id", "")))
                raise TetherError(
                    "overloaded",
                    exc.detail,
                    extras={"reason": exc.reason},
                    retry_after_s=st.issuer.retry_after_s(),
                    logged_elsewhere=True,
                ) from None
        if outcome.user is not None:
            logs.bind(user_id=str(outcome.user.id))
        if isinstance(outcome, store.Refused):
            raise outcome.error
        st.tokens_issued.inc()
        st.log.info("token_issued", project_id=str(project_id) if project_id else None)
        return json_response(
            {
                "token": outcome.token,
                "expires_at": _ts(outcome.expires_at),
                "ttl_s": st.config.token_ttl_s,
                "project_id": str(project_id) if project_id else None,
            },
            status=201,
        )

    @app.post("/v1/tokens/consume")
    async def consume_token() -> Response:
        st = state()
        caller = _service_caller()
        body = await st.kit.json_body("consumeToken")
        try:
            async with st.db.transaction() as conn:
                consumed = await store.consume_token(conn, body["token"], caller, st.kit.failpoints.hit)
        except TetherError as exc:
            st.token_consumes.labels(exc.code).inc()
            raise
        st.token_consumes.labels("ok").inc()
        logs.bind(user_id=str(consumed.user_id))
        st.log.info("token_consumed", project_id=str(consumed.project_id) if consumed.project_id else None)
        return json_response(_consumed_body(consumed))

    @app.post("/v1/tokens/consume-batch")
    async def consume_token_batch() -> Response:
        st = state()
        caller = _service_caller()
        body = await st.kit.json_body("consumeTokenBatch")
        async with st.db.transaction() as conn:
            outcomes = await store.consume_tokens(conn, body["tokens"], caller, st.kit.failpoints.hit)
        results: list[dict[str, Any]] = []
        counts: dict[str, int] = {}
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, TetherError):
                results.append({"token_index": index, "status": "error", "code": outcome.code})
                # as consumeToken's http_error line would: one line per refused token
                st.log.warning("token_refused", code=outcome.code, token_index=index, detail=outcome.detail)
                label = outcome.code
            else:
                results.append({"token_index": index, "status": "consumed", **_consumed_body(outcome)})
                label = "ok"
            counts[label] = counts.get(label, 0) + 1
        for label, count in counts.items():
            st.token_consumes.labels(label).inc(count)
        st.token_consume_batches.inc()
        st.log.info("tokens_consumed_batch", tokens=len(outcomes), outcomes=counts)
        return json_response({"results": results})


def _consumed_body(consumed: store.ConsumedToken) -> dict[str, Any]:
    return {
        "user_id": str(consumed.user_id),
        "project_id": str(consumed.project_id) if consumed.project_id else None,
        "issued_at": _ts(consumed.issued_at),
        "expires_at": _ts(consumed.expires_at),
    }
