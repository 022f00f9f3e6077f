"""The store backends the conformance suite runs against (tests/test_store_conformance.py).

One behaviour suite, every backend (Huey's ``StorageTests``, SAQ's
``TestQueue``, River's driver suite): each test of the suite takes the
``store`` fixture, which is parametrized over ``BACKENDS``, so every test runs
once per backend and a backend is done when the suite is green for it.

Registration is explicit: a backend is one entry of ``REGISTRY``, a
``Backend`` that knows

- ``name``: the test id (``test_x[sqlite]``);
- ``open(where)``: an async context manager that yields an *opened*
  ``JobStore`` and closes it on exit. ``where`` is the test's ``tmp_path``. The
  first opening for a ``where`` must give a fresh, empty store; opening again
  with the same ``where`` (after closing) must reach the same data, as a
  restarted process would (the suite's close/reopen tests rely on it). SQLite
  keeps a file under ``where``; a server backend would derive a database or
  schema name from it, and drop it at the end of the session;
- ``unavailable()``: why it cannot run here (e.g. no server configured), or
  ``None``; the suite skips that backend's tests with this reason rather than
  failing them;
- ``sql``: the application's own statements for ``rt.transaction()`` tests
  (``StoreTransaction.execute`` runs the application's SQL in the backend's
  dialect: placeholders are ``?`` for SQLite, ``$1`` for PostgreSQL);
- ``outage`` (optional): ``async with outage(store):`` the database takes no
  write that needs more room than it has now, as a full disk; on exit it
  takes them again. Tests of writes kept through an outage (store note 9)
  skip a backend without one.

``required()`` says whether the backend must run here (PostgreSQL under
``TASKRT_REQUIRE_POSTGRES=1``): its unavailability then fails the tests
instead of skipping them (``skip_unavailable``).

PostgreSQL: each test gets a schema of its own (``pg_server.fresh_schema``)
in the test session's own database (``pg_server``); reopening with the same
``where`` reaches the same schema. ``BACKENDS`` lists the registry's names in order.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pg_server
import pytest

from taskrt.store import JobStore, Store
from taskrt.store.postgres import PgStore

Outage = Callable[[JobStore], AbstractAsyncContextManager[None]]


@dataclass(frozen=True, slots=True)
class AppSQL:
    """An application table for ``transaction()`` tests, in the backend's dialect.

    ``create`` makes table ``notes`` (one text column ``body``); ``insert``
    takes one parameter, the body; ``select`` returns the bodies, sorted.
    """

    create: str
    insert: str
    select: str


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    open: Callable[[Path], AbstractAsyncContextManager[JobStore]]
    sql: AppSQL
    unavailable: Callable[[], str | None] = lambda: None
    outage: Outage | None = None
    required: Callable[[], bool] = lambda: False


@contextlib.asynccontextmanager
async def _opened(store: JobStore) -> AsyncIterator[JobStore]:
    """Open ``store``; close it on exit (writing what is still queued)."""
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def _sqlite(where: Path) -> AbstractAsyncContextManager[JobStore]:
    # A real file, as in production (WAL, a separate reader connection).
    return _opened(Store(str(where / "store.db")))


@contextlib.asynccontextmanager
async def _sqlite_full_disk(store: JobStore) -> AsyncIterator[None]:
    """The file may not grow by a single page: a portable full disk (SQLITE_FULL)."""
    if not isinstance(store, Store):
        raise TypeError(f"expected the SQLite Store, found {type(store).__name__}")
    # On the writer's connection, in a transaction of its own: never beside a batch.
    async with store.transaction() as tx:
        [(pages,)] = await tx.execute("PRAGMA page_count")
        await tx.execute(f"PRAGMA max_page_count = {pages}")
    try:
        yield
    finally:
        async with store.transaction() as tx:
            await tx.execute("PRAGMA max_page_count = 1073741823")


SQLITE_SQL = AppSQL(
    create="CREATE TABLE notes (body TEXT NOT NULL)",
    insert="INSERT INTO notes (body) VALUES (?)",
    select="SELECT body FROM notes ORDER BY body",
)


def _postgres(where: Path) -> AbstractAsyncContextManager[JobStore]:
    url = pg_server.require()
    return _opened(PgStore(url, schema=pg_server.fresh_schema(where)))


@contextlib.asynccontextmanager
async def _postgres_down(store: JobStore) -> AsyncIterator[None]:
    """The server takes no connection to the database and drops those it had: an outage."""
    import asyncpg

    url = urlsplit(pg_server.require())
    name = url.path.lstrip("/")
    # From the server's maintenance database: a database cannot refuse its own sessions.
    admin = await asyncpg.connect(urlunsplit(url._replace(path="/postgres")))
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        try:
            yield
        finally:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    finally:
        await admin.close()


POSTGRES_SQL = AppSQL(
    create="CREATE TABLE notes (body TEXT NOT NULL)",
    insert="INSERT INTO notes (body) VALUES ($1)",
    select="SELECT body FROM notes ORDER BY body",
)

REGISTRY: dict[str, Backend] = {
    "sqlite": Backend("sqlite", _sqlite, SQLITE_SQL, outage=_sqlite_full_disk),
    "postgres": Backend(
        "postgres",
        _postgres,
        POSTGRES_SQL,
        unavailable=pg_server.unavailable,
        outage=_postgres_down,
        required=lambda: os.environ.get(pg_server.REQUIRE_ENV) == "1",
    ),
}

BACKENDS: list[str] = list(REGISTRY)
"""The names the suite's ``store`` fixture is parametrized over."""


def open_store(kind: str, where: Path) -> AbstractAsyncContextManager[JobStore]:
    """``async with open_store("sqlite", tmp_path) as store:`` an opened store, closed after."""
    return REGISTRY[kind].open(where)


def app_sql(kind: str) -> AppSQL:
    return REGISTRY[kind].sql


def unavailable(kind: str) -> str | None:
    return REGISTRY[kind].unavailable()


def outage(kind: str) -> Outage | None:
    return REGISTRY[kind].outage


def skip_unavailable(kind: str) -> None:
    """Skip the test when ``kind`` cannot run here, or fail it when it must run."""
    reason = unavailable(kind)
    if reason is None:
        return
    if REGISTRY[kind].required():
        pytest.fail(f"{kind} is required here ({pg_server.REQUIRE_ENV}=1) but: {reason}")
    pytest.skip(f"{kind}: {reason}")
