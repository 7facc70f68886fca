"""F06, F40: an outage is one ``error`` line, not one per request.

PostgreSQL stopped under a running auth-token service, then several requests: each answer is
the expected 503 ``dependency_unavailable`` with its ``http_error`` line at ``warning`` naming
the dependency; the outage itself is exactly one ``dependency_lost`` line at ``error``; once
PostgreSQL is back, exactly one ``dependency_restored`` line at ``info``.
"""

from __future__ import annotations

import pytest

from tests.support.auth import AuthServiceFactory, bearer
from tests.support.pg import PgServer
from tests.support.waiting import await_until, wait_until

REQUESTS_DURING_OUTAGE = 6


@pytest.mark.trio
async def test_F06_outage_is_one_error_line_and_one_info_line_when_back(
    restartable_pg: PgServer, auth_factory: AuthServiceFactory
) -> None:
    service = auth_factory.start()
    user = service.make_user()
    proc = service.proc
    async with service.client() as client:
        assert (await client.get("/v1/me", headers=bearer(user.api_key))).status_code == 200
        restartable_pg.stop()
        try:
            request_ids = []
            for _ in range(REQUESTS_DURING_OUTAGE):
                down = await client.post("/v1/tokens", json={}, headers=bearer(user.api_key))
                assert down.status_code == 503, down.text
                assert down.json()["code"] == "dependency_unavailable"
                request_ids.append(down.headers["X-Request-ID"])
        finally:
            restartable_pg.start()

        async def answers() -> bool:
            return (await client.get("/v1/me", headers=bearer(user.api_key))).status_code == 200

        await await_until(answers, timeout=30, what="the service to answer again after PostgreSQL restarted")

    restored = wait_until(lambda: proc.events("dependency_restored"), timeout=10, what="a dependency_restored line")
    for request_id in request_ids:
        (line,) = [x for x in proc.events("http_error") if x.get("request_id") == request_id]
        assert line["level"] == "warning", f"an expected outage answer logged at {line['level']}: {line}"
        assert line["dependency"] == "postgres", line
    lost = proc.events("dependency_lost")
    assert [(x["level"], x["dependency"]) for x in lost] == [("error", "postgres")], lost
    assert [(x["level"], x["dependency"]) for x in restored] == [("info", "postgres")], restored
    errors = [x for x in proc.log_lines() if x.get("level") == "error"]
    assert errors == lost, f"error lines other than the one dependency_lost: {errors}"
