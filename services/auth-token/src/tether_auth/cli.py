"""``tether-auth``: admin commands (create users and API keys).

API keys are printed once and stored only as hashes.  ``demo-user`` ensures a user
named ``demo`` exists and issues it a fresh key (old keys keep working).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import asyncpg

from tether_kit import migrate

from . import store
from .secrets import API_KEY_PREFIX, new_secret
from .store import SCHEMA


async def _with_conn(dsn: str, name: str, *, ensure: bool) -> tuple[store.User, str]:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate.apply(conn, SCHEMA, migrate.load_package("tether_auth"))
        async with conn.transaction():
            await conn.execute(f"SET LOCAL search_path TO {SCHEMA}")
            user = await store.find_user(conn, name) if ensure else None
            if user is None:
                user = await store.create_user(conn, name)
            api_key = new_secret(API_KEY_PREFIX)
            await store.add_api_key(conn, user, api_key)
        return user, api_key
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tether-auth", description=__doc__)
    parser.add_argument("--database-url", required=True, help="PostgreSQL DSN (e.g. $DATABASE_URL)")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create-user", help="create a user and print its API key once")
    create.add_argument("name")
    sub.add_parser("demo-user", help="ensure the 'demo' user exists and print a fresh API key")
    args = parser.parse_args(argv)
    name = args.name if args.command == "create-user" else "demo"
    try:
        user, api_key = asyncio.run(_with_conn(args.database_url, name, ensure=args.command == "demo-user"))
    except asyncpg.UniqueViolationError:
        print(f"error: a user named {name!r} already exists", file=sys.stderr)
        return 1
    print(f"user_id={user.id}")
    print(f"user_name={user.name}")
    print(f"api_key={api_key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
