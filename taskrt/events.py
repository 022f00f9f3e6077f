"""In-memory publish/subscribe of job events, with bounded subscriber buffers.

Design notes (cited where they apply):

1. ``publish`` never waits. It appends to each matching subscriber's buffer and
   sets that subscriber's wake-up flag; a slow subscriber cannot slow a worker.
2. A buffer holds at most ``maxsize`` events. When it is full, progress is
   treated as state: a new progress event replaces the pending progress event
   of the same job, or else the oldest pending progress event is dropped
   (``dropped`` counts them). Lifecycle events (added, started, retrying) and
   terminal events are never conflated. If a buffer fills up with lifecycle
   events alone (four times ``maxsize``), the subscription is closed with
   ``overflowed = True`` so the consumer can start again from a snapshot; a
   terminal event is never silently lost.
3. The broker keeps a small replay window of each recent job's events (the last
   ``replay`` events of the last ``replay_jobs`` jobs), so a reconnecting
   stream can resume after a known sequence number without a gap.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from .limits import check_count
from .models import TERMINAL_EVENTS, Event, EventType

_PROGRESS = EventType.PROGRESS

DEFAULT_BUFFER = 256
DEFAULT_REPLAY = 128
DEFAULT_REPLAY_JOBS = 4096
MAX_BUFFER = 1_000_000
"""The most events a subscriber's buffer may hold (``Runtime(subscriber_buffer=...)``
is checked against the same bound)."""


def check_buffer(value: Any, field: str = "buffer") -> int | None:
    """A subscriber's buffer: ``None`` (the broker's own) or 1 to ``MAX_BUFFER`` events.

    Checked where it is given: a bad one would fail every publish that reaches it
    (note 1), whoever's job the event is of.
    """
    if value is None:
        return None
    return check_count(value, field, least=1, most=MAX_BUFFER)


class Subscription:
    """A bounded queue of events for one consumer; iterate it with ``async for``."""

    __slots__ = (
        "_broker",
        "_buffer",
        "_wake",
        "accepts",
        "closed",
        "dropped",
        "job_id",
        "matches",
        "maxsize",
        "overflowed",
    )

    def __init__(
        self,
        broker: Broker,
        *,
        job_id: int | None,
        matches: Callable[[Event], bool] | None,
        maxsize: int,
        accepts: Callable[[int], bool] | None = None,
    ) -> None:
        self._broker = broker
        self.accepts = accepts
        self._buffer: deque[Event] = deque()
        self._wake = asyncio.Event()
        self.job_id = job_id
        self.matches = matches
        self.maxsize = maxsize
        self.closed = False
        self.overflowed = False
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._buffer)

    def push(self, event: Event) -> None:
        """Buffer one event (design note 2)."""
        if self.closed:
            return
        buf = self._buffer
        if len(buf) >= self.maxsize:
            if event.type is _PROGRESS and self._conflate(buf, event):
                return
            if not self._drop_oldest_progress():
                if len(buf) >= 4 * self.maxsize and not event.terminal:
                    self.overflowed = True
                    self.close()
                    return
        buf.append(event)
        self._wake.set()

    def _conflate(self, buf: deque[Event], event: Event) -> bool:
        """A full buffer: ``event`` replaces its job's latest progress, if one waits
        (the last one usually: a reporter that outruns its readers). An earlier one
        goes, and ``event`` joins the end: put in its place, it came before the
        events published after that progress (a ``retrying``, a ``started``), and
        a stream, which sends a job's events in sequence order, skipped those."""
        job_id = event.job_id
        last = buf[-1]
        if last.job_id == job_id and last.type is _PROGRESS:
            buf[-1] = event
        else:
            for i in range(len(buf) - 2, -1, -1):
                old = buf[i]
                if old.job_id == job_id and old.type is _PROGRESS:
                    del buf[i]
                    buf.append(event)
                    break
            else:
                return False
        self.dropped += 1
        self._broker.dropped += 1
        return True

    def _drop_oldest_progress(self) -> bool:
        buf = self._buffer
        for i, old in enumerate(buf):
            if old.type is _PROGRESS:
                del buf[i]
                self.dropped += 1
                self._broker.dropped += 1
                return True
        return False

    def get_nowait(self) -> Event | None:
        if self._buffer:
            return self._buffer.popleft()
        return None

    async def get(self) -> Event | None:
        """The next event, or ``None`` once the subscription is closed and drained."""
        while not self._buffer:
            if self.closed:
                return None
            self._wake.clear()
            await self._wake.wait()
        return self._buffer.popleft()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._broker._remove(self)
        self._wake.set()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            event = await self.get()
            if event is None:
                return
            yield event


class EventBus(Protocol):
    """The event seam: how a job's events reach its subscribers.

    The runtime publishes every transition here and streams subscribe here;
    neither knows what carries the events. Today that is ``Broker``, in this
    process; the several-processes issue relays it between the processes of a
    host, the PostgreSQL issue carries it with ``LISTEN/NOTIFY``.
    """

    @property
    def subscribers(self) -> int: ...

    @property
    def dropped(self) -> int:
        """Progress events conflated away for slow subscribers (note 2)."""
        ...

    def wants(self, job_id: int) -> bool:
        """Whether an event of ``job_id`` would reach anyone (publishers ask first)."""
        ...

    def publish(self, event: Event) -> None:
        """Deliver without waiting (note 1)."""
        ...

    def subscribe(
        self,
        job_id: int | None = None,
        *,
        matches: Callable[[Event], bool] | None = None,
        maxsize: int | None = None,
        accepts: Callable[[int], bool] | None = None,
    ) -> Subscription:
        """One job's events (``job_id``), or every event ``matches`` accepts.

        ``accepts(job_id)``, for a many-job subscriber, says whether any event
        of that job could match (``wants`` asks it; default: yes).
        """
        ...

    on_interest: Callable[[int | None, bool], None] | None
    """Told when a job's first subscriber comes (``True``) and its last goes; ``None``
    for the many-job subscribers (relay note 2)."""

    def followed_jobs(self) -> list[int]:
        """The jobs that have a subscriber of their own here."""
        ...

    def has_wide(self) -> bool:
        """Whether a many-job subscriber is here."""
        ...

    def remember(self, job_id: int) -> None:
        """Keep a replay window for ``job_id`` (as a subscriber of it would)."""
        ...

    def interrupt(self) -> None:
        """Close every subscription as overflowed: what happened meanwhile is unknown here."""
        ...

    def replay_after(self, job_id: int, seq: int) -> list[Event] | None:
        """A job's events after ``seq``, or ``None`` when some are no longer known (note 3)."""
        ...

    def close_all(self) -> None: ...


