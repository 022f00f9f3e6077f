"""The in-memory truth of the jobs this process is responsible for (runtime note 2).

A job waiting or running here has a ``JobState`` in ``states``; reads of it come
from memory. A job that reached a terminal status stays until its final write
is committed, so a read never goes back in time; one callback per write batch
forgets all of that batch's jobs.

A row read from the store may be older than what happened here while the
read was under way: an action took the job in, ended it, and its end was
committed and forgotten; the job ran here and, waiting for its retry, left
memory with the window (a read begun before its start finds it never run);
or the store released it from its parents (a read begun before that commit
finds it blocked). Code that takes a job into
memory from such a read asks ``changes_during`` which jobs changed so
meanwhile, and leaves those.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from .background import job_logger
from .context import JobState
from .models import TERMINAL


class LiveJobs:
    """Live jobs by id, and which live job holds each unique key."""

    def __init__(self) -> None:
        self.states: dict[int, JobState] = {}
        self.unique: dict[str, int] = {}
        self._forgetting: dict[asyncio.Future[None], list[JobState]] = {}
        self._watching: list[set[int]] = []  # one per read under way (``changes_during``)

    @contextlib.contextmanager
    def changes_during(self) -> Iterator[set[int]]:
        """The ids of the jobs that changed while the ``with`` block runs (``changed``:
        outside memory, or out of it; or forgotten: ended and committed): a row of one
        read meanwhile may be older."""
        changed: set[int] = set()
        self._watching.append(changed)
        try:
            yield changed
        finally:
            # By identity: two sets with the same ids are equal.
            self._watching = [s for s in self._watching if s is not changed]

    def changed(self, job_id: int) -> None:
        """The store changed the job outside memory (released or cancelled it), or the
        job left memory after it ran here: a row of it read before that is older
        (``changes_during``)."""
        for changed in self._watching:
            changed.add(job_id)

    def forget_when_written(self, state: JobState, written: asyncio.Future[None]) -> None:
        """Drop ``state`` once ``written`` (its final write's batch) is committed."""
        waiting = self._forgetting.get(written)
        if waiting is None:
            waiting = self._forgetting[written] = []
            written.add_done_callback(self._forget)
        waiting.append(state)

    def holder(self, key: str) -> int | None:
        """The live job that holds unique ``key``, by memory. A job that has ended
        here holds it no longer, though its key goes only once its end is written:
        a failure's ``on_failed`` hook, in the failure's own transaction, may add a
        job with that key (the store's insert checks the key again)."""
        job_id = self.unique.get(key)
        if job_id is not None:
            state = self.states.get(job_id)
            if state is not None and state.status in TERMINAL:
                return None
        return job_id

    def release_key(self, state: JobState) -> None:
        """The job no longer holds its unique key."""
        key = state.unique_key
        if key is not None and self.unique.get(key) == state.id:
            del self.unique[key]

    def _forget(self, fut: asyncio.Future[None]) -> None:
        states = self._forgetting.pop(fut, [])
        failed = not fut.cancelled() and fut.exception() is not None
        for state in states:
            if failed:
                job_logger(state).error(
                    "the final state of job %d was not written: %s",
                    state.id,
                    fut.exception(),
                )
            if self.states.get(state.id) is state and state.status in TERMINAL:
                del self.states[state.id]
                if self._watching:  # a read is under way (rarely, as a job ends)
                    self.changed(state.id)

    def clear(self) -> None:
        self.states.clear()
        self.unique.clear()
