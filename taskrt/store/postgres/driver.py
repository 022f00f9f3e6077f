"""What asyncpg raises when a statement or a connection fails, named once.

``InternalClientError`` is among them: a session the server ends in the middle
of a statement (a restart, ``pg_terminate_backend``) can leave asyncpg's
protocol waiting for a reply that never comes, and the next use of that
connection raises it instead of a connection error. It is a lost connection
like the others: the pool's release terminates such a connection, and the
writer opens its own again.
"""

from __future__ import annotations

import asyncpg

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
