"""Checking live HTTP responses against a service's OpenAPI 3.1 contract.

:func:`assert_conforms` is the one check every black-box response goes through:

* the status is documented for the operation (exact code, ``4XX`` range or ``default``);
* the ``Content-Type`` is one the contract lists for that status (no body when it lists none);
* the body validates against the response schema (jsonschema Draft 2020-12, with a
  ``referencing`` registry over the whole OpenAPI document, so ``$ref`` works anywhere);
* ``X-Request-ID`` is present (and every header the contract marks required);
* a ``application/problem+json`` body repeats the response's status and request id.

A response to a request the contract does not describe (a CORS preflight, an unknown
route) still gets the generic part: ``X-Request-ID``, and a problem+json body that
validates against ``components/schemas/Problem`` when it is an error.

:func:`async_client` / :func:`sync_client` make httpx clients that run the check on
every response automatically (an event hook), so a test cannot forget it.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import referencing
import referencing.jsonschema

REPO_ROOT = Path(__file__).resolve().parents[2]
_BASE_URI = "urn:tether:test-contract"
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
REQUEST_ID_HEADER = "X-Request-ID"
PROBLEM_JSON = "application/problem+json"


class ContractViolation(AssertionError):
    """A response does not match the contract (an assertion failure of the test)."""


@dataclass(frozen=True)
class Operation:
    operation_id: str
    method: str  # upper case
    path: str  # the template, e.g. /v1/projects/{id}
    pointer: str  # JSON pointer of the operation object
    spec: dict[str, Any]

    @property
    def failpoints(self) -> list[str]:
        return list(self.spec.get("x-failpoints", []))

    @property
    def security_schemes(self) -> list[str]:
        return sorted({name for requirement in self.spec.get("security", []) for name in requirement})


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^/{}]+\})", template)
    regex = "".join("[^/]+" if p.startswith("{") and p.endswith("}") else re.escape(p) for p in parts)
    return re.compile(f"^{regex}$")


class Contract:
    """A loaded OpenAPI document with lookups and response checks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.raw = path.read_bytes()
        self.document: dict[str, Any] = json.loads(self.raw)
        resource = referencing.Resource.from_contents(
            self.document, default_specification=referencing.jsonschema.DRAFT202012
        )
        self.registry: referencing.Registry[Any] = referencing.Registry().with_resource(_BASE_URI, resource)
        self.operations: dict[str, Operation] = {}
        for template, item in self.document.get("paths", {}).items():
            for method in _METHODS:
                if method in item:
                    spec = item[method]
                    op_id = spec.get("operationId") or f"{method.upper()} {template}"
                    pointer = f"/paths/{_escape(template)}/{method}"
                    self.operations[op_id] = Operation(op_id, method.upper(), template, pointer, spec)
        self._regexes = {op_id: _template_regex(op.path) for op_id, op in self.operations.items()}
        self._validators: dict[str, jsonschema.Draft202012Validator] = {}

    # -- lookups --------------------------------------------------------------------------
    def operation(self, key: str | tuple[str, str]) -> Operation:
        """By operationId, or by ``(method, path)`` where path is a template or a concrete path."""
        if isinstance(key, str):
            if key not in self.operations:
                raise KeyError(f"{self.path.name} has no operation {key!r}")
            return self.operations[key]
        found = self.find(*key)
        if found is None:
            raise KeyError(f"{self.path.name} has no operation {key[0].upper()} {key[1]}")
        return found

    def find(self, method: str, path: str) -> Operation | None:
        """The operation serving ``method`` on a concrete ``path`` (templates matched), if any."""
        for op_id, op in self.operations.items():
            if op.method == method.upper() and (op.path == path or self._regexes[op_id].match(path)):
                return op
        return None

    def failpoints(self) -> list[tuple[str, str]]:
        """Every ``(operationId, failpoint)`` the contract declares (``x-failpoints``)."""
        return [(op.operation_id, fp) for op in self.operations.values() for fp in op.failpoints]

    def resolve(self, pointer: str) -> tuple[str, Any]:
        """The node at ``pointer``, following local ``$ref`` chains; returns (final pointer, node)."""
        seen: set[str] = set()
        while True:
            node: Any = self.document
            for token in pointer.lstrip("/").split("/") if pointer else []:
                token = token.replace("~1", "/").replace("~0", "~")
                node = node[int(token)] if isinstance(node, list) else node[token]
            if isinstance(node, dict) and isinstance(node.get("$ref"), str) and node["$ref"].startswith("#"):
                if pointer in seen:
                    raise ContractViolation(f"$ref loop at {pointer}")
                seen.add(pointer)
                pointer = node["$ref"][1:]
                continue
            return pointer, node

    def validator(self, pointer: str) -> jsonschema.Draft202012Validator:
        """A Draft 2020-12 validator for the schema at ``pointer`` (refs resolved in the document)."""
        if pointer not in self._validators:
            self._validators[pointer] = jsonschema.Draft202012Validator(
                {"$ref": f"{_BASE_URI}#{pointer}"},
                registry=self.registry,
                format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
            )
        return self._validators[pointer]

    # -- the check ---------------------------------------------------------------------------
    def check(self, response: httpx.Response, operation: str | tuple[str, str] | None = None) -> Any:
        """Assert ``response`` conforms; return its parsed body (JSON value, text, or None)."""
        request = response.request
        where = f"{request.method} {request.url.path} -> {response.status_code}"
        op = self.operation(operation) if operation is not None else self.find(request.method, request.url.path)
        request_id = response.headers.get(REQUEST_ID_HEADER)
        if not request_id:
            raise ContractViolation(f"{where}: no {REQUEST_ID_HEADER} header")
        if op is None:
            return self._check_generic(response, where, request_id)
        responses_pointer, responses = self.resolve(f"{op.pointer}/responses")
        status = str(response.status_code)
        key = next(
            (k for k in (status, f"{status[0]}XX", f"{status[0]}xx", "default") if k in responses),
            None,
        )
        if key is None:
            raise ContractViolation(
                f"{where}: status not documented for {op.operation_id} (documented: {sorted(responses)})\n"
                f"body: {response.text[:500]}"
            )
        resp_pointer, resp_spec = self.resolve(f"{responses_pointer}/{_escape(key)}")
        self._check_headers(response, where, resp_pointer, resp_spec)
        content: dict[str, Any] = resp_spec.get("content") or {}
        if not content:
            if response.content:
                raise ContractViolation(f"{where}: contract documents no body, got {response.content[:200]!r}")
            return None
        mimetype = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if mimetype not in content:
            raise ContractViolation(f"{where}: Content-Type {mimetype!r} not in {sorted(content)}")
        schema_pointer = f"{resp_pointer}/content/{_escape(mimetype)}/schema"
        body = self._parse(response, mimetype, where)
        if "schema" in content[mimetype]:
            self._validate(schema_pointer, body, where)
        if mimetype == PROBLEM_JSON:
            self._check_problem_ids(body, response, where, request_id)
        return body

    def _check_generic(self, response: httpx.Response, where: str, request_id: str) -> Any:
        mimetype = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if response.status_code < 400:
            return self._parse(response, mimetype, where) if response.content else None
        if mimetype != PROBLEM_JSON:
            raise ContractViolation(f"{where}: error response is {mimetype!r}, not {PROBLEM_JSON}")
        body = self._parse(response, mimetype, where)
        if "Problem" in self.document.get("components", {}).get("schemas", {}):
            self._validate("/components/schemas/Problem", body, where)
        self._check_problem_ids(body, response, where, request_id)
        return body

    def _check_headers(
        self, response: httpx.Response, where: str, resp_pointer: str, resp_spec: dict[str, Any]
    ) -> None:
        for name in resp_spec.get("headers", {}):
            header_pointer, header = self.resolve(f"{resp_pointer}/headers/{_escape(name)}")
            value = response.headers.get(name)
            if value is None:
                if header.get("required"):
                    raise ContractViolation(f"{where}: required header {name} missing")
                continue
            if "schema" in header:
                self._validate(f"{header_pointer}/schema", value, where, what=f"header {name}")

    @staticmethod
    def _parse(response: httpx.Response, mimetype: str, where: str) -> Any:
        if mimetype == "application/json" or mimetype.endswith("+json"):
            try:
                return json.loads(response.content)
            except ValueError as exc:
                raise ContractViolation(f"{where}: body is not JSON ({exc}): {response.content[:200]!r}") from exc
        return response.text

    def _validate(self, pointer: str, value: Any, where: str, what: str = "body") -> None:
        errors = sorted(self.validator(pointer).iter_errors(value), key=lambda e: list(e.absolute_path))
        if errors:
            details = "; ".join(f"/{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5])
            raise ContractViolation(f"{where}: {what} does not match {pointer}: {details}\n{what}: {value!r}"[:2000])

    @staticmethod
    def _check_problem_ids(body: Any, response: httpx.Response, where: str, request_id: str) -> None:
        if not isinstance(body, dict):
            raise ContractViolation(f"{where}: problem body is not an object: {body!r}")
        if body.get("status") != response.status_code:
            raise ContractViolation(f"{where}: problem status {body.get('status')!r} != HTTP {response.status_code}")
        if body.get("request_id") != request_id:
            raise ContractViolation(
                f"{where}: problem request_id {body.get('request_id')!r} != {REQUEST_ID_HEADER} {request_id!r}"
            )


@functools.cache
def load_contract(path: Path | str) -> Contract:
    """The :class:`Contract` at ``path`` (cached per path)."""
    return Contract(Path(path).resolve())


def assert_conforms(
    contract_path: Path | str, operation: str | tuple[str, str] | None, response: httpx.Response
) -> Any:
    """Assert ``response`` conforms to the contract; return the parsed body.

    ``operation`` is an operationId, a ``(method, path)`` pair, or None to find it from the
    request.  The response must have been read (``await response.aread()`` when streaming).
    """
    return load_contract(contract_path).check(response, operation)


def async_client(
    contract_path: Path | str,
    base_url: str,
    *,
    timeout: float,
    on_response: Callable[[httpx.Response, Any], None] | None = None,
    **kwargs: Any,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` that checks every response with :func:`assert_conforms`.

    ``on_response(response, body)`` runs after the check (e.g. to remember secrets seen).
    """
    contract = load_contract(contract_path)

    async def hook(response: httpx.Response) -> None:
        await response.aread()
        body = contract.check(response)
        if on_response is not None:
            on_response(response, body)

    hooks: dict[str, list[Any]] = {"response": [hook]}
    return httpx.AsyncClient(base_url=base_url, timeout=timeout, event_hooks=hooks, **kwargs)


def sync_client(
    contract_path: Path | str,
    base_url: str,
    *,
    timeout: float,
    on_response: Callable[[httpx.Response, Any], None] | None = None,
    **kwargs: Any,
) -> httpx.Client:
    """The synchronous twin of :func:`async_client`."""
    contract = load_contract(contract_path)

    def hook(response: httpx.Response) -> None:
        response.read()
        body = contract.check(response)
        if on_response is not None:
            on_response(response, body)

    hooks: dict[str, list[Any]] = {"response": [hook]}
    return httpx.Client(base_url=base_url, timeout=timeout, event_hooks=hooks, **kwargs)
