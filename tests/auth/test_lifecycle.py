"""F15: SIGTERM stops a replica cleanly: it logs the shutdown, finishes, and exits 0."""

from __future__ import annotations

import pytest

from tests.support.auth import AuthServiceFactory, bearer, issue_token


@pytest.mark.trio
async def test_F15_sigterm_stops_the_service_cleanly_with_exit_code_0(auth_factory: AuthServiceFactory) -> None:
    service = auth_factory.start()
    user = service.make_user()
    async with service.client() as client:
        await issue_token(client, user.api_key)
        assert (await client.get("/v1/me", headers=bearer(user.api_key))).status_code == 200

    code = service.proc.terminate(timeout=15)

    assert code == 0, f"exit code {code} on SIGTERM\n{service.proc.tail()}"
    events = [line["event"] for line in service.proc.log_lines()]
    assert "shutdown_requested" in events
    assert events[-1] == "stopped", events[-5:]
    errors = [line for line in service.proc.log_lines() if line["level"] == "error"]
    assert errors == []
    assert "Traceback" not in service.proc.out_path.read_text()
