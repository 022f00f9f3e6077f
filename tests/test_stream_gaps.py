"""``rt.subscribe(job_id)`` across a gap: its sequence numbers never go back.

A stream that loses the owner's events starts again from a snapshot read from
the database, whose row may lag what the stream already delivered (progress
is written every ``progress_interval``; a dead owner never wrote its last
events). Before, that stale snapshot was sent, its sequence below the events
before it, and a poll that saw a job started again (a recovery) called it
progress.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from pathlib import Path

from taskrt import JobContext, JobInfo, JobStatus, Runtime
from taskrt.clock import SystemClock
from taskrt.events import Broker
from taskrt.models import Event, EventType
from taskrt.stream import JobStream


async def test_a_client_stream_that_loses_the_owner_never_goes_back(tmp_path: Path) -> None:
    """Real runtimes on one SQLite file: the owner writes progress rarely (a long
    ``progress_interval``), so when a client's relay connection ends the row is
    behind the progress the client's stream delivered. The stream waits for the
    job to move past it and ends with the job's final state."""
    db = tmp_path / "jobs.db"
    begin, gate = asyncio.Event(), asyncio.Event()

    def build(**options: object) -> Runtime:
        rt = Runtime(str(db), **options)  # type: ignore[arg-type]

        @rt.task(pool="a")
        async def stepped(job: JobContext) -> str:
            await begin.wait()
            for i in range(3):
                await job.progress(i + 1, 3, f"step {i + 1}")
            await gate.wait()
            return "done"

        return rt

    owner = build(progress_interval=60.0)
    client = build(workers=False, poll_interval=0.02)
    async with owner, client:
        assert client.relayed
        job_id = await client.add("stepped")
        events: list[Event] = []
        stream = client.subscribe(job_id)

        async def follow() -> None:
            async for event in stream:
                events.append(event)

        reader = asyncio.create_task(follow())
        async with asyncio.timeout(5):
            while not events:
                await asyncio.sleep(0.005)
            begin.set()  # the progress comes after the opening snapshot, as events
            while not any(e.type is EventType.PROGRESS and e.data["current"] == 3 for e in events):
                await asyncio.sleep(0.005)
        delivered = events[-1].seq
        stored = await owner.store.get_job(job_id)
        assert stored is not None and stored.seq < delivered, "the row does not lag: no test"
        assert owner.relay_server is not None
        await owner.relay_server.close()  # the owner's events stop reaching the client
        async with asyncio.timeout(5):
            while client.relayed:
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)  # polls that read the lagging row
        assert events[-1].seq == delivered, [(e.type, e.seq) for e in events]
        gate.set()
        await asyncio.wait_for(reader, 5)
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs)), [(e.type.value, e.seq) for e in events]
    assert events[-1].status is JobStatus.SUCCESS and events[-1].seq > delivered


@dataclass
class ScriptedHost:
    """A stream's runtime whose reads of the job return the states a test scripts."""

    states: list[JobInfo]
    relayed: bool = False
    poll_interval: float = 0.001
    broker: Broker = field(default_factory=Broker)
    clock: SystemClock = field(default_factory=SystemClock)
    live: object = None
    reads: int = 0

    async def get(self, job_id: int) -> JobInfo:
        state = self.states[min(self.reads, len(self.states) - 1)]
        self.reads += 1
        return state


def job(seq: int, status: JobStatus, **fields: object) -> JobInfo:
    return replace(JobInfo(7, "t", "p", status, seq=seq), **fields)  # type: ignore[arg-type]


async def test_a_polled_stream_sends_a_job_started_again_as_a_snapshot() -> None:
    """Read by read: running; a read that lags it (skipped); the same job running
    again after a recovery (a snapshot, not progress); then its success."""
    running = job(5, JobStatus.RUNNING, attempts=1, current=2, total=4)
    host = ScriptedHost(
        [
            running,
            job(3, JobStatus.RUNNING, attempts=1, current=1, total=4),
            job(1005, JobStatus.RUNNING, attempts=1, recoveries=1, current=0, total=4),
            job(1006, JobStatus.RUNNING, attempts=1, recoveries=1, current=3, total=4),
            job(1007, JobStatus.SUCCESS, attempts=1, recoveries=1, result=9),
        ]
    )
    stream = JobStream(host, 7, pool=None, task=None, buffer=None)
    events = [event async for event in stream]
    assert [(e.type, e.seq) for e in events] == [
        (EventType.SNAPSHOT, 5),
        (EventType.SNAPSHOT, 1005),
        (EventType.PROGRESS, 1006),
        (EventType.SUCCESS, 1007),
    ]
    assert events[1].data["job"]["recoveries"] == 1
    assert events[3].data["result"] == 9


async def test_a_stream_resumed_after_a_sequence_waits_for_the_job_to_pass_it() -> None:
    """``after``: what a resuming SSE client saw. A row behind it is not sent; the
    first at or past it is, as a snapshot."""
    host = ScriptedHost(
        [
            job(3, JobStatus.RUNNING, attempts=1),
            job(3, JobStatus.RUNNING, attempts=1),
            job(8, JobStatus.RUNNING, attempts=1, current=1, total=2),
            job(9, JobStatus.RUNNING, attempts=1, current=2, total=2),
            job(10, JobStatus.SUCCESS, attempts=1),
        ]
    )
    events = [e async for e in JobStream(host, 7, pool=None, task=None, buffer=None, after=8)]
    assert [(e.type, e.seq) for e in events] == [
        (EventType.SNAPSHOT, 8),
        (EventType.PROGRESS, 9),
        (EventType.SUCCESS, 10),
    ]
    assert host.reads == 5
