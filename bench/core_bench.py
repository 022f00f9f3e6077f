"""Core runtime benchmarks against a raw aiosqlite baseline measured in the same run.

Prints one JSON line per figure. Run with ``make bench`` or
``python -m bench.core_bench [--quick] [--runs 3]`` (with several runs, each
figure is their median, with the lowest and highest; a ratio is taken against
the baseline of its own run). Every database is a real file in a
temporary folder, WAL mode, ``synchronous=normal`` unless said otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiosqlite

from taskrt import JobContext, Runtime
from taskrt.store.sqlite.sql import INSERT_JOBS_JSON, SQL_START, SQL_SUCCESS

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


_MOVES = "UPDATE job_counts SET n = n + ? WHERE pool = 'default' AND status = ?"


async def raw_batched_schema(path: Path, n: int, batch: int = 100) -> float:
    """``raw_batched`` on taskrt's own schema: the floor of ``add_many``. Each batch
    of 100 plain jobs is inserted by the statement taskrt uses for an ``add_many``
    (the rows' arguments read from one JSON array, ids given), with the move of the
    live counts, in a transaction of its own; plain ``sqlite3`` on the loop's
    thread, as taskrt commits such a batch (store note 15). The tables and their
    indexes are created by a runtime that then stops."""
    async with _runtime(path, workers=False):
        pass
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")
    now = time.time()
    alike = ("noop", "default", 1, 0, "{}", None, now, now, None, None, 0, None, None)
    calls = json.dumps([["[]", "{}"]] * batch)  # the arguments of a batch, encoded once
    t = time.perf_counter()
    for first in range(1, n + 1, batch):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(INSERT_JOBS_JSON, (first, *alike, calls))
        conn.execute(_MOVES, (batch, "WAITING"))
        conn.execute("COMMIT")
    rate = n / (time.perf_counter() - t)
    conn.close()
    return rate


def _write_lifecycle(conn: sqlite3.Connection, ended: list[int], started: list[int]) -> None:
    """One transaction of what taskrt writes for no-op jobs of pool ``default``:
    the ends of ``ended`` (SUCCESS), the starts of ``started`` (RUNNING, attempt 1
    charged) and the moves of the live counts (store note 12)."""
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    if ended:
        conn.executemany(SQL_SUCCESS, [(None, now, 0.0, 0.0, "", 3, i, "default") for i in ended])
    if started:
        conn.executemany(SQL_START, [(1, now, 2, i, "default") for i in started])
    conn.executemany(
        _MOVES,
        [
            (len(ended), "SUCCESS"),
            (len(started) - len(ended), "RUNNING"),
            (-len(started), "WAITING"),
        ],
    )
    conn.execute("COMMIT")


async def raw_lifecycle(path: Path, n: int, concurrency: int) -> float:
    """Floor of a drain at ``concurrency``: what taskrt must write for each no-op job,
    written raw, on taskrt's own schema with ``n`` waiting jobs stored. A job's
    start (RUNNING, its attempt charged) commits before its handler runs, so a
    transaction can carry at most ``concurrency`` starts; each carries that many
    starts and the ends of the jobs before them, with the moves of the live
    counts, as a drain's batches do (store notes 12, 16). Plain ``sqlite3`` on
    the loop's thread, as the drain's small batches commit (store note 15)."""
    client = _runtime(path, workers=False)
    async with client:
        pool = client.pool("default")
        for _ in range(n // 500):
            await pool.add_many("noop", [()] * 500)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")
    ids = [r[0] for r in conn.execute("SELECT id FROM jobs WHERE status = 'WAITING' ORDER BY id")]
    t = time.perf_counter()
    before: list[int] = []
    for start in range(0, len(ids) + concurrency, concurrency):
        chunk = ids[start : start + concurrency]
        _write_lifecycle(conn, before, chunk)
        before = chunk
    rate = len(ids) / (time.perf_counter() - t)
    conn.close()
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


class Collections:
    """The garbage collector's passes while this is entered (``gc.callbacks``): how
    long they took in all, and how many were full (generation 2) ones."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0
        self._began = 0.0

    def _observe(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        self.seconds += time.perf_counter() - self._began
        if info["generation"] == 2:
            self.full += 1

    def __enter__(self) -> Collections:
        gc.callbacks.append(self._observe)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._observe)


async def add_many(path: Path, n: int) -> tuple[float, Collections]:
    """Rate of ``add_many`` of 100, and the collector's passes while it ran: a full
    one in the timed loop costs about a fifth of it (the jobs in memory are
    what it walks), and whether one falls in it is most of the spread."""
    rt = _runtime(path)
    rt.pool("default").pause()
    async with rt:
        pool = rt.pool("default")
        with Collections() as collected:
            t = time.perf_counter()
            for _ in range(n // 100):
                await pool.add_many("noop", [()] * 100)
            elapsed = time.perf_counter() - t
        return n / elapsed, collected


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


async def bare_sleepers(n: int, concurrency: int, nap: float) -> float:
    """The loop's own floor for ``sleepers``: ``concurrency`` plain asyncio workers
    taking ``n`` naps from a list, no runtime. A timer is late by up to a
    millisecond (epoll waits in whole milliseconds), once a round."""
    left = list(range(n))

    async def worker() -> None:
        while left:
            left.pop()
            await asyncio.sleep(nap)

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t


async def durable_sleepers(
    path: Path, n: int, concurrency: int, nap: float, *, minimal: bool = False
) -> float:
    """The floor for ``sleepers`` of any runtime that writes a job's start to disk
    before its handler runs (pool note 5): ``bare_sleepers`` whose workers, before
    each nap, wait for their start to commit. Everything queued in one turn of the
    loop commits in one transaction at the next turn, plain ``sqlite3`` on the
    loop's thread, as the runtime's small batches do (store note 15). No runtime
    code runs: what this costs above ``bare_sleepers`` is the durable start alone.

    Written raw on taskrt's own schema with ``n`` waiting jobs stored: a round's
    starts, the ends of the naps before them (not waited for) and the moves of
    the live counts (store note 12). ``minimal``: the least any such runtime
    writes, one integer column of a two-column table per start, and no end."""
    if minimal:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, status INTEGER)")
        conn.executemany("INSERT INTO jobs VALUES (?, 0)", [(i,) for i in range(n)])
    else:
        client = _runtime(path, workers=False)
        async with client:
            await client.pool("default").add_many("noop", [()] * n)
        conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")
    left = [r[0] for r in conn.execute("SELECT id FROM jobs")]
    loop = asyncio.get_running_loop()
    starts: list[int] = []
    ends: list[int] = []
    committed: list[asyncio.Future[None]] = []

    def commit() -> None:
        if minimal:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("UPDATE jobs SET status = 1 WHERE id = ?", [(i,) for i in starts])
            conn.execute("COMMIT")
        else:
            _write_lifecycle(conn, ends, starts)
        starts.clear()
        ends.clear()
        for fut in committed:
            fut.set_result(None)
        committed.clear()

    async def worker() -> None:
        while left:
            job_id = left.pop()
            if not (starts or ends):
                loop.call_soon(commit)
            starts.append(job_id)
            started = loop.create_future()
            committed.append(started)
            await started
            await asyncio.sleep(nap)
            if not minimal:
                if not (starts or ends):
                    loop.call_soon(commit)
                ends.append(job_id)

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t
    if ends:
        commit()
    conn.close()
    return wall


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


async def cold_drain(path: Path, n: int, concurrency: int) -> float:
    """``n`` jobs added by a client without workers; then a runtime starts and drains
    them: jobs a second from the start of ``async with rt`` to the last one ended."""
    client = _runtime(path, workers=False)
    async with client:
        pool = client.pool("default")
        for _ in range(n // 500):
            await pool.add_many("noop", [()] * 500)
    rt = _runtime(path)
    pool = rt.pool("default", concurrency=concurrency)
    t = time.perf_counter()
    async with rt:
        while pool.processed < n:
            await asyncio.sleep(0.0005)
        elapsed = time.perf_counter() - t
        await rt.store.flush()
    return n / elapsed


async def one_run(d: Path, quick: bool) -> dict[str, dict[str, float]]:
    """Every figure once, in a fresh folder: name -> its values (ratios to this run's baselines)."""
    n = 2_000 if quick else 10_000
    out: dict[str, dict[str, float]] = {}
    single = await raw_single(d / "raw1.db", n // 5)
    batched = await raw_batched(d / "raw100.db", n)
    out["raw_single_insert_per_tx"] = {"rate": single}
    out["raw_batched_100_per_tx"] = {"rate": batched}
    r = await seq_add(d / "seq.db", n // 5)
    out["sequential_add"] = {"rate": r, "ratio_vs_raw_single": r / single}
    r, collected = await add_many(d / "many.db", n)
    schema = await raw_batched_schema(d / "raw100schema.db", n)
    out["raw_batched_100_per_tx_taskrt_schema"] = {
        "rate": schema,
        "ratio_vs_raw_batched": schema / batched,
    }
    out["add_many_100"] = {
        "rate": r,
        "ratio_vs_raw_batched": r / batched,
        "ratio_vs_raw_batched_taskrt_schema": r / schema,
        "gc_share": collected.seconds * r / n,
        "gc_full_passes": collected.full,
    }
    out["producers_100_normal"] = {"rate": await producers(d / "prod.db", n, 100, "normal")}
    out["producers_100_full"] = {"rate": await producers(d / "prodfull.db", n, 100, "full")}
    floor = await raw_lifecycle(d / "floor.db", n, 10)
    out["raw_lifecycle_writes_c10"] = {"rate": floor, "ratio_vs_raw_batched": floor / batched}
    r = await process(d / "proc.db", n, 10)
    out["process_noop_c10"] = {
        "rate": r,
        "ratio_vs_raw_batched": r / batched,
        "ratio_vs_raw_lifecycle": r / floor,
    }
    r = await cold_drain(d / "cold.db", n, 10)
    out["cold_start_drain_c10"] = {
        "rate": r,
        "ratio_vs_raw_batched": r / batched,
        "ratio_vs_raw_lifecycle": r / floor,
    }
    p50, p99 = await latency(d / "lat.db", 300 if quick else 1000, 100)
    out["add_to_start_latency_at_100_per_s"] = {"p50_ms": p50, "p99_ms": p99}
    bare = await bare_sleepers(1000, 50, 0.05)
    out["bare_asyncio_sleepers_1000x50ms_c50"] = {"wall_s": bare, "ratio_vs_ideal": bare / 1.0}
    least = await durable_sleepers(d / "napleast.db", 1000, 50, 0.05, minimal=True)
    out["durable_start_minimal_sleepers_1000x50ms_c50"] = {
        "wall_s": least,
        "ratio_vs_ideal": least / 1.0,
    }
    floor = await durable_sleepers(d / "napfloor.db", 1000, 50, 0.05)
    out["durable_start_sleepers_1000x50ms_c50"] = {"wall_s": floor, "ratio_vs_ideal": floor / 1.0}
    wall = await sleepers(d / "nap.db", 1000, 50, 0.05)
    out["sleepers_1000x50ms_c50"] = {
        "wall_s": wall,
        "ratio_vs_ideal": wall / 1.0,
        "ratio_vs_bare_asyncio": wall / bare,
        "ratio_vs_durable_start": wall / floor,
    }
    calls = 20_000 if quick else 100_000
    rate, batches = await progress_calls(d / "prog.db", calls, 10)
    out["progress_calls_10_subscribers"] = {"rate": rate, "write_batches": batches}
    return out


TARGETS = {
    "sequential_add": ">= 1.0x",
    "add_many_100": ">= 0.5x",
    "producers_100_normal": ">= 30000/s",
    "producers_100_full": ">= 5000/s",
    "process_noop_c10": ">= 27000/s and >= 0.3x",
    "cold_start_drain_c10": ">= 0.4x",
    "add_to_start_latency_at_100_per_s": "p50 <= 0.6, p99 <= 1.5",
    "sleepers_1000x50ms_c50": "<= 1.03x",
    "progress_calls_10_subscribers": ">= 100000/s",
}


def _rounded(value: float) -> float:
    return round(value) if abs(value) >= 100 else round(value, 3)


async def main(quick: bool, runs: int = 1) -> None:
    """``runs`` runs of every figure; each is printed as the median of its runs,
    with the lowest and highest (``min``/``max``) when there was more than one."""
    results = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            results.append(await one_run(Path(tmp), quick))
    for name, first in results[0].items():
        fields: dict[str, Any] = {}
        for key in first:
            values = [run[name][key] for run in results]
            fields[key] = _rounded(statistics.median(values))
            if runs > 1:
                fields[f"{key}_min"] = _rounded(min(values))
                fields[f"{key}_max"] = _rounded(max(values))
        if name in TARGETS:
            fields["target"] = TARGETS[name]
        if runs > 1:
            fields["runs"] = runs
        emit(name, **fields)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--runs", type=int, default=1, help="runs of every figure (median, min, max)"
    )
    args = parser.parse_args()
    asyncio.run(main(args.quick, args.runs))
