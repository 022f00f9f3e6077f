"""CPU-bound sync handlers: a thread pool against a process pool, in one run.

    .venv/bin/python -m bench.process_bench            # 2 jobs of ~1 s of CPU each, 3 rounds
    .venv/bin/python -m bench.process_bench --quick    # ~0.3 s each, 1 round

Prints JSON lines. The handler burns CPU in pure Python for a count of loop
turns calibrated in this process to take ``--seconds`` (1 s by default). Each
round adds two such jobs to a pool of concurrency 2 and times from the add to
the second job's end: first the thread pool (the two share one GIL), then the
process pool (``processes=True``; its two children started by a warm-up job
each, whose time is printed apart as the cold start). The figure is the median
round; the target is processes <= 0.6x threads on a machine with two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from taskrt import Runtime


def emit(name: str, **fields: Any) -> None:
    print(json.dumps({"bench": name, **fields}), flush=True)


def spin(turns: int) -> int:
    """Pure-Python CPU work: ``turns`` loop turns (module level: a child imports it)."""
    total = 0
    for i in range(turns):
        total += i % 7
    return total


def calibrate(seconds: float) -> int:
    """Loop turns that take about ``seconds`` of CPU here."""
    turns = 200_000
    while True:
        started = time.perf_counter()
        spin(turns)
        took = time.perf_counter() - started
        if took > 0.5:
            return int(turns * seconds / took)
        turns *= 4


_RESULTS: dict[int, int] = {}


def spin_result(turns: int) -> int:
    if turns not in _RESULTS:
        _RESULTS[turns] = spin(turns) if turns < 1000 else _closed_form(turns)
    return _RESULTS[turns]


def _closed_form(turns: int) -> int:
    full, rest = divmod(turns, 7)
    return full * 21 + rest * (rest - 1) // 2


async def main(seconds: float, rounds: int) -> None:
    turns = calibrate(seconds)
    emit("process_pool_calibration", turns=turns, seconds=seconds, cpus=os.cpu_count())
    with tempfile.TemporaryDirectory() as d:
        rt = Runtime(str(Path(d) / "bench.db"))
        rt.task(name="spin", pool="threads", call="plain")(spin)
        rt.pool("threads", concurrency=2)
        rt.pool("processes", concurrency=2, processes=True)
        async with rt:
            # Start both children (a spawn each), timed apart: the cold start.
            cold = await two_jobs_in(rt, "processes", 1)
            threads: list[float] = []
            processes: list[float] = []
            for _ in range(rounds):
                threads.append(await two_jobs_in(rt, "threads", turns))
                processes.append(await two_jobs_in(rt, "processes", turns))
    thread_s = statistics.median(threads)
    process_s = statistics.median(processes)
    ratio = process_s / thread_s
    emit("process_pool_cold_start_2_children", wall_s=round(cold, 3))
    emit(
        "cpu_bound_2_jobs_threads",
        wall_s=round(thread_s, 3),
        rounds=[round(t, 3) for t in threads],
    )
    emit(
        "cpu_bound_2_jobs_processes",
        wall_s=round(process_s, 3),
        rounds=[round(t, 3) for t in processes],
    )
    emit(
        "cpu_bound_processes_vs_threads",
        ratio=round(ratio, 3),
        target="<= 0.6x",
        ok=ratio <= 0.6,
    )


async def two_jobs_in(rt: Runtime, pool: str, turns: int) -> float:
    """Two jobs of ``spin(turns)`` in ``pool``: seconds from the add to both ended."""
    started = time.perf_counter()
    ids = await rt.pool(pool).add_many("spin", [(turns,), (turns,)])
    for job_id in ids:
        info = await rt.wait(job_id, timeout=120)
        assert info.result == spin_result(turns), info
    return time.perf_counter() - started


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=1.0, help="CPU seconds per job")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 0.3, 1
    asyncio.run(main(args.seconds, args.rounds))
