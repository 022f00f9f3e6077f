"""JSON with comments and trailing commas (Yao's task files), with the line of every key.

``parse(text)`` first blanks out ``//`` and ``/* */`` comments and trailing
commas, *replacing them with spaces* so that every remaining character keeps
its line and column; strings are respected (``"http://x"`` is not a comment).
A trailing comma follows a value: in ``{,}``, ``[,]`` or ``[1,,]`` the comma
before the bracket follows nothing, and stays for ``json`` to refuse.
The standard ``json`` module then parses the result, and a small scanner over
the same text records the line of each key and list item, and any key given
twice in one object.

A line ends at ``"\\r\\n"``, ``"\\r"`` or ``"\\n"``, as in JSON (whose whitespace
takes all three): the ``json`` module's own error positions count ``"\\n"``
only, and would put a whole file saved with ``"\\r"`` line ends on line 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .problems import FieldPath

__all__ = ["JsoncError", "Parsed", "parse", "strip"]


class JsoncError(ValueError):
    """The text is not JSON even with comments and trailing commas allowed."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass(slots=True)
class Parsed:
    value: Any
    lines: dict[FieldPath, int] = field(default_factory=dict)
    duplicates: list[tuple[FieldPath, int]] = field(default_factory=list)


def strip(text: str) -> str:
    """``text`` with comments and trailing commas replaced by spaces (line ends kept)."""
    out = list(text)
    i = 0
    n = len(text)
    pending_comma: int | None = None  # a comma followed so far only by blanks/comments
    after_value = False  # the last character outside blanks and comments ends a value
    while i < n:
        ch = text[i]
        if ch == '"':
            pending_comma = None
            after_value = True
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\\":
                    i += 1
                elif text[i] in _LINE_ENDS:
                    break  # an unterminated string: json reports it
                i += 1
            i += 1
            continue
        if ch == "/" and i + 1 < n and text[i + 1] == "/":
            while i < n and text[i] not in _LINE_ENDS:
                out[i] = " "
                i += 1
            continue
        if ch == "/" and i + 1 < n and text[i + 1] == "*":
            end = text.find("*/", i + 2)
            if end < 0:
                raise JsoncError("unterminated /* comment", _position(text, i)[0])
            for j in range(i, end + 2):
                if out[j] not in _LINE_ENDS:
                    out[j] = " "
            i = end + 2
            continue
        if ch == ",":
            pending_comma = i if after_value else None
            after_value = False
        elif ch in "}]":
            if pending_comma is not None:
                out[pending_comma] = " "
            pending_comma = None
            after_value = True
        elif not ch.isspace():
            pending_comma = None
            after_value = ch not in "{[:"
        i += 1
    return "".join(out)


_LINE_ENDS = "\r\n"


def _position(text: str, at: int) -> tuple[int, int]:
    """The line and column (both from 1) of ``text[at]``; ``"\\r\\n"`` ends one line."""
    line = 1 + text.count("\n", 0, at) + text.count("\r", 0, at) - text.count("\r\n", 0, at)
    start = max(text.rfind("\n", 0, at), text.rfind("\r", 0, at)) + 1
    return line, at - start + 1


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse(text: str) -> Parsed:
    """The value of ``text`` and where its keys are; raises ``JsoncError``."""
    clean = strip(text)
    try:
        value = json.loads(clean, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        line, column = _position(clean, exc.pos)
        raise JsoncError(f"not valid JSON: {exc.msg} (column {column})", line) from None
    except RecursionError:
        raise JsoncError("not valid JSON: nested too deeply", None) from None
    except ValueError as exc:  # NaN/Infinity, or an integer with too many digits
        raise JsoncError(f"not valid JSON: {exc}", None) from None
    parsed = Parsed(value)
    _scan(clean, parsed)
    return parsed


def _scan(text: str, parsed: Parsed) -> None:
    """Record the line of each key and list item; note keys given twice."""
    # One frame per open container: [is_object, path, next_index, keys_seen, current_key]
    stack: list[list[Any]] = []
    line = 1
    i = 0
    n = len(text)

    def value_start(at_line: int) -> FieldPath | None:
        if not stack:
            parsed.lines.setdefault((), at_line)
            return ()
        frame = stack[-1]
        if frame[0]:
            return (*frame[1], frame[4]) if frame[4] is not None else None
        path: FieldPath = (*frame[1], frame[2])
        parsed.lines.setdefault(path, at_line)
        return path

    while i < n:
        ch = text[i]
        if ch in _LINE_ENDS:
            line += 1
            i += 2 if text.startswith("\r\n", i) else 1
            continue
        if ch.isspace() or ch == ":":
            i += 1
            continue
        if ch == '"':
            try:
                string, end = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
            except ValueError:
                return
            after = end
            while after < n and text[after] in " \t\r\n":
                after += 1
            if stack and stack[-1][0] and after < n and text[after] == ":":
                frame = stack[-1]
                key_path: FieldPath = (*frame[1], string)
                if string in frame[3]:
                    parsed.duplicates.append((key_path, line))
                else:
                    parsed.lines[key_path] = line
                frame[3].add(string)
                frame[4] = string
            else:
                value_start(line)
            i = end
            continue
        if ch in "{[":
            path = value_start(line)
            stack.append([ch == "{", path if path is not None else (), 0, set(), None])
            i += 1
            continue
        if ch in "}]":
            if stack:
                stack.pop()
            i += 1
            continue
        if ch == ",":
            if stack and not stack[-1][0]:
                stack[-1][2] += 1
            i += 1
            continue
        # A number, true, false or null.
        value_start(line)
        while i < n and text[i] not in ",}]\n \t\r":
            i += 1
