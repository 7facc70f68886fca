"""Versioned SQL migrations, applied once per database under an advisory lock (F12).

A service owns one schema and a folder of files named ``NNNN_description.sql``.
At start-up (never on a request path) :func:`apply` takes a transaction-level
advisory lock keyed on the schema, creates the schema and its
``schema_migrations`` table if needed, applies every file not yet recorded, in
order, and records each with its checksum.  Replicas starting together serialise on
the lock; the first applies, the others find the work done.  A recorded migration
whose file has since changed is refused: the service does not start.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .db import Connection

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    pass


def load_package(package: str) -> list[Migration]:
    """The migrations shipped in ``<package>/migrations`` (package data)."""
    return load(Path(str(resources.files(package) / "migrations")))


def load(folder: Path) -> list[Migration]:
    migrations: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"migration file name not of the form NNNN_name.sql: {path.name}")
        migrations.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise MigrationError(f"migration versions must be 1..n without gaps, got {versions}")
    return migrations


async def apply(conn: Connection, schema: str, migrations: list[Migration]) -> list[Migration]:
    """Apply the pending migrations; returns the ones this call applied."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", schema):
        raise MigrationError(f"bad schema name {schema!r}")
    applied_now: list[Migration] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"tether.migrate.{schema}")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch(f"SELECT version, checksum FROM {schema}.schema_migrations")
        recorded = {r["version"]: r["checksum"] for r in rows}
        for migration in migrations:
            if migration.version in recorded:
                if recorded[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"{schema} migration {migration.version} ({migration.name}) changed after it was applied"
                    )
                continue
            await conn.execute(f"SET LOCAL search_path TO {schema}")
            await conn.execute(migration.sql)
            await conn.execute(
                f"INSERT INTO {schema}.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
            applied_now.append(migration)
        unknown = set(recorded) - {m.version for m in migrations}
        if unknown:
            raise MigrationError(f"{schema} has migrations this build does not know: {sorted(unknown)}")
    return applied_now
