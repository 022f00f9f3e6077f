"""Checks shared by the Yao and Anchor loaders: each records a problem instead of raising."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..definitions import is_async
from ..errors import TaskrtError
from ..limits import MAX_DURATION
from ..retry import parse_duration
from .problems import FieldPath, Report, describe
from .resolve import ResolveError, resolve

__all__ = [
    "MISSING",
    "accepts_keyword",
    "callable_at",
    "duration_at",
    "integer_at",
    "is_async",
    "number_at",
    "string_at",
]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def integer_at(
    report: Report,
    path: FieldPath,
    value: Any,
    *,
    minimum: int,
    maximum: int,
    expected: str,
) -> int | None:
    """``value`` when it is an integer from ``minimum`` to ``maximum`` (``2.0`` counts),
    else a problem."""
    if isinstance(value, float) and value.is_integer() and math.isfinite(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        report.wrong_type(path, value, expected)
        return None
    if value > maximum:
        report.wrong_type(path, value, f"{expected}, at most {maximum}")
        return None
    return value


def number_at(
    report: Report,
    path: FieldPath,
    value: Any,
    *,
    minimum: float,
    maximum: float,
    expected: str,
) -> float | None:
    """``value`` as a float when it is a finite number from ``minimum`` to ``maximum``,
    else a problem."""
    # An int is compared as it is: ``float(10**400)`` (and ``math.isfinite``) overflow.
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and not math.isfinite(value))
        or value < minimum
    ):
        report.wrong_type(path, value, expected)
        return None
    if value > maximum:
        report.wrong_type(path, value, f"{expected}, at most {maximum:.0f}")
        return None
    return float(value)


def string_at(
    report: Report, path: FieldPath, value: Any, *, expected: str = "a string"
) -> str | None:
    if not isinstance(value, str):
        report.wrong_type(path, value, expected)
        return None
    return value


def report_lone_surrogates(report: Report, value: Any, path: FieldPath = ()) -> bool:
    """Report each string, and each field name, of a file's document that is not
    valid UTF-8: a lone surrogate, which JSON's ``"\\ud800"`` and YAML's
    ``"\\ud800"`` escapes make. Such text passed the checks and broke later, where
    it was stored or served as JSON (``GET /tasks`` answered 500 for every task).
    True when there was one."""
    found = False
    if isinstance(value, str):
        if not _utf8(value):
            report.add(
                path,
                "the text is not valid UTF-8 (a lone surrogate)",
                found=_escaped(value),
                expected="valid UTF-8 text",
            )
            return True
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and not _utf8(key):
                report.add(
                    path,
                    f"the field name '{_escaped(key)}' is not valid UTF-8 (a lone surrogate)",
                    found=_escaped(key),
                    expected="valid UTF-8 text",
                )
                found = True
                continue
            found = report_lone_surrogates(report, item, (*path, key)) or found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = report_lone_surrogates(report, item, (*path, index)) or found
    return found


def _utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _escaped(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def duration_at(report: Report, path: FieldPath, value: Any) -> float | None:
    """Seconds from a duration like ``"30s"``/``"1h30m"`` or a number of seconds."""
    expected = "a duration like '200ms', '30s', '10m' or '1h30m'"
    # A number is compared as it is (NaN fails too): ``float(10**400)`` overflows.
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not 0 <= value <= MAX_DURATION:
            report.wrong_type(
                path, value, f"{expected}, from 0 to {MAX_DURATION:.0f} seconds (100 years)"
            )
            return None
    try:
        return parse_duration(value, field=str(path[-1]) if path else "duration")
    except TaskrtError:
        report.add(
            path,
            f"bad duration {describe(value)}: expected {expected}",
            found=value,
            expected=expected,
        )
        return None


def callable_at(
    report: Report, path: FieldPath, value: Any, root: Path | None
) -> Callable[..., Any] | None:
    """The callable a dotted path names, or a problem saying why it does not import."""
    if not isinstance(value, str):
        report.wrong_type(path, value, "a dotted path like 'scripts.task.Send'")
        return None
    try:
        return resolve(value, root)
    except ResolveError as exc:
        report.add(path, str(exc), found=value, expected="a dotted path to an importable callable")
        return None


def accepts_keyword(function: Callable[..., Any], name: str) -> bool:
    """Whether ``function`` takes a parameter called ``name`` (or ``**kwargs``)."""
    try:
        params = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        (p.name == name and p.kind is not inspect.Parameter.POSITIONAL_ONLY)
        or p.kind is inspect.Parameter.VAR_KEYWORD
        for p in params
    )
