"""F12: migrations are versioned files applied once per database under an advisory lock;
replicas starting together against an empty database all come up."""

from __future__ import annotations

from importlib import resources

import asyncpg
import pytest

from tests.support.auth import AuthService, AuthServiceFactory, UserCredentials
from tests.support.pg import PgServer, aquery, execute


def _migration_files() -> list[str]:
    folder = resources.files("tether_auth") / "migrations"
    return sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))


@pytest.mark.trio
async def test_F12_four_replicas_start_together_migrations_run_once(
    pg_server: PgServer, auth_factory: AuthServiceFactory
) -> None:
    files = _migration_files()
    assert files, "the auth-token service ships no migrations?"
    dsn = pg_server.fresh_database("auth_f12")
    assert await aquery(dsn, "SELECT 1 FROM pg_namespace WHERE nspname = 'auth'") == [], "database not empty"

    replicas = auth_factory.start_many(4, dsn)

    rows = await aquery(
        dsn,
        "SELECT version, name, count(*) OVER (PARTITION BY version) AS n FROM auth.schema_migrations ORDER BY version",
    )
    assert [r["version"] for r in rows] == list(range(1, len(files) + 1))
    assert all(r["n"] == 1 for r in rows)
    assert [f"{r['version']:04d}_{r['name']}.sql" for r in rows] == files

    applied = [line for r in replicas for line in r.proc.events("migration_applied")]
    assert len(applied) == len(files), applied
    assert sorted(line["version"] for line in applied) == list(range(1, len(files) + 1))
    for replica in replicas:
        assert len(replica.proc.events("ready")) == 1
        assert replica.proc.events("startup_failed") == []

    # every replica serves, against the one schema
    for replica in replicas:
        user = replica.make_user()
        async with replica.client() as client:
            me = await client.get("/v1/me", headers={"Authorization": f"Bearer {user.api_key}"})
            assert me.status_code == 200

    # a fifth replica, later, finds nothing left to do
    late = auth_factory.start(dsn)
    assert late.proc.events("migration_applied") == []
    assert len(await aquery(dsn, "SELECT 1 FROM auth.schema_migrations")) == len(files)


_DDL_RECORDER = """
CREATE TABLE public.ddl_seen (tag text NOT NULL, at timestamptz NOT NULL DEFAULT now());
CREATE FUNCTION public.record_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.ddl_seen (tag) VALUES (tg_tag); END $$;
CREATE EVENT TRIGGER record_ddl ON ddl_command_start EXECUTE FUNCTION public.record_ddl();
"""


@pytest.fixture
def ddl_recorded_service(auth_factory: AuthServiceFactory) -> tuple[AuthService, UserCredentials]:
    """A running instance and a user (the admin CLI applies migrations too, so it runs
    first); from then on the database records every DDL statement."""
    service = auth_factory.start()
    user = service.make_user()
    try:
        execute(service.dsn, _DDL_RECORDER)
    except asyncpg.InsufficientPrivilegeError:
        pytest.skip("event triggers need a superuser; DATABASE_URL's role is not one")
    return service, user


@pytest.mark.trio
async def test_F12_no_ddl_on_request_paths(ddl_recorded_service: tuple[AuthService, UserCredentials]) -> None:
    service, user = ddl_recorded_service
    bearer = {"Authorization": f"Bearer {user.api_key}"}
    async with service.client() as client:
        login = await client.post("/v1/login", json={"api_key": user.api_key})
        assert login.status_code == 200
        assert (await client.get("/v1/me", headers=bearer)).status_code == 200
        token = (await client.post("/v1/tokens", json={}, headers=bearer)).json()["token"]
        consumed = await client.post("/v1/tokens/consume", json={"token": token}, headers=service.service_headers())
        assert consumed.status_code == 200
        assert (await client.post("/v1/logout")).status_code == 204
        assert (await client.get("/readyz")).status_code == 200
    assert await aquery(service.dsn, "SELECT tag FROM public.ddl_seen") == []
    # the recorder works: DDL is seen
    execute(service.dsn, "CREATE TABLE public.probe (x int)")
    assert await aquery(service.dsn, "SELECT tag FROM public.ddl_seen") == [{"tag": "CREATE TABLE"}]
