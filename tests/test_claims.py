"""The queue of a pool whose jobs any node may run (``taskrt.claims``), with a
recording claim source instead of a database."""

from __future__ import annotations

import asyncio
from typing import Any

from taskrt.claims import Claims
from taskrt.clock import SystemClock


class Source:
    """Records each claim's limit; hands out as many jobs as asked while it has any."""

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self.limits: list[int] = []
        self.given_back: list[Any] = []

    async def claim(self, pool: str, limit: int) -> list[Any]:
        self.limits.append(limit)
        n = min(limit, self.jobs)
        self.jobs -= n
        return [object() for _ in range(n)]

    async def next_due(self, pool: str) -> float | None:
        return None

    def give_back(self, states: list[Any]) -> None:
        self.given_back += states

    def rate_wait(self, pool: str) -> float | None:
        return None

    def backlog(self, pool: str) -> bool:
        return False  # as if the node's last look counted none

    def forget(self, state: Any) -> None:
        pass


async def test_slots_freed_in_one_turn_of_the_loop_are_claimed_together() -> None:
    """Jobs that started together end together: the first slot freed asks, and the
    claim counts the free slots a turn later, so it asks for all of them."""
    source = Source(jobs=100)
    free = [0]
    claims = Claims("p", source, SystemClock(), lambda: free[0], lambda: None)
    for _ in range(10):  # ten runners end in one turn, each taking the next job
        free[0] += 1
        assert claims.take() is None
    await asyncio.sleep(0.01)
    assert source.limits == [10]
    assert len(claims) == 10


async def test_a_claim_whose_slots_were_taken_meanwhile_asks_for_nothing() -> None:
    source = Source(jobs=100)
    free = [1]
    claims = Claims("p", source, SystemClock(), lambda: free[0], lambda: None)
    assert claims.take() is None
    free[0] = 0  # paused before the claim ran
    await asyncio.sleep(0.01)
    assert source.limits == []
    free[0] = 2
    assert claims.take() is None  # asks again once a slot is free
    await asyncio.sleep(0.01)
    assert source.limits == [2]


class SlowDue(Source):
    """A source whose ``next_due`` is a round trip that does not end until told."""

    def __init__(self, jobs: int) -> None:
        super().__init__(jobs)
        self.answer = asyncio.Event()
        self.asked_due = 0

    async def next_due(self, pool: str) -> float | None:
        self.asked_due += 1
        await self.answer.wait()
        return None


async def test_claimed_jobs_start_before_the_next_due_time_is_read() -> None:
    """A claim that found fewer jobs than slots reads when the next job is due; the
    jobs it found are handed to the pool at once, not a round trip later, and the
    pool's taking them asks no second claim meanwhile."""
    source = SlowDue(jobs=1)
    woken: list[int] = []
    claims = Claims("p", source, SystemClock(), lambda: 4, lambda: woken.append(len(claims)))
    assert claims.take() is None
    await asyncio.sleep(0.01)
    assert source.asked_due == 1 and not source.answer.is_set()
    assert woken == [1]  # the pool was told while next_due was still out
    assert claims.take() is not None
    assert claims.take() is None  # nothing more is due: no claim is asked for
    await asyncio.sleep(0.01)
    assert source.limits == [4]
    source.answer.set()
    await asyncio.sleep(0.01)
    assert source.limits == [4] and source.asked_due == 1


async def test_claimed_jobs_not_started_yet_are_ahead_of_a_job_added_here() -> None:
    """Jobs claimed come first (claims note 4): the pool keeps a slot for a job added
    here only past them (``Pool.keep``), and slots it keeps are not free, so a
    claim asks for the others."""
    source = Source(jobs=100)
    free = [3]
    claims = Claims("p", source, SystemClock(), lambda: free[0], lambda: None)
    assert claims.ahead() == 0
    assert claims.take() is None
    await asyncio.sleep(0.01)
    assert source.limits == [3] and claims.ahead() == 3
    assert claims.take() is not None
    assert claims.ahead() == 2
    claims.take()
    claims.take()
    free[0] = 1  # two slots taken, two kept for adds
    assert claims.take() is None
    await asyncio.sleep(0.01)
    assert source.limits == [3, 1]


async def test_the_slots_a_claim_in_flight_asked_for_are_ahead_where_jobs_wait() -> None:
    """Claims note 4: an add may keep a slot a claim in flight asked for only where
    no job waits (an idle node starts what it is given at once); where jobs wait,
    the claim's best job would be given back and a lower priority start first."""
    source = Source(jobs=5)
    answer = asyncio.Event()
    claim = source.claim

    async def held(pool: str, limit: int) -> list[Any]:
        await answer.wait()
        return await claim(pool, limit)

    source.claim = held  # type: ignore[method-assign]
    claims = Claims("p", source, SystemClock(), lambda: 2, lambda: None)
    claims.poke(stored=True)  # an add here stored jobs WAITING
    claims.take()  # a claim of 2 goes out
    await asyncio.sleep(0.01)
    assert claims.ahead() == 2
    answer.set()
    await asyncio.sleep(0.01)
    while claims.take() is not None:  # 2 found of 2 asked: jobs wait
        pass
    await asyncio.sleep(0.01)
    while claims.take() is not None:
        pass
    await asyncio.sleep(0.01)
    claims.take()  # the last found 1 of 2: none waits any more
    await asyncio.sleep(0.01)
    answer.clear()
    claims.poke()
    claims.take()  # in flight again, after a claim that came back short
    await asyncio.sleep(0.01)
    assert claims.ahead() == 0
    claims.poke(stored=True)  # an add here stored a job WAITING: jobs wait
    assert claims.ahead() == 2
    answer.set()
