"""Rate limits and locks: what may keep a due job from starting (docs/flow-control.md).

Where one process runs the jobs (the owner), a pool asks ``Gates`` whether the
next job in line may start: its task's rate limit must have a token, and its
lock key (``options(lock=...)``) must not be held by a running job. (The pool's
own rate limit is the pool's: ``Pool.rate``.) Where every node runs workers, a
claim asks the database instead (``taskrt.store.postgres``), and these gates
stay open.

Design notes:

1. **Nobody pays for what nobody uses.** A pool goes through the gates only
   when its own rate, a rate of one of the runtime's tasks, or a job with a
   lock key has been seen (``in_use``); the unlimited path is unchanged.
2. **In order, and bounded.** A job that may not start stays where it is in
   its queue; the pool looks past it, at most ``SCAN`` jobs deep, for one that
   may (``Waiting.take_first``), reading from the store what its window does
   not hold (``taskrt.waiting`` note 7). Jobs of one lock key therefore start in their
   queue order, and a pool whose first ``SCAN`` jobs all wait on a lock waits
   for it too.
3. **Why it waits is stored.** A job the gates hold back gets its waiting
   reason (``rate_limited``, ``locked``) in memory and, once per change, in
   the store; its start clears it.
4. **A lock is held while an attempt runs.** It is taken when the attempt
   starts and released when it ends (a retry waits in line again), and by
   recovery after a crash (the new owner holds none). An attempt cut short
   whose handler runs on (an abandoned coroutine, a sync handler's thread)
   keeps its lock until the handler returns; the lock is the attempt's, so its
   job's retry waits for it too, and its return frees no later attempt's lock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from .rates import Bucket

if TYPE_CHECKING:
    from .clock import Clock
    from .context import JobState
    from .definitions import TaskSpec

SCAN = 256
"""How far past the first job in line a pool looks for one that may start (note 2)."""


class Gates:
    """The rate limits of tasks and the locks held, of one runtime (see the notes)."""

    def __init__(
        self,
        clock: Clock,
        tasks: Mapping[str, TaskSpec],
        mark: Callable[[JobState, str | None], None],
    ) -> None:
        self.clock = clock
        self.tasks = tasks
        self._mark = mark  # records why a job waits (note 3)
        # Lock key -> the attempt running with it (its state: a retry is another one,
        # which waits while an attempt cut short runs on, note 4).
        self.locks: dict[str, JobState] = {}
        self._buckets: dict[str, Bucket] = {}  # task name -> its bucket
        self.locks_seen = False
        self._rated: bool | None = None  # whether a task has a rate (None: look)

    def in_use(self) -> bool:
        """Whether any job may be held back by these gates (note 1)."""
        if self.locks_seen:
            return True
        if self._rated is None:  # a task was registered since: look again
            self._rated = any(s.rate is not None for s in self.tasks.values())
        return self._rated

    def tasks_changed(self) -> None:
        """A task was registered (or registered again): its rate may be new."""
        self._rated = None

    def saw(self, state: JobState) -> None:
        """A job was queued: one with a lock key turns the gates on (note 1)."""
        if state.lock is not None:
            self.locks_seen = True

    def _bucket(self, spec: TaskSpec, now: float) -> Bucket | None:
        rate = spec.rate
        if rate is None:
            return None
        bucket = self._buckets.get(spec.name)
        if bucket is None:
            bucket = self._buckets[spec.name] = Bucket(rate, now)
        elif bucket.rate != rate:
            bucket.change(rate)
        return bucket

    def admit(self, state: JobState, now: float) -> float | None:
        """None when the job may start now; else seconds until it may be worth
        asking again (0: when a lock is released), its waiting reason recorded."""
        key = state.lock
        if key is not None:
            holder = self.locks.get(key)
            if holder is not None and holder is not state:
                self._mark(state, "locked")
                return 0.0
        bucket = self._bucket(state.spec, now)
        if bucket is not None and not bucket.ready(now):
            self._mark(state, "rate_limited")
            return bucket.wait(now)
        return None

    def started(self, state: JobState, now: float) -> None:
        """The job starts: it takes its task's token and its lock (note 4)."""
        bucket = self._bucket(state.spec, now)
        if bucket is not None:
            bucket.take(now)
        if state.lock is not None:
            self.locks[state.lock] = state

    def ended(self, state: JobState) -> bool:
        """Its attempt ended: True when that released a lock (others may start)."""
        key = state.lock
        if key is not None and self.locks.get(key) is state:
            del self.locks[key]
            return True
        return False

    def clear(self) -> None:
        self.locks.clear()
        self._buckets.clear()
        self.locks_seen = False
        self._rated = None


__all__ = ["SCAN", "Gates"]
