"""schemathesis against the LIVE auth-token service, over HTTP, every operation.

All of schemathesis' default checks run on every generated case, plus Tether's own: every
4xx/5xx answer has exactly one ``http_error`` log line with its request id and code, and
no answer is a 500.  User operations authenticate with a real user's API key (bearer),
the consume operation with the service key; schemathesis also probes them without.

Budget: ``TETHER_FUZZ_EXAMPLES`` cases per operation (default 25) in the normal run;
``just fuzz`` raises it.  The per-operation case counts are written to
``artifacts/logs/<run>/<module>/fuzz-summary.json``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig

from tests.support.auth import AUTH_CONTRACT, AuthService, AuthServiceFactory
from tests.support.contract import load_contract
from tests.support.fuzzing import unique_request_ids
from tests.support.logs import assert_one_error_line
from tests.support.secrets import remember
from tests.support.waiting import scaled

EXAMPLES = int(os.environ.get("TETHER_FUZZ_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def fuzz_auth(module_auth_factory: AuthServiceFactory) -> AuthService:
    """A dedicated instance: normal mode, a rate limit the fuzzer cannot reach."""
    return module_auth_factory.start(env={"TETHER_TOKEN_ISSUE_PER_MINUTE": "1000000"})


@pytest.fixture(scope="module")
def fuzz_stats(log_dir: Path) -> Iterator[Counter[str]]:
    """Cases run per operation; written to the log dir and checked for full coverage."""
    stats: Counter[str] = Counter()
    yield stats
    (log_dir / "fuzz-summary.json").write_text(json.dumps({"total": sum(stats.values()), **stats}, indent=2))
    if stats:  # the fuzz test ran (it is skipped when deselected)
        expected = {f"{op.method} {op.path}" for op in load_contract(AUTH_CONTRACT).operations.values()}
        assert set(stats) == expected, f"operations never exercised: {sorted(expected - set(stats))}"


@pytest.fixture(scope="module")
def auth_api(fuzz_auth: AuthService) -> Any:
    user = fuzz_auth.make_user()
    remember(user.api_key)
    config = SchemathesisConfig.from_dict(
        {
            "base-url": fuzz_auth.url,
            "request-timeout": scaled(10),
            "generation": {"max-examples": EXAMPLES},
            "auth": {
                "auto-signup": False,
                "openapi": {
                    "bearerAuth": {"bearer": user.api_key},
                    "serviceAuth": {"bearer": fuzz_auth.service_key},
                },
            },
        }
    )
    # Loaded from the contract file, not from the live /openapi.json: schemathesis never
    # fuzzes the operation a schema was downloaded from, and we want every operation.  The
    # two are byte-for-byte identical (test_openapi_json_is_the_contract_file_byte_for_byte).
    return schemathesis.openapi.from_path(AUTH_CONTRACT, config=config)


@pytest.fixture(scope="module")
def request_ids() -> Iterator[list[str]]:
    with unique_request_ids("fuzz-auth") as sent:
        yield sent


schema = schemathesis.pytest.from_fixture("auth_api")


@pytest.mark.fuzz
@schema.parametrize()
@hypothesis.settings(deadline=None, database=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_auth_api_conforms_under_fuzzing(
    case: Any, fuzz_auth: AuthService, fuzz_stats: Counter[str], request_ids: list[str]
) -> None:
    response = case.call_and_validate()
    fuzz_stats[f"{case.operation.method.upper()} {case.operation.path}"] += 1
    assert response.status_code < 500, response.text
    request_id = response.headers.get("x-request-id", [None])[0]  # schemathesis: lower-case names, list values
    assert request_id == request_ids[-1], (request_id, request_ids[-1:])
    if response.status_code >= 400:
        assert_one_error_line(fuzz_auth.proc, request_id, response.json()["code"], status=response.status_code)
