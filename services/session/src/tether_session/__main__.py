"""``python -m tether_session``: serve the session service (configuration from the environment)."""

from __future__ import annotations

from tether_kit import logs
from tether_kit.serve import run

from .app import SERVICE, State, create_app
from .config import Config


def main() -> None:
    config = Config.from_env()
    app = create_app(config)
    st: State = app.extensions["tether"]
    run(
        app,
        host=config.host,
        port=config.port,
        log=logs.from_env(SERVICE),
        drain=st.drain,
        graceful_timeout=config.drain_timeout_s,
        max_message_size=max(4 * config.max_frame_bytes, 1 << 20),
    )


if __name__ == "__main__":
    main()
