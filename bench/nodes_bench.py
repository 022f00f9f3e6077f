"""Every node runs workers (PostgreSQL, ``mode="nodes"``) against one owner, in one run.

    .venv/bin/python -m bench.nodes_bench              # 3 runs, medians, then a table
    .venv/bin/python -m bench.nodes_bench --runs 1 --jobs 2000
    .venv/bin/python -m bench.nodes_bench --json       # the JSON lines only

The server: ``$COMPARE_POSTGRES_URL`` (default the machine's
``postgresql://postgres@127.0.0.1:5432/postgres``); each scenario gets a
schema of its own, dropped after. Workers are real processes (this module
with ``--worker``), each ``Runtime(url, mode=...)`` with one pool of
concurrency 10 and a no-op task; the bench process is a client
(``workers=False``) that adds the jobs and reads the outcome.

- ``drain``: ``--jobs`` no-op jobs added while the pool is paused (one
  ``add_many``), then resumed; the figure is jobs per second from the resume
  to the last SUCCESS. Baseline: one process of ``mode="owner"``. Reported
  for 1 node and 2 nodes (no target: the server shares this machine's two
  cores with the nodes).
- ``latency``: 300 jobs added one at a time, 100 a second; the handler
  returns ``time.time()`` at its start; the figure is that minus the time
  read before ``add`` (p50, p99). Baseline: the owner.
- ``events``: a job on a worker reports progress every 5 ms for 2 s with
  ``time.time()`` as its message; the bench process (another node, or for
  the baseline a client of the owner, whose events come over the owner's
  relay) follows it with ``rt.subscribe`` and takes the time each progress
  event arrives minus the reported one (p50, p99). Target (nodes): p99 <= 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time
import uuid
from typing import Any

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _app(url: str, mode: str, workers: bool) -> Any:
    from taskrt import Runtime

    rt = Runtime(url, mode=mode, workers=workers)
    rt.pool("p", concurrency=10)

    @rt.task(pool="p")
    async def noop() -> None:
        return None

    @rt.task(pool="p")
    async def stamp() -> float:
        return time.time()

    @rt.task(pool="p")
    async def ticks(job: Any, n: int) -> None:
        for _ in range(n):
            await job.progress(1, 2, repr(time.time()))
            await asyncio.sleep(0.005)

    return rt


def worker(url: str, mode: str) -> None:
    async def main() -> None:
        async with _app(url, mode, True):
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            print("ready", flush=True)
            await stop.wait()

    asyncio.run(main())


async def _with_workers(url: str, mode: str, n: int, work: Any) -> Any:
    procs = []
    try:
        for _ in range(n):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.nodes_bench",
                "--worker",
                url,
                mode,
                stdout=asyncio.subprocess.PIPE,
            )
            procs.append(proc)
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line.startswith(b"ready"), line
        async with _app(url, mode, False) as rt:
            return await work(rt)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        for proc in procs:
            await proc.wait()


async def _drain(rt: Any, jobs: int) -> float:
    await rt.change_pool("p", paused=True)
    await asyncio.sleep(0.3)  # every worker has applied the pause
    await rt.pool("p").add_many("noop", [() for _ in range(jobs)])
    began = time.monotonic()
    await rt.change_pool("p", paused=False)
    while await rt.count(status="SUCCESS") < jobs:
        await asyncio.sleep(0.01)
    return jobs / (time.monotonic() - began)


async def _latency(rt: Any) -> tuple[float, float]:
    delays = []
    for _ in range(300):
        before = time.time()
        job_id = await rt.pool("p").add("stamp")
        delays.append((await rt.wait(job_id, timeout=10)).result - before)
        await asyncio.sleep(0.01)
    delays.sort()
    return delays[len(delays) // 2] * 1000, delays[int(len(delays) * 0.99)] * 1000


async def _events(rt: Any) -> tuple[float, float]:
    delays = []
    for _ in range(3):
        job_id = await rt.pool("p").add("ticks", 400)
        async for event in rt.subscribe(job_id):
            if event.type.value == "progress":
                delays.append(time.time() - float(event.data["message"]))
    delays.sort()
    return delays[len(delays) // 2] * 1000, delays[int(len(delays) * 0.99)] * 1000


async def _schema(base: str, run: str, what: str) -> str:
    return f"{base}{'&' if '?' in base else '?'}schema=bench_nodes_{what}_{run}"


async def _drop(base: str, urls: list[str]) -> None:
    import asyncpg

    conn = await asyncpg.connect(base)
    try:
        for url in urls:
            schema = url.rsplit("schema=", 1)[1]
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def one_run(base: str, jobs: int) -> dict[str, float]:
    run = uuid.uuid4().hex[:8]
    out: dict[str, float] = {}
    urls = []
    try:
        for what, mode, n in (("owner", "owner", 1), ("node1", "nodes", 1), ("node2", "nodes", 2)):
            url = await _schema(base, run, f"d{what}")
            urls.append(url)
            out[f"drain_{what}"] = await _with_workers(url, mode, n, lambda rt: _drain(rt, jobs))
        for what, mode in (("owner", "owner"), ("node1", "nodes")):
            url = await _schema(base, run, f"l{what}")
            urls.append(url)
            p50, p99 = await _with_workers(url, mode, 1, _latency)
            out[f"latency_{what}_p50_ms"], out[f"latency_{what}_p99_ms"] = p50, p99
        for what, mode in (("owner", "owner"), ("node1", "nodes")):
            url = await _schema(base, run, f"e{what}")
            urls.append(url)
            p50, p99 = await _with_workers(url, mode, 1, _events)
            out[f"events_{what}_p50_ms"], out[f"events_{what}_p99_ms"] = p50, p99
    finally:
        await _drop(base, urls)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", nargs=2, metavar=("URL", "MODE"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    base = os.environ.get("COMPARE_POSTGRES_URL", DEFAULT_URL)
    runs = [asyncio.run(one_run(base, args.jobs)) for _ in range(args.runs)]
    figures = {k: [r[k] for r in runs] for k in runs[0]}
    for name, values in figures.items():
        print(json.dumps({"figure": name, "median": statistics.median(values), "runs": values}))
    if args.json:
        return
    med = {k: statistics.median(v) for k, v in figures.items()}
    spread = {k: (min(v), max(v)) for k, v in figures.items()}
    print()
    print(f"drain of {args.jobs} no-op jobs (jobs/s, median of {args.runs}; min-max):")
    for what in ("owner", "node1", "node2"):
        k = f"drain_{what}"
        print(
            f"  {what:6} {med[k]:8.0f}  ({spread[k][0]:.0f}-{spread[k][1]:.0f})"
            f"  {med[k] / med['drain_owner']:.2f}x the owner"
        )
    for figure, title in (("latency", "add -> start"), ("events", "event to a stream elsewhere")):
        print(f"{title} (ms):")
        for what in ("owner", "node1"):
            print(
                f"  {what:6} p50 {med[f'{figure}_{what}_p50_ms']:.2f}  "
                f"p99 {med[f'{figure}_{what}_p99_ms']:.2f}"
            )


if __name__ == "__main__":
    main()
