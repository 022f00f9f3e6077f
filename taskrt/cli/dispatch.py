"""The ``taskrt`` command line: the table of commands, the parser, dispatch and
exit statuses.

Every subcommand is one row of ``COMMANDS``, the explicit registry: its name, its
one-line help, a function that adds its arguments and a function that runs it::

    Command("serve", "serve the app's HTTP API ...", serve.serve_args, serve.serve),

Nothing registers itself on import: a new command is a function in the module
of its topic and a row here.

Conventions: a command returns its exit status (0 ok, 1 something is wrong,
2 bad usage, 3 not found, 4 unavailable: see docs/cli.md and
``taskrt.cli.support`` note 3) or raises ``CommandError(message, status)``; an
error is one line on stderr (``taskrt: error: ...``) unless ``--debug`` asks for
the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import database, files, jobs, schedules, serve, watch, workflows
from .support import CommandError, Run, error, one_line, targets_from_env

__all__ = ["COMMANDS", "Command", "Configure", "build_parser", "main"]

Configure = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True, slots=True)
class Command:
    """One subcommand: ``configure`` adds its arguments, ``run`` returns its exit status."""

    name: str
    help: str
    configure: Configure
    run: Run


COMMANDS: tuple[Command, ...] = (
    # the jobs (taskrt.cli.jobs)
    Command("add", "add a job (returns once it is durable)", jobs.add_args, jobs.add),
    Command(
        "get", "show one job: status, progress, result or error, attempts", jobs.get_args, jobs.get
    ),
    Command("ls", "list jobs, newest first, with filters", jobs.ls_args, jobs.ls),
    Command("cancel", "cancel a waiting or running job", jobs.id_args, jobs.cancel),
    Command("retry", "run a FAILURE or CANCELLED job again", jobs.id_args, jobs.retry),
    Command(
        "workflow",
        "show a workflow: its jobs, what each waits for, status, progress (--cancel)",
        workflows.workflow_args,
        workflows.workflow,
    ),
    Command(
        "stats",
        "counts by status, success rate, mean and p95 duration",
        jobs.stats_args,
        jobs.stats,
    ),
    Command(
        "bulk",
        "cancel, retry or purge every job a filter matches (a dry run without --yes)",
        jobs.bulk_args,
        jobs.bulk,
    ),
    Command(
        "run-now",
        "start a delayed or backing-off job as soon as it can",
        jobs.id_args,
        jobs.run_now,
    ),
    Command("cleanup", "delete finished jobs older than an age", jobs.cleanup_args, jobs.cleanup),
    # the database
    Command(
        "migrate",
        "create or upgrade the database's tables (safe while other processes run)",
        database.migrate_args,
        database.migrate,
    ),
    Command(
        "copy",
        "copy a stopped SQLite database into an empty PostgreSQL schema",
        database.copy_args,
        database.copy,
    ),
    Command(
        "watch",
        "show a job's live progress bar until it ends (exit 1 unless SUCCESS)",
        watch.watch_args,
        watch.watch,
    ),
    # the server and its schedules
    Command(
        "serve",
        "serve the app's HTTP API and run its workers (uvicorn)",
        serve.serve_args,
        serve.serve,
    ),
    Command(
        "schedules",
        "list the cron schedules and their next fire times",
        schedules.schedules_args,
        schedules.schedules,
    ),
    # task files
    Command(
        "validate", "check task files and print every problem", files.validate_args, files.validate
    ),
    Command(
        "generate",
        "write typed Python helpers from Anchor task definitions",
        files.generate_args,
        files.generate,
    ),
)


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    """The parser of ``commands``, listed by name; a name given twice is a ``ValueError``."""
    parser = argparse.ArgumentParser(
        prog="taskrt", description="An asyncio background-task runtime."
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an unexpected error"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    seen: set[str] = set()
    for cmd in sorted(commands, key=lambda c: c.name):
        if cmd.name in seen:
            raise ValueError(f"the command {cmd.name!r} is registered twice")
        seen.add(cmd.name)
        child = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        child.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=None)
        cmd.configure(child)
        child.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None, commands: Sequence[Command] = COMMANDS) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    targets_from_env(args)
    run: Run | None = getattr(args, "_run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``taskrt ls --json | head``): not an error of ours.
        # Point stdout at /dev/null so the interpreter's last flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except CommandError as exc:
        if args.debug:
            traceback.print_exc()
        error(str(exc))
        return exc.status
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        else:
            error(one_line(exc))
        return 1
