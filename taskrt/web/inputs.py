"""Reading what a client sent: JSON bodies, path ids and query parameters.

Every refusal is an ``ApiError`` with a 4xx status; nothing a client sends can
raise anything else out of here.

Notes:

1. The body limit is enforced twice: a ``Content-Length`` above it is refused
   before a byte is read, and the body is counted while it streams in, so a
   chunked upload (no ``Content-Length``) or a lying one stops at the limit too.
2. ``NaN`` and ``Infinity`` are not JSON; Python's parser accepts them, so
   they are refused here rather than stored and failing later. So is a string
   with a lone UTF-16 surrogate (``"\\ud800"``): valid JSON syntax, but not
   Unicode text, and nothing could store it.
3. A body is UTF-8 (RFC 8259), as ``Content-Type`` says when it names a
   charset at all; a leading UTF-8 byte order mark is ignored. Python's parser
   would also read UTF-16 and UTF-32 bytes on its own, so a body in those is
   refused here rather than read as what the client did not declare.
   A name given twice in one object is refused too: RFC 8259 leaves its
   meaning open, and Python's parser would keep the last one silently.
4. Numbers in query parameters and headers are ASCII digits: Python's
   ``int`` and ``float`` also read ``"1_0"``, ``" 5"`` or ``"٣"``, which the
   OpenAPI document (``type: integer``) does not promise; ``str.isdigit``
   is true for ``"²"``, which ``int`` refuses; and ``int`` refuses more than
   4300 digits. ``to_int`` reads them without raising. An integer parameter
   takes ``120.0`` as ``120``, as a body's integer field does: JSON Schema's
   ``integer`` (the document's) holds both, and a client may write either.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from starlette.requests import ClientDisconnect, Request

from ..errors import InvalidOption, JobNotFound
from ..limits import INT64_MIN, shown
from ..retry import parse_age, parse_duration
from .errors import ApiError
from .schemas import DURATION_MAX_LENGTH, DURATION_PATTERN, MAX_INT64

_DIGITS = re.compile(r"[0-9]+")
_WHOLE = re.compile(r"([0-9]+)(?:\.0*)?")
_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_DURATION = re.compile(DURATION_PATTERN)


def to_int(raw: str) -> int | None:
    """``raw`` as a non-negative integer when it is ASCII digits, else ``None`` (note 4).

    A number beyond ``MAX_INT64`` is ``MAX_INT64 + 1`` however long it is: every
    caller refuses it as out of range, and none has to read 5000 digits.
    """
    if _DIGITS.fullmatch(raw) is None:
        return None
    significant = raw.lstrip("0")
    if len(significant) > len(str(MAX_INT64)):
        return MAX_INT64 + 1
    return min(int(significant or "0"), MAX_INT64 + 1)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _refuse_twice(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object from its ``pairs``; a name given twice is a ``ValueError`` (note 3)."""
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise ValueError(f"the name {name!r} is given twice in one object")
            seen.add(name)
    return value


def _is_json(content_type: str) -> bool:
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        return False
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            return False
    return True


async def read_json(request: Request, limit: int) -> Any:
    """The request's JSON body: 415, 413 or 400 when it is not acceptable (notes 1-3)."""
    content_type = request.headers.get("content-type", "")
    if not _is_json(content_type):
        shown = content_type or "none"
        raise ApiError(
            415,
            "unsupported_media_type",
            f"expected Content-Type: application/json, found {shown}",
        )
    declared = request.headers.get("content-length")
    if declared is not None:
        length = to_int(declared.strip())
        if length is None:
            raise ApiError(400, "bad_request", f"Content-Length is not a number: {declared!r}")
        if length > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(
            400, "bad_request", "the client disconnected before sending the body"
        ) from None
    raw = b"".join(chunks)
    if not raw.strip():
        raise ApiError(400, "malformed_json", "the request body is empty; expected a JSON document")
    try:
        text = raw.decode("utf-8-sig")  # note 3
    except UnicodeDecodeError as exc:
        raise ApiError(
            400,
            "malformed_json",
            f"malformed JSON: the body is not UTF-8 (byte {exc.start}); send it as UTF-8",
        ) from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_refuse_twice)
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # a lone surrogate fails here
        return value
    except UnicodeEncodeError:
        raise ApiError(
            400, "malformed_json", "malformed JSON: a string holds a lone UTF-16 surrogate"
        ) from None
    except json.JSONDecodeError as exc:
        raise ApiError(
            400,
            "malformed_json",
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        ) from None
    except (ValueError, RecursionError) as exc:
        # A refused NaN is a ValueError (note 2), as is an integer of more digits
        # than Python converts (whose own words tell the server how to allow it).
        if isinstance(exc, RecursionError):
            message = "too deeply nested"
        elif "integer string conversion" in str(exc):
            message = f"a number has more than {sys.get_int_max_str_digits()} digits"
        else:
            message = str(exc)
        raise ApiError(400, "malformed_json", f"malformed JSON: {message}") from None


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, "body_too_large", f"the request body is larger than {limit} bytes", limit=limit
    )


