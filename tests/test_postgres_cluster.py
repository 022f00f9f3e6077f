"""Nodes as real processes on one PostgreSQL schema: each job once, and crashes survived.

Each node is ``tests/fixtures/nodes/node_app.py`` (``Runtime(url, mode="nodes")``,
TTL 2 s): its handler logs every attempt it starts to a file shared by the
nodes, which is the duplicate detector. The test process adds the jobs as a
client and reads the outcome from the database.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import sys
import time
from pathlib import Path

import pg_server
import pytest

from taskrt import JobContext, JobStatus, Runtime

NODE_APP = Path(__file__).parent / "fixtures" / "nodes" / "node_app.py"
TTL = 2.0


@pytest.fixture
def url(tmp_path: Path) -> str:
    base = pg_server.require()
    return f"{base}?schema={pg_server.fresh_schema(tmp_path)}"


class Cluster:
    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log
        self.procs: dict[str, asyncio.subprocess.Process] = {}

    async def start(self, *names: str, concurrency: int = 10) -> None:
        env = {**os.environ, "NODE_TTL": str(TTL), "NODE_CONCURRENCY": str(concurrency)}
        for name in names:
            self.procs[name] = await asyncio.create_subprocess_exec(
                sys.executable,
                str(NODE_APP),
                self.url,
                name,
                str(self.log),
                stdout=asyncio.subprocess.PIPE,
                env=env,
            )
        for name in names:
            out = self.procs[name].stdout
            assert out is not None
            line = await asyncio.wait_for(out.readline(), 30)
            assert line.startswith(b"ready"), (name, line)

    def signal(self, name: str, sig: int) -> None:
        self.procs[name].send_signal(sig)

    async def stop(self) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    def runs(self) -> dict[int, list[tuple[int, str]]]:
        """Every attempt started, by job: (attempt, node)."""
        out: dict[int, list[tuple[int, str]]] = collections.defaultdict(list)
        for line in self.log.read_text().splitlines():
            job, attempt, name = line.split()
            out[int(job)].append((int(attempt), name))
        return out


def client(url: str) -> Runtime:
    rt = Runtime(url, mode="nodes", workers=False)
    rt.pool("p")

    @rt.task(pool="p")
    async def work(job: JobContext, n: int, ms: float = 20) -> str:
        raise AssertionError("clients run nothing")

    return rt


async def until_done(rt: Runtime, n: int, timeout: float) -> float:
    """Seconds until ``n`` jobs ended (SUCCESS)."""
    began = time.monotonic()
    while await rt.count(status="SUCCESS") < n:
        assert time.monotonic() - began < timeout, await rt.stats()
        await asyncio.sleep(0.05)
    return time.monotonic() - began


@pytest.fixture
async def cluster(url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    made = Cluster(url, tmp_path / "runs.log")
    try:
        yield made
    finally:
        await made.stop()


async def test_three_nodes_run_2000_jobs_each_exactly_once(url: str, cluster: Cluster) -> None:
    await cluster.start("a", "b", "c")
    async with client(url) as rt:
        ids = await rt.pool("p").add_many("work", [(n,) for n in range(2000)])
        await until_done(rt, 2000, 60)
        stats = await rt.stats()
        assert (stats.counts["WAITING"], stats.counts["RUNNING"]) == (0, 0)
    runs = cluster.runs()
    assert sorted(runs) == sorted(ids)
    twice = {job: r for job, r in runs.items() if len(r) != 1}
    assert not twice, f"jobs run more than once: {list(twice.items())[:5]}"
    by_node = collections.Counter(r[0][1] for r in runs.values())
    assert set(by_node) == {"a", "b", "c"}, by_node


async def test_kill_9_of_a_node_its_jobs_finish_elsewhere_within_the_ttl(
    url: str, cluster: Cluster
) -> None:
    await cluster.start("a", "b", "c")
    async with client(url) as rt:
        await rt.pool("p").add_many("work", [(n, 300) for n in range(150)])
        deadline = time.monotonic() + 10
        while sum(1 for r in cluster.runs().values() if r[0][1] == "a") < 10:
            assert time.monotonic() < deadline, cluster.runs()
            await asyncio.sleep(0.02)
        cluster.signal("a", signal.SIGKILL)
        killed_at = time.monotonic()
        held = {job for job, r in cluster.runs().items() if r[-1][1] == "a"}
        # The jobs "a" held finish on the others within TTL + 1 s (plus their own 0.3 s).
        for job in held:
            info = await rt.wait(job, timeout=30)
            assert info.status is JobStatus.SUCCESS and info.result in ("b", "c")
        took = time.monotonic() - killed_at
        print(f"the jobs of the killed node ended elsewhere {took:.2f} s after the kill")
        assert took <= TTL + 1 + 0.3 + 0.5, took
        await until_done(rt, 150, 60)
        interrupted = {}
        for job in held:
            outcomes = [a.outcome.value for a in await rt.attempts(job)]
            interrupted[job] = outcomes
            assert outcomes[-1] == "success"
        # A job "a" was running shows its attempt as interrupted; one it had
        # finished (logged, then written before the kill) does not.
        assert sum(1 for o in interrupted.values() if "interrupted" in o) >= 5
    runs = cluster.runs()
    for job, r in runs.items():
        if len(r) > 1:
            assert r[0][1] == "a", f"job {job} ran twice without a crash: {r}"


async def test_sigstop_past_the_ttl_then_sigcont_late_writes_are_refused(
    url: str, cluster: Cluster
) -> None:
    await cluster.start("a", "b", concurrency=3)  # 3 jobs each
    async with client(url) as rt:
        ids = [await rt.pool("p").add("work", n, 800) for n in range(6)]
        deadline = time.monotonic() + 10
        while len(cluster.runs()) < 6:
            assert time.monotonic() < deadline, cluster.runs()
            await asyncio.sleep(0.02)
        stopped = {job for job, r in cluster.runs().items() if r[0][1] == "a"}
        assert stopped
        cluster.signal("a", signal.SIGSTOP)
        for job in stopped:  # taken back from "a" and run on "b"
            info = await rt.wait(job, timeout=20)
            assert (info.status, info.result) == (JobStatus.SUCCESS, "b")
        cluster.signal("a", signal.SIGCONT)  # its handlers end now: too late
        await asyncio.sleep(1.5)
        for job in stopped:
            info = await rt.get(job)
            assert (info.status, info.result, info.attempts) == (JobStatus.SUCCESS, "b", 2)
            outcomes = [a.outcome.value for a in await rt.attempts(job)]
            assert outcomes == ["interrupted", "success"], outcomes
        # "a" joined again and runs jobs.
        more = [await rt.pool("p").add("work", n, 1) for n in range(40)]
        await until_done(rt, len(ids) + len(more), 30)
        nodes = {n["id"].split(":")[1] for n in await rt.store.nodes()}  # type: ignore[attr-defined]
        assert len(nodes) == 2
