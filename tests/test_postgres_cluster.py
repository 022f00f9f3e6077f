"""Nodes as real processes on one PostgreSQL schema: each job once, and crashes survived.

Each node is ``tests/fixtures/nodes/node_app.py`` (``Runtime(url, mode="nodes")``,
TTL 2 s): its handler logs every attempt it starts to a file shared by the
nodes, which is the duplicate detector. The test process adds the jobs as a
client and reads the outcome from the database.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pg_server
import pytest
from test_web_sse import parse_sse

from taskrt import JobContext, JobStatus, Runtime
from taskrt.errors import TaskrtError

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
        self.http: dict[str, str] = {}  # node -> base URL of its HTTP API

    async def start(
        self,
        *names: str,
        concurrency: int = 10,
        schedule: bool = False,
        http: bool = False,
        ttl: float = TTL,
    ) -> None:
        env = {**os.environ, "NODE_TTL": str(ttl), "NODE_CONCURRENCY": str(concurrency)}
        if schedule:
            env["NODE_SCHEDULE"] = "1"
        for name in names:
            if http:
                port = free_port()
                env["NODE_HTTP_PORT"] = str(port)
                self.http[name] = f"http://127.0.0.1:{port}"
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

    async def stop(self) -> dict[str, int]:
        """Stop every node; their exit statuses (0: a clean stop)."""
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
        return {name: proc.returncode or 0 for name, proc in self.procs.items()}

    def runs(self) -> dict[int, list[tuple[int, str]]]:
        """Every attempt started, by job: (attempt, node)."""
        out: dict[int, list[tuple[int, str]]] = collections.defaultdict(list)
        for line in self.log.read_text().splitlines():
            job, attempt, name = line.split()
            out[int(job)].append((int(attempt), name))
        return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def client(url: str) -> Runtime:
    rt = Runtime(url, mode="nodes", workers=False)
    rt.pool("p")

    @rt.task(pool="p")
    async def work(job: JobContext, n: int, ms: float = 20) -> str:
        raise AssertionError("clients run nothing")

    @rt.task(pool="p")
    async def pill(job: JobContext) -> None:
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
        # Those still RUNNING in the database: "a" ran them, their ends not written.
        running = {j.id for j in (await rt.jobs(status="RUNNING", limit=500)).jobs} & held
        assert running
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
        for job in running:
            assert interrupted[job] == ["interrupted", "success"], (job, interrupted[job])
    runs = cluster.runs()
    for job, r in runs.items():
        if len(r) > 1:
            assert r[0][1] == "a", f"job {job} ran twice without a crash: {r}"


async def test_sigstop_past_the_ttl_then_sigcont_late_writes_are_refused(
    url: str, cluster: Cluster
) -> None:
    await cluster.start("a", "b", concurrency=3)  # 3 jobs each
    async with client(url) as rt:
        ids = [await rt.pool("p").add("work", n, 3000) for n in range(6)]
        deadline = time.monotonic() + 10
        while len(cluster.runs()) < 6:
            assert time.monotonic() < deadline, cluster.runs()
            await asyncio.sleep(0.02)
        stopped = {job for job, r in cluster.runs().items() if r[0][1] == "a"}
        assert stopped
        cluster.signal("a", signal.SIGSTOP)
        deadline = time.monotonic() + 15
        while not all(len(cluster.runs()[j]) == 2 for j in stopped):
            assert time.monotonic() < deadline, cluster.runs()  # taken back, run on "b"
            await asyncio.sleep(0.05)
        # "a" goes on while "b" runs its jobs: its handlers end at once (their time
        # is up), and its writes of those jobs, RUNNING on "b", are refused by node.
        cluster.signal("a", signal.SIGCONT)
        await asyncio.sleep(1.0)
        for job in stopped:
            info = await rt.get(job)
            assert (info.status, info.attempts) == (JobStatus.RUNNING, 2), info
        for job in stopped:
            info = await rt.wait(job, timeout=20)
            assert (info.status, info.result, info.attempts) == (JobStatus.SUCCESS, "b", 2)
            outcomes = [a.outcome.value for a in await rt.attempts(job)]
            assert outcomes == ["interrupted", "success"], outcomes
        assert all(len(cluster.runs()[j]) == 2 for j in stopped), cluster.runs()
        # "a" joined again and runs jobs.
        more = [await rt.pool("p").add("work", n, 1) for n in range(40)]
        await until_done(rt, len(ids) + len(more), 30)
        nodes = {n["id"].split(":")[1] for n in await rt.store.nodes()}  # type: ignore[attr-defined]
        assert len(nodes) == 2


async def test_a_schedule_every_second_on_three_nodes_fires_each_slot_once(
    url: str, cluster: Cluster
) -> None:
    await cluster.start("a", "b", "c", schedule=True)
    began = time.time()
    await asyncio.sleep(10)
    ended = time.time()
    await cluster.stop()
    async with client(url) as rt:
        jobs = (await rt.jobs(limit=1000)).jobs
        slots = [j.metadata["slot"] for j in jobs if j.metadata.get("schedule") == "tick"]
    assert len(slots) == len(set(slots)), f"a slot fired twice: {sorted(slots)}"
    # Every slot of the 10 s during which all three nodes ran fired, once.
    inside = sorted(s for s in slots if began <= s < ended)
    assert len(inside) in (10, 11), inside
    assert inside == [inside[0] + k for k in range(len(inside))], inside


async def test_unique_keys_hold_under_concurrent_adds_from_three_node_processes(
    url: str, cluster: Cluster
) -> None:
    await cluster.start("a", "b", "c", http=True)
    keys = [f"k{n}" for n in range(20)]
    async with httpx.AsyncClient(timeout=30) as http:

        async def add(base: str, key: str) -> int:
            body = {"task": "work", "args": [0, 1], "unique_key": key, "delay": 3600}
            reply = await http.post(f"{base}/jobs", json=body)
            assert reply.status_code == 201, reply.text
            return int(reply.json()["id"])

        adds = [
            (key, add(base, key))
            for _ in range(3)
            for key in keys
            for base in cluster.http.values()
        ]
        ids = await asyncio.gather(*(a for _, a in adds))
    by_key: dict[str, set[int]] = collections.defaultdict(set)
    for (key, _), job in zip(adds, ids, strict=True):
        by_key[key].add(job)
    assert all(len(found) == 1 for found in by_key.values()), by_key
    async with client(url) as rt:
        assert await rt.count(status="WAITING") == len(keys)


async def test_a_stream_on_another_node_process_carries_every_event_and_resumes(
    url: str, cluster: Cluster
) -> None:
    await cluster.start("a", "b", "c", http=True)
    a, b, c = (cluster.http[n] for n in "abc")
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(f"{a}/jobs", json={"task": "work", "args": [0, 400], "delay": 1})
        job = reply.json()["id"]
        on_b, on_c = await asyncio.gather(
            http.get(f"{b}/jobs/{job}/events"), http.get(f"{c}/jobs/{job}/events")
        )
        frames = parse_sse(on_b.text)
        assert [f.event for f in frames] == ["snapshot", "started", "progress", "success"]
        assert [(f.id, f.event) for f in parse_sse(on_c.text)] == [(f.id, f.event) for f in frames]
        ids = [int(f.id or 0) for f in frames]
        assert ids == list(range(ids[0], ids[0] + 4)), ids
        assert frames[-1].data is not None and frames[-1].data["result"] in ("a", "b", "c")
        # Resumed on another node from the snapshot's id: the rest, same ids.
        resumed = await http.get(f"{c}/jobs/{job}/events", headers={"Last-Event-ID": str(ids[0])})
        assert [(f.id, f.event) for f in parse_sse(resumed.text)] == [
            (f.id, f.event) for f in frames[1:]
        ]

        # GET /events on every node carries the status events of a job run on any
        # node, with the same ids; a stream cut mid-job resumes on a node that never
        # served it. (Progress is conflated per flush across nodes: the node running
        # the job publishes every report, the others the last of each flush.)
        feeds: dict[str, list[Any]] = {n: [] for n in "abc"}

        async def follow(name: str) -> None:
            async with http.stream("GET", f"{cluster.http[name]}/events") as reply:
                assert reply.status_code == 200
                text = ""
                async for chunk in reply.aiter_text():
                    text += chunk
                    block, sep, text = text.rpartition("\n\n")
                    if sep:
                        feeds[name].extend(parse_sse(block + sep))

        following = [asyncio.create_task(follow(n)) for n in "abc"]
        await asyncio.sleep(0.5)
        reply = await http.post(f"{b}/jobs", json={"task": "work", "args": [1, 600], "delay": 1})
        job = reply.json()["id"]
        cut: list[Any] = []
        async with http.stream("GET", f"{c}/jobs/{job}/events") as stream:
            text = ""
            async for chunk in stream.aiter_text():
                text += chunk
                cut = parse_sse(text)
                if cut and cut[-1].event == "progress":
                    break  # mid-job: the client goes away
        await asyncio.sleep(0.1)  # the progress event reaches node a (else: a snapshot)
        resume = {"Last-Event-ID": cut[-1].id}
        both = await asyncio.gather(
            http.get(f"{b}/jobs/{job}/events"),
            http.get(f"{a}/jobs/{job}/events", headers=resume),  # while the job runs
        )
        whole, later = (parse_sse(r.text) for r in both)
        await asyncio.sleep(0.5)
        for task in following:
            task.cancel()
        await asyncio.gather(*following, return_exceptions=True)
    status = {"added", "started", "retrying", "success", "failure", "cancelled"}
    of_job = {
        n: [(f.id, f.event) for f in frames if f.data.get("job_id") == job and f.event in status]
        for n, frames in feeds.items()
    }
    assert [e for _, e in of_job["a"]] == ["added", "started", "success"], of_job
    assert of_job["a"] == of_job["b"] == of_job["c"], of_job
    assert later[-1].event == "success"
    assert of_job["a"][-1][0] == f"{job}:{later[-1].id}"  # GET /events: job:sequence
    assert [int(f.id) for f in later] == sorted({int(f.id) for f in later})  # in order
    assert int(later[0].id) > int(cut[-1].id)
    assert whole[-1].id == later[-1].id


async def test_a_node_process_that_joins_a_quiet_one_streams_every_event_both_ways(
    url: str, cluster: Cluster
) -> None:
    """A node alone sends no events (taskrt.nodebus note 5); once a second node process
    joins, a stream on either carries every event of a job run on either."""
    base, schema = url.split("?schema=")
    spy = await asyncpg.connect(base)
    heard: list[str] = []
    await spy.add_listener(
        f"taskrt.{schema}.events", lambda _c, _p, _ch, payload: heard.append(payload)
    )
    try:
        await cluster.start("a", http=True)
        a = cluster.http["a"]
        async with httpx.AsyncClient(timeout=30) as http:
            reply = await http.post(f"{a}/jobs", json={"task": "work", "args": [0, 40]})
            alone = reply.json()["id"]
            frames = parse_sse((await http.get(f"{a}/jobs/{alone}/events")).text)
            assert frames[-1].event in ("success", "snapshot")
            await asyncio.sleep(0.2)
            assert [p for p in heard if json.loads(p)["e"]] == []  # nothing sent
            await cluster.start("b", http=True)
            b = cluster.http["b"]
            ran_on: set[str] = set()
            for n in range(20):  # until jobs ran on both: events went both ways
                where = a if n % 2 else b
                reply = await http.post(
                    f"{where}/jobs", json={"task": "work", "args": [n, 200], "delay": 0.5}
                )
                job = reply.json()["id"]
                on_a, on_b = await asyncio.gather(
                    http.get(f"{a}/jobs/{job}/events"), http.get(f"{b}/jobs/{job}/events")
                )
                frames = parse_sse(on_a.text)
                assert [f.event for f in frames] == ["snapshot", "started", "progress", "success"]
                assert [(f.id, f.event) for f in parse_sse(on_b.text)] == [
                    (f.id, f.event) for f in frames
                ]
                assert frames[-1].data is not None
                ran_on.add(frames[-1].data["result"])
                if ran_on == {"a", "b"}:
                    break
            assert ran_on == {"a", "b"}
    finally:
        await spy.close()


async def test_a_server_restart_mid_run_loses_no_acknowledged_job(tmp_path: Path) -> None:
    """``pg_ctl restart`` while 3 nodes run jobs and a client adds more: every add
    that returned an id ends SUCCESS, and a job runs again only after an attempt
    the restart interrupted."""
    with pg_server.own_cluster() as server:
        url = f"{server.url}?schema=restart"
        cluster = Cluster(url, tmp_path / "runs.log")
        try:
            await cluster.start("a", "b", "c")
            acknowledged: list[int] = []
            refused = 0
            async with client(url) as rt:

                async def keep_adding() -> None:
                    nonlocal refused
                    for batch in range(80):
                        try:
                            acknowledged.extend(
                                await rt.pool("p").add_many(
                                    "work", [(batch * 25 + n, 50) for n in range(25)]
                                )
                            )
                        except TaskrtError:
                            refused += 1  # not acknowledged: the server was away
                        await asyncio.sleep(0.05)

                adding = asyncio.create_task(keep_adding())
                await asyncio.sleep(1.5)
                await asyncio.to_thread(server.restart)
                await adding
                began = time.monotonic()
                for job in acknowledged:
                    info = await rt.wait(job, timeout=max(1.0, 60 - (time.monotonic() - began)))
                    assert info.status is JobStatus.SUCCESS, info
                runs = cluster.runs()
                again = [job for job, r in runs.items() if len(r) > 1]
                for job in again:
                    outcomes = [a.outcome.value for a in await rt.attempts(job)]
                    assert "interrupted" in outcomes, (job, runs[job], outcomes)
            print(
                f"{len(acknowledged)} jobs acknowledged, {refused} batches refused, "
                f"{len(again)} run again after an interrupted attempt"
            )
            assert len(acknowledged) >= 1000
            assert set(acknowledged) <= set(runs)
            # Every node outlived the restart: its loops went on, and it stops cleanly.
            assert await cluster.stop() == {"a": 0, "b": 0, "c": 0}
        finally:
            await cluster.stop()


async def test_jobs_claimed_beside_a_poison_pill_are_not_failed_with_it(
    url: str, cluster: Cluster
) -> None:
    """A pill kills its node 50 ms after it starts; dead nodes are started again. The
    jobs a node claimed with the pill died with it each time, were charged a
    recovery each, and (claimed with it again after each reap) were failed as
    orphaned with it. A job at its last recovery runs alone (``taskrt.alone``), the
    jobs claimed beside it given back first: only the pill is orphaned."""
    await cluster.start("a", "b", concurrency=2, ttl=1.0)
    async with client(url) as rt:
        pill = await rt.pool("p").add("pill")
        others = [await rt.pool("p").add("work", n, 200) for n in range(5)]
        began, started = time.monotonic(), 2
        while not (await rt.get(pill)).terminal:
            assert time.monotonic() - began < 60, await rt.get(pill)
            dead = [n for n, p in cluster.procs.items() if p.returncode is not None]
            if len(cluster.procs) - len(dead) < 2:
                started += 1
                await cluster.start(f"n{started}", concurrency=2, ttl=1.0)
            await asyncio.sleep(0.1)
        info = await rt.get(pill)
        assert info.status is JobStatus.FAILURE and "orphaned" in (info.error or ""), info
        for job_id in others:
            async with asyncio.timeout(20):
                while not (done := await rt.get(job_id)).terminal:
                    await asyncio.sleep(0.05)
            assert (done.status, done.recoveries <= 3) == (JobStatus.SUCCESS, True), done
