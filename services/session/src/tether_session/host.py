"""What a session connection uses of the replica that serves it: a narrow protocol, so that the
connection depends on capabilities, not on the app that wires them."""

from __future__ import annotations

import uuid
from typing import Protocol

from tether_kit.db import Database
from tether_kit.logs import JsonLogger

from . import store
from .auth_client import Consumed
from .config import Config
from .fanout import Hub
from .frames import Frames
from .load import Load
from .metrics import Metrics
from .replica import Replica
from .rules import Rules


class TokenConsumer(Protocol):
    async def consume(self, token: str, *, request_id: str) -> Consumed: ...


class PromptPublisher(Protocol):
    async def publish_prompt(self, project_id: uuid.UUID, event: store.NewEvent, text: str) -> store.Appended: ...


class SessionHost(Protocol):
    """What a connection uses of the replica that serves it."""

    @property
    def config(self) -> Config: ...
    @property
    def log(self) -> JsonLogger: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def frames(self) -> Frames: ...
    @property
    def rules(self) -> Rules: ...
    @property
    def replica(self) -> Replica: ...
    @property
    def load(self) -> Load: ...
    @property
    def db(self) -> Database: ...
    @property
    def hub(self) -> Hub: ...
    @property
    def auth(self) -> TokenConsumer: ...
    @property
    def publisher(self) -> PromptPublisher: ...
