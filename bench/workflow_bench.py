"""Workflows: a group with a callback against as many independent jobs, and how soon a
dependent job starts after its last parent ended.

    .venv/bin/python -m bench.workflow_bench            # 10,000 jobs, 3 rounds, SQLite
    .venv/bin/python -m bench.workflow_bench --quick    # 2,000 jobs, 1 round
    .venv/bin/python -m bench.workflow_bench --db postgresql://postgres@127.0.0.1/postgres

Prints JSON lines. Each round, on a fresh database (a new SQLite file, or a new
PostgreSQL schema), at concurrency 10 with no-op handlers:

- ``independent``: N jobs added with ``add_many``, timed from the add to the
  last one's end (the baseline);
- ``group``: a group of N jobs with a callback (``rt.group([...]).then(...)``),
  timed from the add to the callback's end; ``ratio`` = independent time /
  group time (the rate of the group against the baseline's; target >= 0.5);
- ``release``: 300 pairs, each a parent and a job added ``after`` it, one pair
  at a time: from the parent's ``finished_at`` to the dependent's
  ``started_at`` (both stamped by the runtime's clock), p50 and p95 (target
  p50 <= 2 ms).

The figure of each is the median round; the spread is min..max.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from taskrt import Runtime


def emit(name: str, **fields: Any) -> None:
    print(json.dumps({"bench": name, **fields}), flush=True)


def target(db: str | None, folder: Path) -> str:
    if db is None:
        return str(folder / f"{uuid.uuid4().hex}.db")
    sep = "&" if "?" in db else "?"
    return f"{db}{sep}schema=wfbench_{uuid.uuid4().hex[:12]}"


def build(where: str) -> tuple[Runtime, Any, Any]:
    rt = Runtime(where)

    @rt.task(pool="default")
    async def noop(n: int = 0) -> int:
        return n

    @rt.task(pool="default")
    async def collect(results: list[int]) -> int:
        return len(results)

    return rt, noop, collect


async def independent(where: str, n: int) -> float:
    rt, noop, _ = build(where)
    async with rt:
        pool = rt.pool("default", concurrency=10)
        started = time.perf_counter()
        ids = await pool.add_many(noop, [(k,) for k in range(n)])
        await rt.wait(ids[-1], timeout=300)
        for job_id in ids[-50:]:
            await rt.wait(job_id, timeout=300)
        return time.perf_counter() - started


async def group(where: str, n: int) -> float:
    rt, noop, collect = build(where)
    async with rt:
        rt.pool("default", concurrency=10)
        started = time.perf_counter()
        flow = await rt.group([noop.s(k) for k in range(n)]).then(collect.s())
        done = await rt.wait(flow.jobs[-1], timeout=300)
        took = time.perf_counter() - started
        assert done.result == n, done
        return took


async def release(where: str, pairs: int) -> list[float]:
    rt, noop, _ = build(where)
    gaps: list[float] = []
    async with rt:
        pool = rt.pool("default", concurrency=10)
        for _ in range(pairs):
            parent = await pool.add(noop)
            child = await pool.add(noop.options(after=[parent]))
            done = await rt.wait(child, timeout=30)
            first = await rt.get(parent)
            assert first.finished_at is not None and done.started_at is not None
            gaps.append(done.started_at - first.finished_at)
    return gaps


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--db", help="a PostgreSQL URL (default: SQLite files)")
    parser.add_argument("--jobs", type=int)
    args = parser.parse_args(argv)
    n = args.jobs or (2_000 if args.quick else 10_000)
    rounds = 1 if args.quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        alone: list[float] = []
        grouped: list[float] = []
        for _ in range(rounds):
            alone.append(await independent(target(args.db, folder), n))
            grouped.append(await group(target(args.db, folder), n))
        ratios = [a / g for a, g in zip(alone, grouped, strict=True)]
        emit(
            "independent",
            jobs=n,
            seconds=spread(alone),
            rate=round(n / statistics.median(alone)),
        )
        emit(
            "group",
            jobs=n,
            seconds=spread(grouped),
            rate=round(n / statistics.median(grouped)),
            ratio=spread(ratios),
            target=">= 0.5",
        )
        p50s: list[float] = []
        p95s: list[float] = []
        for _ in range(rounds):
            gaps = sorted(await release(target(args.db, folder), 300))
            p50s.append(gaps[len(gaps) // 2] * 1000)
            p95s.append(gaps[int(len(gaps) * 0.95)] * 1000)
        emit("release", pairs=300, p50_ms=spread(p50s), p95_ms=spread(p95s), target="p50 <= 2 ms")


if __name__ == "__main__":
    asyncio.run(main())
