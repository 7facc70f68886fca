"""``python -m tether_session``: serve the session service (configuration from the environment)."""

from __future__ import annotations

from tether_kit import logs
from tether_kit.serve import run

from .app import SERVICE, create_app
from .config import Config


def main() -> None:
    log = logs.from_env(SERVICE)
    try:
        config = Config.from_env()
        app = create_app(config)
    except Exception as exc:  # a bad contract or configuration: one structured line, then exit non-zero
        log.exception("startup_failed", exc, phase="create_app")
        raise SystemExit(3) from exc
    run(
        app,
        host=config.host,
        port=config.port,
        log=log,
        drain=app.drain,
        graceful_timeout=config.drain_timeout_s,
        max_message_size=max(4 * config.max_frame_bytes, 1 << 20),
        websocket_deflate=config.ws_deflate,
    )


if __name__ == "__main__":
    main()
