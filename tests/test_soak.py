"""A random soak of the runtime: everything at once, then checks that hold in any order.

Three producers add jobs with random options (priorities, delays, parents,
unique keys, ``add_many``, chains, groups with a callback, first attempts
that fail and retry) to a pool with a small waiting window, while a fourth
cancels, runs now, retries, pauses and resumes at random; half the runs stop
the runtime in the middle and start a new one on the same database. Then:

- every job ends, and none in FAILURE (a first attempt that fails is retried,
  and a retried dependent runs with its parents' results);
- no handler ran more often than its job's attempts say (a cancelled job that
  never started never ran; a success ran at least once).

The interleavings differ from run to run, so a pass proves little and a
failure names a seed to run again. Races between refills, adds, releases,
cancels and the pool's alarm were found this way. Each backend runs
``TASKRT_SOAK_SEEDS`` seeds (default 2; a few hundred for a real soak:
``TASKRT_SOAK_SEEDS=300 pytest tests/test_soak.py -k sqlite``), and the same
seeds run on two nodes sharing one PostgreSQL schema.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pg_server
import pytest

from taskrt import JobContext, JobStatus, Runtime, TaskrtError

SEEDS = int(os.environ.get("TASKRT_SOAK_SEEDS", "2"))


class Soak:
    """One run's runtime(s), jobs and handler calls."""

    def __init__(self, seed: int, target: tuple[str, dict[str, Any]]) -> None:
        self.rnd = random.Random(seed)
        self.db, base = target
        self.options = dict(base)
        if self.options.get("mode") != "nodes":
            self.options["window"] = self.rnd.choice([3, 5, 8, 20])
        self.runs: Counter[int] = Counter()
        self.ids: list[int] = []
        self.cancelled: list[int] = []
        self.done: defaultdict[int, list[str]] = defaultdict(list)  # actions, for a failure

    def runtime(self) -> Runtime:
        rt = Runtime(self.db, **self.options)
        runs = self.runs

        @rt.task(attempts=3, retry="5ms")
        async def work(job: JobContext, n: int, fail: bool, nap: float) -> int:
            runs[job.id] += 1
            if nap:
                await asyncio.sleep(nap)
            if fail and job.attempt == 1:
                raise RuntimeError("the first attempt fails")
            return n

        @rt.task
        async def step(job: JobContext, x: int) -> int:
            runs[job.id] += 1
            return x + 1

        @rt.task
        async def gather(job: JobContext, xs: list[int], tag: str) -> int:
            runs[job.id] += 1
            return len(xs)

        self.work, self.step, self.gather = work, step, gather
        return rt

    async def produce(self, rt: Runtime, rounds: int) -> None:
        rnd, ids = self.rnd, self.ids
        pool = rt.pool("default")
        work, step, gather = self.work, self.step, self.gather
        for i in range(rounds):
            r = rnd.random()
            if r < 0.1:
                ids.extend((await rt.chain(step.s(i), step.s(), step.s())).jobs)
            elif r < 0.2:
                members = [step.s(j) for j in range(rnd.choice([1, 3, 6]))]
                ids.extend((await rt.group(members).then(gather.s(tag="t"))).jobs)
            elif r < 0.3:
                key = f"u{rnd.randrange(5)}"
                ids.append(await pool.add(work.options(unique_key=key), i, False, 0.001))
            elif r < 0.4:
                items = [(i, rnd.random() < 0.2, 0.0)] * rnd.choice([2, 7])
                ids.extend(await pool.add_many(work.options(priority=rnd.choice([0, 5])), items))
            else:
                options: dict[str, Any] = {}
                if rnd.random() < 0.3:
                    options["delay"] = rnd.choice([0.003, 0.02])
                if rnd.random() < 0.3:
                    options["priority"] = rnd.choice([-1, 3, 9])
                if ids and rnd.random() < 0.25:
                    recent = ids[-30:]
                    options["after"] = rnd.sample(recent, k=min(len(recent), rnd.choice([1, 2])))
                call = work.options(**options) if options else work
                fail = rnd.random() < 0.15
                ids.append(await pool.add(call, i, fail, rnd.choice([0.0, 0.0, 0.002])))
            if rnd.random() < 0.2:
                await asyncio.sleep(0.002)

    async def meddle(self, rt: Runtime, rounds: int) -> None:
        rnd, pool = self.rnd, rt.pool("default")
        for _ in range(rounds):
            await asyncio.sleep(0.004)
            if not self.ids:
                continue
            job_id = rnd.choice(self.ids)
            act = rnd.random()
            what = ""
            try:
                if act < 0.25:
                    what = "cancel"
                    await rt.cancel(job_id)
                    self.cancelled.append(job_id)
                elif act < 0.45:
                    what = "run now"
                    await rt.run_now(job_id)
                elif act < 0.55:
                    pool.pause()
                    await asyncio.sleep(0.002)
                    pool.resume()
                elif act < 0.65:
                    info = await rt.get(job_id)
                    if info.status in (JobStatus.FAILURE, JobStatus.CANCELLED):
                        what = "retry"
                        await rt.retry(job_id)
                elif act < 0.8 and self.cancelled:  # often a dependent, cancelled blocked
                    what, job_id = "retry", self.cancelled.pop(rnd.randrange(len(self.cancelled)))
                    await rt.retry(job_id)
            except TaskrtError as exc:
                what += f" refused ({type(exc).__name__})"  # not allowed in its state now: fine
            if what:
                self.done[job_id].append(f"{what} by the {rt.role}")

    async def busy(
        self, producers: list[Runtime], meddlers: list[Runtime], adds: int, meddles: int
    ) -> None:
        """All at once: each of ``producers`` adds ``adds`` times, each of ``meddlers``
        meddles ``meddles`` times."""
        await asyncio.gather(
            *(self.produce(rt, adds) for rt in producers),
            *(self.meddle(rt, meddles) for rt in meddlers),
        )

    async def a_moment(self) -> None:
        """A random short while: what is under way goes on into what comes next."""
        await asyncio.sleep(self.rnd.choice([0.0, 0.01, 0.03]))

    async def check(self, rt: Runtime) -> list[str]:
        problems: list[str] = []
        deadline = time.monotonic() + 20
        for job_id in sorted(set(self.ids)):
            try:
                await rt.wait(job_id, timeout=max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                info = await rt.get(job_id)
                row = await rt.store.get_job(job_id)
                held = rt.live.states.get(job_id)
                queued = held is not None and rt.pool(held.pool).holds(held)
                problems.append(
                    f"job {job_id} ({info.task}) never ended: {info.status.value}, "
                    f"waiting_reason={info.waiting_reason}, run_at in {info.run_at - time.time():.3f} s; "
                    f"stored {row.status.value if row else None}, in memory {held is not None}, "
                    f"queued {queued}; actions: {self.done[job_id]}"
                )
        await asyncio.sleep(0.05)  # a second run would have begun by now
        for job_id in sorted(set(self.ids)):
            info = await rt.get(job_id)
            attempts = max(info.attempts, len(await rt.attempts(job_id)))
            ran = self.runs[job_id]
            if info.status is JobStatus.FAILURE:  # no handler fails twice; chain steps never
                problems.append(
                    f"job {job_id} ({info.task}) failed: {info.error}; actions: {self.done[job_id]}"
                )
            if ran > attempts or (info.status is JobStatus.SUCCESS and ran == 0):
                problems.append(
                    f"job {job_id} ({info.task}) {info.status.value} with {attempts} attempt(s) "
                    f"ran {ran} time(s); actions: {self.done[job_id]}"
                )
        return problems


@pytest.mark.parametrize("seed", range(SEEDS))
async def test_random_work_ends_and_runs_each_attempt_once(
    seed: int, target: tuple[str, dict[str, Any]]
) -> None:
    soak = Soak(seed, target)
    rnd = soak.rnd
    restart = rnd.random() < 0.5
    rt = soak.runtime()
    async with rt:
        pool = rt.pool("default", concurrency=rnd.choice([1, 2, 4]))
        if rnd.random() < 0.3:
            pool.pause()
        await soak.busy([rt, rt, rt], [rt], 25, 25)
        pool.resume()
        if restart:
            await soak.a_moment()
        else:
            problems = await soak.check(rt)
    if restart:
        rt = soak.runtime()
        async with rt:
            rt.pool("default", concurrency=2)
            problems = await soak.check(rt)
    assert not problems, f"seed {seed}: " + "; ".join(problems[:8])


@pytest.mark.parametrize("seed", range(SEEDS))
async def test_random_work_on_two_nodes_ends_and_runs_each_attempt_once(
    seed: int, tmp_path: Path
) -> None:
    """Two nodes on one PostgreSQL schema: each adds and meddles, both run the jobs
    (claims, releases, cancels and retries cross between them); one of them may
    stop in the middle, and another takes its place."""
    url = f"{pg_server.require()}?schema={pg_server.fresh_schema(tmp_path)}"
    soak = Soak(seed, (url, {"mode": "nodes"}))
    rnd = soak.rnd
    x, y = soak.runtime(), soak.runtime()
    async with x:
        async with y:
            for rt in (x, y):
                rt.pool("default", concurrency=rnd.choice([1, 2, 4]))
            await soak.busy([x, y, x], [x, y], 20, 15)
            if rnd.random() < 0.5:
                await soak.a_moment()
                problems = None
            else:
                problems = await soak.check(y)
        if problems is None:
            z = soak.runtime()
            async with z:
                problems = await soak.check(z)
    assert not problems, f"seed {seed}: " + "; ".join(problems[:8])


@pytest.mark.parametrize("seed", range(SEEDS))
async def test_random_work_through_a_standby_ends_and_runs_each_attempt_once(
    seed: int, tmp_path: Path
) -> None:
    """An owner and a standby on one SQLite file: the standby's adds, cancels, retries
    and runs now are forwarded to the owner; in half the runs the owner stops in
    the middle and the standby takes over."""
    soak = Soak(seed, (str(tmp_path / "soak.db"), {}))
    rnd = soak.rnd
    x, y = soak.runtime(), soak.runtime()
    await x.start()
    try:
        async with y:
            assert (x.role, y.role) == ("owner", "standby")
            x.pool("default", concurrency=rnd.choice([1, 2, 4]))
            await soak.busy([x, y, y], [x, y], 20, 15)
            handover = rnd.random() < 0.5
            if handover:
                await soak.a_moment()
                await x.stop()
            problems = await soak.check(y)
            if handover:
                end = time.monotonic() + 10  # the jobs may all have ended before it
                while y.role != "owner" and time.monotonic() < end:
                    await asyncio.sleep(0.01)
                if y.role != "owner":
                    problems.append(f"the standby is {y.role!r}, not the owner, 10 s after")
    finally:
        await x.stop()
    assert not problems, f"seed {seed}: " + "; ".join(problems[:8])


@pytest.mark.parametrize("seed", range(SEEDS))
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_random_work_with_a_client_that_cannot_reach_the_owner(
    seed: int, backend: str, tmp_path: Path
) -> None:
    """An owner and a client (``workers=False``) that cannot reach it: the client's
    adds, cancels, retries and runs now are written to the store alone, and the
    owner picks them up at its poll, racing its own starts of the same jobs (a
    cancel it has not read yet must not let the job run, store note 20)."""
    if backend == "sqlite":
        target: tuple[str, dict[str, Any]] = (str(tmp_path / "soak.db"), {})
    else:
        url = f"{pg_server.require()}?schema={pg_server.fresh_schema(tmp_path)}"
        target = (url, {"mode": "owner"})
    soak = Soak(seed, target)
    rnd = soak.rnd
    owner = soak.runtime()
    soak.options["workers"] = False
    client = soak.runtime()
    client._forwarding = lambda: None  # type: ignore[method-assign]
    async with owner, client:
        assert (owner.role, client.role) == ("owner", "client")
        owner.pool("default", concurrency=rnd.choice([1, 2, 4]))
        await soak.busy([owner, client, client], [client, client, owner], 20, 15)
        problems = await soak.check(owner)
    assert not problems, f"seed {seed}: " + "; ".join(problems[:8])
