"""Events across nodes: the event bus of ``mode="nodes"`` (``taskrt.nodes``), over NOTIFY.

Every node runs jobs, so a job's events are published where it runs, and its
subscribers may be on any node. ``NodeBus`` is the ``EventBus`` of a node: it
publishes to its own ``Broker`` as always, and sends each event to the other
nodes through the store (``PgStore.send_events``: ``pg_notify`` on the
schema's events channel); what the others send it publishes to its broker.
Every node then holds the same events with the same ids: a stream served by
any node carries every event of its job, and resumes with ``Last-Event-ID``
from that node's replay window.

Design notes:

1. **Batched per flush.** Events wait for the next turn of the event loop
   and go together, as few notifications as fit (each under PostgreSQL's
   8,000 bytes); a job's progress events of one flush are conflated to the
   last, so the rate across nodes is bounded by the flushes, not the reports.
2. **With their write.** A flush queues its notifications behind the writes
   queued before it (``PgStore.send_events``): they are part of the next
   group commit's statement and leave at its commit, so a node that receives
   ``success`` and reads the job finds it SUCCESS, and sending costs no round
   trip of its own. While the database takes no writes they wait with the
   writes, in order; progress events are dropped meanwhile (the next one, or
   the end, carries the state), so an outage keeps one notification per
   change of status in memory, not one per report. Progress is the
   exception of note 6.
3. **Pointers for big events.** An event whose encoding would not fit (a
   large result) is sent as a pointer: the job id, the sequence and the kind,
   without data. The receiver reads the job's row (once its sequence has
   reached the pointer's) and publishes the event with the row's data: the
   event's own, but for what no row keeps (``_data_of``). The job's later
   events wait meanwhile (its progress conflated to the last) and follow in
   the order they came, so a status event that came while the row was read
   does not make the pointer's event stale; a row that does not reach the
   sequence holds them at most ``POINTER_PATIENCE`` seconds.
4. **A lost listener loses nothing silently.** When the node's listening
   connection drops, and again when the store listens anew, every
   subscription here is closed as overflowed: its stream starts again from a
   fresh snapshot (``JobStream``), so an event sent while nobody listened
   (a terminal one included) is never waited for.
5. **Alone, a node sends nothing.** Sending costs a node about a fifth of a
   drain, and with nobody else listening nobody reads it. Each listener
   connection of the schema's events carries its channel's name as its
   application name, so a node counts the others in
   ``pg_stat_activity``. When it listens (at start, and again after a lost
   listener) a node sends a *hello*, then counts: none, it stops sending
   (and builds an event only for a subscriber here, ``wants``); some, it
   waits (at most ``JOIN_PATIENCE``) for each one's *ack*. A node that hears
   a hello sends again and answers with an ack behind the writes it has
   queued, so once the newcomer has every ack, a row it reads is at least
   as new as the events it missed, and every later event comes. A node
   that sends counts again every ``CHECK_INTERVAL`` seconds and stops
   when it finds nobody, unless a hello came in meanwhile (the newcomer's
   connection may have come after the count began). A node that starts
   sending for any other reason says so (``o``), as does a late ack: what
   it did not send may be missing here, so streams here start again (note 4).
6. **Progress does not wait for the disk.** A commit waits for its log to
   reach the disk, and a disk that stalls (a few hundred milliseconds, seen
   on this project's machines) held every event riding it, a progress bar
   on another node with them. Progress is state, not history (the next
   report, or the end, carries it), so a job's progress goes at once
   (``send_now``: a statement of its own on a connection that does not wait
   for the disk) unless a status event of the job is still waiting for its
   commit, which it must not overtake; then it rides the writes behind it.
   A progress event may still arrive after a later one of its job (the
   other path was faster): a node publishes a progress event only if its
   sequence is above the last it published for that job. So that this
   never costs the last report before a status event (a job's final
   progress), the status event takes that report again, just ahead of it
   behind the writes; the copy that comes second is stale.
7. **A late event is stale.** A job's sequence only grows, so a node
   publishes an event of another node only if its sequence is above every
   one of the job's it has published (its own included, once it sends): an
   ``added`` whose commit's notification left after another node had
   started the job (the add's event rides the adding node's next group
   commit) is not published after the ``started``. And the event of a write
   the database refused, from a node taken for dead that has not noticed
   yet, is stale too: the reap that took its jobs back tells every node the
   jobs and their new sequences, past the gap (``SQL_TELL_REAPED``) in its
   own transaction, so at its commit, before any refused write's
   notification can leave. The node itself has published its own event to
   its own subscribers already.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .events import Broker
from .models import Event, EventType, JobInfo, JobStatus
from .relay import decode_event, encode_event

log = logging.getLogger("taskrt")

MAX_PAYLOAD = 7_900
"""Bytes of one notification (PostgreSQL refuses 8,000 or more)."""

SEEN_JOBS = 10_000
"""Jobs whose last published sequence a node remembers (note 6), and whose last
progress sent at once it remembers (note 6)."""

POINTER_PATIENCE = 2.0
"""Seconds a node reads a pointer's row for its sequence, holding the later
events of its job meanwhile (note 3)."""

JOIN_PATIENCE = 0.5
"""Seconds a node that listens waits for the others' acks (note 5): a peer that
does not answer (stopped, or of a release without acks) holds a start this long."""

CHECK_INTERVAL = 5.0
"""Seconds between a sending node's counts of the other listeners (note 5)."""


