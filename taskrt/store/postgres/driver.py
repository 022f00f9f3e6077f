"""How taskrt opens a connection, and what asyncpg raises when a statement or a
connection fails, named once.

``InternalClientError`` is among the failures: a session the server ends in the
middle of a statement (a restart, ``pg_terminate_backend``) can leave asyncpg's
protocol waiting for a reply that never comes, and the next use of that
connection raises it instead of a connection error. It is a lost connection
like the others: the pool's release terminates such a connection, and the
writer opens its own again.

Settings go in once a connection is open (``connect``), not in its start-up
packet: PgBouncer refuses a start-up parameter it does not know
(``search_path``, ``jit``, ``taskrt.node``: "unsupported startup parameter"),
and drops one it is told to ignore, so the tables were not found. Only
``application_name``, which PgBouncer passes on, travels in the packet. A
setting made with ``set_config`` lasts for the session as one from the packet
does; only a ``RESET ALL`` would undo it, and taskrt's pool does not reset the
connections it takes back (``PgStore.open``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg

STARTUP = frozenset({"application_name"})
"""The settings sent in a connection's start-up packet (PgBouncer knows them)."""


async def connect(
    dsn: str,
    *,
    statement_cache_size: int = 100,
    server_settings: Mapping[str, str] | None = None,
    **options: Any,
) -> asyncpg.Connection:
    """``asyncpg.connect`` with ``server_settings`` in effect: those of ``STARTUP``
    in the start-up packet, the others set once the connection is open."""
    settings = dict(server_settings or {})
    startup = {name: settings.pop(name) for name in list(settings) if name in STARTUP}
    conn: asyncpg.Connection = await asyncpg.connect(
        dsn,
        statement_cache_size=statement_cache_size,
        server_settings=startup or None,
        **options,
    )
    try:
        await apply_settings(conn, settings)
    except BaseException:
        conn.terminate()  # half set up: never used
        raise
    return conn


async def apply_settings(conn: asyncpg.Connection, settings: Mapping[str, str]) -> None:
    """Make ``settings`` the session's, in one round trip."""
    if not settings:
        return
    names = sorted(settings)
    calls = ", ".join(f"set_config(${2 * i + 1}, ${2 * i + 2}, false)" for i in range(len(names)))
    await conn.execute(f"SELECT {calls}", *[v for name in names for v in (name, settings[name])])


DRIVER_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
"""Every failure of a statement or of its connection."""

LOST: tuple[type[Exception], ...] = (
    OSError,
    ConnectionError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
"""A connection lost or unusable (not an error of the statement itself)."""
