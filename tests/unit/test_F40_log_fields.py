"""What a log line may carry (F07, F40, F06), on the real :class:`tether_kit.logs.JsonLogger`.

* A value shaped like a Tether secret (``tk_``/``tt_``/``ts_`` + URL-safe characters, the
  shape of ``tether_auth.secrets.new_secret``) is redacted in every field, nested values
  and the bound context included, not only in fields named like a secret.
* A library's record (``LibraryLogHandler``) carries none of the ids bound in the task that
  happened to log it.
* ``DependencyStates``: one ``error`` line when a dependency is lost, none while it stays
  lost, one ``info`` line when it is back.
"""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path
from typing import Any

import pytest

from tether_kit import logs
from tether_kit.logs import DependencyStates, JsonLogger, LibraryLogHandler


def _secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def log(tmp_path: Path) -> JsonLogger:
    logger = JsonLogger("unit", path=str(tmp_path / "log.jsonl"))
    yield logger  # type: ignore[misc]
    logger.close()


def test_F07_secret_shaped_values_are_redacted_in_every_field(log: JsonLogger, tmp_path: Path) -> None:
    token, key, cookie = _secret("tt_"), _secret("tk_"), _secret("ts_")
    with logs.scope(connection_id="c1", client_id=token):
        log.warning(
            "probe",
            path=f"/v1/projects/by-slug/{key}",
            nested={"list": [f"Bearer {cookie}", 5], "deep": {"x": token[:30]}},
            exc=f"ValueError: bad value {token}\n{key}",
            as_object=Path(f"/x/{token}"),
        )
    text = (tmp_path / "log.jsonl").read_text(encoding="utf-8")
    for secret in (token, key, cookie, token[:30]):
        assert secret not in text, f"{secret[:6]}… written to the log: {text}"
    line = _lines(tmp_path / "log.jsonl")[0]
    assert line["client_id"] == "[redacted]"
    assert line["connection_id"] == "c1"
    assert line["path"] == "/v1/projects/by-slug/[redacted]"
    assert line["nested"] == {"list": ["Bearer [redacted]", 5], "deep": {"x": "[redacted]"}}
    assert line["exc"] == "ValueError: bad value [redacted]\n[redacted]"


def test_F07_words_that_only_resemble_the_prefixes_are_kept(log: JsonLogger, tmp_path: Path) -> None:
    words = {
        "metric": "tether_connects_by_outcome_total",
        "rate": "hits_per_second_over_the_last_minute",
        "short": "tt_abc",
        "slug": "my-project-tt",
        "client_id": "tab-1",
    }
    log.info("probe", **words)
    line = _lines(tmp_path / "log.jsonl")[0]
    assert {k: line[k] for k in words} == words


def test_F40_library_records_do_not_inherit_the_context(log: JsonLogger, tmp_path: Path) -> None:
    library = logging.getLogger("asyncpg.pool.unit-test")
    library.propagate = False
    library.addHandler(LibraryLogHandler(log))
    try:
        with logs.scope(request_id="r1", connection_id="c1", user_id="u1", project_id="p1"):
            library.warning("connection lost: %s", "ConnectionResetError")
            log.info("own_line")
    finally:
        library.handlers.clear()
    library_line, own_line = _lines(tmp_path / "log.jsonl")
    assert library_line["event"] == "library_log"
    assert library_line["logger"] == "asyncpg.pool.unit-test"
    assert library_line["message"] == "connection lost: ConnectionResetError"
    for key in ("request_id", "connection_id", "user_id", "project_id"):
        assert key not in library_line, f"library record carries {key}: {library_line}"
        assert key in own_line, "the service's own lines keep their context"


def test_F06_one_error_line_when_a_dependency_is_lost_one_info_when_back(log: JsonLogger, tmp_path: Path) -> None:
    states = DependencyStates()
    states.ok("postgres")  # nothing lost: nothing to say
    with logs.scope(request_id="r1", connection_id="c1"):
        for _ in range(5):
            states.lost("postgres", "database error: ConnectionRefusedError", log)
    states.lost("auth-token", "the auth-token service could not be reached", log)
    assert states.is_lost("postgres")
    states.ok("postgres")
    states.ok("postgres")
    assert not states.is_lost("postgres")
    assert states.is_lost("auth-token")
    lines = _lines(tmp_path / "log.jsonl")
    assert [(x["event"], x["level"], x["dependency"]) for x in lines] == [
        ("dependency_lost", "error", "postgres"),
        ("dependency_lost", "error", "auth-token"),
        ("dependency_restored", "info", "postgres"),
    ]
    assert lines[0]["detail"] == "database error: ConnectionRefusedError"
    assert "request_id" not in lines[0], "an outage belongs to the process, not to the request that saw it"
    assert lines[2]["outage_s"] >= 0
