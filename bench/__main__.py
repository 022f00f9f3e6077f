"""Run every benchmark: ``python -m bench`` (``--quick`` for a short run)."""

import asyncio
import sys

from bench import core_bench

asyncio.run(core_bench.main("--quick" in sys.argv))
