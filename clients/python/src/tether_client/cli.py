"""``tether``: the command line of the Python client.

    tether login                      check an API key (/v1/me) and store it (0600)
    tether projects list | create NAME
    tether connect PROJECT            interactive: stdin lines are prompts, events are printed
    tether send PROJECT TEXT          one prompt; prints the agent's answer; exits
    tether tail PROJECT [--from N]    the project's events as JSON lines
    tether doctor [PROJECT] [--json]  the whole connection checklist (F35)

Global options come before the command; each has an environment variable.  The API key
is never printed.  Exit codes: 0 success, 1 failure, 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, TextIO

import trio

from . import __version__
from .agent import answers, event_text, reply_to
from .credentials import load_api_key, save_api_key
from .doctor import DoctorConfig, StepResult, run_doctor
from .errors import TetherError, TetherHTTPError
from .frames import Event
from .http import AuthClient, Project, SessionHttp, ws_url
from .session import Session, open_session

DEFAULT_AUTH_URL = "http://127.0.0.1:8001"
DEFAULT_SESSION_URL = "http://127.0.0.1:8002"


class CliError(Exception):
    """A failure to report as ``tether: error: ...`` with exit code 1."""


# -- arguments -----------------------------------------------------------------------------


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


def _ws_urls(args: argparse.Namespace) -> list[str]:
    if args.ws_url:
        return list(args.ws_url)
    from_env = [u.strip() for u in os.environ.get("TETHER_WS_URLS", "").split(",") if u.strip()]
    return from_env or [ws_url(args.session_url)]


def _api_key(args: argparse.Namespace) -> str:
    key: str | None = args.api_key or load_api_key()
    if not key:
        raise CliError("no API key: run `tether login`, pass --api-key, or set TETHER_API_KEY")
    return key


# -- commands ------------------------------------------------------------------------------


async def cmd_login(args: argparse.Namespace, out: TextIO) -> int:
    key: str | None = args.api_key
    if not key:
        key = getpass.getpass("API key: ") if sys.stdin.isatty() else sys.stdin.readline().strip()
    if not key:
        raise CliError("no API key given")
    async with AuthClient(args.auth_url, key) as auth:
        user = await auth.me()
    path = save_api_key(key)
    print(f"logged in as {user.name} ({user.id}); API key stored in {path} (mode 0600)", file=out)
    return 0


def _project_line(p: Project) -> str:
    return f"{p.slug:<32} {p.id}  last_seq {p.last_seq:<8} {p.name}"


async def cmd_projects(args: argparse.Namespace, out: TextIO) -> int:
    async with SessionHttp(args.session_url, _api_key(args)) as http:
        if args.projects_command == "list":
            projects = await http.list_projects()
            if args.json:
                print(json.dumps([asdict(p) for p in projects], indent=2), file=out)
            elif not projects:
                print("no projects yet: `tether projects create NAME`", file=out)
            else:
                for p in projects:
                    print(_project_line(p), file=out)
            return 0
        project = await http.create_project(args.name)
        if args.json:
            print(json.dumps(asdict(project), indent=2), file=out)
        else:
            print(f"created {project.slug} ({project.id})", file=out)
        return 0


async def _resolve(args: argparse.Namespace, key: str) -> Project:
    async with SessionHttp(args.session_url, key) as http:
        try:
            return await http.resolve_project(args.project)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        except TetherHTTPError as exc:
            if exc.status == 404:
                raise CliError(f"project {args.project!r} not found (`tether projects list` shows yours)") from None
            raise


def _session_options(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"origin": args.origin, "batch": args.batch}
    options.update(extra)
    return options


class _Renderer:
    """Prints events for a person: prompts, the agent's streamed text, anything else as JSON."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.mid_line = False

    def show(self, event: Event) -> None:
        if event.kind == "agent_chunk":
            self.out.write(event_text(event))
            self.mid_line = True
        else:
            self._end_line()
            if event.kind == "prompt":
                self.out.write(f"> {event_text(event)}\n")
            elif event.kind == "agent_error":
                self.out.write(f"[agent error] {json.dumps(event.data)}\n")
            elif event.kind != "agent_done":
                self.out.write(f"[{event.seq} {event.kind}] {json.dumps(event.data)}\n")
        self.out.flush()

    def _end_line(self) -> None:
        if self.mid_line:
            self.out.write("\n")
            self.mid_line = False


ANSWER_TIMEOUT_S = 120.0


