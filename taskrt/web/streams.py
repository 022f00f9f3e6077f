"""Event streams: one job's events with resume, and all matching jobs' events.

Design notes (cited where they apply):

1. **Subscribe first, then read the state.** The broker subscription is made
   before the state the stream opens with is read, so every event after it is
   already in the subscription's buffer. Events the opening already covers
   (``seq <= cursor``) are skipped: no gap, no duplicate. (The job is read
   once before that, so an unknown job answers 404, and a finished one is
   answered, without subscribing to anything.)
2. **Resume.** A reconnect sends ``Last-Event-ID`` (the ``seq`` of the last
   event the client saw), to any process. The stream continues with the
   owner's replay window (``rt.replay_after``: the broker's, asked over the
   relay on a standby); if the window no longer reaches back that far, it
   sends a fresh ``snapshot`` (or, for a finished job, its terminal event with
   the final ``job`` state), whose ``id`` resets the client's position.
3. **Finished jobs.** A stream closes after the terminal event. A browser's
   ``EventSource`` then reconnects with the terminal event's id; that request
   is answered 204, which makes browsers stop reconnecting. So a reconnect to a
   finished job yields its terminal event once (if the client missed it), then
   204.
4. **The multiplexed stream** (``GET /events``) has ids ``"<job id>:<seq>"``
   and no resume: a dashboard re-reads ``GET /jobs`` when it reconnects.
5. **A subscription that overflows** (a client so slow that lifecycle events
   alone fill four times its buffer) is closed by the broker, and so is every
   subscription when events may have been missed here (the listener of a
   PostgreSQL node dropped, or a standby's owner changed). The stream goes on
   in the same response: it subscribes again, reads the job (once its row has
   reached what the stream sent, note 6), and sends what it missed as a fresh
   ``snapshot`` (the job's terminal event, if it ended meanwhile), so a client
   that does not reconnect on its own (``curl``, a script) misses nothing. A
   process that has lost its owner goes on by polling the job's row (note 6).
6. **Without the owner** (a process that cannot reach it serves the stream by
   polling the job's row), the row may lag what the client already saw from
   the owner (progress is written every ``progress_interval``; a dead owner
   never wrote its last events): a resume sends nothing at or below the
   client's ``Last-Event-ID``, so no id repeats and none goes back. After a
   crash the next owner's sequence jumps above it (guarantees).
7. **A resume after a progress event** names a sequence the job's row may
   not hold yet (progress is written every ``progress_interval``). Where the
   replay window holds that very event, the stream goes on after it, as
   after any other; only an id the window does not know (a node the event
   has not reached yet, or an id the job never had) gets a fresh snapshot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response

from ..errors import PoolNotFound, TaskNotFound
from ..events import Subscription
from ..models import STATUS_EVENT, Event, JobInfo
from ..runtime import JobStream, Runtime, snapshot_event
from ..stream import state_past
from .inputs import MAX_INT64, job_id_of, to_int
from .routing import Api, EndpointGroup, Param, Reply
from .schemas import integer, ref
from .sse import RECONNECT_MS, EventStream, frame

group = EndpointGroup("events", "Server-Sent Events: live progress with resume.")


_STREAM = Reply(
    "`text/event-stream`: frames with `id`, `event` (the event type) and `data` (JSON)",
    ref("Event"),
    media="text/event-stream",
)
_BUSY = Reply(
    "too many open streams (`too_many_streams`); retry after `Retry-After` seconds", ref("Error")
)
_BUSY_OR_STOPPED = Reply(
    "too many open streams (`too_many_streams`; retry after `Retry-After` seconds), "
    "or the runtime is not started (`not_started`)",
    ref("Error"),
)


@dataclass(slots=True)
class Opening:
    """What a job stream sends before live events, and where it then stands."""

    events: list[Event] = field(default_factory=list)
    cursor: int = 0
    done: bool = False


def opening(
    info: JobInfo, last: int | None, replayed: list[Event] | None, now: float
) -> Opening | None:
    """The opening of a job stream for a client that saw ``last``; ``None``: answer 204."""
    if last is not None and last > info.seq and not info.terminal:
        # Note 7: ``replayed`` is the window from ``last`` on, that event first.
        if replayed and replayed[0].seq == last:
            events = _to_the_end(replayed[1:])
            if not events:
                return Opening([], last, False)
            return Opening(events, events[-1].seq, events[-1].terminal)
    if last is None or last > info.seq:
        # A new client, or an id not known here: start from its state.
        return Opening([snapshot_event(info, now)], info.seq, info.terminal)
    if last == info.seq:
        return None if info.terminal else Opening([], last, False)  # note 3
    if replayed and replayed[0].seq == last + 1 and replayed[-1].seq >= info.seq:
        events = _to_the_end(replayed)
        return Opening(events, events[-1].seq, events[-1].terminal)
    if info.terminal:
        return Opening([final_event(info, now)], info.seq, True)
    return Opening([snapshot_event(info, now)], info.seq, False)  # note 2


def _to_the_end(events: list[Event]) -> list[Event]:
    """``events`` up to the first terminal one, that one included."""
    for i, event in enumerate(events):
        if event.terminal:
            return events[: i + 1]
    return events


def final_event(info: JobInfo, now: float) -> Event:
    """A finished job's terminal event rebuilt from its state, with the final ``job``."""
    data: dict[str, object] = {"job": info.to_dict()}
    if info.result is not None:
        data["result"] = info.result
    if info.error is not None:
        data["error"] = info.error
    kind = STATUS_EVENT[info.status]
    return Event(info.id, info.seq, kind, info.task, info.pool, info.status, now, data)


