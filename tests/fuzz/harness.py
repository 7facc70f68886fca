"""Tether's own schemathesis checks, and what they need: service lookup, DB snapshots, log reads.

Importing this module (``tests/fuzz/conftest.py`` does) registers, process-wide:

* the check ``error_is_logged``: every 4xx/5xx answer of a Tether service is a problem+json
  body with a catalogue ``code``, and that service's JSON log has **exactly one** line carrying
  the response's ``X-Request-ID`` and a ``code`` — the same code and status (F01, F40);
* the check ``write_is_atomic``: after an error answer the service's tables hold exactly what
  they held before the request (row count and an md5 of every row, per table); after a success
  they changed exactly as the contract says (e.g. ``createProject`` 201: one more project, one
  more idempotency row iff ``Idempotency-Key`` was sent, and that row holds the name) (F02);
* the hooks ``before_call`` / ``after_call`` (snapshot + log offset around every request) and
  ``after_validate`` (cases and failures into :data:`tests.fuzz.report.REPORT`).

Both checks are enabled by default, so ``case.call_and_validate()`` runs them next to every
default check, in every fuzz test and in the stateful state machines.

Which service answered is found from the response URL's port among the live
:class:`~tests.support.procs.ServiceProcess` instances of this run; the module name says
which schema and tables are that service's.  A response from anything else is not judged.

The before/after snapshot is meaningful because the fuzz suites run examples sequentially
against a service instance (and database) of their own: nothing else writes meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import json
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import Failure
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.auth import AUTH_CONTRACT
from tests.support.contract import Contract, load_contract
from tests.support.procs import ServiceProcess, live_processes
from tests.support.session import SESSION_CONTRACT
from tests.support.waiting import poll_pause, scaled

from .report import REPORT

T = TypeVar("T")

# -- the services under test ------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceKind:
    name: str  # as in the log lines' "service" field
    schema: str  # its Postgres schema
    tables: tuple[str, ...]  # the tables the success rules name (snapshots cover every table)
    contract_path: Path

    @property
    def contract(self) -> Contract:
        return load_contract(self.contract_path)


AUTH = ServiceKind("auth-token", "auth", ("users", "api_keys", "web_sessions", "connection_tokens"), AUTH_CONTRACT)
SESSION = ServiceKind("session", "session", ("projects", "project_idempotency", "events"), SESSION_CONTRACT)
KINDS = {"tether_auth": AUTH, "tether_session": SESSION}


@dataclass(frozen=True)
class LiveService:
    kind: ServiceKind
    proc: ServiceProcess

    @property
    def dsn(self) -> str:
        return self.proc.env["DATABASE_URL"]


def service_at(url: str) -> LiveService | None:
    """The live Tether service listening at ``url``'s port (None for anything else)."""
    parts = urlsplit(url)
    if parts.port is None:
        return None
    for proc in live_processes():
        kind = KINDS.get(proc.module)
        if kind is not None and proc.is_running() and proc._port == parts.port and proc.host == parts.hostname:
            return LiveService(kind, proc)
    return None


def service_of(proc: ServiceProcess) -> LiveService:
    return LiveService(KINDS[proc.module], proc)


# -- database snapshots -------------------------------------------------------------------------

Snapshot = dict[str, tuple[int, str]]


