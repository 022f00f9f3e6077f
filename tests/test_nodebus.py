"""The event bus of mode "nodes" (taskrt.nodebus), alone: what it sends, and what it takes in."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from taskrt import nodebus
from taskrt.errors import StoreError
from taskrt.events import Subscription
from taskrt.models import Event, EventType, JobInfo, JobStatus
from taskrt.nodebus import MAX_PAYLOAD, NodeBus
from taskrt.relay import encode_event


def event(job: int, seq: int, kind: EventType, data: dict[str, object] | None = None) -> Event:
    status = JobStatus.SUCCESS if kind is EventType.SUCCESS else JobStatus.RUNNING
    return Event(job, seq, kind, "t", "p", status, 1.0, data or {})


async def no_row(job_id: int) -> JobInfo | None:
    return None


async def one_other() -> int:
    return 1


def bus(
    node: str,
    sent: list[str],
    failing: list[bool],
    others: Callable[[], Awaitable[int]] = one_other,
    **options: Any,
) -> NodeBus:
    """A bus sending to ``sent``; ``options`` replace the other arguments of ``NodeBus``."""
    settings: dict[str, Any] = {
        "send": sent.extend,
        "failing": lambda: failing[0],
        "read": no_row,
        "others": others,
        "buffer": 16,
        "replay": 16,
    }
    return NodeBus(node, **{**settings, **options})


async def test_a_flush_sends_once_per_turn_with_progress_conflated() -> None:
    sent: list[str] = []
    a = bus("a", sent, [False])
    for seq in range(2, 6):
        a.publish(event(1, seq, EventType.PROGRESS, {"current": seq}))
    a.publish(event(1, 6, EventType.SUCCESS, {"result": 1}))
    assert sent == []  # queued for the end of this turn of the loop
    await asyncio.sleep(0)
    (payload,) = sent
    message = json.loads(payload)
    assert message["n"] == "a"
    assert [(e[1], e[2]) for e in message["e"]] == [(5, "progress"), (6, "success")]


async def test_while_writes_fail_progress_is_dropped_and_status_events_kept() -> None:
    sent: list[str] = []
    failing = [True]
    a = bus("a", sent, failing)
    a.publish(event(1, 2, EventType.PROGRESS))
    a.publish(event(2, 2, EventType.STARTED))
    await asyncio.sleep(0)
    assert [[e[2] for e in json.loads(p)["e"]] for p in sent] == [["started"]]
    failing[0] = False
    a.publish(event(1, 3, EventType.PROGRESS))
    await asyncio.sleep(0)
    assert [e[2] for e in json.loads(sent[-1])["e"]] == ["progress"]


def drained(subscription: Subscription) -> list[Event]:
    out = []
    while (found := subscription.get_nowait()) is not None:
        out.append(found)
    return out


async def test_a_node_publishes_the_others_events_and_skips_its_own() -> None:
    sent: list[str] = []
    a, b = bus("a", sent, [False]), bus("b", [], [False])
    seen = b.subscribe(1)
    mine = a.subscribe(1)
    a.publish(event(1, 2, EventType.STARTED))
    await asyncio.sleep(0)
    for payload in sent:
        b.deliver(payload)
        a.deliver(payload)  # its own, back from the channel
    assert [e.seq for e in drained(seen)] == [2]
    assert [e.seq for e in drained(mine)] == [2]  # once, from its own publish


async def test_an_event_too_big_goes_as_a_pointer() -> None:
    sent: list[str] = []
    a = bus("a", sent, [False])
    a.publish(event(1, 2, EventType.SUCCESS, {"result": "x" * (MAX_PAYLOAD + 10)}))
    await asyncio.sleep(0)
    (payload,) = sent
    assert len(payload) < MAX_PAYLOAD
    assert json.loads(payload)["e"][0][-1] is None


# -- who listens (note 5) ----------------------------------------------------------------


def notes(sent: list[str]) -> list[dict[str, object]]:
    """What a bus told the others besides events: hellos, acks, "sending again"."""
    return [m for m in map(json.loads, sent) if not m["e"]]


def told(node: str, **fields: object) -> str:
    return json.dumps({"n": node, "e": [], **fields})


async def nobody() -> int:
    return 0


async def test_alone_a_node_sends_no_event_and_builds_one_only_for_a_subscriber_here() -> None:
    sent: list[str] = []
    a = bus("a", sent, [False], others=nobody)
    assert a.wants(1)  # until it has counted
    a.listening()
    await a.ready()
    assert notes(sent) == [{"n": "a", "e": [], "h": 1}]  # its hello
    assert not a.sending and not a.wants(1)
    mine = a.subscribe(1)
    assert a.wants(1)
    a.publish(event(1, 2, EventType.STARTED))
    await asyncio.sleep(0)
    assert len(sent) == 1  # still only the hello
    assert [e.seq for e in drained(mine)] == [2]  # delivered here all the same
    await a.stop()


async def test_a_hello_makes_a_quiet_node_send_again_and_answer_it() -> None:
    sent: list[str] = []
    a = bus("a", sent, [False], others=nobody)
    a.listening()
    await a.ready()
    sent.clear()
    a.deliver(told("b", h=1))
    assert a.sending and a.wants(7)
    assert notes(sent) == [{"n": "a", "e": [], "a": "b", "o": 1}]  # ack, and "sending again"
    a.publish(event(7, 2, EventType.STARTED))
    await asyncio.sleep(0)
    assert [e[0] for e in json.loads(sent[-1])["e"]] == [7]
    # A node that already sends only answers.
    a.deliver(told("c", h=1))
    assert notes(sent)[-1] == {"n": "a", "e": [], "a": "c"}
    await a.stop()


async def test_a_count_that_began_before_a_hello_does_not_stop_the_sending() -> None:
    gate = asyncio.Event()
    counting = asyncio.Event()

    async def nobody_yet() -> int:
        counting.set()
        await gate.wait()  # the count saw no other listener ...
        return 0

    sent: list[str] = []
    a = bus("a", sent, [False], others=nobody_yet)
    a.listening()
    await counting.wait()
    a.deliver(told("b", h=1))  # ... but one listened before its answer came
    gate.set()
    await a.ready()
    assert a.sending


async def test_a_node_that_listens_waits_for_each_ack_and_a_late_one_restarts_streams() -> None:
    async def two() -> int:
        return 2

    sent: list[str] = []
    a = bus("a", sent, [False], others=two)
    a.listening()
    ready = asyncio.ensure_future(a.ready())
    await asyncio.sleep(0.01)
    a.deliver(told("b", a="a"))
    await asyncio.sleep(0.01)
    assert not ready.done()  # c has not answered yet
    a.deliver(told("c", h=1))  # c's hello: c counts a, so it sends to it
    await asyncio.wait_for(ready, 0.1)  # well before JOIN_PATIENCE
    assert a.sending
    # Later, a node's ack (it was stopped), or a node that sends again: what it did
    # not send may be missing, so streams here start over (note 4).
    for late in (told("b", a="a"), told("d", o=1)):
        sub = a.subscribe(1)
        a.deliver(late)
        assert sub.overflowed
    # An ack for another node touches nothing here.
    sub = a.subscribe(1)
    a.deliver(told("b", a="x"))
    assert not sub.overflowed
    await a.stop()


async def test_a_peer_that_never_answers_holds_the_start_only_so_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(nodebus, "JOIN_PATIENCE", 0.05)
    a = bus("a", [], [False])  # one other, which never answers
    a.listening()
    t = time.monotonic()
    await a.ready()
    assert 0.04 < time.monotonic() - t < 1
    assert a.sending
    await a.stop()


async def test_a_sending_node_stops_when_a_count_finds_nobody(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(nodebus, "CHECK_INTERVAL", 0.01)
    listeners = [1]

    async def others() -> int:
        return listeners[0]

    monkeypatch.setattr(nodebus, "JOIN_PATIENCE", 0.01)  # the other never answers
    sent: list[str] = []
    a = bus("a", sent, [False], others=others)
    a.listening()
    await a.ready()
    assert a.sending
    listeners[0] = 0  # the other left
    async with asyncio.timeout(5):
        while a.sending:
            await asyncio.sleep(0.01)
    sent.clear()
    listeners[0] = 1  # one came and its hello was missed here (a listener down)
    async with asyncio.timeout(5):
        while not a.sending:
            await asyncio.sleep(0.01)
    assert notes(sent) == [{"n": "a", "e": [], "o": 1}]  # so its streams start over
    await a.stop()


async def test_a_count_that_fails_keeps_the_node_sending() -> None:
    counts: list[int | None] = [0, None]  # nobody, then the database fails

    async def counted() -> int:
        n = counts.pop(0)
        if n is None:
            raise StoreError("down")
        return n

    sent: list[str] = []
    a = bus("a", sent, [False], others=counted)
    a.listening()
    await a.ready()
    assert not a.sending  # alone
    a.listening()  # listening again, after a lost listener: the count fails
    await a.ready()
    assert a.sending  # not knowing who listens, it sends (and says so)
    assert notes(sent)[-1] == {"n": "a", "e": [], "o": 1}
    await a.stop()


async def test_an_ack_heard_before_the_count_ends_is_one_of_those_awaited() -> None:
    gate = asyncio.Event()

    async def two_later() -> int:
        await gate.wait()
        return 2

    a = bus("a", [], [False], others=two_later)
    a.listening()
    await asyncio.sleep(0)
    a.deliver(told("b", a="a"))  # b answered before the count came back
    gate.set()
    ready = asyncio.ensure_future(a.ready())
    await asyncio.sleep(0.05)
    assert not ready.done()  # c still owes its ack
    a.deliver(told("c", a="a"))
    await asyncio.wait_for(ready, 0.1)
    await a.stop()


# -- progress does not wait for the disk (note 6) ------------------------------------------


def _payload(node: str, e: Event) -> str:
    return json.dumps({"n": node, "e": [encode_event(e)]})


def kinds(payloads: list[str]) -> list[tuple[int, str]]:
    return [(e[0], e[2]) for p in payloads for e in json.loads(p)["e"]]


async def test_progress_goes_at_once_unless_a_status_event_of_its_job_awaits_its_commit() -> None:
    behind: list[str] = []
    now: list[str] = []
    commits: list[asyncio.Future[None]] = []

    def send(payloads: list[str]) -> asyncio.Future[None]:
        behind.extend(payloads)
        commits.append(asyncio.get_running_loop().create_future())
        return commits[-1]

    a = bus("a", [], [False], send=send, send_now=now.extend)
    a.publish(event(1, 2, EventType.STARTED))
    a.publish(event(1, 3, EventType.PROGRESS))  # behind its start, which it must not pass
    a.publish(event(2, 5, EventType.PROGRESS))  # job 2 has nothing waiting
    await asyncio.sleep(0)
    assert kinds(behind) == [(1, "started"), (1, "progress")]
    assert kinds(now) == [(2, "progress")]
    a.publish(event(1, 4, EventType.PROGRESS))
    await asyncio.sleep(0)
    assert kinds(behind)[-1] == (1, "progress") and len(now) == 1  # still behind
    commits[0].set_result(None)  # the start is committed
    await asyncio.sleep(0)
    a.publish(event(1, 5, EventType.PROGRESS))
    await asyncio.sleep(0)
    assert kinds(now)[-1] == (1, "progress")
    a.publish(event(1, 6, EventType.SUCCESS, {"result": 1}))
    await asyncio.sleep(0)
    assert kinds(behind)[-1] == (1, "success")  # a status event always rides its write


async def test_a_progress_older_than_what_a_node_published_for_its_job_is_dropped() -> None:
    b = bus("b", [], [False])
    seen = b.subscribe()
    b.deliver(_payload("a", event(1, 3, EventType.PROGRESS)))
    b.deliver(_payload("a", event(1, 5, EventType.SUCCESS, {"result": 1})))
    b.deliver(_payload("a", event(1, 4, EventType.PROGRESS)))  # the faster path's, late
    b.deliver(_payload("a", event(2, 2, EventType.STARTED)))
    assert [(e.job_id, e.seq) for e in drained(seen)] == [(1, 3), (1, 5), (2, 2)]


async def test_a_status_event_older_than_what_a_node_published_for_its_job_is_stale() -> None:
    # Note 7: another node's ``added`` that left after a third node started the job,
    # and the event of a write a reap refused, are not published; ``on_added`` still
    # hears the add (its parents, its batch).
    b = bus("b", [], [False])
    added: list[int] = []
    b.on_added = lambda e: added.append(e.job_id)
    seen = b.subscribe()
    b.deliver(_payload("c", event(1, 2, EventType.STARTED)))
    b.deliver(_payload("a", event(1, 1, EventType.ADDED)))  # late
    b.deliver(_payload("c", event(1, 3, EventType.SUCCESS, {"result": 1})))
    b.reaped([(2, 1_000_004)])  # x's job 2, at 4 before the gap
    b.deliver(_payload("x", event(2, 5, EventType.SUCCESS, {"result": "x"})))  # refused
    b.deliver(_payload("z", event(2, 1_000_005, EventType.STARTED)))
    b.deliver(_payload("r", event(3, 1, EventType.ADDED)))
    b.publish(event(3, 2, EventType.STARTED))  # its own: a later one
    b.deliver(_payload("r", event(3, 2, EventType.STARTED)))  # a duplicate of it
    assert [(e.job_id, e.seq) for e in drained(seen)] == [
        (1, 2),
        (1, 3),
        (2, 1_000_005),
        (3, 1),
        (3, 2),
    ]
    assert added == [1, 3]


async def test_a_reap_heard_from_another_node_makes_the_reaped_events_stale() -> None:
    b = bus("b", [], [False])
    seen = b.subscribe()
    told = {"n": "r", "e": [], "r": [[2, 1_000_004], [7, 1_000_001]]}
    b.deliver(json.dumps(told))  # as SQL_TELL_REAPED sends it
    b.deliver(json.dumps({"n": "r", "e": [], "r": [["no"]]}))  # unreadable: ignored
    b.deliver(_payload("x", event(2, 5, EventType.SUCCESS, {"result": "x"})))
    b.deliver(_payload("x", event(7, 2, EventType.FAILURE, {"error": "x"})))
    b.deliver(_payload("z", event(7, 1_000_002, EventType.STARTED)))
    assert [(e.job_id, e.seq) for e in drained(seen)] == [(7, 1_000_002)]


# -- a job's events in order, its last progress kept (notes 3, 6) -------------------------


def pointer(job: int, seq: int, kind: EventType) -> str:
    raw = encode_event(event(job, seq, kind))
    raw[-1] = None  # as a flush sends an event too big for a notification
    return json.dumps({"n": "a", "e": [raw]})


async def test_the_events_after_a_pointer_being_read_wait_for_it_in_order() -> None:
    # A bug hunt: a big last progress went as a pointer, and while its row was read
    # the job's ``success`` came and was published; the progress, read then, was
    # stale and never reached a stream on another node (24 streams of 24).
    row = JobInfo(1, "t", "p", JobStatus.RUNNING, seq=6, message="step 6")
    reads = 0

    async def read(job_id: int) -> JobInfo | None:
        nonlocal reads
        reads += 1
        return row

    b = bus("b", [], [False], read=read, buffer=64, replay=64)
    seen = b.subscribe()
    b.deliver(pointer(1, 7, EventType.PROGRESS))  # its row is at 6: read again later
    for seq in range(8, 40):  # held meanwhile, conflated
        b.deliver(_payload("a", event(1, seq, EventType.PROGRESS, {"message": seq})))
    b.deliver(_payload("a", event(1, 40, EventType.SUCCESS, {"result": 1})))
    b.deliver(_payload("a", event(2, 2, EventType.STARTED)))  # another job's: not held
    await asyncio.sleep(0.05)
    assert [(e.job_id, e.seq) for e in drained(seen)] == [(2, 2)]
    # The job ended: its row holds the last report, and the end.
    row = JobInfo(1, "t", "p", JobStatus.SUCCESS, seq=40, message="step 7", result=1)
    async with asyncio.timeout(5):
        while not (got := drained(seen)):
            await asyncio.sleep(0.01)
    assert [(e.seq, e.type) for e in got] == [
        (7, EventType.PROGRESS),
        (39, EventType.PROGRESS),
        (40, EventType.SUCCESS),
    ]
    assert got[0].data["message"] == "step 7"
    # A pointer older than what was published is not even read.
    before = reads
    b.deliver(pointer(1, 7, EventType.PROGRESS))
    await asyncio.sleep(0.05)
    assert reads == before and drained(seen) == []


async def test_a_pointer_whose_row_never_comes_holds_its_jobs_events_only_so_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(nodebus, "POINTER_PATIENCE", 0.05)

    async def stuck(job_id: int) -> JobInfo | None:
        await asyncio.sleep(10)
        return None

    b = bus("b", [], [False], read=stuck, buffer=8, replay=8)
    seen = b.subscribe()
    b.deliver(pointer(1, 7, EventType.PROGRESS))
    b.deliver(_payload("a", event(1, 8, EventType.SUCCESS, {"result": 1})))
    async with asyncio.timeout(5):
        while not (got := drained(seen)):
            await asyncio.sleep(0.01)
    assert [(e.seq, e.type) for e in got] == [(8, EventType.SUCCESS)]  # an end is never lost
    await b.stop()


async def test_a_status_event_takes_again_the_last_progress_sent_at_once() -> None:
    # A bug hunt: the last progress, sent at once on another connection, came after
    # the job's end riding its commit, and was dropped as stale (4 streams of 36).
    behind: list[str] = []
    now: list[str] = []
    a = bus("a", behind, [False], send_now=now.extend)
    a.publish(event(1, 2, EventType.PROGRESS, {"message": "2"}))
    await asyncio.sleep(0)
    a.publish(event(1, 3, EventType.PROGRESS, {"message": "3"}))
    await asyncio.sleep(0)
    a.publish(event(1, 4, EventType.SUCCESS, {"result": 1}))
    await asyncio.sleep(0)
    assert [e[1] for p in now for e in json.loads(p)["e"]] == [2, 3]
    assert [e[1] for p in behind for e in json.loads(p)["e"]] == [3, 4]  # again, with the end
    b = bus("b", [], [False])
    seen = b.subscribe()
    for payload in [now[0], *behind, now[1]]:  # the faster path came last
        b.deliver(payload)
    assert [e.seq for e in drained(seen)] == [2, 3, 4]
    # A progress after a status event of the same turn goes after it.
    behind.clear()
    a.publish(event(5, 2, EventType.PROGRESS))
    a.publish(event(5, 3, EventType.RETRYING))
    a.publish(event(5, 4, EventType.PROGRESS))
    a.publish(event(5, 5, EventType.PROGRESS))
    await asyncio.sleep(0)
    assert [e[1] for p in behind for e in json.loads(p)["e"]] == [2, 3, 5]
