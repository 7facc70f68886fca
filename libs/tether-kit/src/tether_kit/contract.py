"""Contracts first: the service's OpenAPI document is loaded, validated and enforced.

The document in ``contracts/<service>/openapi.json`` is the single source:

* it is validated as OpenAPI 3.1 at start-up (the service refuses to start otherwise);
* it is served unchanged at ``/openapi.json``;
* request bodies are validated against its schemas;
* :func:`check_routes` refuses to start when the app's routes and the document's
  paths differ (the idea of pyramid_openapi3's ``check_all_routes``);
* operations may declare ``x-failpoints`` (names of failpoints inside their write
  transaction) that the QA harness arms one by one.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema_rs
import referencing
from quart import Quart

from .schemas import FastSchema

HTTP_METHODS = ("get", "put", "post", "delete", "patch")
_BASE_URI = "urn:tether:openapi"


class ContractError(RuntimeError):
    pass


@functools.cache
def _oas31_validator() -> Any:
    """The OpenAPI 3.1 meta-schema, read from the openapi-spec-validator package's data
    files without importing that package (its import alone cost ~0.3 s of cold start), and
    compiled with jsonschema-rs (3 ms to validate a contract instead of ~0.2 s)."""
    spec = importlib.util.find_spec("openapi_spec_validator")
    if spec is None or not spec.submodule_search_locations:
        raise ContractError("openapi-spec-validator (the OpenAPI 3.1 meta-schema) is not installed")
    folder = Path(next(iter(spec.submodule_search_locations)))
    schema = json.loads((folder / "resources" / "schemas" / "v3.1" / "schema.json").read_text(encoding="utf-8"))
    return jsonschema_rs.validator_for(schema)


def validate_spec(document: dict[str, Any]) -> None:
    """Raise when ``document`` is not a valid OpenAPI 3.1 document."""
    error = next(iter(_oas31_validator().iter_errors(document)), None)
    if error is not None:
        where = "/".join(str(p) for p in error.instance_path) or "(root)"
        raise ContractError(f"not a valid OpenAPI 3.1 document at {where}: {error.message[:300]}")


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    spec: dict[str, Any]

    @property
    def failpoints(self) -> list[str]:
        return list(self.spec.get("x-failpoints", []))


@dataclass(frozen=True)
class Parameter:
    schema: FastSchema
    integer: bool  # a query or path value is text: an integer's is read as one first


class OpenApiContract:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.raw = path.read_bytes()
        try:
            self.document: dict[str, Any] = json.loads(self.raw)
            validate_spec(self.document)
        except Exception as exc:  # any parse/validation failure stops start-up
            raise ContractError(f"invalid contract {path}: {exc}") from exc
        resource = referencing.Resource.from_contents(
            self.document, default_specification=referencing.jsonschema.DRAFT202012
        )
        self.registry: referencing.Registry[Any] = referencing.Registry().with_resource(_BASE_URI, resource)
        self.operations: dict[str, Operation] = {}
        for path_key, item in self.document.get("paths", {}).items():
            for method in HTTP_METHODS:
                if method in item:
                    op = item[method]
                    self.operations[op["operationId"]] = Operation(method.upper(), path_key, op["operationId"], op)
        self._validators: dict[str, FastSchema] = {}

    def schema_validator(self, pointer: str) -> FastSchema:
        """A validator for the schema at a JSON pointer inside the document."""
        if pointer not in self._validators:
            reference = jsonschema.Draft202012Validator(
                {"$ref": f"{_BASE_URI}#{pointer}"},
                registry=self.registry,
                format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
            )
            # The whole document as the root, so its internal "#/components/..." refs resolve.
            root = {
                "$ref": "#" + urllib.parse.quote(pointer, safe="/~"),
                "paths": self.document["paths"],
                "components": self.document.get("components", {}),
            }
            self._validators[pointer] = FastSchema(reference, root)
        return self._validators[pointer]

    def request_validator(self, operation_id: str) -> FastSchema:
        op = self.operations[operation_id]
        escaped = op.path.replace("~", "~0").replace("/", "~1")
        pointer = f"/paths/{escaped}/{op.method.lower()}/requestBody/content/application~1json/schema"
        if "requestBody" not in op.spec:
            raise ContractError(f"{operation_id} has no request body in the contract")
        return self.schema_validator(pointer)

    def parameters(self, method: str, path: str, location: str) -> dict[str, Parameter]:
        """The parameters ``in: location`` (``path``, ``query``) of the operation at ``method path``,
        with a validator of each one's schema (none when the contract has no such operation:
        the demo routes)."""
        item = self.document["paths"].get(path)
        if item is None or method.lower() not in item:
            return {}
        escaped = path.replace("~", "~0").replace("/", "~1")
        found: dict[str, Parameter] = {}
        for where in (f"/paths/{escaped}", f"/paths/{escaped}/{method.lower()}"):
            node = self._at(where)
            for index, parameter in enumerate(node.get("parameters", [])):
                pointer = f"{where}/parameters/{index}"
                if "$ref" in parameter:
                    pointer = parameter["$ref"].removeprefix("#")
                    parameter = self._at(pointer)
                if parameter.get("in") == location and "schema" in parameter:
                    integer = parameter["schema"].get("type") == "integer"
                    found[parameter["name"]] = Parameter(self.schema_validator(f"{pointer}/schema"), integer)
        return found

    def _at(self, pointer: str) -> Any:
        node: Any = self.document
        for part in pointer.lstrip("/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def served_bytes(self) -> bytes:
        return self.raw


def rule_to_openapi(rule: str) -> str:
    return re.sub(r"<(?:[a-z_]+:)?([a-zA-Z_]+)>", r"{\1}", rule)


def check_routes(app: Quart, contract: OpenApiContract, *, outside_contract: set[str]) -> None:
    """Refuse to start if the app's HTTP routes and the contract's paths differ.

    ``outside_contract`` names rules that are deliberately not in the OpenAPI
    document (the WebSocket endpoint, static assets of the demo page).
    """
    served: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        if rule.rule in outside_contract or rule.endpoint == "static" or rule.websocket:
            continue
        for method in rule.methods or ():
            if method in ("HEAD", "OPTIONS"):
                continue
            served.add((method, rule_to_openapi(rule.rule)))
    declared = {(op.method, op.path) for op in contract.operations.values()}
    if served != declared:
        raise ContractError(
            "routes and contract differ: "
            f"served but not in contract: {sorted(served - declared)}; "
            f"in contract but not served: {sorted(declared - served)}"
        )
