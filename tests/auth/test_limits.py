"""Limits and abuse (F07, F25): a user cannot mint connection tokens without bound.

The cap is counted in the database (tokens issued in the last 60 s), so it holds across
any number of auth-token replicas.  Refusals are catalogue errors with Retry-After and
exactly one log line; other users are unaffected.
"""

from __future__ import annotations

import pytest

from tests.support.auth import AuthServiceFactory, bearer
from tests.support.logs import assert_one_error_line
from tests.support.metrics import scrape

CAP = 3


@pytest.mark.trio
async def test_F25_token_issue_rate_is_capped_per_user_across_replicas(auth_factory: AuthServiceFactory) -> None:
    first, second = auth_factory.start_many(2, env={"TETHER_TOKEN_ISSUE_PER_MINUTE": str(CAP)})
    greedy = first.make_user()
    other = first.make_user()
    async with first.client() as a, second.client() as b:
        before = await scrape(a)
        statuses = []
        for i in range(CAP):
            client = a if i % 2 == 0 else b  # the cap is shared by the replicas
            statuses.append((await client.post("/v1/tokens", json={}, headers=bearer(greedy.api_key))).status_code)
        assert statuses == [201] * CAP
        refused = await b.post("/v1/tokens", json={}, headers=bearer(greedy.api_key))
        assert refused.status_code == 429
        body = refused.json()
        assert body["code"] == "rate_limited"
        assert int(refused.headers["Retry-After"]) > 0
        assert_one_error_line(second.proc, refused.headers["X-Request-ID"], "rate_limited")
        assert (await a.post("/v1/tokens", json={}, headers=bearer(other.api_key))).status_code == 201
        refused_a = await a.post("/v1/tokens", json={}, headers=bearer(greedy.api_key))
        assert refused_a.status_code == 429
        after = await scrape(a)
    assert after.delta(before, "tether_http_errors_total", code="rate_limited") == 1
    assert after.delta(before, "tether_tokens_issued_total") == 3  # on replica a: greedy 1st and 3rd, the other user
