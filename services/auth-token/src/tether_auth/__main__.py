"""``python -m tether_auth``: serve the auth-token service (configuration from the environment)."""

from __future__ import annotations

from tether_kit import logs
from tether_kit.serve import run

from .app import SERVICE, create_app
from .config import Config


def main() -> None:
    config = Config.from_env()
    app = create_app(config)
    run(app, host=config.host, port=config.port, log=logs.from_env(SERVICE))


if __name__ == "__main__":
    main()
