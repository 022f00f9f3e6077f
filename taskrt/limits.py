"""What a value must be to be stored: the checks every edge runs (plain values).

Every number and string that reaches the store passes through here first, in
the caller's own call, so that one bad value is refused with a clear error
instead of failing a write batch that other jobs share.

Design notes:

1. **Numbers are finite and fit the column.** Progress, durations and times
   are finite floats; an integer is kept as it is while it fits SQLite's
   64-bit INTEGER, otherwise it is turned into a float (``10**400`` fits
   neither and is refused). Progress is stored in REAL columns, so an integer
   from 2**53 on is made a float at once, as a read from disk gives it (a
   whole figure below 2**53 is read back as an integer). Times lie between 1970 and the year 9999, so
   every front end can show them as dates.
2. **Strings are valid UTF-8.** A Python string may hold a lone surrogate
   (``"\\ud800"``), which SQLite cannot store and JSON cannot carry. Checked
   only when a string is not ASCII (one ``isascii`` call on the hot path).
   Text stored as it is (a key, a progress message) holds no NUL character
   either: PostgreSQL's text cannot (a JSON value escapes it, and is stored).
   Text that taskrt writes itself from an exception (errors, tracebacks) is
   repaired instead of refused (``safe_text``): the job must still fail.
3. **JSON values are bounded.** Arguments, metadata and results are encoded
   once, with ``allow_nan=False``; their nesting depth is checked before the
   encoder runs (so 10,000 nested lists are a ``SerializationError``, not a
   ``RecursionError``) and their encoded size after, in bytes. JSON names
   are text: the encoder writes ``1`` as ``"1"``, so a mapping holding both
   would come back with one of them, and such a value is refused (the walk
   that measures the depth looks at the names, only where one is not text).
4. **The limits are one value.** ``Limits`` is frozen; ``Runtime(limits=...)``
   sets them for the Python API and the HTTP API alike.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from .errors import InvalidOption, SerializationError, describe_error, is_error, message_of

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
#: Below it (in magnitude) every integer is exactly one float, and every whole float one integer.
EXACT_FLOAT_BOUND = 1 << 53
MAX_TIME = 253_402_300_799.0  # 9999-12-31T23:59:59Z: the last second a date can show
MAX_DURATION = 100 * 365.25 * 86_400.0  # a hundred years, in seconds
#: An age no job reaches at any time (note 1: times lie between 1970 and MAX_TIME).
AGE_OF_NO_JOB = MAX_TIME + 1.0
#: The epoch seconds a history window may name, either way (the year 33658).
FAR_TIME = 1e12

_SCALARS = frozenset({int, float, str, bool, type(None)})


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds of what a job may carry (note 4). Sizes are encoded UTF-8 bytes."""

    max_depth: int = 32
    max_args_bytes: int = 1 << 20
    max_metadata_bytes: int = 64 << 10
    max_result_bytes: int = 4 << 20
    max_message_bytes: int = 64 << 10
    max_key_bytes: int = 1 << 10
    max_error_bytes: int = 64 << 10

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidOption(
                    f"limits.{name}", f"expected a positive integer, found {shown(value)}"
                )


DEFAULT_LIMITS = Limits()

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def utf8_size(text: str) -> int:
    """The UTF-8 size of ``text``; raises ``UnicodeEncodeError`` for a lone surrogate."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8"))


def _too_deep(value: Any, budget: int) -> bool:
    """True when ``value`` nests more than ``budget`` containers deep (cycles included)."""
    if type(value) in _SCALARS:
        return False
    if budget <= 0:
        return isinstance(value, dict | list | tuple)
    if isinstance(value, dict):
        for key in value:
            if type(key) is not str:
                _check_names(value)
                break
        return any(_too_deep(v, budget - 1) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_too_deep(v, budget - 1) for v in value)
    return False


def check_names(value: Any, max_depth: int) -> None:
    """Raises ``ValueError`` where two keys of a mapping in ``value``, up to
    ``max_depth`` levels deep, become one JSON name (note 3): for a worker process,
    whose result crosses as plain JSON, which keeps one of them silently."""
    _too_deep(value, max_depth)


def _json_name(key: Any) -> Any:
    """The name the encoder writes for a mapping's ``key`` (itself where it writes none)."""
    if key is True or key is False:
        return "true" if key else "false"
    if key is None:
        return "null"
    if isinstance(key, int | float):  # True and False are named above
        return float.__repr__(key) if isinstance(key, float) else int.__repr__(key)
    return key


