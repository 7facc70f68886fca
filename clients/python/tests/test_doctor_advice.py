"""F35: the doctor's readiness advice names each failed /readyz check and what to do about it."""

from __future__ import annotations

from tether_client.doctor.advice import CHECK_HINTS, not_ready


def test_F35_not_ready_names_every_failed_check_with_its_own_hint() -> None:
    checks = {"migrations": True, "postgres": False, "listen": False, "auth_token": True, "accepting": True}
    failure = not_ready("session", checks, code="not_ready", http_status=503)
    assert failure.detail.startswith("session is not ready: failed check(s): postgres, listen")
    assert "migrations ✓" in failure.detail
    assert "postgres ✗" in failure.detail
    assert "DATABASE_URL" in failure.hint
    assert failure.hint.count("DATABASE_URL") == 2  # postgres and listen both point at the database
    assert (failure.code, failure.http_status) == ("not_ready", 503)


def test_F35_every_check_the_services_report_has_a_hint_and_unknown_ones_still_get_named() -> None:
    for name in ("migrations", "postgres", "listen", "auth_token", "accepting"):
        hint = not_ready("session", {name: False}, code="not_ready", http_status=503).hint
        assert hint == CHECK_HINTS[name].format(service="session")
    other = not_ready("auth-token", {"postgres": True, "new_check": False}, code="not_ready", http_status=503)
    assert "failed check(s): new_check" in other.detail
    assert "new_check" in other.hint
