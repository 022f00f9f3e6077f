"""WAL checkpoints off the writer's path (``taskrt.store`` note 14).

SQLite checkpoints in the connection that commits once the WAL passes 1,000
pages, so one write batch in a few hundred pays for copying every page the
others wrote: with a large database that is a pause of several milliseconds
in the middle of the group commit, seen as the tail of add → start latency.
The writer connection raises that threshold tenfold and this thread
checkpoints instead, on a connection of its own, a few times a second while
there are commits. A PASSIVE checkpoint never waits for the writer or a
reader: it copies what it can now and the rest the next time. The log starts
over only after a checkpoint that caught up before the next write began; if
a stream of writes never leaves it that moment, the writer's own checkpoint,
at 10,000 pages (about 40 MB), still bounds the log.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable

log = logging.getLogger("taskrt.store")

INTERVAL = 0.2  # seconds between checkpoints while commits happen
WRITER_CHECKPOINT_PAGES = 10_000  # the writer's own checkpoint, a bound the thread keeps clear of


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
        # Pages in the log at the last checkpoint (or, before the first, as large as
        # the log file); None until the thread has looked, or after a checkpoint failed.
        self.log_pages: int | None = None

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
        return pages is not None and pages < WRITER_CHECKPOINT_PAGES // 2

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
            while not self._stop.wait(self.interval):
                now = self._commits()
                if now == seen:
                    continue
                seen = now
                try:
                    row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
                    self.checkpoints += 1
                    self.log_pages = int(row[1])
                except sqlite3.Error as exc:  # busy, or the disk: the next turn tries again
                    self.log_pages = None
                    log.debug("checkpoint of %s skipped: %s", self.path, exc)
        finally:
            conn.close()


def _log_pages(conn: sqlite3.Connection, path: str) -> int:
    """The most pages the log can hold now: its file's size in frames (a log that
    restarted from its beginning is shorter than its file)."""
    page = int(conn.execute("PRAGMA page_size").fetchall()[0][0])
    try:
        size = os.path.getsize(path + "-wal")
    except OSError:
        return 0
    return size // (page + 24)  # each frame: a 24-byte header and a page
