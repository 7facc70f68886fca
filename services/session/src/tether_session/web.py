"""Routes outside the OpenAPI contract: the browser client, the demo page, WS rejections."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import NamedTuple

from quart import Quart, Response

from tether_kit.errors import Catalogue, TetherError
from tether_kit.http import PROBLEM_JSON, REQUEST_ID_HEADER
from tether_kit.logs import JsonLogger

from .config import Config

RULES = {"/", "/p/<slug>", "/tether.js", "/demo/config.json", "/demo/<path:name>", "/v1/ws"}

_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml"}


def _file(path: Path) -> Response:
    if not path.is_file():
        raise TetherError("http_not_found", f"{path.name} is not part of the demo")
    return Response(
        path.read_bytes(),
        content_type=_TYPES.get(path.suffix, "application/octet-stream"),
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


def register(app: Quart, config: Config) -> None:
    root = config.web_root
    demo = root / "demo"

    @app.get("/tether.js")
    async def tether_js() -> Response:
        return _file(root / "tether.js")

    @app.get("/")
    async def index() -> Response:
        return _file(demo / "index.html")

    @app.get("/p/<slug>")
    async def project_page(slug: str) -> Response:
        return _file(demo / "index.html")

    @app.get("/demo/config.json")
    async def demo_config() -> Response:
        body = {
            "auth_url": config.public_auth_url,
            "session_url": config.public_url,
            "ws_urls": list(config.public_ws_urls),
        }
        return Response(json.dumps(body), content_type="application/json")

    @app.get("/v1/ws")
    async def websocket_without_upgrade() -> Response:
        """The WebSocket URL asked for as plain HTTP (its upgrades never reach Quart: see asgi)."""
        raise TetherError("http_bad_request", "GET /v1/ws needs a WebSocket upgrade")

    @app.get("/demo/<path:name>")
    async def demo_asset(name: str) -> Response:
        if not name.isprintable():  # U+0000 made Path.resolve() raise (a 500); no asset name has a control character
            raise TetherError("http_not_found", "not part of the demo")
        target = (demo / name).resolve()
        if demo.resolve() not in target.parents:
            raise TetherError("http_not_found", "not part of the demo")
        return _file(target)


class Rejection(NamedTuple):
    """An HTTP answer to a WebSocket upgrade, sent before accept (``AsgiWebsocket.reject``)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def ws_rejection(log: JsonLogger, error: TetherError, catalogue: Catalogue) -> Rejection:
    """Before accept the only answer is HTTP: a problem+json rejection and one log line."""
    spec = catalogue[error.code]
    request_id = uuid.uuid4().hex
    log.log(spec.level, "ws_rejected", code=spec.code, status=spec.status, detail=error.detail, request_id=request_id)
    body = {
        "type": f"https://tether.dev/errors/{spec.code}",
        "title": spec.title,
        "status": spec.status,
        "code": spec.code,
        "detail": error.detail,
        "request_id": request_id,
    }
    raw = json.dumps(body).encode()
    headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(raw)).encode()),
        (REQUEST_ID_HEADER.lower().encode(), request_id.encode()),
    ]
    return Rejection(spec.status, headers, raw)
