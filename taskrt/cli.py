"""The ``taskrt`` command line.

Each subcommand is one function, registered in ``COMMANDS`` with the
``command`` decorator together with a function that adds its arguments::

    def _serve_args(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("db")

    @command("serve", "run the workers and the HTTP API", _serve_args)
    def serve(args: argparse.Namespace) -> int:
        ...

Conventions: a command returns its exit status (0 ok, 1 something is wrong,
2 bad usage, 3 not found, 4 unavailable: see docs/cli.md) or raises
``CommandError(message, status)``; an error is one line on stderr
(``taskrt: error: ...``) unless ``--debug`` asks for the traceback.

The operator commands (serve, add, get, ls, watch, ...) live in
``cli_commands``; ``build_parser`` imports it, which registers them here.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

from .errors import TaskrtError

__all__ = ["COMMANDS", "Command", "CommandError", "UsageError", "command", "main"]

Run = Callable[[argparse.Namespace], int]
Configure = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    help: str
    configure: Configure
    run: Run


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, configure: Configure) -> Callable[[Run], Run]:
    """Register ``run`` as the subcommand ``name``."""

    def register(run: Run) -> Run:
        if name in COMMANDS:
            raise ValueError(f"the command {name!r} is registered twice")
        COMMANDS[name] = Command(name, help, configure, run)
        return run

    return register


class CommandError(Exception):
    """An expected failure of a command: one line on stderr, exit ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class UsageError(CommandError):
    """Bad arguments found after parsing (exit status 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 2)


def build_parser() -> argparse.ArgumentParser:
    import_module("taskrt.cli_commands")  # registers serve, add, get, ls, watch, ...
    parser = argparse.ArgumentParser(
        prog="taskrt", description="An asyncio background-task runtime."
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an unexpected error"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in sorted(COMMANDS):
        cmd = COMMANDS[name]
        child = sub.add_parser(name, help=cmd.help, description=cmd.help)
        child.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=None)
        cmd.configure(child)
        child.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Run | None = getattr(args, "_run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except CommandError as exc:
        if args.debug:
            traceback.print_exc()
        _error(str(exc))
        return exc.status
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        else:
            _error(_one_line(exc))
        return 1


def _error(message: str) -> None:
    print(f"taskrt: error: {message}", file=sys.stderr)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, TaskrtError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _object_at(reference: str, root: str | None) -> Any:
    """``module:attribute`` (or a dotted path) -> the object; a class is instantiated."""
    from .taskfiles.resolve import ResolveError, add_root, resolve

    dotted = reference.replace(":", ".")
    if root is not None:
        add_root(Path(root).resolve())
    add_root(Path.cwd())
    try:
        found = resolve(dotted, None)
    except ResolveError as exc:
        raise UsageError(f"--executor {reference}: {exc}") from None
    return found() if isinstance(found, type) else found


# -- validate ------------------------------------------------------------------------


def _validate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="task files or folders")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--root",
        help="the app root dotted paths are imported from (default: the tasks folder's parent)",
    )
    parser.add_argument(
        "--executor",
        metavar="MODULE:NAME",
        help="the executor of Anchor tasks (a class is instantiated with no arguments); "
        "without it, executor methods are not checked",
    )


@command("validate", "check task files and print every problem", _validate_args)
def validate(args: argparse.Namespace) -> int:
    from .taskfiles import Problem, check_tasks

    executor = None if args.executor is None else _object_at(args.executor, args.root)
    names: list[str] = []
    problems: list[Problem] = []
    sources: set[str] = set()
    first: dict[str, str] = {}
    for path in args.paths:
        specs, found = check_tasks(
            path, executor=executor, root=args.root, require_handlers=executor is not None
        )
        problems.extend(found)
        for spec in specs:
            source = spec.source or str(path)
            if spec.name in first and first[spec.name] != source:
                problems.append(
                    Problem(
                        file=source,
                        line=None,
                        field="name",
                        found=spec.name,
                        expected="a task id used once",
                        message=f"duplicate task id {spec.name!r}: also defined in "
                        f"{first[spec.name]}",
                    )
                )
                continue
            first[spec.name] = source
            names.append(spec.name)
            sources.add(source)
    if args.json:
        payload = {
            "ok": not problems,
            "tasks": names,
            "problems": [p.to_dict() for p in problems],
        }
        print(json.dumps(payload, indent=2, ensure_ascii=False))
    elif problems:
        for problem in problems:
            print(problem)
        count = len(problems)
        print(f"{count} problem{'s' if count != 1 else ''} found", file=sys.stderr)
    else:
        files = len(sources)
        print(
            f"ok: {len(names)} task{'s' if len(names) != 1 else ''} "
            f"in {files} file{'s' if files != 1 else ''}"
        )
    return 1 if problems else 0


# -- generate ------------------------------------------------------------------------


def _generate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="an Anchor tasks.yaml (or a folder)")
    parser.add_argument(
        "-o", "--output", metavar="FILE", help="where to write the module (default: stdout)"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when FILE is not what would be generated",
    )


@command("generate", "write typed Python helpers from Anchor task definitions", _generate_args)
def generate(args: argparse.Namespace) -> int:
    from .codegen import generate as render
    from .taskfiles import DefinitionError

    try:
        text = render(args.path)
    except DefinitionError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        _error(f"{len(exc.problems)} problem(s) in {args.path}; nothing generated")
        return 1
    if args.check:
        if not args.output:
            raise UsageError("--check needs -o FILE")
        target = Path(args.output)
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current != text:
            _error(f"{target} is out of date; run: taskrt generate {args.path} -o {target}")
            return 1
        return 0
    if not args.output or args.output == "-":
        sys.stdout.write(text)
        return 0
    target = Path(args.output)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    print(f"wrote {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    # ``python -m taskrt.cli``: run the imported ``taskrt.cli``, whose table the
    # command modules fill (this ``__main__`` copy has only the commands above).
    from taskrt.cli import main as _main

    raise SystemExit(_main())