class _Probe:
    """asyncpg connections (one per DSN) on a private event loop in a daemon thread.

    A snapshot before and after every fuzzed request must be cheap: one persistent
    connection and one statement per snapshot, instead of a connection per query.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._conns: dict[str, asyncpg.Connection[Any]] = {}
        self._lock = threading.Lock()

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name="fuzz-db-probe", daemon=True)
                self._thread.start()
            loop = self._loop
        return asyncio.run_coroutine_threadsafe(coro, loop).result(scaled(timeout))

    async def _fetch(self, dsn: str, sql: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        conn = self._conns.get(dsn)
        if conn is None or conn.is_closed():
            conn = self._conns[dsn] = await asyncpg.connect(dsn, timeout=scaled(10))
        return [dict(r) for r in await conn.fetch(sql, *args, timeout=scaled(10))]

    def fetch(self, dsn: str, sql: str, *args: Any) -> list[dict[str, Any]]:
        return self._run(self._fetch(dsn, sql, args))

    async def _close(self) -> None:
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.close(timeout=scaled(5))

    def close(self) -> None:
        """Close every connection and stop the loop (session teardown)."""
        if self._loop is None:
            return
        self._run(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(scaled(5))
        self._loop.close()
        self._loop = self._thread = None


PROBE = _Probe()


_TABLES: dict[tuple[str, str], list[str]] = {}


def tables(service: LiveService) -> list[str]:
    """Every table of the service's schema (migration bookkeeping aside), read from the catalog.

    Discovered rather than listed, so a table a new migration adds is snapshotted too; the
    ``kind.tables`` named in the contract rules must be among them.
    """
    key = (service.dsn, service.kind.schema)
    if key not in _TABLES:
        rows = PROBE.fetch(
            service.dsn,
            """SELECT table_name FROM information_schema.tables
               WHERE table_schema = $1 AND table_type = 'BASE TABLE' AND table_name <> 'schema_migrations'
               ORDER BY table_name""",
            service.kind.schema,
        )
        found = [r["table_name"] for r in rows]
        missing = set(service.kind.tables) - set(found)
        assert not missing, f"{service.kind.name}: tables {sorted(missing)} not in schema {service.kind.schema}"
        _TABLES[key] = found
    return _TABLES[key]


def snapshot(service: LiveService) -> Snapshot:
    """Row count and checksum of every table of the service."""
    sql = " UNION ALL ".join(
        f"SELECT '{t}' AS tbl, count(*) AS n, "
        f"md5(coalesce(string_agg(x::text, ',' ORDER BY x::text), '')) AS sum FROM {service.kind.schema}.{t} x"
        for t in tables(service)
    )
    rows = PROBE.fetch(service.dsn, sql)
    return {r["tbl"]: (int(r["n"]), str(r["sum"])) for r in rows}


def diff(before: Snapshot, after: Snapshot) -> str:
    changed = [
        f"{t}: {before[t][0]} rows -> {after[t][0]} rows{' (contents changed)' if before[t][1] != after[t][1] else ''}"
        for t in before
        if before[t] != after.get(t)
    ]
    return "; ".join(changed) or "no change"


# -- log lines ----------------------------------------------------------------------------------


def log_size(proc: ServiceProcess) -> int:
    try:
        return proc.log_path.stat().st_size
    except FileNotFoundError:
        return 0


def log_lines_since(proc: ServiceProcess, offset: int) -> list[dict[str, Any]]:
    """The complete JSON log lines written at or after byte ``offset``."""
    try:
        with proc.log_path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return []
    # the last piece is empty or a partly written line
    return [json.loads(raw) for raw in data.split(b"\n")[:-1] if raw.strip()]


def error_lines(proc: ServiceProcess, request_id: str, offset: int = 0) -> list[dict[str, Any]]:
    """Log lines of ``proc`` carrying ``request_id`` and an error ``code``."""
    return [line for line in log_lines_since(proc, offset) if line.get("request_id") == request_id and "code" in line]


def one_error_line_problem(
    proc: ServiceProcess, request_id: str, code: str, status: int, offset: int = 0
) -> str | None:
    """None when exactly one matching line exists (polled briefly), else what is wrong."""
    deadline = time.monotonic() + scaled(2.0)
    while True:
        found = error_lines(proc, request_id, offset)
        if found or time.monotonic() >= deadline:
            break
        poll_pause()
    if len(found) != 1:
        return f"expected exactly one log line with request_id {request_id} and a code, found {len(found)}: {found[:3]}"
    line = found[0]
    if line.get("code") != code or line.get("status") != status:
        return f"log line says {line.get('code')}/{line.get('status')}, the response {code}/{status}: {line}"
    if line.get("level") not in ("warning", "error"):
        return f"error logged at level {line.get('level')!r}: {line}"
    return None


# -- per-request bookkeeping (hooks) ------------------------------------------------------------


@dataclass
class _Call:
    service: LiveService
    log_offset: int
    before: Snapshot
    after: Snapshot | None = None
    request_id: str | None = None


@dataclass
class _Calls:
    by_case: dict[str, _Call] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


_CALLS = _Calls()
_LABEL: contextvars.ContextVar[str | None] = contextvars.ContextVar("fuzz_label", default=None)


_QUIET: contextvars.ContextVar[bool] = contextvars.ContextVar("fuzz_quiet", default=False)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Keep the cases validated inside the block out of the report (the checks' self-test)."""
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)


