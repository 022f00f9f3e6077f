"""The in-memory truth of the jobs this process is responsible for (runtime note 2).

A job waiting or running here has a ``JobState`` in ``states``; reads of it come
from memory. A job that reached a terminal status stays until its final write
is committed, so a read never goes back in time; one callback per write batch
forgets all of that batch's jobs.
"""

from __future__ import annotations

import asyncio

from .background import job_logger
from .context import JobState
from .models import TERMINAL


class LiveJobs:
    """Live jobs by id, and which live job holds each unique key."""

    def __init__(self) -> None:
        self.states: dict[int, JobState] = {}
        self.unique: dict[str, int] = {}
        self._forgetting: dict[asyncio.Future[None], list[JobState]] = {}

    def forget_when_written(self, state: JobState, written: asyncio.Future[None]) -> None:
        """Drop ``state`` once ``written`` (its final write's batch) is committed."""
        waiting = self._forgetting.get(written)
        if waiting is None:
            waiting = self._forgetting[written] = []
            written.add_done_callback(self._forget)
        waiting.append(state)

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

    def clear(self) -> None:
        self.states.clear()
        self.unique.clear()
