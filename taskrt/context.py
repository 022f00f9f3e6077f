"""What a handler sees of its job: ``JobContext``, and the live state behind it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Generator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .definitions import TaskSpec
from .models import JobInfo, JobStatus
from .retry import RetryPolicy

if TYPE_CHECKING:
    from .runtime import Runtime


class JobState:
    """The mutable, in-memory record of a job this process is responsible for.

    Lives from ``add`` (or recovery) until the job's terminal state is
    committed. ``info()`` gives the frozen ``JobInfo`` snapshot.
    """

    __slots__ = (
        "abandoned",
        "cancel_requested",
        "current",
        "info_",
        "message",
        "retry",
        "seq",
        "shutdown",
        "spec",
        "task_handle",
        "timed_out",
        "total",
        "watchdog",
    )

    def __init__(self, info: JobInfo, spec: TaskSpec, retry: RetryPolicy) -> None:
        self.info_ = info
        # Progress and the event sequence change often: they live here, and
        # ``info()`` folds them into the frozen record when asked.
        self.current = info.current
        self.total = info.total
        self.message = info.message
        self.seq = info.seq
        self.spec = spec
        self.retry = retry
        self.task_handle: asyncio.Task[None] | None = None
        self.watchdog: asyncio.TimerHandle | None = None
        self.cancel_requested = False
        self.timed_out = False
        self.shutdown = False
        self.abandoned = False

    @property
    def id(self) -> int:
        return self.info_.id

    @property
    def status(self) -> JobStatus:
        return self.info_.status

    def info(self) -> JobInfo:
        i = self.info_
        if (i.current, i.total, i.message, i.seq) != (self.current, self.total, self.message, self.seq):
            i = self.info_ = replace(
                i, current=self.current, total=self.total, message=self.message, seq=self.seq
            )
        return i

    def update(self, **changes: Any) -> JobInfo:
        for name in ("current", "total", "message", "seq"):
            if name in changes:
                setattr(self, name, changes.pop(name))
        self.info_ = replace(
            self.info_,
            current=self.current,
            total=self.total,
            message=self.message,
            seq=self.seq,
            **changes,
        )
        return self.info_

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq


class _Done:
    """An awaitable that is already done: ``progress`` never waits (DESIGN, flow 3)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield


DONE = _Done()


class JobContext:
    """Passed as the first argument to ``"context"``-style handlers.

    ``await job.progress(current, total, message)`` reports progress; it never
    waits on the disk. Sync handlers (run in a worker thread) call it without
    ``await``; ``job.cancelled`` tells them to stop early.
    """

    __slots__ = ("_loop", "_rt", "_state", "_thread")

    def __init__(self, rt: Runtime, state: JobState, loop: asyncio.AbstractEventLoop) -> None:
        self._rt = rt
        self._state = state
        self._loop = loop
        self._thread = threading.get_ident()

    @property
    def id(self) -> int:
        return self._state.id

    @property
    def task(self) -> str:
        return self._state.info_.task

    @property
    def pool(self) -> str:
        return self._state.info_.pool

    @property
    def attempt(self) -> int:
        """The 1-based number of this attempt (at-least-once: it may be > 1)."""
        return self._state.info_.attempts

    @property
    def max_attempts(self) -> int | None:
        return self._state.info_.max_attempts

    @property
    def args(self) -> tuple[Any, ...]:
        return self._state.info_.args

    @property
    def kwargs(self) -> dict[str, Any]:
        return self._state.info_.kwargs

    @property
    def metadata(self) -> dict[str, Any]:
        return self._state.info_.metadata

    @property
    def info(self) -> JobInfo:
        return self._state.info()

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled or timed out; sync handlers should return."""
        s = self._state
        return s.cancel_requested or s.timed_out or s.shutdown

    def progress(
        self, current: float, total: float | None = None, message: str | None = None
    ) -> Awaitable[None]:
        """Report progress; returns at once (awaiting it is optional and free)."""
        if threading.get_ident() == self._thread:
            self._rt._report(self._state, current, total, message)
        else:
            self._loop.call_soon_threadsafe(self._rt._report, self._state, current, total, message)
        return DONE
