"""What is wrong with a task file: ``Problem`` values and the one error that carries them.

Loaders never stop at the first mistake. They record a ``Problem`` for each one
(the file, the line when the parser knows it, the field, what was found and
what was expected) and raise a single ``DefinitionError`` with all of them.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import TaskrtError
from ..limits import shown

__all__ = [
    "DefinitionError",
    "FieldPath",
    "Problem",
    "Report",
    "describe",
    "render_path",
    "suggest",
]

# A position inside a parsed document: keys and list indexes from the root.
FieldPath = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake in one file.

    ``field`` is a path like ``tasks[1].retryPolicy.interval`` (``""`` when
    the problem is the file itself); ``found`` and ``expected`` are short texts
    for people and tools; ``message`` says it all in one sentence.
    """

    file: str
    line: int | None
    field: str
    found: str
    expected: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DefinitionError(TaskrtError, ValueError):
    """One or more task definitions are wrong; ``.problems`` lists every one."""

    code = "invalid_definition"

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} in task definitions"
        super().__init__("\n  ".join([head + ":", *(str(p) for p in self.problems)]))

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "problems": [p.to_dict() for p in self.problems]}


def render_path(path: FieldPath) -> str:
    """``("tasks", 1, "retryPolicy")`` -> ``"tasks[1].retryPolicy"``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def describe(value: Any) -> str:
    """A short text for a found value: the value when small, its type otherwise."""
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    if value is None:
        return "null"
    return shown(value)  # short, even for an int too long for ``repr``


class Report:
    """Collects the problems of one file; knows the line of each path it was told about."""

    def __init__(self, file: str, lines: Mapping[FieldPath, int] | None = None) -> None:
        self.file = file
        self.lines: Mapping[FieldPath, int] = lines or {}
        self.problems: list[Problem] = []

    def line_of(self, path: FieldPath) -> int | None:
        """The line of ``path``, or of its nearest ancestor the parser located."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None

    def add(
        self,
        path: FieldPath,
        message: str,
        *,
        found: Any = "",
        expected: str = "",
        line: int | None = None,
    ) -> None:
        found_text = found if isinstance(found, str) else describe(found)
        self.problems.append(
            Problem(
                file=self.file,
                line=line if line is not None else self.line_of(path),
                field=render_path(path),
                found=found_text,
                expected=expected,
                message=message,
            )
        )

    def wrong_type(self, path: FieldPath, value: Any, expected: str) -> None:
        self.add(
            path, f"expected {expected}, found {describe(value)}", found=value, expected=expected
        )

    def unknown_fields(
        self, path: FieldPath, data: Mapping[Any, Any], known: Collection[str]
    ) -> None:
        """One problem per key of ``data`` that is not in ``known``, with a suggestion."""
        for key in data:
            if isinstance(key, str) and key in known:
                continue
            name = key if isinstance(key, str) else repr(key)
            hint = suggest(name, known)
            expected = "one of " + ", ".join(sorted(known))
            self.add(
                (*path, name),
                f"unknown field {name!r}"
                + (f"; did you mean {hint!r}?" if hint else f"; expected {expected}"),
                found=name,
                expected=hint or expected,
            )


def suggest(name: str, known: Collection[str]) -> str | None:
    """The known name closest to ``name`` (case-insensitively), if one is close enough."""
    by_lower = {k.lower(): k for k in known}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None