class Broker:
    """Routes events to subscribers of one job, or of many (by a predicate), in this process."""

    def __init__(
        self,
        *,
        buffer: int = DEFAULT_BUFFER,
        replay: int = DEFAULT_REPLAY,
        replay_jobs: int = DEFAULT_REPLAY_JOBS,
    ) -> None:
        self.buffer = check_count(buffer, "buffer", least=1, most=MAX_BUFFER)
        self.replay = check_count(replay, "replay", least=0, most=MAX_BUFFER)
        self.replay_jobs = replay_jobs
        self._by_job: dict[int, set[Subscription]] = {}
        self._wide: set[Subscription] = set()
        self._history: OrderedDict[int, deque[Event]] = OrderedDict()
        self.published = 0
        self.dropped = 0
        # Told when the first subscriber of a job (or the first many-job one)
        # comes and the last goes: the relay forwards the interest (relay note 2).
        self.on_interest: Callable[[int | None, bool], None] | None = None

    @property
    def subscribers(self) -> int:
        return len(self._wide) + sum(len(s) for s in self._by_job.values())

    def subscribe(
        self,
        job_id: int | None = None,
        *,
        matches: Callable[[Event], bool] | None = None,
        maxsize: int | None = None,
        accepts: Callable[[int], bool] | None = None,
    ) -> Subscription:
        # Refused before anything is registered: every caller, not only the streams.
        size = check_buffer(maxsize, "maxsize")
        sub = Subscription(
            self,
            job_id=job_id,
            matches=matches,
            maxsize=self.buffer if size is None else size,
            accepts=accepts,
        )
        if job_id is not None:
            subs = self._by_job.get(job_id)
            if subs is None:
                subs = self._by_job[job_id] = set()
                self._interest(job_id, True)
            subs.add(sub)
            self._record(job_id)
        else:
            self._wide.add(sub)
            if len(self._wide) == 1:
                self._interest(None, True)
        return sub

    def _interest(self, job_id: int | None, on: bool) -> None:
        if self.on_interest is not None:
            self.on_interest(job_id, on)

    def _remove(self, sub: Subscription) -> None:
        if sub.job_id is None:
            if sub in self._wide:
                self._wide.discard(sub)
                if not self._wide:
                    self._interest(None, False)
            return
        subs = self._by_job.get(sub.job_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_job[sub.job_id]
                self._interest(sub.job_id, False)

    def followed_jobs(self) -> list[int]:
        """The jobs that have a subscriber of their own here."""
        return list(self._by_job)

    def has_wide(self) -> bool:
        return bool(self._wide)

    def remember(self, job_id: int) -> None:
        self._record(job_id)

    def interrupt(self) -> None:
        for sub in [s for subs in self._by_job.values() for s in subs] + list(self._wide):
            sub.overflowed = True
            sub.close()

    def wants(self, job_id: int) -> bool:
        """Whether an event of ``job_id`` would reach anyone (a subscriber or a replay window).

        Publishers check it first so that nobody pays for events nobody reads.
        """
        if job_id in self._history or job_id in self._by_job:
            return True
        if not self._wide:
            return False  # nobody listens to every job (the usual case: add_many's hot path)
        return any(s.accepts is None or s.accepts(job_id) for s in self._wide)

    def _record(self, job_id: int) -> deque[Event]:
        history = self._history.get(job_id)
        if history is None:
            history = self._history[job_id] = deque(maxlen=self.replay)
            if len(self._history) > self.replay_jobs:
                self._history.popitem(last=False)
        return history

    def publish(self, event: Event) -> None:
        """Deliver ``event`` to every matching subscriber without waiting (note 1).

        A job's replay window (note 3) starts when it first has a subscriber of
        its own; many-job subscribers do not resume, so they need none.
        """
        self.published += 1
        job_id = event.job_id
        history = self._history.get(job_id)
        if history is not None:
            history.append(event)
        subs = self._by_job.get(job_id)
        if subs:
            if event.type in TERMINAL_EVENTS:
                for sub in tuple(subs):
                    sub.push(event)
                    sub.close()
            else:
                for sub in tuple(subs):
                    sub.push(event)
        if self._wide:
            for sub in tuple(self._wide):
                if sub.matches is None or sub.matches(event):
                    sub.push(event)

    def replay_after(self, job_id: int, seq: int) -> list[Event] | None:
        """Events of ``job_id`` after ``seq``, or ``None`` when the window lost some (note 3)."""
        history = self._history.get(job_id)
        if history is None:
            return None
        if not history or history[0].seq > seq + 1:
            return None if not history or history[-1].seq > seq else []
        return [e for e in history if e.seq > seq]

    def close_all(self) -> None:
        for subs in list(self._by_job.values()):
            for sub in list(subs):
                sub.close()
        for sub in list(self._wide):
            sub.close()
