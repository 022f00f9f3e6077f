"""WAL checkpoints off the writer's path (``taskrt.store`` note 14).

SQLite checkpoints in the connection that commits once the WAL passes 1,000
pages, so one write batch in a few hundred pays for copying every page the
others wrote: with a large database that is a pause of several milliseconds
in the middle of the group commit, seen as the tail of add → start latency.
The writer connection raises that threshold tenfold and this thread
checkpoints instead, on a connection of its own, five times a second while
there are commits (twenty while the log grows fast: ``_pause``). A PASSIVE
checkpoint never waits for the writer or a reader: it copies what it can
now and the rest the next time. The log starts
over only after a checkpoint that caught up before the next write began, and
a stream of writes (a drain commits a few pages a millisecond) never leaves
it that moment: the log grew to the writer's own checkpoint, at 10,000 pages
(about 40 MB), and past half of that small batches could no longer commit
on the loop's thread (store note 15). So once a checkpoint finds the log past
2,000 pages, the writer's next batch goes through its thread, which first
runs a RESTART checkpoint on the writer's connection, between two of its
transactions: it copies only what came since that checkpoint (a few
milliseconds in a drain) and the next commit writes the log from its start.
The writer's own checkpoint still bounds the log when writes outrun this.

The first commit into a log that starts over syncs the log's header to disk
(SQLite does, in WAL mode with ``synchronous`` NORMAL or FULL, so that a
write reordered by the disk cannot corrupt the database). That sync, about
0.2-1 ms, fell on whichever commit came next after a checkpoint that caught
up: at 100 adds a second, about one add in a hundred waited 1-2 ms instead
of 0.3 ms (the tail of add → start latency). So after a checkpoint that
caught up with the whole log, this thread makes the next commit itself, a
one-row write to ``meta`` that starts the log over, and pays for the sync
off the writer's path. It never waits for the write lock: while the writer
holds it, the writer starts the log over as before.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable

log = logging.getLogger("taskrt.store")

INTERVAL = 0.2  # seconds between checkpoints while commits happen
WRITER_CHECKPOINT_PAGES = 10_000  # the writer's own checkpoint, a bound the thread keeps clear of
RESTART_PAGES = 2_000  # a log this long is made to start over, by the writer (``restart``)
RESTART_WAIT = 10  # ms that restart may wait for readers of older frames (the writer waits)
# The commit that starts a caught-up log over, made by the thread (module docstring).
SQL_START_OVER = (
    "INSERT INTO meta (key, value) VALUES ('log.started_over', ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


class Checkpointer:
    """A daemon thread that checkpoints ``path`` while ``commits()`` moves."""

    def __init__(self, path: str, commits: Callable[[], int], interval: float = INTERVAL) -> None:
        self.path = path
        self.interval = interval
        self._commits = commits
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen = 0
        self.checkpoints = 0
        self.started_over = 0  # logs this thread started over (module docstring)
        # Pages in the log at the last checkpoint (or, before the first, as large as
        # the log file); None until the thread has looked, or after a checkpoint failed.
        self.log_pages: int | None = None
        # The log passed RESTART_PAGES at the last checkpoint: the writer's next batch
        # goes through its thread, which restarts the log first (``restart``).
        self.restart_wanted = False
        self._quick = True  # the next look comes soon (``_pause``)

    def start(self) -> None:
        self._stop.clear()
        # Read here, not in the thread: a commit made before the thread first runs
        # (a busy machine) is one it must still checkpoint.
        self._seen = self._commits()
        self._thread = threading.Thread(target=self._run, name="taskrt-checkpoint", daemon=True)
        self._thread.start()

    def keeping_up(self) -> bool:
        """True while the log is well below the writer's own checkpoint, so a commit
        will not copy pages (store note 15): it was under half that bound at the
        last checkpoint, or its file is when none ran yet (False before the thread
        looked, or after a checkpoint failed)."""
        pages = self.log_pages
        return (
            pages is not None and pages < WRITER_CHECKPOINT_PAGES // 2 and not self.restart_wanted
        )

    def restart(self, conn: sqlite3.Connection, busy_ms: int) -> None:
        """Called by the writer, in its thread, between two of its transactions: when
        the last checkpoint found the log past ``RESTART_PAGES``, a RESTART
        checkpoint on the writer's connection ``conn``. Nothing writes meanwhile,
        so it copies only what came since that checkpoint, waits (at most
        ``RESTART_WAIT`` ms) for readers of older frames, and the next commit
        writes the log from its start. Busy, it was one more PASSIVE checkpoint:
        the next turn of the thread asks again. ``busy_ms``: the writer's own
        busy timeout, set back after."""
        if not self.restart_wanted:
            return
        self.restart_wanted = False
        conn.execute(f"PRAGMA busy_timeout = {RESTART_WAIT}")
        try:
            busy = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()[0][0]
        except sqlite3.Error as exc:  # the disk: the writer's own commit will say
            log.debug("restarting the log of %s: %s", self.path, exc)
            return
        finally:
            conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
        if not busy:
            self.log_pages = 0

    def _pause(self) -> float:
        """The wait before the next look: a quarter of ``interval`` before the first
        look and while the last one found a quarter of ``RESTART_PAGES`` or more in
        the log, so that a fast stream of writes (a drain writes thousands of pages
        an interval) is caught near that bound rather than an interval past it."""
        return self.interval / 4 if self._quick else self.interval

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            log.warning("no checkpoint thread for %s: %s", self.path, exc)
            return
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                self.log_pages = _log_pages(conn, self.path)
            except sqlite3.Error as exc:  # unknown until the first checkpoint
                log.debug("reading the log of %s: %s", self.path, exc)
            seen = self._seen
            while not self._stop.wait(self._pause()):
                now = self._commits()
                if now == seen:
                    continue
                seen = now
                try:
                    busy, pages, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[
                        0
                    ]
                    self.checkpoints += 1
                    if not busy:  # else another checkpoint ran (the writer's): no reading
                        self.log_pages = int(pages)
                        self.restart_wanted = self.log_pages >= RESTART_PAGES
                        self._quick = self.log_pages >= RESTART_PAGES // 4
                        if 0 < copied == pages:
                            self._start_over(conn)
                except sqlite3.Error as exc:  # busy, or the disk: the next turn tries again
                    self.log_pages = None
                    log.debug("checkpoint of %s skipped: %s", self.path, exc)
        finally:
            conn.close()

    def _start_over(self, conn: sqlite3.Connection) -> None:
        """The checkpoint copied the whole log: commit one row, which starts the log
        over and syncs its header here rather than in the writer's next commit
        (module docstring). Busy (the writer writes), it does nothing: the writer's
        commit starts the log over, as it would without this."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error:
            return  # busy: no wait (busy_timeout 0)
        try:
            conn.execute(SQL_START_OVER, (repr(time.time()),))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.started_over += 1


def _log_pages(conn: sqlite3.Connection, path: str) -> int:
    """The most pages the log can hold now: its file's size in frames (a log that
    restarted from its beginning is shorter than its file)."""
    page = int(conn.execute("PRAGMA page_size").fetchall()[0][0])
    try:
        size = os.path.getsize(path + "-wal")
    except OSError:
        return 0
    return size // (page + 24)  # each frame: a 24-byte header and a page
