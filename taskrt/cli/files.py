"""The task-file commands of ``taskrt``: ``validate`` checks task files and prints
every problem; ``generate`` writes typed Python helpers from Anchor definitions.

Neither opens a runtime or a database.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import Any

from .support import UNAVAILABLE, CommandError, UsageError, error


def _object_at(reference: str, root: str | None) -> Any:
    """``module:attribute`` (or a dotted path) -> the object; a class is instantiated."""
    from ..taskfiles.resolve import ResolveError, add_root, resolve

    dotted = reference.replace(":", ".")
    if root is not None:
        add_root(Path(root).resolve())
    add_root(Path.cwd())
    try:
        found = resolve(dotted, None)
    except ResolveError as exc:
        raise UsageError(f"--executor {reference}: {exc}") from None
    if not isinstance(found, type):
        return found
    try:
        inspect.signature(found).bind()
    except TypeError:
        raise UsageError(
            f"--executor {reference}: expected a class instantiated with no arguments "
            f"(or an instance), found {found.__name__}{inspect.signature(found)}"
        ) from None
    except ValueError:
        pass  # no signature to read (a builtin): instantiating it says
    return found()


# -- validate ------------------------------------------------------------------------


def validate_args(parser: argparse.ArgumentParser) -> None:
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


def validate(args: argparse.Namespace) -> int:
    from ..taskfiles import Problem, check_tasks

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


def generate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="an Anchor tasks.yaml (or a folder)")
    parser.add_argument(
        "-o", "--output", metavar="FILE", help="where to write the module (default: stdout)"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when FILE is not what would be generated",
    )


def generate(args: argparse.Namespace) -> int:
    from ..codegen import generate as render
    from ..taskfiles import DefinitionError

    try:
        text = render(args.path)
    except DefinitionError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        error(f"{len(exc.problems)} problem(s) in {args.path}; nothing generated")
        return 1
    if args.check:
        if not args.output:
            raise UsageError("--check needs -o FILE")
        target = output_file(args.output)
        if current_text(target) != text:
            error(f"{target} is out of date; run: taskrt generate {args.path} -o {target}")
            return 1
        return 0
    if not args.output or args.output == "-":
        sys.stdout.write(text)
        return 0
    target = output_file(args.output)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"-o {target}: a part of its path is a file, not a directory") from None
    except OSError as exc:
        raise CommandError(f"-o {target}: cannot write it: {exc.strerror}", UNAVAILABLE) from exc
    print(f"wrote {target}")  # stderr is for failures (docs/cli.md)
    return 0


def current_text(target: Path) -> str | None:
    """What ``--check`` compares: the text of ``target``; ``None`` when there is no
    such file or it is not UTF-8 text (either way, not what would be generated)."""
    try:
        return target.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return None
    except OSError as exc:
        raise CommandError(f"-o {target}: cannot read it: {exc.strerror}", UNAVAILABLE) from exc


def output_file(raw: str) -> Path:
    """``-o FILE``: a file to write (or compare), refused when it is a folder (exit 2)."""
    target = Path(raw)
    if target.is_dir():
        raise UsageError(f"-o {target}: is a directory; expected the module's file name")
    return target


__all__ = ["generate", "generate_args", "validate", "validate_args"]