@contextlib.contextmanager
def labelled(label: str) -> Iterator[None]:
    """Count the cases validated inside the block under ``label`` (e.g. ``failpoint <name>``)."""
    token = _LABEL.set(label)
    try:
        yield
    finally:
        _LABEL.reset(token)


def _header(response: Any, name: str) -> str | None:
    values = response.headers.get(name.lower())
    if isinstance(values, list):
        return values[0] if values else None
    return values  # type: ignore[no-any-return]


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    service = service_at(case.operation.schema.get_base_url())
    if service is None:
        return
    call = _Call(service, log_size(service.proc), snapshot(service))
    with _CALLS.lock:
        _CALLS.by_case[case.id] = call


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    with _CALLS.lock:
        call = _CALLS.by_case.get(case.id)
    if call is None:
        return
    call.after = snapshot(call.service)
    call.request_id = _header(response, "X-Request-ID")


@schemathesis.hook
def after_validate(context: Any, case: Any, response: Any, results: list[Any]) -> None:
    """Count the case and record each failure with schemathesis' curl reproduction."""
    if _QUIET.get():
        return
    service = service_at(response.request.url)
    name = service.kind.name if service else "unknown"
    # unexpected-method probes count for the operation they probe; a suite may relabel
    label = _LABEL.get() or case.operation.label
    REPORT.case(name, label, [r.name for r in results])
    with _CALLS.lock:
        _CALLS.by_case.pop(case.id, None)
    failed = [r for r in results if r.failure is not None]
    if not failed:
        return
    try:
        curl = case.as_curl_command(headers=dict(response.request.headers), verify=response.verify)
    except Exception as exc:  # a repro that cannot be rendered must not hide the failure
        curl = f"(no curl command: {exc})"
    for result in failed:
        REPORT.failure(
            name,
            label,
            result.name,
            result.failure.title,
            f"[{response.status_code}] {result.failure.message}",
            curl,
        )


# -- the checks -----------------------------------------------------------------------------------


class ErrorNotLogged(Failure):
    code = "TT901"
    kind_title = "Error answer without exactly one matching log line"


class WriteNotAtomic(Failure):
    code = "TT902"
    kind_title = "Database changed other than the contract says"


def _problem_code(response: Any) -> tuple[str | None, str]:
    content_type = (_header(response, "Content-Type") or "").split(";")[0].strip()
    if content_type != "application/problem+json":
        return None, f"Content-Type {content_type!r} is not application/problem+json"
    try:
        body = json.loads(response.content)
    except ValueError:
        return None, "body is not JSON"
    code = body.get("code") if isinstance(body, dict) else None
    if not isinstance(code, str):
        return None, f"problem body without a string code: {response.content[:200]!r}"
    return code, ""


