"""A loop-stall watchdog: say so when something blocks the event loop.

A handler that calls ``time.sleep(2.5)`` (or any CPU-bound or blocking call)
inside ``async def`` freezes heartbeats, timeouts and every other job, and
nothing in the log says why. ``LoopWatchdog`` names the stall and the jobs
that were running while it lasts.

Design notes:

1. **A thread watches, because the loop cannot observe its own stall.** While
   the loop is blocked, no callback, task or timer of that loop runs, so the
   detector must live elsewhere. One daemon thread (``taskrt-watchdog``) wakes
   every ``threshold / 4`` on ``threading.Event.wait``, so ``stop()`` ends it
   at once instead of after a sleep.
2. **The loop proves it is alive with a heartbeat timestamp.** A
   ``loop.call_later`` callback stores ``time.monotonic()`` every
   ``threshold / 4`` and schedules the next one: a few cheap callbacks a
   second and no per-job work. The thread only reads that float (an atomic
   read under the GIL). "Blocked for" is the time since the loop last ran the
   heartbeat: an upper bound, at most one heartbeat interval above the real
   stall, and never below it.
3. **Each stall is logged once while it lasts, once when it ends.** The thread
   warns the first time the heartbeat is older than ``threshold`` and remembers
   which heartbeat it warned about, so a 30-second stall is one warning, not
   120; it names at most ten jobs ("and N more"). The next heartbeat (on the
   loop, once it runs again) sees the gap, records the stall in the
   statistics and logs its total. A stall just over
   the threshold can end before the thread wakes: it is counted and logged
   when it ends, without the warning during.
4. **``describe`` runs on the watchdog thread while the loop is stuck.** It
   should copy what it reads (``list(d.values())``); if it still races a
   mutation (``RuntimeError: dictionary changed size``), it is retried a few
   times and then the warning says what it could. Nothing it raises stops the
   thread.
5. **A loop that is not running is not stalled.** The thread skips its check
   while ``loop.is_running()`` is false, and exits when the loop is closed.
   The heartbeat gap across a loop that was stopped and run again is still
   counted as a stall: the runtime keeps one loop running for its lifetime.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from taskrt.errors import InvalidOption

THREAD_NAME = "taskrt-watchdog"
_DESCRIBE_ATTEMPTS = 3
_JOIN_TIMEOUT = 1.0
_NAMED_JOBS = 10  # a warning names at most this many jobs, then "and N more"


@dataclass(frozen=True, slots=True)
class LoopStallStatistics:
    """A snapshot of the stalls seen so far (seconds throughout).

    ``stalls``, ``longest`` and ``total`` cover completed stalls over the
    threshold; ``blocked_now`` is how long the loop has been blocked right now
    (0.0 when it is not).
    """

    stalls: int
    longest: float
    total: float
    blocked_now: float


def describe_jobs(jobs: list[tuple[int, str]]) -> str:
    """``"job 4 (resize), job 7 (email)"``, or ``"no job running"``."""
    if not jobs:
        return "no job running"
    text = ", ".join(f"job {job_id} ({task})" for job_id, task in jobs[:_NAMED_JOBS])
    if len(jobs) > _NAMED_JOBS:
        text += f" and {len(jobs) - _NAMED_JOBS} more"
    return text


def _no_jobs() -> list[tuple[int, str]]:
    return []


class LoopWatchdog:
    """Warn when the event loop does not run for longer than ``threshold`` seconds.

    ``describe`` returns the ``(job id, task name)`` pairs running now; it is
    called from the watchdog thread (note 4). The constructor only stores its
    arguments; ``start`` (from inside the running loop) begins watching and
    ``stop`` ends it. ``start`` after ``stop`` works, on the same or a new loop.
    """

    def __init__(
        self,
        threshold: float = 1.0,
        describe: Callable[[], list[tuple[int, str]]] = _no_jobs,
        logger: logging.Logger | None = None,
    ) -> None:
        if not threshold > 0:  # also refuses NaN
            raise InvalidOption("threshold", f"expected seconds > 0, found {threshold!r}")
        self.threshold = threshold
        self.interval = threshold / 4
        self._describe = describe
        self._logger = logger if logger is not None else logging.getLogger("taskrt")
        self._lock = threading.Lock()  # guards the statistics fields below
        self._stalls = 0
        self._longest = 0.0
        self._total = 0.0
        self._last_beat = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle -----------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Begin watching ``loop`` (default: the running loop); call it on that loop."""
        if self._thread is not None:
            raise RuntimeError("LoopWatchdog.start: already started; call stop() first")
        loop = loop if loop is not None else asyncio.get_running_loop()
        self._loop = loop
        self._last_beat = time.monotonic()
        self._handle = loop.call_later(self.interval, self._beat)
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._watch, args=(loop, self._stopping), name=THREAD_NAME, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and the heartbeat; calling it again does nothing.

        The thread ends at once (note 1) unless it is inside ``describe`` or a
        log handler; the join gives it at most a second.
        """
        self._stopping.set()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)
        self._loop = None

    # -- introspection -------------------------------------------------------------

    def statistics(self) -> LoopStallStatistics:
        """A snapshot; safe to call from any thread (the metrics read this)."""
        with self._lock:
            stalls, longest, total = self._stalls, self._longest, self._total
        return LoopStallStatistics(
            stalls=stalls, longest=longest, total=total, blocked_now=self._blocked_now()
        )

    def _blocked_now(self) -> float:
        loop = self._loop
        if loop is None or not loop.is_running():  # note 5
            return 0.0
        age = time.monotonic() - self._last_beat
        return age if age > self.threshold else 0.0

    # -- on the loop (note 2) ------------------------------------------------------

    def _beat(self) -> None:
        now = time.monotonic()
        gap = now - self._last_beat
        self._last_beat = now
        loop = self._loop
        if loop is None:  # stopped between scheduling and running
            return
        self._handle = loop.call_later(self.interval, self._beat)
        if gap > self.threshold:
            with self._lock:
                self._stalls += 1
                self._total += gap
                self._longest = max(self._longest, gap)
            self._logger.warning(
                "the event loop was blocked for %.1fs",
                gap,
                extra={"stall_seconds": gap},
            )

    # -- on the watchdog thread (notes 1, 3-5) -------------------------------------

    def _watch(self, loop: asyncio.AbstractEventLoop, stopping: threading.Event) -> None:
        warned_for: float | None = None  # the heartbeat the last warning was about
        while not stopping.wait(self.interval):
            if loop.is_closed():
                return
            if not loop.is_running():
                continue
            beat = self._last_beat
            age = time.monotonic() - beat
            if age <= self.threshold or beat == warned_for:
                continue
            warned_for = beat
            jobs = self._running_jobs()
            self._logger.warning(
                "the event loop has been blocked for %.1fs; running: %s",
                age,
                describe_jobs(jobs),
                extra={"stall_seconds": age, "job_ids": [job_id for job_id, _ in jobs]},
            )

    def _running_jobs(self) -> list[tuple[int, str]]:
        for _ in range(_DESCRIBE_ATTEMPTS):
            try:
                return list(self._describe())
            except RuntimeError:  # raced a mutation on the blocked loop (note 4)
                continue
            except Exception:
                self._logger.exception("the loop watchdog's describe() failed")
                return []
        return []


__all__ = ["THREAD_NAME", "LoopStallStatistics", "LoopWatchdog", "describe_jobs"]
