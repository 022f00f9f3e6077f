"""A node's heartbeat: a thread of its own, on a connection of its own (note 7).

Every node refreshes its row in ``nodes`` every ``interval`` seconds; any node
takes back the jobs of a node whose row is older than that node's TTL
(``PgStore.reap``). The beat runs in a thread with its own event loop and
connection, so a handler that blocks the application's event loop does not
make a live node look dead (the loop-stall watchdog reports the stall). The
application's loop reads ``fresh`` and ``gone`` and is told of each change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

import asyncpg

from .driver import DRIVER_ERRORS, connect
from .lock import KEEPALIVE_COUNT, KEEPALIVE_IDLE, KEEPALIVE_INTERVAL
from .sql import SQL_HEARTBEAT

BEAT_FAILED: tuple[type[Exception], ...] = (*DRIVER_ERRORS, TimeoutError)

log = logging.getLogger("taskrt.store")


class Heartbeat:
    """``UPDATE nodes SET heartbeat_at = now()`` every ``interval`` s, from a thread."""

    def __init__(self, dsn: str, schema: str, node: str, interval: float) -> None:
        self.dsn = dsn
        self.schema = schema
        self.node = node
        self.interval = interval
        self.last_ok = time.monotonic()
        """When the last beat that found the row was sent (monotonic)."""
        self.gone = False
        """The last beat found no row: another node took this node's jobs back."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the thread's
        self._stopped: asyncio.Event | None = None
        self._changed: Callable[[], None] | None = None

    def fresh(self, within: float) -> bool:
        """Whether a beat that found the row was sent within ``within`` seconds."""
        return not self.gone and time.monotonic() - self.last_ok < within

    def start(self, changed: Callable[[], None]) -> None:
        """Beat from now on; ``changed()`` (called in the caller's loop) after each beat
        whose outcome differs from the last."""
        loop = asyncio.get_running_loop()

        def tell() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
                loop.call_soon_threadsafe(changed)

        self._changed = tell
        self.last_ok = time.monotonic()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._beat()), name="taskrt-heartbeat", daemon=True
        )
        self._thread.start()

    def rejoined(self) -> None:
        """The node's row is back (``PgStore.join``): beats find it again."""
        self.gone = False
        self.last_ok = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None:
            with contextlib.suppress(RuntimeError):  # its loop has ended already
                loop.call_soon_threadsafe(stopped.set)
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)
            self._thread = None

    async def _beat(self) -> None:
        self._stopped = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        conn: asyncpg.Connection | None = None
        ok = True
        while not self._stop.is_set():
            sent = time.monotonic()
            found: bool | None = None
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncio.wait_for(
                        connect(
                            self.dsn,
                            server_settings={
                                "application_name": "taskrt heartbeat",
                                "search_path": f'"{self.schema}"',
                                "tcp_keepalives_idle": str(KEEPALIVE_IDLE),
                                "tcp_keepalives_interval": str(KEEPALIVE_INTERVAL),
                                "tcp_keepalives_count": str(KEEPALIVE_COUNT),
                            },
                        ),
                        self.interval,
                    )
                assert conn is not None
                beat = conn.execute(SQL_HEARTBEAT, self.node)
                status = await asyncio.wait_for(beat, self.interval)
                found = status.endswith(" 1")
            except BEAT_FAILED as exc:
                log.warning("node %s: heartbeat failed: %s", self.node, exc)
                if conn is not None:
                    conn.terminate()
                    conn = None
            if found:
                self.last_ok = sent
            elif found is False and not self.gone:
                self.gone = True
                log.error("node %s: its row is gone: another node took its jobs back", self.node)
            now_ok = found is True
            if now_ok != ok or found is False:
                ok = now_ok
                if self._changed is not None:
                    self._changed()
            if self._stop.is_set():
                break
            with contextlib.suppress(TimeoutError):
                left = self.interval - (time.monotonic() - sent)
                await asyncio.wait_for(self._stopped.wait(), max(0.0, left))
        if conn is not None:
            with contextlib.suppress(*DRIVER_ERRORS):
                await conn.close(timeout=2)
