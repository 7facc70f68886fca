"""The session service's HTTP routes (the contract's operations) and its one WebSocket route."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Coroutine
from typing import Any

from quart import Quart, Response, request

from tether_kit import logs
from tether_kit.errors import TetherError
from tether_kit.http import FAILPOINT_HEADER
from tether_kit.service import add_metrics, add_readyz, authenticate_service, database_check, json_response

from . import names, store, web
from .asgi_ws import AsgiWebsocket
from .auth_client import AuthUser
from .catalogue import CATALOGUE
from .connection import Connection
from .deps import Deps
from .rules import origin_refusal, retention_gap


def register(app: Quart, deps: Deps) -> None:
    _operations(app, deps)
    _projects(app, deps)
    _events(app, deps)


def serve_ws(deps: Deps, sock: AsgiWebsocket) -> web.Rejection | Coroutine[Any, Any, None]:
    """GET /v1/ws (WebSocket upgrade): the Origin check before accept (F07), then one Connection
    (its coroutine: the dispatch awaits it once it has accepted the upgrade)."""
    config = deps.config
    refusal = origin_refusal(sock.headers.get("Origin"), config.allowed_origins, required=config.require_origin)
    if refusal is not None:
        return web.ws_rejection(deps.log, TetherError("origin_not_allowed", refusal), CATALOGUE)
    return Connection(deps, sock).run()


async def _current_user(deps: Deps) -> AuthUser:
    user = await deps.auth.me(
        authorization=request.headers.get("Authorization"),
        session_cookie=request.cookies.get("tether_session"),
        request_id=logs.context().get("request_id", ""),
    )
    logs.bind(user_id=str(user.id))
    return user


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise TetherError("not_found", "no such project") from None


def _int_query(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise TetherError("validation_failed", f"{name} must be an integer") from None
    if not low <= value <= high:
        raise TetherError("validation_failed", f"{name} must be between {low} and {high}")
    return value


def _event_json(e: store.StoredEvent) -> str:
    return '{"seq":%d,"event_id":%s,"kind":%s,"data":%s,"ts":"%s"}' % (  # noqa: UP031
        e.seq,
        json.dumps(e.event_id),
        json.dumps(e.kind),
        e.data_json,
        e.ts.isoformat(),
    )


def _publish_result(r: store.Appended) -> dict[str, Any]:
    result: dict[str, Any] = {"event_id": r.event_id, "seq": r.seq, "duplicate": r.duplicate}
    if r.conflict:
        result["error"] = "idempotency_conflict"
    return result


def _operations(app: Quart, deps: Deps) -> None:
    startup, replica = deps.startup, deps.replica

    async def migrations() -> bool:
        return startup.done("migrations")

    async def listen() -> bool:
        return deps.listener.connected.is_set()

    async def accepting() -> bool:
        return not replica.draining

    async def started() -> bool:
        return startup.is_ready

    add_readyz(
        app,
        {
            "migrations": migrations,
            "postgres": database_check(deps.db),
            "listen": listen,
            "auth_token": deps.auth.healthy,
            "accepting": accepting,
            "startup": started,
        },
        draining=lambda: replica.draining,
    )

    def refresh() -> None:
        deps.metrics.observe(
            subscribers=deps.hub.subscriber_count,
            feeds=len(deps.hub.feeds),
            listen_reconnects=deps.listener.reconnects,
            agent_tasks=len(deps.publisher.agents.tasks),
        )

    add_metrics(app, deps.registry, deps.db, refresh)

    @app.get("/v1/protocol/close-codes")
    async def close_codes() -> Response:
        return Response((deps.config.contracts_dir / "close-codes.json").read_bytes(), content_type="application/json")


def _projects(app: Quart, deps: Deps) -> None:
    db, kit, log = deps.db, deps.kit, deps.log

    @app.get("/v1/projects")
    async def list_projects() -> Response:
        user = await _current_user(deps)
        async with db.connection() as conn:
            projects = await store.list_projects(conn, user.id)
        return json_response({"projects": [p.public() for p in projects]})

    @app.post("/v1/projects")
    async def create_project() -> Response:
        user = await _current_user(deps)
        body = await kit.json_body("createProject")
        key = request.headers.get("Idempotency-Key")
        if key is not None and not (0 < len(key) <= 128 and all(c.isalnum() or c in "._:-" for c in key)):
            raise TetherError("validation_failed", "Idempotency-Key must match ^[A-Za-z0-9._:-]{1,128}$")
        name = names.project_name(body["name"])
        async with db.transaction() as conn:
            project, replayed = await store.create_project(conn, user.id, name, key, kit.failpoints.hit)
        if not replayed:
            log.info("project_created", project_id=str(project.id), slug=project.slug)
        return json_response(
            project.public(), status=201, headers={"Idempotent-Replayed": "true"} if replayed else None
        )

    @app.get("/v1/projects/<project_id>")
    async def get_project(project_id: str) -> Response:
        user = await _current_user(deps)
        async with db.connection() as conn:
            project = await store.project_by_id(conn, user.id, _uuid(project_id))
        if project is None:
            raise TetherError("not_found", "no such project")
        return json_response(project.public())

    @app.delete("/v1/projects/<project_id>")
    async def delete_project(project_id: str) -> Response:
        user = await _current_user(deps)
        pid = _uuid(project_id)
        async with db.transaction() as conn:
            deleted = await store.delete_project(conn, user.id, pid, kit.failpoints.hit)
        if not deleted:
            raise TetherError("not_found", "no such project")
        log.info("project_deleted", project_id=str(pid))
        return Response("", status=204)

    @app.get("/v1/projects/by-slug/<slug>")
    async def get_project_by_slug(slug: str) -> Response:
        user = await _current_user(deps)
        async with db.connection() as conn:
            project = await store.project_by_slug(conn, user.id, slug)
        if project is None:
            raise TetherError("not_found", "no such project")
        return json_response(project.public())


def _events(app: Quart, deps: Deps) -> None:
    db, kit = deps.db, deps.kit

    @app.get("/v1/projects/<project_id>/events")
    async def list_events(project_id: str) -> Response:
        user = await _current_user(deps)
        after = _int_query("after", 0, 0, 2**53 - 1)
        limit = _int_query("limit", 100, 1, 1000)
        pid = _uuid(project_id)
        async with db.connection() as conn:
            project = await store.project_by_id(conn, user.id, pid)
            if project is None:
                raise TetherError("not_found", "no such project")
            gap = retention_gap(after, await store.first_seq(conn, pid))
            if gap is not None:
                raise TetherError("resume_unavailable", gap)
            events = await store.read_events(conn, pid, after, limit)
        return Response(
            '{"events":[%s],"last_seq":%d}'  # noqa: UP031
            % (",".join(_event_json(e) for e in events), project.last_seq),
            content_type="application/json",
        )

    @app.post("/v1/projects/<project_id>/events")
    async def publish_events(project_id: str) -> Response:
        authenticate_service(deps.config.ingest_keys)
        shed = deps.load.write_refusal("ingest", logs.context().get("request_id", ""))
        if shed is not None:  # before the body is read: a refusal costs next to nothing
            signal, retry_ms = shed
            raise TetherError(
                "overloaded",
                f"the replica is overloaded ({signal}); retry after {retry_ms} ms",
                retry_after_s=max(1, math.ceil(retry_ms / 1000)),
                extras={"signal": signal, "retry_after_ms": retry_ms},
                logged_elsewhere=True,
            )
        body = await kit.json_body("publishEvents")
        pid = _uuid(project_id)
        events = [store.NewEvent(e["event_id"], e["kind"], e["data"]) for e in body["events"]]
        armed = kit.failpoints.enabled and FAILPOINT_HEADER in request.headers
        results = await deps.publisher.publish(pid, events, source="ingest", own_transaction=armed)
        logs.bind(project_id=str(pid))
        conflicts = [r.event_id for r in results if r.conflict]
        if conflicts:  # each is reported in its result; the events stored or duplicated beside it stand
            deps.log.warning("idempotency_conflict", conflicts=len(conflicts), event_ids=conflicts[:10])
        return json_response(
            {"results": [_publish_result(r) for r in results], "last_seq": max(r.seq for r in results)}
        )
