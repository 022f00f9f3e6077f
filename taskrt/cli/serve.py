"""``taskrt serve``: the app's HTTP API and its workers, under uvicorn.

The one command that runs a runtime for real (support note 2); how it exits on
Ctrl-C and SIGTERM is support note 3.

Design note: **one exit status, however many processes.** With one worker,
uvicorn's server runs here: it exits with its startup failure's status when
the app's startup fails, and raises a SIGTERM it drained for again. With
``--workers N`` (and ``--reload``) a supervisor runs here instead, and
returns normally whatever happened: a child whose startup failed stops it
(uvicorn logs "failed to start, stopping the parent process"), and so does a
SIGTERM. ``serve`` runs uvicorn's ``Multiprocess`` itself, so it reads the
children's exit statuses (uvicorn's ``STARTUP_FAILURE``: exit 4, as with one
worker), and notes the signals the supervisor received through
``signal.set_wakeup_fd``, which Python's own handler writes every signal's
number to, whatever handler the supervisor installed (``signals_received``):
a SIGTERM is raised again once the children stopped. Under ``--reload`` a
failed start waits for the next change of the code, as uvicorn's reloader does.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import InvalidOption
from ..runtime import Runtime
from .support import OK, UNAVAILABLE, CommandError, UsageError, load_object


def serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "app", metavar="MODULE:ATTR", help="the Runtime (or an ASGI app) to serve, e.g. app:rt"
    )
    parser.add_argument("--host", default="127.0.0.1", help="the interface (default: 127.0.0.1)")
    parser.add_argument(
        "--port", type=port, default=8000, help="the TCP port, 0-65535 (default: 8000)"
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        metavar="HOST",
        help="a Host name to answer, e.g. jobs.example.com or *.example.com (repeatable; "
        "default: $TASKRT_ALLOWED_HOSTS, comma-separated; without either, a server on "
        "127.0.0.1 answers loopback names only). For a Runtime: an ASGI app checks its own",
    )
    parser.add_argument(
        "--reload", action="store_true", help="restart when the code changes (development)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="serve from N processes on one port: one runs the jobs, the others serve "
        "the API and take over if it dies (docs/deployment.md; default: 1)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="json: one JSON object a line, with job_id, task and attempt (taskrt.logging)",
    )


def port(raw: str) -> int:
    """``--port``: 0-65535, refused at parsing (exit 2). Out of range, uvicorn would
    fail to bind only after the app's lifespan had started the runtime."""
    value = int(raw) if raw.isascii() and raw.isdigit() else -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected 0-65535, found {raw!r}")
    return value


def asgi_app(reference: str, allowed_hosts: Sequence[str] | None = None) -> Any:
    """The app ``serve`` runs: ``create_app(rt, allowed_hosts=...)`` for a Runtime
    (it reads ``$TASKRT_TOKEN`` and ``$TASKRT_ALLOWED_HOSTS`` itself), else the
    object as it is, which configures its own hosts and auth."""
    found = load_object(reference)
    if isinstance(found, Runtime):
        from ..web import create_app

        return create_app(found, allowed_hosts=allowed_hosts)
    if callable(found):
        if allowed_hosts is not None:
            raise UsageError(
                f"--allowed-host applies to a Runtime, and {reference} is an ASGI app: "
                "give its create_app(allowed_hosts=...), or set $TASKRT_ALLOWED_HOSTS"
            )
        return found
    raise UsageError(f"{reference} is a {type(found).__name__}, not a Runtime or an ASGI app")


def reload_factory() -> Any:
    """``uvicorn --reload`` (and ``--workers``) import the app anew in each process: the
    reference is in the env (and ``--allowed-host`` is in ``$TASKRT_ALLOWED_HOSTS``,
    which ``create_app`` reads)."""
    return asgi_app(os.environ["TASKRT_SERVE_APP"])


# What ``uvicorn --reload`` imports in each worker; built from the names, so it
# follows a move of this module.
RELOAD_FACTORY = f"{__name__}:{reload_factory.__name__}"


def warn_if_open(app: Any, host: str, port: int) -> None:
    """A warning on stderr when ``app`` is served beyond loopback without any auth."""
    from ..web.hosts import is_loopback

    api = getattr(getattr(app, "state", None), "taskrt", None)
    if api is None or api.settings.auth is not None or is_loopback(host):
        return
    print(
        f"taskrt: warning: serving {host}:{port} without authentication: anyone who can "
        "reach it can add, cancel and retry jobs. Set TASKRT_TOKEN (docs/http-api.md) "
        "or serve on 127.0.0.1.",
        file=sys.stderr,
    )


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ..logging import configure

    if args.workers < 1:
        raise UsageError(f"--workers: expected 1 or more processes, found {args.workers}")
    try:
        # Import errors show here, before uvicorn starts.
        app = asgi_app(args.app, args.allowed_host)
    except InvalidOption as exc:  # a malformed --allowed-host, $TASKRT_ALLOWED_HOSTS, $TASKRT_TOKEN
        raise UsageError(str(exc)) from None
    warn_if_open(app, args.host, args.port)
    configure(format=args.log_format, level=args.log_level.upper())
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": args.log_level,
        "timeout_graceful_shutdown": 5,
    }
    if args.log_format == "json":
        options["log_config"] = None  # uvicorn's records go through taskrt's JSON handler
    failed = False
    try:
        if args.reload or args.workers > 1:
            os.environ["TASKRT_SERVE_APP"] = args.app
            if args.allowed_host:
                os.environ["TASKRT_ALLOWED_HOSTS"] = ",".join(args.allowed_host)
            with signals_received() as received:
                if args.reload:
                    uvicorn.run(RELOAD_FACTORY, factory=True, reload=True, **options)
                else:
                    failed = supervise(args.workers, options)
        else:
            uvicorn.run(app, **options)
    except SystemExit as exc:  # uvicorn exits when it cannot bind or start the app
        failed = exc.code not in (0, None)
    if failed:
        raise CommandError(
            "the server stopped at start (port taken? database owned?); see the log above",
            UNAVAILABLE,
        )
    if args.reload or args.workers > 1:
        reraise(received)
    return OK


def supervise(workers: int, options: dict[str, Any]) -> bool:
    """Serve from ``workers`` processes under uvicorn's supervisor, as ``uvicorn.run``
    does; whether it stopped because a child's startup failed (module docstring)."""
    from uvicorn import Config
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    config = Config(RELOAD_FACTORY, factory=True, workers=workers, **options)
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    return any(child.exitcode == STARTUP_FAILURE for child in supervisor.processes)


@contextlib.contextmanager
def signals_received() -> Iterator[list[int]]:
    """The signals this process receives in the block, whatever handlers are
    installed meanwhile (module docstring); the list is filled when it ends."""
    read, write = socket.socketpair()
    received: list[int] = []
    try:
        read.setblocking(False)
        write.setblocking(False)
        before = signal.set_wakeup_fd(write.fileno(), warn_on_full_buffer=False)
        try:
            yield received
        finally:
            signal.set_wakeup_fd(before)
            with contextlib.suppress(BlockingIOError):
                received.extend(read.recv(4096))
    finally:
        read.close()
        write.close()


def reraise(received: Sequence[int]) -> None:
    """End this process by a SIGTERM a supervisor received and drained for, with
    the signal's default action, as one worker's uvicorn does (support note 3)."""
    if signal.SIGTERM in received:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)


__all__ = [
    "RELOAD_FACTORY",
    "asgi_app",
    "port",
    "reload_factory",
    "reraise",
    "serve",
    "serve_args",
    "signals_received",
    "supervise",
    "warn_if_open",
]
