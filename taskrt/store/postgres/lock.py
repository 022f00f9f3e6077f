"""Who runs a PostgreSQL database's jobs: a session advisory lock on a connection of its own.

The lock is the authority, as the file lock is on SQLite (``taskrt.ownership``
note 1): the server releases it the moment the holder's session ends, however
the process ends (``kill -9`` included). The session asks the server to probe
the client with TCP keepalives every few seconds, so a machine that vanishes
loses the lock within about ``KEEPALIVE_IDLE + KEEPALIVE_INTERVAL *
KEEPALIVE_COUNT`` seconds rather than the operating system's hours.
"""

from __future__ import annotations

import contextlib
import logging

import asyncpg

from .driver import DRIVER_ERRORS, connect

log = logging.getLogger("taskrt.store")

KEEPALIVE_IDLE = 5
KEEPALIVE_INTERVAL = 2
KEEPALIVE_COUNT = 3


class AdvisoryLock:
    """``pg_try_advisory_lock`` on the schema's name, asked and held on one connection.

    The connection stays open between tries (a standby asks every tenth of a
    second): holding the lock is holding that session.
    """

    def __init__(self, dsn: str, schema: str, *, shared: bool = False) -> None:
        self._dsn = dsn
        # Shared: every node holds it at once (note 7); an owner's exclusive hold
        # and the nodes' shared ones exclude each other, so the modes never mix.
        self._try = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
        self._key = f"taskrt.owner.{schema}"
        self._conn: asyncpg.Connection | None = None
        self._held = False

    @property
    def held(self) -> bool:
        return self._held and self._conn is not None and not self._conn.is_closed()

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await connect(
                self._dsn,
                server_settings={
                    "application_name": "taskrt owner lock",
                    "tcp_keepalives_idle": str(KEEPALIVE_IDLE),
                    "tcp_keepalives_interval": str(KEEPALIVE_INTERVAL),
                    "tcp_keepalives_count": str(KEEPALIVE_COUNT),
                },
            )
        return self._conn

    async def try_hold(self) -> bool:
        """Take the lock if no live session holds it; never waits for it."""
        if self.held:
            return True
        try:
            conn = await self._connection()
            self._held = bool(await conn.fetchval(f"SELECT {self._try}(hashtext($1))", self._key))
        except DRIVER_ERRORS as exc:
            log.warning("cannot ask for the ownership lock: %s", exc)
            await self.let_go()
            return False
        return self._held

    async def let_go(self) -> None:
        """End the session, which releases the lock (if it held it)."""
        conn, self._conn, self._held = self._conn, None, False
        if conn is not None:
            with contextlib.suppress(*DRIVER_ERRORS):
                await conn.close(timeout=5)
