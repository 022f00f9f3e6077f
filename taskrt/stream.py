"""``rt.subscribe(...)``: the async iterator of a job's (or many jobs') events.

Design notes (cited where they apply):

1. **Never back.** A one-job stream's sequence numbers only go up. After a gap
   (a subscription that overflowed, or the owner's events lost with its
   connection) the stream starts again from a snapshot read from the runtime;
   where the owner died, that read comes from the database, whose row may lag
   what the stream already delivered (progress is written every
   ``progress_interval``, and a dead owner never wrote its last events). Such a
   snapshot is not sent: the stream reads again every ``poll_interval`` until
   the job has moved past what it delivered (the next owner's recovery jumps
   the sequence above it, guarantees) and sends that. A snapshot may carry the
   sequence delivered last: a clean stop puts a running job back to wait
   without an event of its own.
2. **Polling says what it cannot follow.** A stream that reads the database
   (a client that cannot reach the owner) sees states, not events. Between two
   reads a job may have been started again (a retry, or a recovery after the
   owner died) with the same status on both sides: that is sent as a fresh
   ``snapshot``, never as progress.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

from .errors import InvalidOption
from .events import Subscription, check_buffer
from .limits import check_job_id, shown
from .models import STATUS_EVENT, Event, EventType, JobInfo, JobStatus

if TYPE_CHECKING:
    from .clock import Clock
    from .events import EventBus
    from .live import LiveJobs


class StreamHost(Protocol):
    """What a stream asks of the runtime it follows."""

    broker: EventBus
    clock: Clock
    live: LiveJobs
    poll_interval: float

    @property
    def relayed(self) -> bool:
        """Whether every event of the jobs reaches this process's broker."""
        ...

    async def get(self, job_id: int) -> JobInfo: ...


async def state_past(rt: StreamHost, job_id: int, seq: int) -> JobInfo:
    """The job's state, once it is at or past ``seq``, what a stream delivered (note 1):
    read again every ``poll_interval`` while the row lags it, unless the job ended."""
    while True:
        info = await rt.get(job_id)
        if info.seq >= seq or info.terminal:
            return info
        await asyncio.sleep(rt.poll_interval)


class JobStream:
    """``rt.subscribe(...)``: an async iterator of events; also an async context manager."""

    def __init__(
        self,
        rt: StreamHost,
        job_id: int | None,
        *,
        pool: str | None,
        task: str | None,
        buffer: int | None,
        after: int = 0,
    ) -> None:
        """``after``: the sequence the consumer has seen already (an SSE resume's
        ``Last-Event-ID``); nothing at or below it is sent (note 1)."""
        # Checked before the broker knows of the stream: a bad value is the caller's
        # error here, never a failure of every later publish.
        if job_id is not None:
            check_job_id(job_id, "job_id", optional=True)
        check_name(pool, "pool")
        check_name(task, "task")
        check_buffer(buffer)
        self._rt = rt
        self.job_id = job_id
        matches = None
        if pool is not None or task is not None:

            def matches(ev: Event) -> bool:
                return (pool is None or ev.pool == pool) and (task is None or ev.task == task)

        self._matches = matches
        self._buffer = buffer
        self._sub: Subscription = rt.broker.subscribe(job_id, matches=matches, maxsize=buffer)
        self._snapshot_sent = job_id is None
        self._polling = False
        self._last_seq = after
        self._done = False

    @property
    def subscription(self) -> Subscription:
        return self._sub

    def __aiter__(self) -> JobStream:
        return self

    async def __anext__(self) -> Event:
        if self._done:
            raise StopAsyncIteration
        if not self._snapshot_sent:
            self._snapshot_sent = True
            try:
                info = await self._fresh_state()
            except BaseException:
                self.close()
                raise
            self._last_seq = max(self._last_seq, info.seq)
            if info.terminal:
                self._done = True
                self.close()
            elif not self._rt.relayed:
                self._sub.close()
                self._polling = True
                self._poll_info = info
            return snapshot_event(info, self._rt.clock.now())
        if self._polling:
            return await self._poll_next()
        while True:
            ev = await self._sub.get()
            if ev is None:
                if self._sub.overflowed and self.job_id is not None:
                    # Events were lost (a slow consumer, or the owner changed):
                    # start again from a fresh snapshot (relay note 4).
                    self._sub = self._rt.broker.subscribe(
                        self.job_id, matches=self._matches, maxsize=self._buffer
                    )
                    self._snapshot_sent = False
                    return await self.__anext__()
                self._done = True
                raise StopAsyncIteration
            if ev.seq <= self._last_seq and self.job_id is not None:
                continue
            self._last_seq = ev.seq
            if ev.terminal and self.job_id is not None:
                self._done = True
                self.close()
            return ev

    async def _fresh_state(self) -> JobInfo:
        assert self.job_id is not None
        return await state_past(self._rt, self.job_id, self._last_seq)

    async def _poll_next(self) -> Event:
        """Client runtimes see other processes' jobs by reading the database."""
        assert self.job_id is not None
        while True:
            await asyncio.sleep(self._rt.poll_interval)
            info = await self._rt.get(self.job_id)
            if info.seq < self._last_seq and not info.terminal:
                continue  # a read that lags what was sent (note 1)
            if info.seq == self._last_seq and info.status == self._poll_info.status:
                continue
            prev, self._poll_info = self._poll_info, info
            self._last_seq = max(self._last_seq, info.seq)
            if info.terminal:
                self._done = True
                kind = STATUS_EVENT[info.status]
            elif info.status == prev.status and (info.attempts, info.recoveries) != (
                prev.attempts,
                prev.recoveries,
            ):
                return snapshot_event(info, self._rt.clock.now())  # started again (note 2)
            elif info.status != prev.status:
                kind = EventType.STARTED if info.status is JobStatus.RUNNING else EventType.RETRYING
            else:
                kind = EventType.PROGRESS
            data = {"current": info.current, "total": info.total, "message": info.message}
            if info.status is JobStatus.SUCCESS:
                data["result"] = info.result
            if info.error:
                data["error"] = info.error
            return Event(
                info.id,
                info.seq,
                kind,
                info.task,
                info.pool,
                info.status,
                self._rt.clock.now(),
                data,
            )

    def close(self) -> None:
        self._sub.close()

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> JobStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


def check_name(value: Any, field: str) -> str | None:
    """A pool's or task's name to filter on: ``None`` (any) or a non-empty string."""
    if value is not None and (not isinstance(value, str) or not value):
        raise InvalidOption(field, f"expected a non-empty string or None, found {shown(value)}")
    return value


def snapshot_event(info: JobInfo, now: float) -> Event:
    return Event(
        info.id,
        info.seq,
        EventType.SNAPSHOT,
        info.task,
        info.pool,
        info.status,
        now,
        {"job": info.to_dict()},
    )