class NodeBus(Broker):
    """A node's event bus: a broker that also sends its events to the other nodes and
    publishes theirs (see the notes)."""

    def __init__(
        self,
        node: str,
        *,
        send: Callable[[list[str]], asyncio.Future[None] | None],
        send_now: Callable[[list[str]], None] | None = None,
        failing: Callable[[], bool],
        read: Callable[[int], Awaitable[JobInfo | None]],
        others: Callable[[], Awaitable[int]],
        buffer: int,
        replay: int,
    ) -> None:
        super().__init__(buffer=buffer, replay=replay)
        self.node = node
        self._send = send  # notifications out, behind the queued writes (note 2)
        self._send_now = send_now  # without waiting for the disk (note 6)
        # Jobs with status events sent behind writes not committed yet (note 6).
        self._unsent: dict[int, int] = {}
        self._seen: dict[int, int] = {}  # job id -> the last sequence heard (note 6)
        # Job id -> its last progress sent at once since its last status event (note 6).
        self._went_now: dict[int, Event] = {}
        # Job id -> its events come after a pointer being read, in order (note 3).
        self._held: dict[int, list[list[Any]]] = {}
        self._reading: set[asyncio.Task[None]] = set()  # the pointers being read
        self._failing = failing  # the database takes no writes now
        self._read = read  # a job's row
        self._others = others  # how many others listen (note 5)
        # Whether events go to the others: until a count says nobody listens (note 5).
        self.sending = True
        self._hellos = 0  # hellos heard (a count that began before one must not stop it)
        self._acks = 0  # acks heard since it last began to listen
        self._acked = asyncio.Event()
        self._joining = False
        self._join: asyncio.Task[None] | None = None
        self._check: asyncio.Task[None] | None = None
        self._out: list[Event] = []
        self._progress: dict[int, int] = {}  # job id -> its progress event in _out
        self._flushing = False
        # Told of the other nodes' ``added`` events (taskrt.workflows note 3).
        self.on_added: Callable[[Event], None] | None = None
        # How each of this node's notifications starts (and how it knows its own).
        self._head = f'{{"n":{json.dumps(node)},"e":['

    def wants(self, job_id: int) -> bool:
        # A subscriber may be on another node; alone, only here (note 5).
        return self.sending or super().wants(job_id)

    def publish(self, event: Event) -> None:
        """Deliver here, and queue for the other nodes (note 1)."""
        super().publish(event)
        if not self.sending:
            return  # nobody else listens (note 5)
        if event.type is EventType.PROGRESS:
            at = self._progress.get(event.job_id)
            if at is not None:
                self._out[at] = event  # the last progress of a flush
                return
            self._progress[event.job_id] = len(self._out)
        else:
            self._progress.pop(event.job_id, None)  # a later progress goes after it
            self._saw(event.job_id, event.seq)  # note 7
        self._out.append(event)
        if not self._flushing:
            self._flushing = True  # what this turn of the loop publishes goes too
            asyncio.get_running_loop().call_soon(self._flush)

    # -- out (notes 1-3) ----------------------------------------------------------------

    def _flush(self) -> None:
        events, self._out, self._progress = self._out, [], {}
        self._flushing = False
        if not self.sending:
            return  # nobody else listens (note 5)
        if events and self._failing():  # note 2
            events = [e for e in events if e.type is not EventType.PROGRESS]
        if not events:
            return
        now: list[Event] = []
        behind: list[Event] = []
        held: list[int] = []  # jobs whose status events ride this flush's writes
        unsent = self._unsent
        for event in events:
            job_id = event.job_id
            if event.type is EventType.PROGRESS:
                if self._send_now is not None and job_id not in unsent:
                    now.append(event)  # note 6
                    self._sent_now(event)
                    continue
            else:
                went = self._went_now.pop(job_id, None)
                if went is not None:
                    behind.append(went)  # again, ahead of it (note 6)
                unsent[job_id] = unsent.get(job_id, 0) + 1
                held.append(job_id)
            behind.append(event)
        if now:
            assert self._send_now is not None
            self._send_now(self._payloads(now))
        if behind:
            committed = self._send(self._payloads(behind))
            if committed is None:
                self._committed(held)
            elif held:
                committed.add_done_callback(lambda _: self._committed(held))

    def _sent_now(self, event: Event) -> None:
        """``event`` went at once: the job's next status event takes it again (note 6)."""
        went = self._went_now
        went.pop(event.job_id, None)
        went[event.job_id] = event  # the most recent last, for the bound
        if len(went) > SEEN_JOBS:
            del went[next(iter(went))]

    def _committed(self, jobs: list[int]) -> None:
        """Status events of ``jobs`` left with their commit: their progress may go at once."""
        unsent = self._unsent
        for job_id in jobs:
            left = unsent.pop(job_id, 1) - 1
            if left > 0:
                unsent[job_id] = left

    def _payloads(self, events: list[Event]) -> list[str]:
        head = self._head
        payloads: list[str] = []
        parts: list[str] = []
        size = len(head) + 2
        for event in events:
            raw = encode_event(event)
            text = json.dumps(raw, separators=(",", ":"), default=str)
            if len(head) + len(text) + 2 > MAX_PAYLOAD:
                raw[-1] = None  # note 3: a pointer, read back from the job's row
                text = json.dumps(raw, separators=(",", ":"), default=str)
            if parts and size + len(text) + 1 > MAX_PAYLOAD:
                payloads.append(head + ",".join(parts) + "]}")
                parts, size = [], len(head) + 2
            parts.append(text)
            size += len(text) + 1
        if parts:
            payloads.append(head + ",".join(parts) + "]}")
        return payloads

    # -- in (notes 3, 4) -------------------------------------------------------------------

    def deliver(self, payload: str) -> None:
        """A notification on the events channel: publish the other nodes' events here."""
        if payload.startswith(self._head):
            return  # its own, back from the channel
        try:
            message = json.loads(payload)
            raws: list[list[Any]] = message["e"]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("node %s: an events notification it cannot read: %s", self.node, exc)
            return
        if not raws:
            self._told(message)
            return
        self._take_all(raws)

    def _take_all(self, raws: list[list[Any]]) -> None:
        for raw in raws:
            try:
                self._take(raw)
            except (ValueError, TypeError, LookupError) as exc:
                log.warning("node %s: an event it cannot read: %s", self.node, exc)

    def _take(self, raw: list[Any]) -> None:
        """One event of another node: published here in its job's order (notes 3, 6)."""
        job_id = int(raw[0])
        held = self._held.get(job_id)
        if held is not None:  # behind a pointer being read (note 3)
            if held and raw[2] == held[-1][2] == EventType.PROGRESS.value:
                held[-1] = raw  # conflated: the later report carries the state
            else:
                held.append(raw)
            return
        if raw[-1] is None:
            if int(raw[1]) <= self._seen.get(job_id, 0):
                return  # stale (notes 6, 7): no need to read it
            self._held[job_id] = []
            task = asyncio.get_running_loop().create_task(self._pointer(raw))
            self._reading.add(task)
            task.add_done_callback(self._reading.discard)
            return
        self._publish_theirs(decode_event(raw))

    def _publish_theirs(self, event: Event) -> None:
        if self._newer(event):  # else stale (notes 6, 7)
            super().publish(event)
        if event.type is EventType.ADDED and self.on_added is not None:
            self.on_added(event)  # its parents, its batch: late or not

    async def _pointer(self, raw: list[Any]) -> None:
        """Publish a pointer's event with its row's data, then the events of its job
        held behind it (note 3)."""
        job_id, seq = int(raw[0]), int(raw[1])
        try:
            info = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POINTER_PATIENCE):
                    while True:
                        info = await self._read(job_id)
                        if info is None or info.seq >= seq:
                            break
                        await asyncio.sleep(0.02)
            if info is not None:
                raw = list(raw)
                raw[-1] = _data_of(EventType(raw[2]), info)
                self._publish_theirs(decode_event(raw))
        except asyncio.CancelledError:
            self._held.pop(job_id, None)  # the bus stops
            raise
        except Exception as exc:  # the database: the events behind it go on
            log.warning("node %s: cannot read the event of job %d: %s", self.node, job_id, exc)
        self._take_all(self._held.pop(job_id, []))

    def _newer(self, event: Event) -> bool:
        """Whether to publish another node's event: only if it is newer than every
        event of its job published here (notes 6, 7)."""
        last = self._seen.get(event.job_id, 0)
        if event.seq <= last:
            return False
        self._saw(event.job_id, event.seq)
        return True

    def reaped(self, jobs: list[tuple[int, int]]) -> None:
        """A reap took back ``jobs`` (id, sequence past the gap): what their nodes
        send of them at a lower sequence is stale (note 7)."""
        for job_id, seq in jobs:
            self._saw(job_id, seq)

    def _saw(self, job_id: int, seq: int) -> None:
        """The job's last sequence here is at least ``seq`` (notes 6, 7)."""
        seen = self._seen
        last = seen.pop(job_id, 0)
        seen[job_id] = seq if seq > last else last  # the most recent last, for the bound
        if len(seen) > SEEN_JOBS:
            del seen[next(iter(seen))]

    def lost(self) -> None:
        """Events may have been missed (the listener dropped, or listens anew): streams
        here start again (note 4)."""
        self.interrupt()

    # -- who listens (note 5) ------------------------------------------------------------

    def listening(self) -> None:
        """The store listens (at start, or again): tell the others, count them."""
        if self._join is None or self._join.done():
            self._join = asyncio.get_running_loop().create_task(
                self._joined(), name="taskrt-nodebus-join"
            )

    async def ready(self) -> None:
        """Once the others that listen send to this node, or ``JOIN_PATIENCE`` passed."""
        if self._join is not None:
            await asyncio.shield(self._join)

    async def stop(self) -> None:
        for task in (self._join, self._check, *self._reading):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._join = self._check = None

    def _note(self, **fields: object) -> list[str]:
        return [self._head + "]," + json.dumps(fields, separators=(",", ":"))[1:]]

    async def _joined(self) -> None:
        hellos = self._hellos
        self._joining = True
        self._acks = 0
        try:
            self._send(self._note(h=1))
            others = await self._others()
            if others == 0:
                if self._hellos == hellos:
                    self.sending = False
            else:
                self._start_sending()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(JOIN_PATIENCE):
                        while self._acks < others:
                            self._acked.clear()
                            await self._acked.wait()
        except Exception as exc:  # the database: the count runs again later
            log.warning("node %s: cannot count the nodes listening: %s", self.node, exc)
            self._start_sending()
        finally:
            self._joining = False
        if self._check is None:
            self._check = asyncio.get_running_loop().create_task(
                self._checking(), name="taskrt-nodebus-check"
            )

    async def _checking(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            hellos = self._hellos
            try:
                others = await self._others()
            except Exception as exc:
                log.warning("node %s: cannot count the nodes listening: %s", self.node, exc)
                continue
            if others:
                self._start_sending()
            elif self._hellos == hellos:
                self.sending = False

    def _start_sending(self, ack: str | None = None) -> None:
        """Send from now on; say so (an ack to ``ack``, or ``o`` if this node had stopped)."""
        fields: dict[str, object] = {}
        if ack is not None:
            fields["a"] = ack
        if not self.sending:
            self.sending = True
            fields["o"] = 1
        if fields:
            self._send(self._note(**fields))

    def _told(self, message: dict[str, Any]) -> None:
        """A hello, an ack, a node that sends again (note 5), or jobs reaped (note 7)."""
        reaped = message.get("r")
        if reaped:
            try:
                self.reaped([(int(job_id), int(seq)) for job_id, seq in reaped])
            except (TypeError, ValueError) as exc:
                log.warning("node %s: a reap's notification it cannot read: %s", self.node, exc)
            return
        if message.get("h"):
            self._hellos += 1
            self._start_sending(ack=str(message.get("n")))
            if self._joining:
                self._acked_by()  # it counts this node, so it sends to it (note 5)
            return
        mine = message.get("a") == self.node
        if mine and self._joining:
            self._acked_by()
        if message.get("o") or (mine and not self._joining):
            self.interrupt()  # events of that node may be missing here

    def _acked_by(self) -> None:
        self._acks += 1
        self._acked.set()


def _data_of(kind: EventType, info: JobInfo) -> dict[str, Any]:
    """An event's data as the job's row has it (a pointer's event, note 3): what the
    event carried, except what no row keeps (a manual retry's ``manual`` and ``after``)
    and what a row that has moved on no longer holds (a retry's ``error`` and
    ``run_at`` once the job started again)."""
    if kind is EventType.SUCCESS:
        return {"result": info.result}
    if kind is EventType.FAILURE:
        return {"error": info.error}
    if kind is EventType.PROGRESS:
        data: dict[str, Any] = {
            "current": info.current,
            "total": info.total,
            "message": info.message,
        }
        if info.steps:
            data["step"] = info.step
            data["steps"] = list(info.steps)
        return data
    if kind is EventType.CANCELLED:
        return {}
    if kind is EventType.ADDED:
        return {"run_at": info.run_at, "priority": info.priority}
    data = {"attempt": info.attempts}
    if kind is EventType.RETRYING and info.status is JobStatus.WAITING:
        data["error"] = info.error  # the row keeps the last attempt's error
        data["run_at"] = info.run_at
    return data