def _check_names(mapping: dict[Any, Any]) -> None:
    """Raises ``ValueError`` where two keys of ``mapping`` become one JSON name (note 3)."""
    seen: dict[Any, Any] = {}
    for key in mapping:
        name = _json_name(key)
        if name in seen:
            raise ValueError(
                f"the keys {seen[name]!r} and {key!r} are both written as the name "
                f"{str(name)!r} in JSON, and one would be lost"
            )
        seen[name] = key


def encode(
    value: Any, what: str, *, max_bytes: int, max_depth: int, field: str | None = None
) -> str:
    """Compact JSON of ``value``, refused with ``SerializationError`` naming ``what``
    (and the ``field`` that holds it, where there is one) (note 3).

    A value whose own code raises an ``Exception`` while it is looked at (a
    ``__bool__`` that refuses, as a numpy array's does; a ``dict`` subclass
    whose ``items`` raises) is one that cannot be stored: that is the
    ``SerializationError`` too, never what its code raised.
    """
    kind = type(value)
    # By exact type: the truth test of any other value runs its own code, which may raise.
    if (kind is list or kind is tuple or kind is dict) and not value:
        return "{}" if kind is dict else "[]"
    try:
        deep = _too_deep(value, max_depth)  # isinstance and iteration may run its code too
        text = "" if deep else _encoder.encode(value)
    except Exception as exc:
        # json's own words ("Object of type set is not JSON serializable"), else the
        # value's error named as an attempt's is.
        json_error = is_error(exc, TypeError | ValueError | RecursionError)
        detail = message_of(exc) if json_error else describe_error(exc)
        raise SerializationError(what, detail, field) from None
    if deep:
        raise SerializationError(what, f"it is nested more than {max_depth} levels deep", field)
    try:
        size = utf8_size(text)
    except UnicodeEncodeError:
        raise SerializationError(
            what, "it contains a string that is not valid UTF-8 (a lone surrogate)", field
        ) from None
    if size > max_bytes:
        raise SerializationError(
            what, f"it is {size} bytes encoded; the limit is {max_bytes}", field
        )
    return text


def check_text(value: Any, field: str, *, max_bytes: int) -> str:
    """A string that SQLite and JSON can hold, at most ``max_bytes`` long (note 2)."""
    if not isinstance(value, str):
        raise InvalidOption(field, f"expected a string, found {type(value).__name__}")
    try:
        size = utf8_size(value)
    except UnicodeEncodeError:
        raise InvalidOption(
            field, f"expected valid UTF-8 text, found a lone surrogate in {shown(value)}"
        ) from None
    if size > max_bytes:
        raise InvalidOption(field, f"expected at most {max_bytes} bytes, found {size}")
    if "\x00" in value:  # PostgreSQL's text holds none; a key must mean the same on both
        raise InvalidOption(field, f"expected text without NUL characters, found {shown(value)}")
    return value


def safe_text(text: str, max_bytes: int) -> str:
    """``text`` made storable: lone surrogates and NUL characters escaped, cut to
    ``max_bytes`` (note 2)."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        if len(text.encode("utf-8")) > max_bytes:
            cut = text.encode("utf-8")[: max_bytes - 3].decode("utf-8", "ignore")
            return cut + "..."
    elif len(text) > max_bytes:
        return text[: max_bytes - 3] + "..."
    return text


def check_number(value: Any, field: str) -> float | int:
    """A finite number that fits a SQLite column (note 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidOption(field, f"expected a number, found {shown(value)}")
    if type(value) is int and INT64_MIN <= value <= INT64_MAX:
        return value
    try:
        number = float(value)
    except OverflowError:
        raise InvalidOption(field, f"expected a finite number, found {shown(value)}") from None
    if not math.isfinite(number):
        raise InvalidOption(field, f"expected a finite number, found {shown(value)}")
    return number


def check_int64(value: Any, field: str) -> int:
    """An integer within SQLite's 64-bit range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOption(field, f"expected an integer, found {shown(value)}")
    if not INT64_MIN <= value <= INT64_MAX:
        raise InvalidOption(
            field, f"expected an integer from {INT64_MIN} to {INT64_MAX}, found {shown(value)}"
        )
    return value


def check_flag(value: Any, field: str) -> bool:
    """An option that is on or off: ``True`` or ``False``, never a truthy string or
    number (``"no"`` is true)."""
    if not isinstance(value, bool):
        raise InvalidOption(field, f"expected True or False, found {shown(value)}")
    return value


def check_job_id(value: Any, field: str, *, optional: bool = False) -> int:
    """A job's (or workflow's) id given to the API: an integer (``True`` is no id).
    An integer no job has, beyond 64 bits too, is the caller's ``JobNotFound``, as
    for any unknown id. ``optional``: the message says None is taken too."""
    if isinstance(value, bool) or not isinstance(value, int):
        either = " or None" if optional else ""
        raise InvalidOption(field, f"expected a job id (an integer){either}, found {shown(value)}")
    return value


def check_time(value: float, field: str) -> float:
    """Epoch seconds between 1970 and the year 9999 (note 1)."""
    if not (math.isfinite(value) and 0.0 <= value <= MAX_TIME):
        raise InvalidOption(
            field,
            f"expected a time between 1970 and the year 9999 (epoch seconds), found {shown(value)}",
        )
    return value


def check_duration(value: float, field: str) -> float:
    """Finite seconds from 0 to a hundred years (note 1)."""
    if not (math.isfinite(value) and 0.0 <= value <= MAX_DURATION):
        raise InvalidOption(
            field, f"expected a duration from 0 to {MAX_DURATION:.0f} seconds, found {shown(value)}"
        )
    return value


def check_seconds(value: Any, field: str, *, most: float, zero: bool = True) -> float:
    """A setting in seconds: a finite number from 0 (above 0 unless ``zero``) to
    ``most``."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    # NaN fails every comparison; an int of any size compares exactly.
    if not (number and (0 <= value if zero else 0 < value) and value <= most):
        top = f"{most:.0f}" if most == int(most) else f"{most:g}"
        span = f"from 0 to {top}" if zero else f"above 0, up to {top}"
        raise InvalidOption(field, f"expected seconds {span}, found {shown(value)}")
    return float(value)