def json_object(
    value: Any, what: str = "the request body", *, field: str | None = None
) -> dict[str, Any]:
    """``value`` when it is a JSON object, else 422 (naming ``field``, if it is one)."""
    if not isinstance(value, dict):
        raise invalid(field, f"{what} must be a JSON object, found {_kind(value)}")
    return value


@contextlib.contextmanager
def within(prefix: str) -> Iterator[None]:
    """Errors about a field of a nested object, named from the top of the body.

    Inside ``within("chain[2].options.")`` a refused ``delay`` (an ``ApiError``
    from these helpers, or the runtime's ``InvalidOption``) names the field
    ``chain[2].options.delay``, in its ``field`` and at the start of its message.
    """
    try:
        yield
    except ApiError as exc:
        field = exc.extra.get("field")
        if not isinstance(field, str):
            raise
        extra = {**exc.extra, "field": prefix + field}
        raise ApiError(
            exc.status, exc.code, prefix + exc.message, headers=exc.headers, **extra
        ) from None
    except InvalidOption as exc:
        message = str(exc).removeprefix(f"{exc.field}: ")
        raise InvalidOption(prefix + exc.field, message) from None


def refuse_unknown(body: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise invalid(
            unknown[0],
            f"unknown field {unknown[0]!r}; expected some of {', '.join(sorted(allowed))}",
        )


def invalid(field: str | None, message: str) -> ApiError:
    extra: dict[str, Any] = {} if field is None else {"field": field}
    return ApiError(
        422, "invalid_request", message if field is None else f"{field}: {message}", **extra
    )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def field_of(body: dict[str, Any], name: str, kinds: type | tuple[type, ...], what: str) -> Any:
    """``body[name]`` when present and of the right JSON type, else ``None``; 422 otherwise.

    An integer may be written ``5.0``: JSON (and JSON Schema's ``integer``) does
    not tell the two apart, so it is read as ``5``.
    """
    value = body.get(name)
    if value is None:
        return None
    wanted = _tuple(kinds)
    if (
        isinstance(value, float)
        and int in wanted
        and float not in wanted
        and math.isfinite(value)
        and value.is_integer()
    ):
        value = int(value)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in wanted)
    if not ok:
        raise invalid(name, f"expected {what}, found {_kind(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise invalid(name, f"expected {what}, found {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT64:
        raise invalid(name, f"{value} is out of range")
    return value


def job_ids_of(body: dict[str, Any], name: str) -> list[int] | None:
    """``body[name]``: a list of job ids (positive integers), else ``None``; 422 otherwise.

    How many, and whether the list may be empty, is the runtime's to say
    (``definitions.parse_after``).
    """
    value = field_of(body, name, list, "a list of job ids")
    if value is None:
        return None
    ids: list[int] = []
    for item in value:
        if isinstance(item, float) and math.isfinite(item) and item.is_integer():
            item = int(item)  # as ``field_of`` reads an integer written 5.0
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= MAX_INT64:
            raise invalid(name, f"expected job ids (positive integers), found {_shown(item)}")
        ids.append(item)
    return ids


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{_kind(value)} ({text[:30]}...)"


def _tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def matching(name: str, value: str, pattern: re.Pattern[str], what: str) -> str:
    """``value`` when the whole of it matches ``pattern`` (a documented one), else 422."""
    if pattern.fullmatch(value) is None:
        raise invalid(name, f"expected {what}, found {value!r}")
    return value


def duration_of(body: dict[str, Any], name: str) -> float | str | None:
    """``body[name]``: seconds (a number), or a duration as text (``DURATION_PATTERN``)."""
    what = "seconds or a duration like '30s'"
    value: float | str | None = field_of(body, name, (int, float, str), what)
    if isinstance(value, str):
        # Text the runtime cannot read keeps its error (``invalid_option``); what it
        # reads but the document does not promise ("1e3", " 30s") is refused here.
        parse_duration(value, field=name)
        if len(value) > DURATION_MAX_LENGTH:
            raise invalid(name, f"expected {what}, found a string of {len(value)} characters")
        matching(name, value, _DURATION, what)
    return value


def older_than(raw: Any, name: str = "older_than") -> float | None:
    """Seconds of age: a number, or a duration as text (``DURATION_PATTERN``). An
    age beyond the 100 years a duration may have matches no job, so it is taken
    as such rather than refused (``retry.parse_age``, as the runtime reads it)."""
    if raw is None:
        return None
    what = "seconds or a duration like '7d'"
    if isinstance(raw, str):
        if len(raw) > DURATION_MAX_LENGTH or not _DURATION.match(raw):
            raise invalid(name, f"expected {what}, found {raw[:80]!r}")
    elif isinstance(raw, bool) or not isinstance(raw, int | float) or not raw >= 0:
        raise invalid(name, f"expected {what}, found {raw!r}")
    return parse_age(raw, field=name)


def query_bool(request: Request, name: str) -> bool:
    """``?name=true`` / ``false`` (any case); empty or left out: false."""
    raw = (request.query_params.get(name) or "").lower()
    if raw not in ("", "true", "false"):
        raise invalid(name, f"expected true or false, found {raw[:40]!r}")
    return raw == "true"


def job_id_of(request: Request) -> int:
    """The ``{job_id}`` path parameter; ids beyond SQLite's range cannot exist."""
    job_id: int = request.path_params["job_id"]
    if job_id > MAX_INT64:
        raise JobNotFound(job_id)
    return job_id


def query_int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    whole = _WHOLE.fullmatch(raw.removeprefix("-"))  # note 4
    size = None if whole is None else to_int(whole.group(1))
    if size is None:
        raise invalid(name, f"expected an integer from {lo} to {hi}, found {raw!r}")
    value = -size if raw.startswith("-") else size
    if not lo <= value <= hi:
        # The text as sent: the value read is capped beyond MAX_INT64 (``to_int``).
        raise invalid(name, f"expected an integer from {lo} to {hi}, found {shown(raw)}")
    return value


def query_time(request: Request, name: str) -> float | None:
    """Epoch seconds, or an ISO 8601 date-time with a time zone."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if _NUMBER.fullmatch(raw) is not None:  # note 4
        value = float(raw)
    else:
        value = parse_datetime(name, raw)
    if not math.isfinite(value):
        raise invalid(name, f"expected epoch seconds or an ISO 8601 date-time, found {raw!r}")
    return value


def parse_datetime(name: str, raw: str) -> float:
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise invalid(
            name, f"expected epoch seconds or an ISO 8601 date-time, found {raw!r}"
        ) from None
    if moment.tzinfo is None:
        raise invalid(name, f"the date-time {raw!r} needs a time zone (e.g. 'Z' or '+02:00')")
    return moment.timestamp()


def query_scalar(raw: str) -> Any:
    """A metadata filter value: JSON when it parses as a JSON scalar, else the text."""
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return raw
    if isinstance(value, dict | list) or value is None:
        return raw
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and not INT64_MIN <= value <= MAX_INT64
    ):
        return raw  # no stored number is this one (-2**63 is one)
    return value


__all__ = [
    "MAX_INT64",
    "duration_of",
    "field_of",
    "invalid",
    "job_id_of",
    "job_ids_of",
    "json_object",
    "matching",
    "parse_datetime",
    "query_int",
    "query_scalar",
    "query_time",
    "read_json",
    "refuse_unknown",
    "to_int",
    "within",
]
