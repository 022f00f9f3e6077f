"""The schema's version and its migrations, safe from many processes at once (note 2)."""

from __future__ import annotations

import logging

import asyncpg

from ...errors import SchemaTooNew, StoreError
from .sql import MIGRATIONS, SCHEMA_VERSION, SQL_SET_VERSION, SQL_VERSION

log = logging.getLogger("taskrt.store")


def _lock_key(schema: str) -> str:
    return f"taskrt.migrate.{schema}"


async def version(conn: asyncpg.Connection, schema: str) -> int:
    """The schema's version (0: no taskrt tables in it yet)."""
    found = await conn.fetchval("SELECT to_regclass($1)", f'"{schema}".meta')
    if found is None:
        return 0
    try:
        value = await conn.fetchval(SQL_VERSION.replace("FROM meta", f'FROM "{schema}".meta'))
    except (asyncpg.UndefinedColumnError, asyncpg.DatatypeMismatchError) as exc:
        raise _not_ours(schema, str(exc)) from exc
    if value is None:
        return 0
    if not (isinstance(value, str) and value.isascii() and value.isdigit()):
        raise _not_ours(schema, f"its 'schema.version' is {value!r}, not a version number")
    return int(value)


def _not_ours(schema: str, why: str) -> StoreError:
    return StoreError(
        f'the table "{schema}".meta is not taskrt\'s ({why}): give taskrt a schema '
        "of its own (the URL's ?schema=) or drop that table"
    )


async def migrate(conn: asyncpg.Connection, schema: str, name: str) -> int:
    """Bring ``schema`` to ``SCHEMA_VERSION`` in one transaction; refuse a newer one.

    Several processes may open the database at once: each takes an advisory
    lock named after the schema before it reads the version again, so the
    migrations run exactly once and the others find them done. Returns the
    version found before.
    """
    if await version(conn, schema) == SCHEMA_VERSION:
        return SCHEMA_VERSION
    # A session lock taken outside any transaction: the version is then read by
    # a statement of its own, which sees what a migration that held it committed.
    await conn.execute("SELECT pg_advisory_lock(hashtext($1))", _lock_key(schema))
    try:
        found = await version(conn, schema)
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(name, found, SCHEMA_VERSION)
        if found < SCHEMA_VERSION:
            async with conn.transaction():
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                await conn.execute(f'SET LOCAL search_path = "{schema}"')
                for number in range(found + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[number - 1]:
                        await conn.execute(statement)
                await conn.execute(SQL_SET_VERSION, str(SCHEMA_VERSION))
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", _lock_key(schema))
    if found:
        log.info("upgraded %s from schema version %d to %d", name, found, SCHEMA_VERSION)
    return found
