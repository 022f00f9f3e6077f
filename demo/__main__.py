"""``python -m demo``: serve the demo on http://127.0.0.1:8000 (``--host``, ``--port``)."""

from __future__ import annotations

import argparse
import os

import uvicorn

from .app import build_app, build_runtime


def main(argv: list[str] | None = None) -> None:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--host", default=env("TASKRT_DEMO_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("TASKRT_DEMO_PORT", "8000")))
    parser.add_argument("--db", default=env("TASKRT_DEMO_DB", "demo.db"), help="SQLite file")
    parser.add_argument(
        "--speed", type=float, default=float(env("TASKRT_DEMO_SPEED", "1")), help="delay factor"
    )
    args = parser.parse_args(argv)
    app = build_app(build_runtime(args.db, speed=args.speed))
    print(f"taskrt demo: http://{args.host}:{args.port}/  (jobs in {args.db}; Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, timeout_graceful_shutdown=3)


if __name__ == "__main__":
    main()
