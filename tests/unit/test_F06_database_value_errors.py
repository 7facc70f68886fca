"""F06: no database error other than an outage is a 500 (HttpKit, in process).

PostgreSQL refusing a value (SQLSTATE class 22: U+0000 in text, a number out of range) means
the value came with the request and slipped past the contract: the caller gets 422
``validation_failed`` problem+json, the log one ``http_error`` line at ``error`` with the
traceback (the schema should have refused it).  An outage stays 503; anything else 500.
"""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import CollectorRegistry
from quart import Quart

from tether_kit.contract import OpenApiContract
from tether_kit.errors import COMMON, Catalogue
from tether_kit.http import HttpKit
from tether_kit.logs import JsonLogger

CONTRACT = Path(__file__).resolve().parents[2] / "contracts" / "auth-token" / "openapi.json"

RAISES: dict[str, BaseException] = {
    "nul": asyncpg.exceptions.CharacterNotInRepertoireError('invalid byte sequence for encoding "UTF8": 0x00'),
    "range": asyncpg.exceptions.NumericValueOutOfRangeError("value out of range"),
    "outage": ConnectionRefusedError(111, "Connection refused"),
    "bug": KeyError("oops"),
}


def _app(log: JsonLogger) -> Quart:
    app = Quart(__name__)
    HttpKit(
        app,
        log=log,
        catalogue=Catalogue(COMMON),
        contract=OpenApiContract(CONTRACT),
        registry=CollectorRegistry(),
        cors_origins=frozenset(),
        test_mode=False,
    )

    async def boom(case: str) -> str:
        raise RAISES[case]

    app.add_url_rule("/boom/<case>", "boom", boom, methods=["GET"])
    return app


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Quart's test client runs on asyncio


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("case", "status", "code", "level"),
    [
        ("nul", 422, "validation_failed", "error"),
        ("range", 422, "validation_failed", "error"),
        ("outage", 503, "dependency_unavailable", "warning"),
        ("bug", 500, "internal_error", "error"),
    ],
)
async def test_F06_database_value_errors_are_4xx_not_500(
    tmp_path: Path, case: str, status: int, code: str, level: str
) -> None:
    log = JsonLogger("unit", path=str(tmp_path / "log.jsonl"))
    try:
        response = await _app(log).test_client().get(f"/boom/{case}")
    finally:
        log.close()
    assert response.status_code == status
    assert response.content_type == "application/problem+json"
    assert (await response.get_json())["code"] == code
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    errors = [x for x in lines if x["event"] == "http_error"]
    assert [(x["code"], x["level"]) for x in errors] == [(code, level)], lines
