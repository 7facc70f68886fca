"""The ``tether`` command line's arguments: global options (each with an environment
variable, accepted before or after the command) and one subcommand per command."""

from __future__ import annotations

import argparse
import os
from typing import Any

from . import __version__

DEFAULT_AUTH_URL = "http://127.0.0.1:8001"
DEFAULT_SESSION_URL = "http://127.0.0.1:8002"


def _global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The global options; on subcommands (``defaults=False``) they may also follow the
    command and do not override what was given before it."""
    env = os.environ.get

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--auth-url",
        default=default(env("TETHER_AUTH_URL", DEFAULT_AUTH_URL)),
        help=f"auth-token service URL (env TETHER_AUTH_URL; default {DEFAULT_AUTH_URL})",
    )
    parser.add_argument(
        "--session-url",
        default=default(env("TETHER_SESSION_URL", DEFAULT_SESSION_URL)),
        help=f"session service URL (env TETHER_SESSION_URL; default {DEFAULT_SESSION_URL})",
    )
    parser.add_argument(
        "--ws-url",
        action="append",
        default=default(None),
        help="WebSocket URL, repeatable: used in turn on reconnect (env TETHER_WS_URLS, comma-separated; "
        "default: the session URL's /v1/ws)",
    )
    parser.add_argument(
        "--api-key",
        default=default(env("TETHER_API_KEY")),
        help="API key (env TETHER_API_KEY; default: the one stored by `tether login`)",
    )
    parser.add_argument(
        "--origin",
        default=default(env("TETHER_ORIGIN")),
        help="Origin header sent on the WebSocket upgrade (env TETHER_ORIGIN)",
    )
    parser.add_argument(
        "--no-batch",
        dest="batch",
        action="store_false",
        default=default(True),
        help="ask the server for one event per frame instead of batched delivery ('events' frames)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default(False), help="log connection events to stderr"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether", description="Tether's command line client.")
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    _global_options(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, defaults=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(group: Any, name: str, help: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(name, help=help, description=help, parents=[common])
        return sub

    command(commands, "login", "check the API key with /v1/me and store it (mode 0600)")

    projects = command(commands, "projects", "list or create projects")
    project_commands = projects.add_subparsers(dest="projects_command", required=True, metavar="ACTION")
    listing = command(project_commands, "list", "your projects, newest first")
    listing.add_argument("--json", action="store_true", help="print JSON")
    create = command(project_commands, "create", "create a project")
    create.add_argument("name")
    create.add_argument("--json", action="store_true", help="print JSON")

    connect = command(commands, "connect", "interactive session: stdin lines become prompts, events are printed")
    connect.add_argument("project", help="project id or slug")
    connect.add_argument("--from", dest="from_seq", type=int, default=None, help="replay events after this seq")

    send = command(commands, "send", "send one prompt and print the agent's streamed answer")
    send.add_argument("project", help="project id or slug")
    send.add_argument("text")
    send.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for agent_done (default 120)")

    tail = command(commands, "tail", "print the project's events as JSON lines")
    tail.add_argument("project", help="project id or slug")
    tail.add_argument("--from", dest="from_seq", type=int, default=None, help="start after this seq (default: now)")

    doctor = command(commands, "doctor", "check the whole path: health, auth, token, WebSocket, prompt, resume")
    doctor.add_argument("project", nargs="?", default=None, help="project id or slug (default: a temporary one)")
    doctor.add_argument("--json", action="store_true", help="print a machine-readable report")
    doctor.add_argument("--timeout", type=float, default=15.0, help="seconds per step (default 15)")
    return parser
