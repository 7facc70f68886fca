"""The auth-token service's own endpoints: the contract it serves, liveness, readiness (F10)
and Prometheus metrics that move for the right reasons (F41)."""

from __future__ import annotations

import pytest

from tests.support.auth import AUTH_CONTRACT, AuthService, bearer, consume_token, issue_token
from tests.support.metrics import scrape


@pytest.mark.trio
async def test_openapi_json_is_the_contract_file_byte_for_byte(auth_service: AuthService) -> None:
    async with auth_service.client() as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.content == AUTH_CONTRACT.read_bytes()


@pytest.mark.trio
async def test_F10_healthz_and_readyz_when_running(auth_service: AuthService) -> None:
    async with auth_service.client() as client:
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"ready": True, "checks": {"migrations": True, "postgres": True}})
    ready_lines = auth_service.proc.events("ready")
    assert len(ready_lines) == 1
    assert ready_lines[0]["startup_s"] > 0


@pytest.mark.trio
async def test_F41_metrics_move_for_the_right_reasons(auth_service: AuthService) -> None:
    user = auth_service.make_user()
    key = auth_service.service_key
    issued = "tether_tokens_issued_total"
    consumed = "tether_token_consume_total"
    async with auth_service.client() as client:
        m0 = await scrape(client)
        assert {issued, "tether_http_requests_total", "tether_startup_phase_seconds"} <= m0.names()

        # refused issues do not count as issued
        assert (await client.post("/v1/tokens", json={}, headers=bearer("tk_not_a_key_at_all"))).status_code == 401
        assert (await client.post("/v1/tokens", json={"x": 1}, headers=bearer(user.api_key))).status_code == 422
        m1 = await scrape(client)
        assert m1.delta(m0, issued) == 0

        first = (await issue_token(client, user.api_key))["token"]
        second = (await issue_token(client, user.api_key))["token"]
        m2 = await scrape(client)
        assert m2.delta(m1, issued) == 2
        assert m2.delta(m1, consumed, outcome="ok") == 0

        assert (await consume_token(client, key, first)).status_code == 200
        m3 = await scrape(client)
        assert m3.delta(m2, consumed, outcome="ok") == 1
        assert m3.delta(m2, issued) == 0

        assert (await consume_token(client, key, first)).status_code == 409
        assert (await consume_token(client, key, first)).status_code == 409
        assert (await consume_token(client, key, "tt_never_issued_token")).status_code == 404
        m4 = await scrape(client)
        assert m4.delta(m3, consumed, outcome="token_used") == 2
        assert m4.delta(m3, consumed, outcome="token_unknown") == 1
        assert m4.delta(m3, consumed, outcome="ok") == 0

        assert (await consume_token(client, key, second)).status_code == 200
        m5 = await scrape(client)
        assert m5.delta(m4, consumed, outcome="ok") == 1
        assert m5.delta(m4, consumed, outcome="token_used") == 0
        assert m5.value("tether_http_errors_total", code="token_used") >= 2
        assert m5.value("tether_http_requests_total", route="/v1/tokens/consume", method="POST", status="200") >= 2
