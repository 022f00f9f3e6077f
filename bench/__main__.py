"""Run every benchmark: ``python -m bench`` (``--quick`` for a short core run).

Prints JSON lines: the core runtime against a raw aiosqlite baseline, then the
what a full disk costs, then the SSE figures, then an owner and a standby in
separate processes (``python -m bench.multiproc_bench`` adds a table of them).
``python -m bench.compare`` compares with peer job systems;
``python -m bench.backlog_bench`` measures a large backlog of waiting jobs
(long: not run here).
"""

import asyncio
import sys

from bench import core_bench, faults_bench, multiproc_bench, sse_bench

asyncio.run(core_bench.main("--quick" in sys.argv))
asyncio.run(faults_bench.main("--quick" in sys.argv))
sse_bench.main([])
multiproc_bench.main(["--json", *(["--quick"] if "--quick" in sys.argv else [])])
