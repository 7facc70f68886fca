"""The dependencies of one session replica, built once by the app factory (F10, F11).

:class:`Deps` is what the routes and the connections are handed; a connection sees it only
through the narrow :class:`~tether_session.host.SessionHost` protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from tether_kit.db import Database
from tether_kit.http import HttpKit
from tether_kit.lifecycle import Startup
from tether_kit.logs import JsonLogger

from .auth_client import AuthClient
from .config import Config
from .fanout import Hub, Listener
from .frames import Frames
from .load import Load
from .metrics import Metrics
from .publisher import Publisher
from .replica import Replica
from .rules import Rules


@dataclass(frozen=True)
class Deps:
    config: Config
    log: JsonLogger
    metrics: Metrics
    frames: Frames
    rules: Rules
    replica: Replica
    load: Load
    db: Database
    hub: Hub
    listener: Listener
    auth: AuthClient
    publisher: Publisher
    startup: Startup
    kit: HttpKit
    registry: CollectorRegistry