def last_event_id(request: Request) -> int | None:
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is None:
        return None
    seq = to_int(raw.strip())
    return seq if seq is not None and seq <= MAX_INT64 else None


class _Following:
    """A job stream's subscription, made again after it overflowed (note 5)."""

    __slots__ = ("job_id", "maxsize", "polled", "rt", "sub")

    def __init__(
        self, rt: Runtime, job_id: int, sub: Subscription | None, maxsize: int | None
    ) -> None:
        self.rt = rt
        self.job_id = job_id
        self.sub = sub
        self.maxsize = maxsize
        self.polled: JobStream | None = None

    def poll(self, cursor: int) -> JobStream:
        """No owner is reachable: follow the job's row from ``cursor`` (note 6)."""
        self.polled = JobStream(
            self.rt, self.job_id, pool=None, task=None, buffer=self.maxsize, after=cursor
        )
        return self.polled

    async def catch_up(self, cursor: int) -> Event | None:
        """Subscribe again, then read the job (note 1): what the stream missed since
        ``cursor`` as one event, or ``None`` when the row holds nothing newer."""
        rt = self.rt
        self.sub = rt.broker.subscribe(self.job_id, maxsize=self.maxsize)
        info = await state_past(rt, self.job_id, cursor)  # the row may lag (note 6)
        if info.seq <= cursor:
            return None
        return (final_event if info.terminal else snapshot_event)(info, rt.clock.now())

    def close(self) -> None:
        if self.sub is not None:
            self.sub.close()
        if self.polled is not None:
            self.polled.close()


async def _job_frames(start: Opening, following: _Following) -> AsyncIterator[bytes]:
    retry: int | None = RECONNECT_MS
    for event in start.events:
        yield frame(event, str(event.seq), retry=retry)
        retry = None
    if start.done or following.sub is None:  # a finished job's opening ends with it
        return
    cursor = start.cursor
    while True:
        sub = following.sub
        async for live in sub:
            if live.seq <= cursor:
                continue  # the opening already covered it (note 1)
            cursor = live.seq
            yield frame(live, str(live.seq), retry=retry)
            retry = None
            if live.terminal:
                return
        if not sub.overflowed or not following.rt.started:
            return  # the runtime stops
        if not following.rt.relayed:
            async for polled in _polled_frames(following.poll(cursor), cursor):
                yield polled
            return
        missed = await following.catch_up(cursor)  # note 5
        if missed is not None:
            cursor = missed.seq
            yield frame(missed, str(missed.seq), retry=retry)
            retry = None
            if missed.terminal:
                return


async def _polled_frames(stream: JobStream, last: int | None) -> AsyncIterator[bytes]:
    """Note 6: nothing at or below what the client saw, the opening snapshot included."""
    retry: int | None = RECONNECT_MS
    async for event in stream:
        if last is not None and event.seq <= last:
            continue
        yield frame(event, str(event.seq), retry=retry)
        retry = None