async def cmd_connect(args: argparse.Namespace, out: TextIO) -> int:
    """A chat: each stdin line is a prompt; the next line is sent once the agent answered."""
    key = _api_key(args)
    project = await _resolve(args, key)
    async with (
        AuthClient(args.auth_url, key) as auth,
        open_session(
            _ws_urls(args),
            project.id,
            auth.token_source(project.id),
            **_session_options(args, resume_from=args.from_seq),
        ) as session,
    ):
        print(
            f"connected to {project.slug} (last_seq {session.ready.last_seq}); "
            "type a prompt and press Enter, Ctrl-D to quit",
            file=sys.stderr,
        )
        renderer = _Renderer(out)
        answered: defaultdict[int, trio.Event] = defaultdict(trio.Event)

        async def show_events() -> None:
            async for event in session.events():
                renderer.show(event)
                if event.kind in ("agent_done", "agent_error"):
                    named = reply_to(event)
                    for seq in [named] if named is not None else [s for s in answered if s < event.seq]:
                        answered[seq].set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(show_events)
            while line := await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True):
                text = line.rstrip("\n")
                if not text.strip():
                    continue
                seq = await session.send(text)
                with trio.move_on_after(ANSWER_TIMEOUT_S) as waited:
                    await answered[seq].wait()
                if waited.cancelled_caught:
                    print(f"tether: no answer to seq {seq} within {ANSWER_TIMEOUT_S:g}s", file=sys.stderr)
            nursery.cancel_scope.cancel()
    return 0


async def cmd_send(args: argparse.Namespace, out: TextIO) -> int:
    key = _api_key(args)
    project = await _resolve(args, key)
    async with (
        AuthClient(args.auth_url, key) as auth,
        open_session(
            _ws_urls(args), project.id, auth.token_source(project.id), **_session_options(args, max_reconnects=10)
        ) as session,
    ):
        return await _send_and_print(session, args.text, args.timeout, out)


async def _send_and_print(session: Session, text: str, timeout_s: float, out: TextIO) -> int:
    with trio.move_on_after(timeout_s):
        seq = await session.send(text)
        wrote = False
        async for event in session.events():
            if not answers(event, seq):
                continue
            if event.kind == "agent_chunk":
                out.write(event_text(event))
                out.flush()
                wrote = True
            elif event.kind == "agent_done":
                if wrote:
                    out.write("\n")
                return 0
            elif event.kind == "agent_error":
                raise CliError(f"the agent failed: {json.dumps(event.data)}")
    raise CliError(f"no agent_done within {timeout_s:g}s")


async def cmd_tail(args: argparse.Namespace, out: TextIO) -> int:
    key = _api_key(args)
    project = await _resolve(args, key)
    async with (
        AuthClient(args.auth_url, key) as auth,
        open_session(
            _ws_urls(args),
            project.id,
            auth.token_source(project.id),
            **_session_options(args, resume_from=args.from_seq),
        ) as session,
    ):
        async for event in session.events():
            print(json.dumps(event.as_json(), ensure_ascii=False), file=out, flush=True)
    return 0


async def cmd_doctor(args: argparse.Namespace, out: TextIO) -> int:
    try:
        key: str | None = args.api_key or load_api_key()
    except ValueError as exc:
        print(f"tether: warning: {exc}", file=sys.stderr)
        key = None
    config = DoctorConfig(
        auth_url=args.auth_url,
        session_url=args.session_url,
        api_key=key,
        project=args.project,
        origin=args.origin,
        ws_url=_ws_urls(args)[0],
        step_timeout_s=args.timeout,
        agent_timeout_s=max(args.timeout, 30.0),
        batch=args.batch,
    )

    def print_step(step: StepResult) -> None:
        if not args.json:
            print(step.render(), file=out, flush=True)

    report = await run_doctor(config, on_step=print_step)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False), file=out)
    else:
        print(report.summary(), file=out)
    return 0 if report.ok else 1


COMMANDS = {
    "login": cmd_login,
    "projects": cmd_projects,
    "connect": cmd_connect,
    "send": cmd_send,
    "tail": cmd_tail,
    "doctor": cmd_doctor,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="tether: %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request at INFO; keep it for --verbose only.
    logging.getLogger("httpx").setLevel(logging.INFO if args.verbose else logging.WARNING)
    command = COMMANDS[args.command]
    try:
        return trio.run(command, args, sys.stdout)
    except KeyboardInterrupt:
        print("tether: interrupted", file=sys.stderr)
        return 130
    except REPORTED as exc:
        return _report(exc, args.verbose)
    except BaseExceptionGroup as group:
        leaves = [e for e in _leaves(group) if not isinstance(e, trio.Cancelled)]
        if any(isinstance(e, KeyboardInterrupt) for e in leaves):
            print("tether: interrupted", file=sys.stderr)
            return 130
        if len(leaves) == 1 and isinstance(leaves[0], REPORTED):
            return _report(leaves[0], args.verbose)
        raise


# Errors reported as one line (with the traceback under --verbose); anything else is a bug
# and keeps its traceback.  OSError: e.g. the credentials file cannot be written.
REPORTED = (CliError, TetherError, ValueError, OSError)


def _report(exc: BaseException, verbose: bool) -> int:
    if verbose:
        logging.getLogger("tether_client.cli").error("failed", exc_info=exc)
    print(f"tether: error: {exc}", file=sys.stderr)
    return 1


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


if __name__ == "__main__":
    sys.exit(main())