@schemathesis.check
def error_is_logged(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx: a catalogue code in the body and exactly one log line with its request id and code."""
    if response.status_code < 400:
        return None
    service = service_at(response.request.url)
    if service is None:
        return None
    request_id = _header(response, "X-Request-ID")
    if not request_id:
        raise ErrorNotLogged(operation=case.operation.label, message="the error answer has no X-Request-ID")
    code, why = _problem_code(response)
    if code is None:
        raise ErrorNotLogged(operation=case.operation.label, message=f"not a catalogue error: {why}")
    with _CALLS.lock:
        call = _CALLS.by_case.get(case.id)
    offset = call.log_offset if call is not None and call.request_id == request_id else 0
    problem = one_error_line_problem(service.proc, request_id, code, response.status_code, offset)
    if problem is not None:
        raise ErrorNotLogged(operation=case.operation.label, message=f"{service.kind.name}: {problem}")
    return None


@schemathesis.check
def write_is_atomic(ctx: Any, response: Any, case: Any) -> bool | None:
    """After an error nothing changed; after a success exactly what the contract says changed."""
    with _CALLS.lock:
        call = _CALLS.by_case.get(case.id)
    if call is None or call.after is None or call.request_id != _header(response, "X-Request-ID"):
        return None  # not a call the hooks saw (or another request answered since)
    problems = expected_change_problems(call.service, case, response, call.before, call.after)
    if problems:
        raise WriteNotAtomic(
            operation=case.operation.label,
            message=f"{call.service.kind.name} [{response.status_code}]: " + "; ".join(problems),
        )
    return None


# -- what the contract says a success changes ---------------------------------------------------

# A table expectation: "same" (count and contents) or an allowed row-count delta range.
Expect = str | tuple[float, float]
INF = float("inf")


def _body(case: Any) -> Any:
    body = case.body
    return body if isinstance(body, dict) else {}


def _json(response: Any) -> Any:
    try:
        return json.loads(response.content)
    except ValueError:
        return None


def operation_id(kind: ServiceKind, method: str, path_template: str) -> str | None:
    op = kind.contract.find(method, path_template)
    return op.operation_id if op is not None else None


def expectations(table_names: Iterable[str], op_id: str | None, case: Any, response: Any) -> dict[str, Expect]:
    """Per table, how a response of ``op_id`` may have changed it (any table not named: not at all)."""
    expect: dict[str, Expect] = dict.fromkeys(table_names, "same")
    status = response.status_code
    if status >= 400 or op_id is None:
        return expect
    headers = {k.lower(): v for k, v in (case.headers or {}).items()}
    if op_id == "login" and status == 200:
        expect["web_sessions"] = (1, 1)
    elif op_id == "logout" and status == 204:
        expect["web_sessions"] = (-1, 0)
    elif op_id == "issueToken" and status == 201:
        expect["connection_tokens"] = (1, 1)
    elif op_id in ("consumeToken", "consumeTokenBatch") and status == 200:
        expect["connection_tokens"] = (0, 0)
    elif op_id == "createProject" and status == 201 and _header(response, "Idempotent-Replayed") != "true":
        expect["projects"] = (1, 1)
        if "idempotency-key" in headers:
            expect["project_idempotency"] = (1, 1)
    elif op_id == "deleteProject" and status == 204:
        expect.update(projects=(-1, -1), project_idempotency=(-INF, 0), events=(-INF, 0))
    elif op_id == "publishEvents" and status == 200:
        body = _json(response) or {}
        fresh = sum(1 for r in body.get("results", []) if not r.get("duplicate") and "error" not in r)
        if fresh:
            expect["events"] = (fresh, fresh)
            expect["projects"] = (0, 0)  # last_seq moves
    return expect


def _row_problems(service: LiveService, op_id: str, case: Any, response: Any) -> list[str]:
    """Row-level checks of a success: the row the contract promises is there, as promised."""
    kind, dsn, body = service.kind, service.dsn, _json(response)
    schema = kind.schema
    if op_id == "issueToken" and response.status_code == 201 and isinstance(body, dict):
        digest = hashlib.sha256(body["token"].encode()).digest()
        rows = PROBE.fetch(
            dsn, f"SELECT project_id, consumed_at FROM {schema}.connection_tokens WHERE token_hash = $1", digest
        )
        if len(rows) != 1 or rows[0]["consumed_at"] is not None:
            return [f"issued token not stored unconsumed: {rows}"]
        stored = str(rows[0]["project_id"]) if rows[0]["project_id"] else None
        if stored != body.get("project_id"):
            return [f"token bound to {stored}, response says {body.get('project_id')}"]
    if op_id == "consumeToken" and response.status_code == 200:
        digest = hashlib.sha256(str(_body(case).get("token", "")).encode()).digest()
        rows = PROBE.fetch(dsn, f"SELECT consumed_at FROM {schema}.connection_tokens WHERE token_hash = $1", digest)
        if len(rows) != 1 or rows[0]["consumed_at"] is None:
            return [f"consumed token not marked consumed: {rows}"]
    if op_id == "consumeTokenBatch" and response.status_code == 200 and isinstance(body, dict):
        tokens = [str(t) for t in _body(case).get("tokens", [])]
        for token, result in zip(tokens, body.get("results", []), strict=False):
            digest = hashlib.sha256(token.encode()).digest()
            rows = PROBE.fetch(dsn, f"SELECT consumed_at FROM {schema}.connection_tokens WHERE token_hash = $1", digest)
            code = result.get("code")
            if result.get("status") == "consumed" and (len(rows) != 1 or rows[0]["consumed_at"] is None):
                return [f"token {result.get('token_index')} answered consumed, not marked consumed: {rows}"]
            if code == "token_unknown" and rows:
                return [f"token {result.get('token_index')} answered token_unknown, but it is stored"]
    if op_id == "createProject" and response.status_code == 201 and isinstance(body, dict):
        rows = PROBE.fetch(dsn, f"SELECT name, slug FROM {schema}.projects WHERE id = $1", uuid.UUID(body["id"]))
        wanted = unicodedata.normalize("NFC", str(_body(case).get("name", ""))).strip()
        if len(rows) != 1 or rows[0]["slug"] != body["slug"] or rows[0]["name"] != wanted:
            return [f"project row {rows} does not hold name {wanted!r} / slug {body['slug']!r}"]
    if op_id == "deleteProject" and response.status_code == 204:
        project_id = case.path_parameters.get("project_id")
        with contextlib.suppress(ValueError):
            rows = PROBE.fetch(dsn, f"SELECT 1 FROM {schema}.projects WHERE id = $1", uuid.UUID(str(project_id)))
            if rows:
                return [f"deleted project {project_id} is still there"]
    if op_id == "publishEvents" and response.status_code == 200 and isinstance(body, dict):
        project_id = uuid.UUID(str(case.path_parameters.get("project_id")))
        wanted = {str(e.get("event_id")) for e in _body(case).get("events", [])}
        rows = PROBE.fetch(
            dsn,
            f"SELECT event_id FROM {schema}.events WHERE project_id = $1 AND event_id = ANY($2::text[])",
            project_id,
            list(wanted),
        )
        if {r["event_id"] for r in rows} != wanted:
            return [f"published events missing from the log: {sorted(wanted - {r['event_id'] for r in rows})}"]
    return []


def expected_change_problems(
    service: LiveService, case: Any, response: Any, before: Snapshot, after: Snapshot
) -> list[str]:
    op_id = operation_id(service.kind, case.method, case.operation.path)
    problems: list[str] = []
    for table, rule in expectations(before, op_id, case, response).items():
        (n0, sum0), (n1, sum1) = before[table], after[table]
        if rule == "same":
            if (n0, sum0) != (n1, sum1):
                problems.append(f"{table} changed ({n0} -> {n1} rows{', contents differ' if sum0 != sum1 else ''})")
        else:
            lo, hi = rule  # type: ignore[misc]
            if not lo <= n1 - n0 <= hi:
                problems.append(f"{table}: {n0} -> {n1} rows, the contract allows a change of {lo}..{hi}")
    if not problems and op_id is not None and response.status_code < 400:
        problems.extend(_row_problems(service, op_id, case, response))
    if problems and response.status_code >= 400:
        problems.insert(0, "an error answer left a partial write behind")
    return problems


def reset_calls() -> None:
    with _CALLS.lock:
        _CALLS.by_case.clear()


CheckFn = Callable[[Any, Any, Any], bool | None]
TETHER_CHECKS: tuple[CheckFn, ...] = (error_is_logged, write_is_atomic)


def api_schema(kind: ServiceKind, base_url: str, *, user_key: str, service_key: str, examples: int) -> Any:
    """A schemathesis schema of ``kind``'s contract file, aimed at ``base_url``.

    ``bearerAuth`` is a user's API key, ``serviceAuth`` the service credential the
    operation expects (the auth-token service key, or the session's ingest key).  U+0000 is
    generated too: the contract's schemas say where the session refuses it (``NulFreeJson``,
    the names' not-pattern), so the generator keeps it out of positive cases by itself.
    """
    config = SchemathesisConfig.from_dict(
        {
            "base-url": base_url,
            "request-timeout": scaled(10),
            "generation": {"max-examples": examples},
            "auth": {
                "auto-signup": False,
                "openapi": {"bearerAuth": {"bearer": user_key}, "serviceAuth": {"bearer": service_key}},
            },
        }
    )
    return schemathesis.openapi.from_path(kind.contract_path, config=config)


CONFORMANCE_CHECKS: tuple[CheckFn, ...] = (
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
)
