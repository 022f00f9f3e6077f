"""Task definitions in files: Yao JSON files and Anchor YAML files, loaded into ``TaskSpec``s.

``load_tasks(path)`` reads one file or a folder (recursively, in name order, into
folders linked in too, each folder once; hidden entries and ``__pycache__`` skipped):

- ``*.yao``, ``*.json``, ``*.jsonc``: one Yao task per file (``yao.py``);
- ``*.yaml``, ``*.yml``: an Anchor document with a ``tasks:`` list (``anchor.py``).

Dotted paths (``process``, ``event.*``, ``hooks.onFailed``) are imported
relative to ``root``: by default the parent of the tasks folder (for a single
file, the parent of the folder that holds it), so ``app/tasks/`` next to
``app/scripts/`` finds ``scripts.task.Send``. The root is put on
``sys.path``; the current directory is searched after it.

Every problem of every file is collected; if there is any, ``load_tasks``
raises one ``DefinitionError`` listing them all and returns nothing. It raises
nothing else, whatever the files contain, and never blocks on one: a path that is
not a regular file (a FIFO, a device) is a problem, not read (``_read``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..definitions import TaskSpec, pool_clash
from .adapters import executor_names, snake_case
from .anchor import load_anchor
from .problems import DefinitionError, Problem, Report
from .yao import load_yao

__all__ = [
    "ANCHOR_SUFFIXES",
    "YAO_SUFFIXES",
    "DefinitionError",
    "Problem",
    "check_tasks",
    "executor_names",
    "load_tasks",
    "snake_case",
]

YAO_SUFFIXES = (".yao", ".json", ".jsonc")
ANCHOR_SUFFIXES = (".yaml", ".yml")
MAX_FILE_BYTES = 1_000_000


def load_tasks(
    path: str | os.PathLike[str],
    *,
    executor: object | None = None,
    root: str | os.PathLike[str] | None = None,
) -> list[TaskSpec]:
    """The specs defined under ``path``; raises ``DefinitionError`` listing every problem."""
    specs, problems = check_tasks(path, executor=executor, root=root)
    if problems:
        raise DefinitionError(problems)
    return specs


def check_tasks(
    path: str | os.PathLike[str],
    *,
    executor: object | None = None,
    root: str | os.PathLike[str] | None = None,
    require_handlers: bool = True,
) -> tuple[list[TaskSpec], list[Problem]]:
    """The specs that load, and every problem found (``taskrt validate`` prints them).

    ``require_handlers=False`` accepts Anchor tasks that rely on an executor
    when none is given (see ``anchor.load_anchor``).
    """
    base = Path(path)
    problems: list[Problem] = []
    try:
        files = _files(base)
    except OSError as exc:
        return [], [_file_problem(base, f"cannot read: {exc.strerror or exc}")]
    if files is None:
        return [], [_file_problem(base, "no such file or folder")]
    if not files and not base.is_dir():
        suffixes = ", ".join((*YAO_SUFFIXES, *ANCHOR_SUFFIXES))
        return [], [_file_problem(base, f"not a task file: expected one of {suffixes}")]
    folder = base if base.is_dir() else base.parent
    app_root = Path(root) if root is not None else folder.resolve().parent
    specs: list[TaskSpec] = []
    seen: dict[str, tuple[str, int | None]] = {}
    for file in files:
        shown = _printable(str(file))
        report = Report(shown)
        try:
            text = _read(file)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            report.add((), _printable(f"cannot read: {exc}"))
            problems.extend(report.problems)
            continue
        located: list[tuple[TaskSpec, int | None]] = []
        declared: list[tuple[str, int | None]] = []
        try:
            if file.suffix.lower() in YAO_SUFFIXES:
                task_id = _task_id(file, folder)
                declared.append((task_id, None))
                named = _printable(task_id) == task_id
                if not named:
                    # The id names the task and its pool, which the runtime (and the
                    # database) take as UTF-8 text only: it would refuse the pool when
                    # the task is registered, after the tasks of the files before it.
                    report.add(
                        (),
                        "the file name is not valid UTF-8, and a Yao task's id is taken "
                        "from it: rename the file",
                        found=_printable(task_id),
                        expected="a file name in UTF-8",
                    )
                spec = load_yao(text, task_id=task_id, report=report, root=app_root)
                if spec is not None and named:
                    located.append((spec, None))
            else:
                located = load_anchor(
                    text,
                    report=report,
                    root=app_root,
                    executor=executor,
                    require_handlers=require_handlers,
                    declared=declared,
                )
        except Exception as exc:  # a loader bug must still come out as a problem
            report.add((), f"cannot load: {type(exc).__name__}: {exc}")
        clashes: set[str] = set()
        for name, line in declared:
            first = seen.get(name)
            if first is None:
                seen[name] = (shown, line)
                continue
            clashes.add(name)
            where = first[0] if first[1] is None else f"{first[0]}:{first[1]}"
            report.add(
                (),
                f"duplicate task id {name!r}: also defined in {where}",
                found=name,
                expected="a task id used once",
                line=line,
            )
        specs.extend(spec for spec, _ in located if spec.name not in clashes)
        problems.extend(report.problems)
    for spec in [spec for spec in specs if spec.owns_pool]:
        # A Yao task's pool, named after its id, is its own: what the runtime refuses
        # where it registers the task (``definitions.pool_clash``), told here among
        # the files loaded together, for ``taskrt validate``.
        clash = pool_clash(spec, specs)
        if clash is not None:
            message, _, expected = clash.partition("; expected ")
            problems.append(
                Problem(
                    file=spec.source or "",
                    line=None,
                    field="",
                    found=spec.pool,
                    expected=expected,
                    message=f"{message} (a Yao task's pool is named after its file: "
                    "rename the file)",
                )
            )
            specs.remove(spec)
    return specs, problems


def _files(base: Path) -> list[Path] | None:
    if not base.exists():
        return None
    if not base.is_dir():  # a file, or something else named like one: ``_read`` says what
        return [base] if _wanted(base.name) else []
    found: list[Path] = []
    # Folders linked in are read as the folders they are (``tasks/mail -> ../shared/mail``
    # gives ``mail.send``), each once: a folder reached again by its real path, through
    # a link that loops or a second link to it, is not read again.
    visited: set[str] = set()
    for directory, subdirs, names in os.walk(base, followlinks=True):
        real = os.path.realpath(directory)
        if real in visited:
            subdirs[:] = []
            continue
        visited.add(real)
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(names):
            if not name.startswith(".") and _wanted(name):
                found.append(Path(directory) / name)
    return found


def _wanted(name: str) -> bool:
    return name.lower().endswith((*YAO_SUFFIXES, *ANCHOR_SUFFIXES))


def _read(file: Path) -> str:
    """The text of ``file``, a regular file (after symlinks) of at most ``MAX_FILE_BYTES``.

    Anything else named like a task file (a FIFO, a device such as ``/dev/zero``,
    a socket) raises ``ValueError`` without being read: it is opened without
    blocking (a FIFO with no writer would block the open forever) and checked on
    the open descriptor, so what is checked is what would be read. At most one
    byte past the limit is read, so a file that grows, or says it is empty as a
    ``/proc`` file does, is still too big rather than read to the end.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(file, flags)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"not a regular file but {_kind(info.st_mode)}")
        if info.st_size > MAX_FILE_BYTES:
            raise ValueError(_too_big(f"{info.st_size} bytes is"))
        data = handle.read(MAX_FILE_BYTES + 1) or b""  # None: a read that would block
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(_too_big("it has"))
    return data.decode("utf-8-sig")


def _too_big(size: str) -> str:
    return f"{size} more than the {MAX_FILE_BYTES} bytes a task file may have"


def _kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "something else"


def _printable(name: str) -> str:
    """``name`` as text any output takes: the bytes of a file name that are not UTF-8
    (which Python holds as lone surrogates, and an output refuses) as ``\\xff``."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return name


def _task_id(file: Path, folder: Path) -> str:
    try:
        relative = file.relative_to(folder)
    except ValueError:
        relative = Path(file.name)
    return ".".join((*relative.parent.parts, relative.stem))


def _file_problem(path: Path, message: str) -> Problem:
    return Problem(
        file=_printable(str(path)), line=None, field="", found="", expected="", message=message
    )
