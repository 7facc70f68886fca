"""F35: `tether doctor` runs the whole checklist and names the step that fails, and why.

Each test breaks one thing on purpose (a service down, a wrong URL, a bad API key, an
origin the session service refuses, a missing project, the database gone) and checks the
doctor's verdict: the failing step, its catalogue / HTTP code, the advice, later steps
skipped, exit code 1.  The healthy run must pass every step, clean up after itself, and
prove fresh tokens and a gap-free resume from the services' own records.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from tests.support.pg import PgServer, query
from tests.support.procs import wait_all_ready
from tests.support.session import ALLOWED_ORIGIN, Stack, StackFactory
from tether_dev.pg import free_port

from .cli import STEP_IDS, Run, cli_env, run_tether, step_lines


def doctor(env: dict[str, str], *args: str) -> Run:
    return run_tether(["doctor", *args], env)


def assert_failed_at(run: Run, step: str, *fragments: str) -> dict[str, Any]:
    """The --json report failed at ``step``; its record mentions every fragment."""
    assert run.code == 1, (run.out, run.err)
    report = run.json()
    assert report["ok"] is False
    assert report["failed_step"] == step, report
    steps = {s["id"]: s for s in report["steps"]}
    failed: dict[str, Any] = steps[step]
    assert failed["status"] == "failed"
    text = f"{failed['detail']} {failed['code']} {failed['http_status']} {failed['hint']}"
    for fragment in fragments:
        assert fragment in text, (fragment, failed)
    index = STEP_IDS.index(step)
    assert all(steps[s]["status"] == "ok" for s in STEP_IDS[:index]), report
    assert all(steps[s]["status"] == "skipped" for s in STEP_IDS[index + 1 :]), report
    return failed


def test_F35_doctor_passes_every_step_against_a_healthy_system(stack: Stack, tmp_path: Path) -> None:
    user = stack.make_user()
    env = cli_env(stack, tmp_path, user.api_key, TETHER_ORIGIN=ALLOWED_ORIGIN)
    run = doctor(env)
    assert run.code == 0, run.out + run.err
    lines = step_lines(run.out)
    assert len(lines) == len(STEP_IDS) + 1  # + cleanup of the temporary project
    assert all(line.startswith("✓ ") for line in lines), run.out
    assert "all 13 checks passed" in run.out
    assert "(warning:" not in run.out
    # Nobody loads these services: neither reports shedding (or, before admission control,
    # neither exposes shedding metrics), and the step says so for both.
    shedding = next(line for line in lines if line.startswith("✓ load shedding (/metrics)"))
    assert "auth-token: " in shedding
    assert "session: " in shedding
    assert "shedding now (" not in shedding
    assert "INIT → ready" in run.out
    assert "batched delivery on" in run.out  # asked for by default, granted by the service
    assert "with no gap and no duplicate" in run.out
    run.assert_no_secrets(user.api_key)

    # The temporary project is gone; every INIT used its own token, each consumed once (F05).
    rows = query(stack.dsn, "SELECT count(*) AS n FROM session.projects WHERE name LIKE 'doctor-%'")
    assert rows[0]["n"] == 0
    tokens = query(
        stack.dsn,
        "SELECT count(*) AS issued, count(consumed_at) AS consumed FROM auth.connection_tokens WHERE user_id = $1",
        uuid.UUID(user.user_id),
    )
    assert tokens[0]["issued"] == tokens[0]["consumed"] == 2


def test_F35_doctor_json_report_on_an_existing_project(stack: Stack, tmp_path: Path) -> None:
    user = stack.make_user()
    env = cli_env(stack, tmp_path, user.api_key)
    created = run_tether(["projects", "create", "Doctor target", "--json"], env)
    assert created.code == 0, created.err
    slug = created.json()["slug"]
    run = doctor(env, slug, "--json", "--no-batch")
    assert run.code == 0, run.out + run.err
    report = run.json()
    assert "batched delivery off" in report["steps"][STEP_IDS.index("init_ready")]["detail"]
    assert report["ok"] is True
    assert report["failed_step"] is None
    assert report["warnings"] == []
    assert [s["id"] for s in report["steps"]] == STEP_IDS  # nothing created, nothing to clean up
    assert all(s["status"] == "ok" and s["duration_ms"] >= 0 for s in report["steps"])
    assert slug in report["steps"][STEP_IDS.index("project")]["detail"]
    listed = run_tether(["projects", "list", "--json"], env)
    assert [p["slug"] for p in listed.json()] == [slug]  # the user's project is left alone
    run.assert_no_secrets(user.api_key)


def test_F35_doctor_names_the_auth_service_down(stack: Stack, tmp_path: Path) -> None:
    user = stack.make_user()
    env = cli_env(stack, tmp_path, user.api_key, TETHER_AUTH_URL=f"http://127.0.0.1:{free_port()}")
    failed = assert_failed_at(doctor(env, "--json"), "auth_healthz", "connection refused", "unreachable", "--auth-url")
    assert failed["http_status"] is None
    text = doctor(env)
    assert text.code == 1
    first = step_lines(text.out)[0]
    assert first.startswith("✗ auth-token /healthz — cannot connect to"), text.out
    assert "- session /healthz — skipped" in text.out
    assert "FAILED at step 1 (auth-token /healthz)" in text.out


def test_F35_doctor_names_the_session_service_down(stack: Stack, tmp_path: Path) -> None:
    user = stack.make_user()
    env = cli_env(stack, tmp_path, user.api_key, TETHER_SESSION_URL=f"http://127.0.0.1:{free_port()}")
    assert_failed_at(doctor(env, "--json"), "session_healthz", "connection refused", "--session-url")


def test_F35_doctor_detects_urls_that_point_at_the_wrong_service(stack: Stack, tmp_path: Path) -> None:
    user = stack.make_user()
    swapped = cli_env(stack, tmp_path, user.api_key, TETHER_SESSION_URL=stack.auth.url)
    assert_failed_at(doctor(swapped, "--json"), "session_healthz", "wrong_service", "auth-token service")
    wrong_path = cli_env(stack, tmp_path, user.api_key, TETHER_AUTH_URL=stack.auth.url + "/nope")
    assert_failed_at(doctor(wrong_path, "--json"), "auth_healthz", "404", "no such endpoint", "--auth-url")


def test_F35_doctor_names_bad_or_missing_credentials(stack: Stack, tmp_path: Path) -> None:
    bad = cli_env(stack, tmp_path, "tk_this-key-does-not-exist-0123456789")
    failed = assert_failed_at(doctor(bad, "--json"), "credentials", "unauthenticated", "tether login")
    assert failed["http_status"] == 401
    missing = cli_env(stack, tmp_path / "empty")
    assert_failed_at(doctor(missing, "--json"), "credentials", "no API key", "TETHER_API_KEY")


def test_F35_doctor_names_an_origin_the_session_service_refuses(stack: Stack, tmp_path: Path) -> None:
    user = stack.make_user()
    env = cli_env(stack, tmp_path, user.api_key, TETHER_ORIGIN="https://evil.example")
    run = doctor(env, "--json")
    failed = assert_failed_at(run, "ws_upgrade", "origin refused", "origin_not_allowed", "TETHER_ALLOWED_ORIGINS")
    assert failed["http_status"] == 403
    # The temporary project made for the run is deleted even though the run failed.
    report = run.json()
    assert report["steps"][-1]["id"] == "cleanup"
    assert report["steps"][-1]["status"] == "ok"
    rows = query(stack.dsn, "SELECT count(*) AS n FROM session.projects WHERE name LIKE 'doctor-%'")
    assert rows[0]["n"] == 0


def test_F35_doctor_names_a_missing_project(stack: Stack, tmp_path: Path) -> None:
    user = stack.make_user()
    env = cli_env(stack, tmp_path, user.api_key)
    failed = assert_failed_at(doctor(env, "no-such-project", "--json"), "project", "not found", "projects list")
    assert failed["http_status"] == 404
    assert failed["code"] == "not_found"
    # Another user's project looks exactly the same (ids cannot be probed).
    owner = stack.make_user()
    other = run_tether(["projects", "create", "Not yours", "--json"], cli_env(stack, tmp_path, owner.api_key))
    assert_failed_at(doctor(env, other.json()["id"], "--json"), "project", "not found")


def test_F35_doctor_names_the_database_when_postgres_is_down(
    stack_factory: StackFactory, pg_server: PgServer, tmp_path: Path
) -> None:
    pg_server.require_restartable()
    own = stack_factory.start()
    user = own.make_user()
    env = cli_env(own, tmp_path, user.api_key)
    pg_server.stop()
    try:
        run = doctor(env, "--json")
    finally:
        pg_server.start()
        wait_all_ready(own.procs(), 60)
    failed = assert_failed_at(run, "auth_readyz", "503", "postgres ✗", "failed check(s): postgres", "DATABASE_URL")
    assert failed["code"] == "not_ready"
    # The diagnosis is the failed check, not the service's start-up phase (which says "ready").
    assert "phase" not in failed["detail"], failed
