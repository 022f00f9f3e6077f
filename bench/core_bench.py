"""Core runtime benchmarks against a raw aiosqlite baseline measured in the same run.

Prints one JSON line per figure. Run with ``make bench`` or
``python -m bench.core_bench [--quick]``. Every database is a real file in a
temporary folder, WAL mode, ``synchronous=normal`` unless said otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiosqlite

from taskrt import JobContext, Runtime

ROW = ("noop", "default", "[]", "{}", 1, 0, "{}", time.time(), time.time())


def emit(name: str, **fields: Any) -> None:
    print(json.dumps({"bench": name, **fields}), flush=True)


async def _raw_db(path: Path, synchronous: str = "NORMAL") -> aiosqlite.Connection:
    db = await aiosqlite.connect(path)
    await db.execute("PRAGMA journal_mode = WAL")
    await db.execute(f"PRAGMA synchronous = {synchronous}")
    await db.execute(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, task TEXT, pool TEXT, "
        "status TEXT DEFAULT 'WAITING', args TEXT, kwargs TEXT, max_attempts INTEGER, "
        "priority INTEGER, metadata TEXT, created_at REAL, run_at REAL)"
    )
    await db.commit()
    return db


_RAW_INSERT = (
    "INSERT INTO jobs (task, pool, args, kwargs, max_attempts, priority, metadata, created_at, run_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


async def raw_single(path: Path, n: int) -> float:
    """Baseline: one INSERT and one COMMIT per job, sequentially."""
    db = await _raw_db(path)
    t = time.perf_counter()
    for _ in range(n):
        await db.execute(_RAW_INSERT, ROW)
        await db.commit()
    rate = n / (time.perf_counter() - t)
    await db.close()
    return rate


async def raw_batched(path: Path, n: int, batch: int = 100) -> float:
    """Baseline: executemany of 100 rows per transaction."""
    db = await _raw_db(path)
    t = time.perf_counter()
    for _ in range(n // batch):
        await db.executemany(_RAW_INSERT, [ROW] * batch)
        await db.commit()
    rate = n / (time.perf_counter() - t)
    await db.close()
    return rate


def _runtime(path: Path, **kw: Any) -> Runtime:
    rt = Runtime(str(path), **kw)

    @rt.task(name="noop")
    async def noop(job: JobContext) -> None:
        return None

    return rt


async def seq_add(path: Path, n: int) -> float:
    rt = _runtime(path)
    rt.pool("default").pause()
    async with rt:
        t = time.perf_counter()
        for _ in range(n):
            await rt.add("noop")
        return n / (time.perf_counter() - t)


async def add_many(path: Path, n: int) -> float:
    rt = _runtime(path)
    rt.pool("default").pause()
    async with rt:
        pool = rt.pool("default")
        t = time.perf_counter()
        for _ in range(n // 100):
            await pool.add_many("noop", [()] * 100)
        return n / (time.perf_counter() - t)


async def producers(path: Path, n: int, concurrency: int, synchronous: str) -> float:
    rt = _runtime(path, synchronous=synchronous)  # type: ignore[arg-type]
    rt.pool("default").pause()
    async with rt:
        per = n // concurrency

        async def produce() -> None:
            for _ in range(per):
                await rt.add("noop")

        t = time.perf_counter()
        await asyncio.gather(*(produce() for _ in range(concurrency)))
        return per * concurrency / (time.perf_counter() - t)


async def process(path: Path, n: int, concurrency: int) -> float:
    rt = _runtime(path)
    pool = rt.pool("default", concurrency=concurrency)
    pool.pause()
    async with rt:
        ids = []
        for _ in range(n // 500):
            ids += await pool.add_many("noop", [()] * 500)
        t = time.perf_counter()
        pool.resume()
        await rt.wait(ids[-1])
        while pool.processed < len(ids):
            await asyncio.sleep(0.0005)
        elapsed = time.perf_counter() - t
        await rt.store.flush()
        return n / elapsed


async def latency(path: Path, n: int, rate: float) -> tuple[float, float]:
    rt = Runtime(str(path))
    started: dict[int, float] = {}

    @rt.task(name="stamp")
    async def stamp(job: JobContext, t0: float) -> None:
        started[job.id] = time.perf_counter() - t0

    async with rt:
        for _ in range(n):
            t0 = time.perf_counter()
            await rt.add("stamp", t0)
            await asyncio.sleep(max(0.0, 1 / rate - (time.perf_counter() - t0)))
        while len(started) < n:
            await asyncio.sleep(0.01)
    values = sorted(started.values())
    return values[len(values) // 2] * 1000, values[int(len(values) * 0.99) - 1] * 1000


async def sleepers(path: Path, n: int, concurrency: int, nap: float) -> float:
    rt = Runtime(str(path))

    @rt.task(name="nap")
    async def nap_(job: JobContext) -> None:
        await asyncio.sleep(nap)

    pool = rt.pool("default", concurrency=concurrency)
    pool.pause()
    async with rt:
        ids = await pool.add_many("nap", [()] * n)
        t = time.perf_counter()
        pool.resume()
        for job_id in ids[-concurrency:]:
            await rt.wait(job_id)
        while pool.running or pool.waiting:
            await asyncio.sleep(0.001)
        return time.perf_counter() - t


async def progress_calls(path: Path, calls: int, subscribers: int) -> tuple[float, int]:
    rt = Runtime(str(path))
    measured: dict[str, float] = {}
    gate = asyncio.Event()

    @rt.task(name="reporter")
    async def reporter(job: JobContext) -> None:
        await gate.wait()
        t = time.perf_counter()
        for i in range(calls):
            await job.progress(i, calls, "working")
        measured["rate"] = calls / (time.perf_counter() - t)

    async with rt:
        job_id = await rt.add("reporter")
        streams = [rt.subscribe(job_id) for _ in range(subscribers)]
        received = [0] * subscribers

        async def consume(i: int) -> None:
            async for _ in streams[i]:
                received[i] += 1

        consumers = [asyncio.create_task(consume(i)) for i in range(subscribers)]
        await asyncio.sleep(0.05)
        gate.set()
        await rt.wait(job_id)
        await asyncio.gather(*consumers)
        writes = rt.store.batches
    return measured["rate"], writes


async def main(quick: bool) -> None:
    n = 2_000 if quick else 10_000
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        single = await raw_single(d / "raw1.db", n // 5)
        batched = await raw_batched(d / "raw100.db", n)
        emit("raw_single_insert_per_tx", rate=round(single))
        emit("raw_batched_100_per_tx", rate=round(batched))

        r = await seq_add(d / "seq.db", n // 5)
        emit(
            "sequential_add",
            rate=round(r),
            ratio_vs_raw_single=round(r / single, 2),
            target=">= 1.0x",
        )
        r = await add_many(d / "many.db", n)
        emit(
            "add_many_100",
            rate=round(r),
            ratio_vs_raw_batched=round(r / batched, 2),
            target=">= 0.5x",
        )
        r = await producers(d / "prod.db", n, 100, "normal")
        emit("producers_100_normal", rate=round(r), target=">= 30000/s")
        r = await producers(d / "prodfull.db", n, 100, "full")
        emit("producers_100_full", rate=round(r), target=">= 5000/s")
        r = await process(d / "proc.db", n, 10)
        emit(
            "process_noop_c10",
            jobs=n,
            rate=round(r),
            ratio_vs_raw_batched=round(r / batched, 2),
            target=">= 27000/s and >= 0.3x",
        )
        p50, p99 = await latency(d / "lat.db", 300 if quick else 1000, 100)
        emit(
            "add_to_start_latency_at_100_per_s",
            p50_ms=round(p50, 3),
            p99_ms=round(p99, 3),
            target="p50 <= 0.6, p99 <= 1.5",
        )
        wall = await sleepers(d / "nap.db", 1000, 50, 0.05)
        emit(
            "sleepers_1000x50ms_c50",
            wall_s=round(wall, 3),
            ratio_vs_ideal=round(wall / 1.0, 3),
            target="<= 1.05x",
        )
        calls = 20_000 if quick else 100_000
        rate, batches = await progress_calls(d / "prog.db", calls, 10)
        emit(
            "progress_calls_10_subscribers",
            calls=calls,
            rate=round(rate),
            write_batches=batches,
            target=">= 100000/s",
        )
        _ = statistics


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    asyncio.run(main(parser.parse_args().quick))
