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
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any, TextIO

import trio

from .agent import answers, event_text, reply_to
from .cli_args import build_parser
from .credentials import load_api_key, save_api_key
from .doctor import DoctorConfig, StepResult, run_doctor
from .errors import TetherError, TetherHTTPError, exception_leaves
from .frames import Event
from .http import AuthClient, Project, SessionHttp, ws_url
from .session import Session, open_session


class CliError(Exception):
    """A failure to report as ``tether: error: ...`` with exit code 1."""


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


@asynccontextmanager
async def _project_session(args: argparse.Namespace, **overrides: Any) -> AsyncIterator[tuple[Project, Session]]:
    """The command's project and a session on it, with the global options applied."""
    key = _api_key(args)
    project = await _resolve(args, key)
    async with (
        AuthClient(args.auth_url, key) as auth,
        open_session(
            _ws_urls(args),
            project.id,
            auth.token_source(project.id),
            origin=args.origin,
            batch=args.batch,
            **overrides,
        ) as session,
    ):
        yield project, session


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
    async with _project_session(args, resume_from=args.from_seq) as (project, session):
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
    async with _project_session(args, max_reconnects=10) as (_, session):
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
    async with _project_session(args, resume_from=args.from_seq) as (_, session):
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
        leaves = [e for e in exception_leaves(group) if not isinstance(e, trio.Cancelled)]
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


if __name__ == "__main__":
    sys.exit(main())
