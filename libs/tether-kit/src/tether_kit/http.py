"""The HTTP spine shared by the services: request ids, problem+json, CORS, body parsing.

:class:`HttpKit` is installed once on a Quart app.  It guarantees:

* every response carries ``X-Request-ID`` (the caller's when well-formed, else a new one);
* every error, whatever raised it (our code, Quart's routing, an unexpected bug), is
  answered by :meth:`HttpKit.problem`, which writes the problem+json body *and* exactly
  one structured log line with ``code``, ``status`` and ``request_id`` (F01, F40);
* a lost database answers 503 ``dependency_unavailable`` with ``Retry-After`` (F06);
* request bodies are parsed by us (never ``get_json``), so non-UTF-8, non-JSON,
  too-deep or off-schema bodies are 400/413/415/422, never 500;
* every path and query parameter is checked against its schema in the contract before the
  handler runs: a path value outside it (``%00`` in a slug) names nothing, so it is 404
  ``not_found`` and never reaches the database or the file system; a query value outside
  it is 422 ``validation_failed``;
* a path Werkzeug would redirect (``//slug``: merged slashes) is 404 ``http_not_found``
  like any other path outside the contract: every answer is problem+json or the contract's.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import asyncpg
import jsonschema
from prometheus_client import CollectorRegistry, Counter, Histogram
from quart import Quart, Response, has_request_context, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

from . import logs
from .contract import OpenApiContract, Parameter, rule_to_openapi
from .db import is_connectivity_error
from .errors import Catalogue, DependencyUnavailable, TetherError
from .jsontext import parse_json_text

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")
PROBLEM_JSON = "application/problem+json"
FAILPOINT_HEADER = "X-Tether-Failpoint"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})  # failpoints live only in writes


class Failpoints:
    """Named failure points inside write transactions, armed per request in test mode only.

    Outside test mode :meth:`hit` is a single attribute check and nothing can arm it;
    a request that tries (header ``X-Tether-Failpoint``) is refused with 400.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def hit(self, name: str) -> None:
        if self.enabled and has_request_context() and request.headers.get(FAILPOINT_HEADER) == name:
            raise TetherError("failpoint", f"failpoint {name} armed", extras={"failpoint": name})


