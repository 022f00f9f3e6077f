"""The event bus of mode "nodes" (taskrt.nodebus), alone: what it sends, and what it takes in."""

from __future__ import annotations

import asyncio
import json

from taskrt.events import Subscription
from taskrt.models import Event, EventType, JobInfo, JobStatus
from taskrt.nodebus import MAX_PAYLOAD, NodeBus


def event(job: int, seq: int, kind: EventType, data: dict[str, object] | None = None) -> Event:
    status = JobStatus.SUCCESS if kind is EventType.SUCCESS else JobStatus.RUNNING
    return Event(job, seq, kind, "t", "p", status, 1.0, data or {})


async def no_row(job_id: int) -> JobInfo | None:
    return None


def bus(node: str, sent: list[str], failing: list[bool]) -> NodeBus:
    return NodeBus(
        node, send=sent.extend, failing=lambda: failing[0], read=no_row, buffer=16, replay=16
    )


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
