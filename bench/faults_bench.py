"""What a fault costs: time to recover after a full disk frees, and the price of charging
the attempt before the handler runs. ``python -m bench.faults_bench [--quick]``.

Prints JSON lines. The disk is made full portably with ``PRAGMA max_page_count``
on the runtime's own writer connection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from taskrt import JobContext, Runtime


def emit(name: str, **fields: Any) -> None:
    print(json.dumps({"bench": name, **fields}), flush=True)


async def disk_full_recovery(path: Path, jobs: int) -> dict[str, float]:
    """``jobs`` jobs finish while the disk is full; time from freeing it to all written."""
    rt = Runtime(str(path))
    gate = asyncio.Event()

    @rt.task(pool="work")
    async def big(job: JobContext, n: int) -> str:
        await gate.wait()
        return "x" * 2_000 + str(n)

    rt.pool("work", concurrency=jobs)
    async with rt:
        ids = await rt.pool("work").add_many("big", [(i,) for i in range(jobs)])
        while rt.pool("work").running < jobs:
            await asyncio.sleep(0.001)
        await rt.store.flush()
        pages = (await rt.store.db.execute_fetchall("PRAGMA page_count"))[0][0]
        await rt.store.db.execute_fetchall(f"PRAGMA max_page_count = {pages}")
        gate.set()
        for job_id in ids:
            await rt.wait(job_id)
        while rt.health().ok:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.5)  # an outage of some length: backoff has grown
        retained = rt.health().retained
        t = time.perf_counter()
        await rt.store.db.execute_fetchall("PRAGMA max_page_count = 1073741823")
        while not rt.health().ok:
            await asyncio.sleep(0.001)
        recovered = time.perf_counter() - t
        await rt.store.flush()
        written = time.perf_counter() - t
    return {"recovered_s": recovered, "all_written_s": written, "retained": retained}


async def main(quick: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for n in (100,) if quick else (100, 1000):
            figures = await disk_full_recovery(d / f"full{n}.db", n)
            emit(
                "disk_full_recovery",
                jobs=n,
                retained_writes=figures["retained"],
                recovered_s=round(figures["recovered_s"], 3),
                all_written_s=round(figures["all_written_s"], 3),
                target="<= 1.0 s after the disk frees (backoff capped at 1 s)",
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    asyncio.run(main(parser.parse_args().quick))
