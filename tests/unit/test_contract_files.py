"""The session contract files are well-formed, and the service refuses to start on a bad one (F11).

* every frame schema is a valid Draft 2020-12 schema whose ``type`` const is its file
  name, whose ``v`` const is 1 and which says its ``x-direction``;
* ``close-codes.json`` validates against ``close-codes.schema.json``; codes and names are
  unique and every code is in 4000-4999;
* in-process: ``Frames`` refuses a broken frame folder, ``check_routes`` refuses an app
  whose routes differ from its OpenAPI paths (a small Quart app);
* black-box: the real service started on a broken copy of the contract
  (``TETHER_SESSION_CONTRACT``) exits non-zero with one structured ``startup_failed`` line,
  while the same start on an intact copy listens (so the contract is the only difference).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from quart import Quart

from tests.support.procs import ServiceProcess
from tests.support.waiting import wait_until
from tether_dev.pg import free_port
from tether_kit.contract import ContractError, OpenApiContract, check_routes
from tether_session.frames import FrameContractError, Frames

REPO = Path(__file__).resolve().parents[2]
SESSION = REPO / "contracts" / "session"
FRAME_FILES = sorted((SESSION / "frames").glob("*.json"))
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
DIRECTIONS = {"client_to_server", "server_to_client"}


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


# -- frame schemas ------------------------------------------------------------------------------


def test_there_are_client_and_server_frames() -> None:
    directions = {_load(p)["x-direction"] for p in FRAME_FILES}
    assert directions == DIRECTIONS
    assert {p.stem for p in FRAME_FILES} >= {"init", "ready", "error", "event", "prompt", "ping", "pong"}


@pytest.mark.parametrize("path", FRAME_FILES, ids=[p.stem for p in FRAME_FILES])
def test_frame_schema_is_valid_and_self_describing(path: Path) -> None:
    schema = _load(path)
    assert schema.get("$schema") == DRAFT_2020_12
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object"
    assert schema["properties"]["type"] == {"const": path.stem}
    assert schema["properties"]["v"]["const"] == 1
    assert {"type", "v"} <= set(schema["required"])
    assert schema.get("x-direction") in DIRECTIONS
    assert schema.get("additionalProperties") is False, "frames are closed: unknown fields are a client bug"
    assert schema.get("$id") == f"urn:tether:session:frames:{path.stem}"


def test_error_frame_enumerates_exactly_the_catalogue_actions() -> None:
    error = _load(SESSION / "frames" / "error.json")
    catalogue_schema = _load(SESSION / "close-codes.schema.json")
    assert (
        error["properties"]["action"]["enum"]
        == catalogue_schema["properties"]["codes"]["items"]["properties"]["action"]["enum"]
    )


# -- close-code catalogue -----------------------------------------------------------------------


def test_F01_close_codes_validate_against_their_schema_and_are_unique() -> None:
    schema = _load(SESSION / "close-codes.schema.json")
    jsonschema.Draft202012Validator.check_schema(schema)
    catalogue = _load(SESSION / "close-codes.json")
    jsonschema.Draft202012Validator(schema).validate(catalogue)
    codes = [e["code"] for e in catalogue["codes"]]
    names = [e["name"] for e in catalogue["codes"]]
    assert len(set(codes)) == len(codes), f"duplicate codes: {codes}"
    assert len(set(names)) == len(names), f"duplicate names: {names}"
    assert all(4000 <= c <= 4999 for c in codes), codes
    assert all(e["message"].strip() and e["meaning"].strip() for e in catalogue["codes"])


def test_close_code_schema_rejects_what_it_must() -> None:
    validator = jsonschema.Draft202012Validator(_load(SESSION / "close-codes.schema.json"))
    good = {
        "code": 4000,
        "name": "x",
        "meaning": "m",
        "retryable": False,
        "action": "fix_client",
        "message": "m",
        "cause": "client",
        "log_level": "warning",
    }
    assert validator.is_valid({"version": 1, "codes": [good]})
    for bad in (
        {"code": 1000},
        {"code": 5000},
        {"action": "panic"},
        {"name": "Bad-Name"},
        {"retryable": "no"},
        {"cause": "nobody"},
        {"log_level": "info"},
    ):
        assert not validator.is_valid({"version": 1, "codes": [{**good, **bad}]}), bad


# -- Frames refuses a broken folder (in-process) ------------------------------------------------------


def _copy_frames(tmp_path: Path) -> Path:
    folder = tmp_path / "frames"
    shutil.copytree(SESSION / "frames", folder)
    return folder


def _edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = _load(path)
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_frames_load_from_the_contract() -> None:
    frames = Frames(SESSION / "frames", validate_outgoing=True)
    assert set(frames.client) == {"init", "prompt", "ack", "ping", "reauth"}
    assert set(frames.server) == {"ready", "event", "events", "prompt_ack", "pong", "error", "reauth_ok"}


BREAKAGES: dict[str, tuple[str, Callable[[dict[str, Any]], None], str]] = {
    "invalid_schema": ("ping.json", lambda d: d["properties"]["nonce"].update(type="strang"), "invalid frame schema"),
    "type_mismatch": ("ping.json", lambda d: d["properties"]["type"].update(const="pang"), "declares type"),
    "no_direction": ("pong.json", lambda d: d.pop("x-direction"), "x-direction"),
    "bad_direction": ("pong.json", lambda d: d.update({"x-direction": "sideways"}), "x-direction"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_frames_refuse_a_broken_schema(tmp_path: Path, breakage: str) -> None:
    folder = _copy_frames(tmp_path)
    name, change, message = BREAKAGES[breakage]
    _edit(folder / name, change)
    with pytest.raises(FrameContractError, match=message):
        Frames(folder, validate_outgoing=False)


def test_frames_refuse_an_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(FrameContractError, match="no frame schemas"):
        Frames(tmp_path, validate_outgoing=False)


# -- check_routes on a small Quart app (in-process) ------------------------------------------------


def _mini_contract(tmp_path: Path, paths: dict[str, list[str]]) -> OpenApiContract:
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "mini", "version": "1"},
        "paths": {
            path: {
                method: {
                    "operationId": f"{method}{i}",
                    "parameters": [
                        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                        for name in re.findall(r"\{([a-z_]+)\}", path)
                    ],
                    "responses": {"200": {"description": "ok"}},
                }
                for method in methods
            }
            for i, (path, methods) in enumerate(paths.items())
        },
    }
    file = tmp_path / "openapi.json"
    file.write_text(json.dumps(document), encoding="utf-8")
    return OpenApiContract(file)


def _mini_app(routes: dict[str, list[str]], *, websocket: str | None = None) -> Quart:
    app = Quart("mini")
    for i, (rule, methods) in enumerate(routes.items()):

        async def view(**_: Any) -> str:
            return "ok"

        app.add_url_rule(rule, f"view{i}", view, methods=methods)
    if websocket is not None:

        async def ws() -> None:
            return None

        app.add_websocket(websocket, "ws", ws)
    return app


def test_check_routes_accepts_matching_routes(tmp_path: Path) -> None:
    contract = _mini_contract(tmp_path, {"/things": ["get", "post"], "/things/{thing_id}": ["get", "delete"]})
    app = _mini_app(
        {"/things": ["GET", "POST"], "/things/<thing_id>": ["GET", "DELETE"], "/page": ["GET"]}, websocket="/ws"
    )
    check_routes(app, contract, outside_contract={"/page"})


@pytest.mark.parametrize(
    ("routes", "complaint"),
    [
        (
            {"/things": ["GET", "POST"], "/things/<thing_id>": ["GET", "DELETE"], "/extra": ["GET"]},
            "served but not in contract: [('GET', '/extra')]",
        ),
        (
            {"/things": ["GET", "POST"], "/things/<thing_id>": ["GET"]},
            "in contract but not served: [('DELETE', '/things/{thing_id}')]",
        ),
        ({"/things": ["GET"], "/things/<thing_id>": ["GET", "DELETE", "PUT"]}, "('PUT', '/things/{thing_id}')"),
        ({"/things": ["GET", "POST"], "/things/<other>": ["GET", "DELETE"]}, "/things/{other}"),
    ],
    ids=["extra_route", "missing_route", "method_mismatch", "renamed_parameter"],
)
def test_F11_check_routes_refuses_when_routes_and_contract_differ(
    tmp_path: Path, routes: dict[str, list[str]], complaint: str
) -> None:
    contract = _mini_contract(tmp_path, {"/things": ["get", "post"], "/things/{thing_id}": ["get", "delete"]})
    with pytest.raises(ContractError) as raised:
        check_routes(_mini_app(routes), contract, outside_contract=set())
    assert complaint in str(raised.value)


def test_F11_create_app_checks_the_real_routes_against_the_contract(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """create_app (in-process, nothing started) passes on the real contract and raises on a
    copy that declares a path the app does not serve."""
    from tether_session.app import create_app
    from tether_session.config import Config

    contract_dir = _contract_copy(tmp_path)
    for key, value in {**_session_env(contract_dir), "TETHER_LOG_FILE": str(tmp_path / "log.jsonl")}.items():
        monkeypatch.setenv(key, value)
    app = create_app(Config.from_env())
    rules = {rule.rule for rule in app.http.url_map.iter_rules()}
    assert {"/v1/projects", "/v1/projects/<project_id>", "/v1/ws"} <= rules
    assert app.ws_paths == {"/v1/ws"}

    _edit(contract_dir / "openapi.json", lambda s: s["paths"].pop("/v1/protocol/close-codes"))
    with pytest.raises(
        ContractError, match="served but not in contract: \\[\\('GET', '/v1/protocol/close-codes'\\)\\]"
    ):
        create_app(Config.from_env())


# -- the real service refuses to start on a broken contract (black-box) -----------------------------


def _contract_copy(tmp_path: Path) -> Path:
    target = tmp_path / "contracts" / "session"
    shutil.copytree(SESSION, target)
    return target


def _session_env(contract_dir: Path) -> dict[str, str]:
    # Nothing listens at these addresses: the contract check runs before any connection,
    # and the intact control start proves the service gets past it with this same env.
    port = free_port()
    return {
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/nowhere",
        "TETHER_SESSION_HOST": "127.0.0.1",
        "TETHER_SESSION_PORT": "0",
        "TETHER_AUTH_URL": f"http://127.0.0.1:{port}",
        "TETHER_AUTH_SERVICE_KEY": "svc_contract_test_key_0123456789",
        "TETHER_INGEST_KEYS": "agent=ing_contract_test_key_0123456789",
        "TETHER_TEST_MODE": "1",
        "TETHER_SESSION_CONTRACT": str(contract_dir / "openapi.json"),
    }


def _wait_exit(proc: ServiceProcess) -> int:
    code = wait_until(
        lambda: proc.returncode is not None and (proc.returncode,),
        timeout=20,
        what=f"{proc.name} to exit",
        describe=proc.tail,
    )
    return int(code[0])


CONTRACT_BREAKAGES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "frame_schema_invalid": (
        lambda d: _edit(d / "frames" / "ping.json", lambda s: s["properties"]["nonce"].update(type="strang")),
        "FrameContractError",
        "invalid frame schema ping.json",
    ),
    "frame_type_mismatch": (
        lambda d: _edit(d / "frames" / "ack.json", lambda s: s["properties"]["type"].update(const="ack2")),
        "FrameContractError",
        "ack.json declares type",
    ),
    "openapi_path_not_served": (
        lambda d: _edit(
            d / "openapi.json",
            lambda s: s["paths"].update(
                {"/v1/extra": {"get": {"operationId": "extra", "responses": {"200": {"description": "x"}}}}}
            ),
        ),
        "ContractError",
        "in contract but not served: [('GET', '/v1/extra')]",
    ),
    "route_missing_from_openapi": (
        lambda d: _edit(d / "openapi.json", lambda s: s["paths"].pop("/metrics")),
        "ContractError",
        "served but not in contract: [('GET', '/metrics')]",
    ),
    "openapi_invalid": (
        lambda d: _edit(d / "openapi.json", lambda s: s.update(openapi="banana")),
        "ContractError",
        "invalid contract",
    ),
    "close_code_out_of_range": (
        lambda d: _edit(d / "close-codes.json", lambda s: s["codes"][0].update(code=1008)),
        "ValueError",
        "close code 1008 outside 4000-4999",
    ),
}


@pytest.mark.parametrize("breakage", sorted(CONTRACT_BREAKAGES))
def test_F11_service_refuses_to_start_on_a_broken_contract(
    tmp_path: Path, spawn_service: Callable[..., ServiceProcess], breakage: str
) -> None:
    contract_dir = _contract_copy(tmp_path)
    env = _session_env(contract_dir)

    # control: the intact copy gets past create_app and listens
    control = spawn_service("tether_session", env, name="session-intact")
    control.wait_listening(20)
    assert not control.events("startup_failed")
    control.stop()

    change, exc_type, message = CONTRACT_BREAKAGES[breakage]
    change(contract_dir)
    proc = spawn_service("tether_session", env, name=f"session-{breakage}")
    code = _wait_exit(proc)
    assert code != 0, proc.tail()
    lines = proc.log_lines()
    failed = [line for line in lines if line["event"] == "startup_failed"]
    assert len(failed) == 1, lines
    assert failed[0]["level"] == "error"
    assert failed[0]["exc_type"] == exc_type, failed[0]
    assert message in failed[0]["exc"], failed[0]["exc"]
    assert not [line for line in lines if line["event"] == "listening"], "it must not serve anything"
