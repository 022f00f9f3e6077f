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

Adding PostgreSQL later is one more entry, for example::

    def _postgres(where: Path) -> AbstractAsyncContextManager[JobStore]:
        return _opened(PgStore(os.environ["TASKRT_PG_DSN"], schema=schema_for(where)))

    REGISTRY["postgres"] = Backend(
        "postgres",
        _postgres,
        AppSQL(create=..., insert="INSERT INTO notes (body) VALUES ($1)", select=...),
        unavailable=lambda: None if "TASKRT_PG_DSN" in os.environ else "TASKRT_PG_DSN unset",
    )

and nothing else: ``BACKENDS`` lists the registry's names in order.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

from taskrt.store import JobStore, Store

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
    [(pages,)] = await store.db.execute_fetchall("PRAGMA page_count")
    await store.db.execute_fetchall(f"PRAGMA max_page_count = {pages}")
    try:
        yield
    finally:
        await store.db.execute_fetchall("PRAGMA max_page_count = 1073741823")


SQLITE_SQL = AppSQL(
    create="CREATE TABLE notes (body TEXT NOT NULL)",
    insert="INSERT INTO notes (body) VALUES (?)",
    select="SELECT body FROM notes ORDER BY body",
)

REGISTRY: dict[str, Backend] = {
    "sqlite": Backend("sqlite", _sqlite, SQLITE_SQL, outage=_sqlite_full_disk),
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