def check_count(value: Any, field: str, *, least: int, most: int) -> int:
    """A setting that counts something: an integer from ``least`` to ``most``."""
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        raise InvalidOption(
            field, f"expected an integer from {least} to {most}, found {shown(value)}"
        )
    return value


def check_progress(
    current: Any, total: Any, message: Any, limits: Limits, step: Any = None
) -> tuple[float | int, float | int | None, str | None, str | None]:
    """The arguments of a progress report, checked in the reporter's own call.

    A reporter may call this a hundred thousand times a second: the usual values
    (a finite float, an int a REAL keeps exactly, short ASCII text) pass at once.
    """
    if not _plain_number(current):
        current = _real(check_number(current, "current"))
    if total is not None and not _plain_number(total):
        total = _real(check_number(total, "total"))
    if message is not None and not (
        type(message) is str
        and message.isascii()
        and len(message) <= limits.max_message_bytes
        and "\x00" not in message
    ):
        message = check_text(message, "message", max_bytes=limits.max_message_bytes)
    if step is not None:
        step = check_step(step, limits)
    return current, total, message, step


MAX_STEPS = 100
"""Named steps one job may report (``progress(..., step=...)``): the list is bounded."""


def check_step(step: Any, limits: Limits) -> str:
    """A progress step's name: non-empty text of at most ``max_key_bytes``."""
    if not isinstance(step, str) or not step:
        raise InvalidOption("step", f"expected a non-empty string, found {shown(step)}")
    return check_text(step, "step", max_bytes=limits.max_key_bytes)


def _plain_number(value: Any) -> bool:
    """A finite float, or an int below 2**53: stored as it is (``check_number``, ``_real``)."""
    kind = type(value)
    if kind is float:
        return math.isfinite(value)
    return kind is int and -EXACT_FLOAT_BOUND < value < EXACT_FLOAT_BOUND


def _real(number: float | int) -> float | int:
    """As a REAL column keeps it: an int from 2**53 on is a float there (a read gives an
    int only below it, ``taskrt.store.rows``), so make it one here."""
    if type(number) is int and not -EXACT_FLOAT_BOUND < number < EXACT_FLOAT_BOUND:
        return float(number)
    return number


def shown(value: Any) -> str:
    """``repr(value)`` for an error message: short, and never failing.

    Python refuses to print an int of more than 4,300 digits (``ValueError``),
    wherever it is nested; a message must still name the value.
    """
    try:
        text = repr(value)
    except ValueError:
        if isinstance(value, int):
            return f"an integer of about {value.bit_length() * 0.30103:.0f} digits"
        return f"a {type(value).__name__} holding an integer too long to print"
    return text if len(text) <= 80 else text[:77] + "..."


__all__ = [
    "AGE_OF_NO_JOB",
    "DEFAULT_LIMITS",
    "EXACT_FLOAT_BOUND",
    "FAR_TIME",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_DURATION",
    "MAX_TIME",
    "Limits",
    "check_count",
    "check_duration",
    "check_flag",
    "check_int64",
    "check_job_id",
    "check_number",
    "check_progress",
    "check_seconds",
    "check_text",
    "check_time",
    "encode",
    "safe_text",
    "shown",
    "utf8_size",
]
