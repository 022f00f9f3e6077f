"""Anchor's YAML, read within bounds and with the line of every key.

``read(text, report)`` is PyYAML's safe loader with these differences, each a
problem in ``report`` (with its line) where PyYAML would raise or hang:

1. **Nesting is bounded while composing.** PyYAML composes a document by
   recursion, one level of Python calls per level of nesting: 5,000 nested
   lists were a ``RecursionError``. Past ``MAX_DEPTH`` levels the reading
   stops, naming the line.
2. **Aliases are bounded once expanded.** A small file can describe an
   enormous tree through aliases ("billion laughs"): the composed tree is
   walked before anything is built, and refused past ``MAX_NODES`` values or
   ``MAX_DEPTH`` levels. The same walk records the line of every key and
   list item, and each key a mapping repeats (PyYAML keeps the last silently).
3. **An unquoted date or integer that cannot be built is a problem at its
   field**, and reading goes on (so every problem of the file is reported):
   a date like ``2024-13-45`` (PyYAML raised ``ValueError``), an integer of
   more characters than Python reads from text
   (``sys.int_info.default_max_str_digits``; a base-60 one like
   ``1:2:3:...`` took quadratic time too). Its text is kept in the document.
4. **A number YAML 1.1 reads in a surprising base is a problem at its field**:
   a base-60 one (``timeout: 1:30`` is 90, ``1:30.5`` is 5430.5) and an octal
   one with a leading zero (``attempts: 010`` is 8). YAML 1.2, which Anchor's
   own reader follows, reads neither so (``1:30`` is text, ``010`` is ten), so
   a file that means one thing there would silently mean another here.
   Hexadecimal (``0x10``) and ``0o`` octal read the same in both.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import yaml

from .common import MISSING
from .problems import FieldPath, Report

__all__ = ["MAX_DEPTH", "MAX_NODES", "read"]

MAX_NODES = 50_000
MAX_DEPTH = 100
MAX_INT_CHARS = sys.int_info.default_max_str_digits
_MERGE_TAG = "tag:yaml.org,2002:merge"
_INT_TAG = "tag:yaml.org,2002:int"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_FLOAT_TAG = "tag:yaml.org,2002:float"


def read(text: str, report: Report) -> Any:
    """The document in ``text``, or ``MISSING`` with the reason in ``report``."""
    try:
        loader = _Loader(text)
    except Exception as exc:  # the reader refuses some characters outright
        report.add((), f"not valid YAML: {_yaml_message(exc)}", line=_yaml_line(exc))
        return MISSING
    try:
        node = loader.get_single_node()
        if node is None:
            report.add((), "the file is empty: expected a mapping with a 'tasks:' list", line=1)
            return MISSING
        walked = _walk(node)
        if walked is None:
            report.add(
                (),
                f"the document is too large or too deep once its aliases are expanded "
                f"(more than {MAX_NODES} values or {MAX_DEPTH} levels)",
                line=1,
            )
            return MISSING
        report.lines = walked.lines
        for path, line in walked.duplicates:
            report.add(path, f"field {path[-1]!r} is given twice", found=str(path[-1]), line=line)
        value = loader.construct_document(node)
        for bad in loader.unreadable:
            report.add(
                walked.paths.get(id(bad.node), ()),
                bad.message,
                found=bad.node.value,
                expected=bad.expected,
                line=bad.node.start_mark.line + 1,
            )
        return value
    except _TooDeep as exc:
        report.add(
            (),
            f"the document is nested more than {MAX_DEPTH} levels deep",
            found="text",
            expected=f"at most {MAX_DEPTH} levels of nesting",
            line=exc.line,
        )
        return MISSING
    except yaml.YAMLError as exc:
        report.add((), f"not valid YAML: {_yaml_message(exc)}", line=_yaml_line(exc))
        return MISSING
    except Exception as exc:  # a PyYAML failure not foreseen above: still a problem
        report.add((), f"not valid YAML: {type(exc).__name__}: {exc}", line=None)
        return MISSING
    finally:
        loader.dispose()


class _TooDeep(Exception):
    def __init__(self, line: int | None) -> None:
        super().__init__(line)
        self.line = line


@dataclass(frozen=True, slots=True)
class _Unreadable:
    node: yaml.ScalarNode
    message: str
    expected: str


class _Loader(yaml.SafeLoader):
    """The safe loader, bounded in depth (note 1) and tolerant of bad scalars (note 3)."""

    def __init__(self, text: str) -> None:
        self.depth = 0
        self.unreadable: list[_Unreadable] = []
        super().__init__(text)

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH + 1:  # the root is level 0, as in ``_walk``
                event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
                raise _TooDeep(None if event.start_mark is None else event.start_mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_yaml_int(self, node: yaml.ScalarNode) -> Any:
        if len(node.value) > MAX_INT_CHARS:
            return self._unreadable(
                node,
                f"an integer of {len(node.value)} characters is more than the {MAX_INT_CHARS} "
                "one may have (quote it to keep it as text)",
                f"an integer of at most {MAX_INT_CHARS} digits",
            )
        digits = node.value.lstrip("+-").replace("_", "")
        if ":" in digits:
            return self._base_60(node)
        if len(digits) > 1 and digits[0] == "0" and digits[1] not in "xXbBoO":
            return self._unreadable(
                node,
                f"{node.value} is read by YAML 1.1 as the octal number "
                f"{super().construct_yaml_int(node)}, by YAML 1.2 as "
                f"{int(digits)}: write it without the leading zero, or quote it for text",
                "a number without a leading zero",
            )
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> Any:
        if ":" in node.value:
            return self._base_60(node)
        return super().construct_yaml_float(node)

    def _base_60(self, node: yaml.ScalarNode) -> str:
        return self._unreadable(
            node,
            f"{node.value} is read by YAML 1.1 as a base-60 number, by YAML 1.2 as text: "
            "write the number itself, a duration like '1m30s', or quote it for text",
            "a plain number, or text in quotes",
        )

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> Any:
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError as exc:  # "month must be in 1..12", "day is out of range for month"
            reason = str(exc)
            if reason.startswith("offset"):  # Python's text names timedelta objects
                reason = "the time zone is 24 hours or more from UTC"
            return self._unreadable(
                node,
                f"invalid date {node.value!r}: {reason} (quote it to keep it as text)",
                "a valid date like 2024-01-31, or text in quotes",
            )

    def _unreadable(self, node: yaml.ScalarNode, message: str, expected: str) -> str:
        self.unreadable.append(_Unreadable(node, message, expected))
        return str(node.value)


_Loader.add_constructor(_INT_TAG, _Loader.construct_yaml_int)
_Loader.add_constructor(_FLOAT_TAG, _Loader.construct_yaml_float)
_Loader.add_constructor(_TIMESTAMP_TAG, _Loader.construct_yaml_timestamp)


def _yaml_line(exc: BaseException) -> int | None:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = getattr(mark, "line", None)
    return line + 1 if isinstance(line, int) else None


def _yaml_message(exc: BaseException) -> str:
    problem = getattr(exc, "problem", None)
    context = getattr(exc, "context", None)
    if problem:
        return f"{context}, {problem}" if context else str(problem)
    return " ".join(str(exc).split())[:200]


@dataclass(slots=True)
class _Walked:
    lines: dict[FieldPath, int]
    duplicates: list[tuple[FieldPath, int]]
    paths: dict[int, FieldPath]  # by ``id``: the first path of each number or date scalar


def _walk(root: yaml.Node) -> _Walked | None:
    """Lines by path, keys repeated, and where the int and date scalars are
    (note 2); ``None`` when the tree is past the bounds."""
    walked = _Walked({(): root.start_mark.line + 1}, [], {})
    budget = MAX_NODES
    stack: list[tuple[yaml.Node, FieldPath]] = [(root, ())]
    repeated: set[int] = set()  # key nodes reported, once even when aliased
    while stack:
        node, path = stack.pop()
        budget -= 1
        if budget < 0 or len(path) > MAX_DEPTH:
            return None
        if isinstance(node, yaml.MappingNode):
            keys: set[tuple[str, str]] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    child: FieldPath = (*path, str(key.value))
                    walked.lines.setdefault(child, key.start_mark.line + 1)
                    _note_scalar(walked, key, child)
                    # ``<<`` merges are overridden by design; ``1`` and ``"1"`` differ by tag.
                    if key.tag != _MERGE_TAG and (key.tag, key.value) in keys:
                        if id(key) not in repeated:
                            repeated.add(id(key))
                            walked.duplicates.append((child, key.start_mark.line + 1))
                    keys.add((key.tag, key.value))
                else:
                    child = (*path, "?")
                    stack.append((key, child))
                stack.append((value, child))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                child = (*path, index)
                walked.lines.setdefault(child, item.start_mark.line + 1)
                stack.append((item, child))
        else:
            _note_scalar(walked, node, path)
    return walked


def _note_scalar(walked: _Walked, node: yaml.Node, path: FieldPath) -> None:
    if node.tag in (_INT_TAG, _FLOAT_TAG, _TIMESTAMP_TAG):
        walked.paths.setdefault(id(node), path)