@group.get(
    "/jobs/{job_id:int}/events",
    summary="A job's live events: a snapshot first, then every event until the terminal one",
    name="job_events",
    access="token",
    params=[
        Param("job_id", "path", integer(1), required=True),
        Param(
            "Last-Event-ID",
            "header",
            {"type": "string"},
            "the id of the last event seen; the stream resumes after it",
        ),
        Param(
            "last_event_id",
            description="the same, for clients that cannot set headers",
            allow_empty=True,
        ),
    ],
    replies={
        200: _STREAM,
        204: Reply("the job has finished and the client has seen its last event", None),
        404: Reply("no such job", ref("Error")),
        503: _BUSY_OR_STOPPED,
    },
)
async def job_events(api: Api, request: Request) -> Response:
    rt = api.runtime
    job_id = job_id_of(request)
    last = last_event_id(request)
    release = api.streams.acquire(api.settings.retry_after)
    try:
        if not rt.relayed:
            return await _client_runtime_events(api, job_id, last, release)
        # A 404 (or a finished job) subscribes to nothing: a client probing ids
        # cannot take replay windows (kept per subscribed job) from real jobs.
        info = await rt.get(job_id)
        sub: Subscription | None = None
        if not info.terminal:
            sub = rt.broker.subscribe(job_id, maxsize=api.settings.stream_buffer)  # note 1
            info = await rt.get(job_id)
    except BaseException:
        release()
        raise

    following = _Following(rt, job_id, sub, api.settings.stream_buffer)

    def close() -> None:
        following.close()
        release()

    try:
        # The owner's replay window (a standby asks it over the relay).
        replayed = None
        if last is not None and last != info.seq:
            # Past the row's sequence (note 7): the window from that event on.
            after = last if last < info.seq else last - 1
            replayed = await rt.replay_after(job_id, after)
    except BaseException:
        close()
        raise
    start = opening(info, last, replayed, rt.clock.now())
    if start is None:
        close()
        return Response(status_code=204)
    return _respond(api, _job_frames(start, following), close)


async def _client_runtime_events(
    api: Api, job_id: int, last: int | None, release: Callable[[], None]
) -> Response:
    """A process that cannot reach the owner sees its jobs by polling: no replay."""
    info = await api.runtime.get(job_id)
    if last is not None and info.terminal and last >= info.seq:
        release()
        return Response(status_code=204)
    stream = JobStream(
        api.runtime,
        job_id,
        pool=None,
        task=None,
        buffer=api.settings.stream_buffer,
        after=last or 0,  # a state behind the client's is not sent (stream note 1)
    )

    def close() -> None:
        stream.close()
        release()

    return _respond(api, _polled_frames(stream, last), close)


@group.get(
    "/events",
    summary="Every event of the jobs matching the filters (for dashboards)",
    params=[Param("pool", allow_empty=True), Param("task", allow_empty=True)],
    replies={200: _STREAM, 404: Reply("no such pool or task", ref("Error")), 503: _BUSY},
    needs_runtime=False,
)
async def all_events(api: Api, request: Request) -> Response:
    """Event ids are `<job id>:<seq>`; there is no resume and no snapshot:
    read `GET /jobs` first (or again after a reconnect)."""
    rt = api.runtime
    pool = request.query_params.get("pool") or None
    task = request.query_params.get("task") or None
    if pool is not None and pool not in rt.pools:
        # One the owner has (created through another process) is one.
        if not any(p.name == pool for p in await rt.pool_statistics()):
            raise PoolNotFound(pool)
    if task is not None and task not in rt.tasks:
        raise TaskNotFound(task)
    release = api.streams.acquire(api.settings.retry_after)
    matches: Callable[[Event], bool] | None = None
    if pool is not None or task is not None:

        def matches(event: Event) -> bool:
            return (pool is None or event.pool == pool) and (task is None or event.task == task)

    sub = rt.broker.subscribe(None, matches=matches, maxsize=api.settings.stream_buffer)

    def close() -> None:
        sub.close()
        release()

    return _respond(api, _all_frames(sub), close)


async def _all_frames(sub: Subscription) -> AsyncIterator[bytes]:
    yield f"retry: {RECONNECT_MS}\n\n".encode()
    async for event in sub:
        yield frame(event, f"{event.job_id}:{event.seq}")


def _respond(api: Api, frames: AsyncIterator[bytes], close: Callable[[], None]) -> Response:
    settings = api.settings
    return EventStream(
        frames,
        heartbeat=settings.heartbeat,
        send_timeout=settings.send_timeout,
        on_close=close,
    )


__all__ = ["final_event", "group", "last_event_id", "opening"]