class HttpKit:
    def __init__(
        self,
        app: Quart,
        *,
        log: logs.JsonLogger,
        catalogue: Catalogue,
        contract: OpenApiContract,
        registry: CollectorRegistry,
        cors_origins: frozenset[str],
        test_mode: bool,
        allow_nul: bool = True,
    ) -> None:
        self.app = app
        self.allow_nul = allow_nul
        self.log = log
        self.catalogue = catalogue
        self.contract = contract
        self.cors_origins = cors_origins
        self.failpoints = Failpoints(test_mode)
        self.requests = Counter(
            "tether_http_requests_total",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.errors = Counter(
            "tether_http_errors_total", "HTTP error responses by catalogue code", ["code"], registry=registry
        )
        self.latency = Histogram(
            "tether_http_request_seconds",
            "HTTP request duration",
            ["route"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self._metrics: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._parameters: dict[tuple[str, str], tuple[dict[str, Parameter], dict[str, Parameter]]] = {}
        app.before_request(self._before)
        app.after_request(self._after)
        app.register_error_handler(TetherError, self._on_tether_error)
        app.register_error_handler(HTTPException, self._on_http_exception)
        app.register_error_handler(Exception, self._on_exception)

    def add_common_routes(self) -> None:
        """``GET /healthz`` (the process answers) and ``GET /openapi.json`` (the contract file, byte
        for byte): the same in every service."""
        contract = self.contract

        async def healthz() -> Response:
            return Response(json.dumps({"status": "ok"}), content_type="application/json")

        async def openapi() -> Response:
            return Response(contract.served_bytes(), content_type="application/json")

        self.app.add_url_rule("/healthz", "healthz", healthz, methods=["GET"])
        self.app.add_url_rule("/openapi.json", "openapi", openapi, methods=["GET"])

    # -- request lifecycle -------------------------------------------------------------
    async def _before(self) -> None:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = incoming if _REQUEST_ID_OK.match(incoming) else uuid.uuid4().hex
        logs.bind(request_id=request_id)
        request.environ_request_id = request_id  # type: ignore[attr-defined]
        request.started_at = time.perf_counter()  # type: ignore[attr-defined]
        if request.method in ("POST", "PUT", "PATCH", "DELETE"):
            # Read (and cache) the body before any handler can answer early (401, 503):
            # Hypercorn drops a keep-alive connection whose request body was left unread,
            # without a ``Connection: close``, and pooled clients then fail their next call.
            # Kept for json_body: each get_data() costs a task (Quart wraps it in asyncio.wait_for).
            request.tether_body = await request.get_data(cache=True)  # type: ignore[attr-defined]
        rule = request.url_rule
        if rule is None:
            if isinstance(request.routing_exception, RequestRedirect):
                raise TetherError("http_not_found", "no such route (paths are not rewritten or redirected)")
        else:
            self._check_parameters(rule.rule)
        if request.method in WRITE_METHODS and FAILPOINT_HEADER in request.headers and not self.failpoints.enabled:
            raise TetherError("failpoints_disabled", "failpoints can only be armed in test mode")

    def _check_parameters(self, rule: str) -> None:
        """Path and query parameters against their schemas in the contract, before any handler.

        A path value outside its schema names nothing (404); a query value outside it is a bad
        request (422).  Integers are ASCII digits only: ``int()`` alone also takes ``" 1\\t"``,
        ``"1_000"`` and other scripts' digits, which the contract's integer is not.
        """
        method = "GET" if request.method == "HEAD" else request.method
        checks = self._parameters.get((rule, method))
        if checks is None:
            path = rule_to_openapi(rule)
            checks = self._parameters[(rule, method)] = (
                self.contract.parameters(method, path, "path"),
                self.contract.parameters(method, path, "query"),
            )
        path_checks, query_checks = checks
        view_args = request.view_args or {}
        for name, parameter in path_checks.items():
            if name in view_args and not _parameter_ok(parameter, view_args[name]):
                raise TetherError("not_found", f"no such {name}: the value is outside the contract's schema")
        for name, parameter in query_checks.items():
            for value in request.args.getlist(name):
                if not _parameter_ok(parameter, value):
                    raise TetherError("validation_failed", f"query parameter {name} is outside the contract's schema")

    async def _after(self, response: Response) -> Response:
        request_id = getattr(request, "environ_request_id", None) or uuid.uuid4().hex
        response.headers[REQUEST_ID_HEADER] = request_id
        origin = request.headers.get("Origin")
        if origin and origin in self.cors_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Access-Control-Expose-Headers"] = f"{REQUEST_ID_HEADER}, Retry-After"
            if request.method == "OPTIONS":
                response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE"
                response.headers["Access-Control-Allow-Headers"] = (
                    "Authorization, Content-Type, Idempotency-Key, X-Request-ID"
                )
                response.headers["Access-Control-Max-Age"] = "600"
        response.headers.add("Vary", "Origin")
        if response.status_code >= 400 and (request.content_length or "Transfer-Encoding" in request.headers):
            # Errors raised before the body is read (auth, 413, 415) make Hypercorn close the
            # connection once the response is out; announce it so that clients do not reuse
            # a connection that is going away (RFC 9112 section 9.6).
            response.headers["Connection"] = "close"
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        key = (route, request.method, response.status_code)
        metrics = self._metrics.get(key)
        if metrics is None:  # labels() costs a lock and a lookup on every call: keep the children
            metrics = self._metrics[key] = (
                self.requests.labels(route, request.method, str(response.status_code)),
                self.latency.labels(route),
            )
        metrics[0].inc()
        started = getattr(request, "started_at", None)
        if started is not None:
            metrics[1].observe(time.perf_counter() - started)
        return response

    # -- errors ------------------------------------------------------------------------

    def problem(self, err: TetherError, *, exc: BaseException | None = None) -> Response:
        """The one place an HTTP error becomes a response and a log line."""
        spec = self.catalogue[err.code] if err.code in self.catalogue else self.catalogue["internal_error"]
        body: dict[str, Any] = {
            "type": f"https://tether.dev/errors/{spec.code}",
            "title": spec.title,
            "status": spec.status,
            "code": spec.code,
            "detail": err.detail or spec.title,
            "request_id": logs.context().get("request_id", ""),
        }
        body.update(err.extras)
        fields: dict[str, Any] = {
            "code": spec.code,
            "status": spec.status,
            "method": request.method,
            "path": request.path,
            "detail": body["detail"],
        }
        fields.update({k: v for k, v in err.extras.items() if k != "errors"})
        if spec.code == "dependency_unavailable":
            logs.DEPENDENCIES.lost(str(err.extras.get("dependency", "unknown")), body["detail"], self.log)
        if exc is not None:
            self.log.exception("http_error", exc, **fields)
        elif not err.logged_elsewhere:
            self.log.log(spec.level, "http_error", **fields)
        self.errors.labels(spec.code).inc()
        response = Response(json.dumps(body), status=spec.status, content_type=PROBLEM_JSON)
        retry_after = err.retry_after_s if err.retry_after_s is not None else spec.retry_after_s
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        for key, value in err.headers.items():
            response.headers[key] = value
        return response

    async def _on_tether_error(self, err: TetherError) -> Response:
        return self.problem(err)

    async def _on_http_exception(self, err: HTTPException) -> Response:
        status = err.code or 500
        if status == 413:
            return self.problem(TetherError("body_too_large", "request body exceeds the limit"))
        spec = self.catalogue.for_status(status)
        headers: dict[str, str] = {}
        if status == 405 and err.get_headers():
            headers = {k: v for k, v in err.get_headers() if k.lower() == "allow"}
        return self.problem(TetherError(spec.code, err.description or spec.title, headers=headers))

    async def _on_exception(self, exc: Exception) -> Response:
        if isinstance(exc, DependencyUnavailable):
            return self.problem(exc)
        if is_connectivity_error(exc):
            return self.problem(DependencyUnavailable("postgres", f"database error: {type(exc).__name__}"))
        if isinstance(exc, asyncpg.DataError):
            # SQLSTATE class 22: PostgreSQL refused a value (U+0000 in text, a number out of range).
            # The value came with the request, so the caller gets a 4xx, never a 500; the line
            # stays at error with its traceback: the contract's schemas should have refused it.
            detail = f"a value is outside what the database can store: {type(exc).__name__}"
            return self.problem(TetherError("validation_failed", detail), exc=exc)
        return self.problem(TetherError("internal_error", "unexpected error"), exc=exc)

    # -- bodies ------------------------------------------------------------------------
    async def json_body(self, operation_id: str) -> Any:
        """Parse and validate the request body of ``operation_id`` against the contract."""
        if request.mimetype != "application/json":
            raise TetherError("unsupported_media_type", "Content-Type must be application/json")
        raw = getattr(request, "tether_body", None)
        if raw is None:
            raw = await request.get_data(as_text=False)
        value = parse_json_text(raw, allow_nul=self.allow_nul)
        error = self.contract.request_validator(operation_id).first_error(value)
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            message = schema_error_message(error)
            raise TetherError(
                "validation_failed",
                f"{where}: {message}"[:300],
                extras={"errors": [{"path": where, "message": message}]},
            )
        return value


_INTEGER_TEXT = re.compile(r"-?[0-9]{1,20}")


def _parameter_ok(parameter: Parameter, text: str) -> bool:
    if not parameter.integer:
        return parameter.schema.first_error(text) is None
    return _INTEGER_TEXT.fullmatch(text) is not None and parameter.schema.first_error(int(text)) is None


# jsonschema messages for these keywords name properties, never the offending value.
_VALUE_FREE_KEYWORDS = frozenset({"required", "additionalProperties", "unevaluatedProperties"})


def schema_error_message(error: jsonschema.ValidationError) -> str:
    """A validation message that never repeats the rejected value.

    jsonschema's own messages quote the instance (``'tt_…' is too long``); a secret sent
    in the wrong field would then reach the log line (F07).  Name the keyword instead.
    """
    if error.validator in _VALUE_FREE_KEYWORDS:
        return error.message[:300]
    constraint = json.dumps(error.validator_value, default=str)
    return f"value fails {error.validator} {constraint}"[:300]


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
