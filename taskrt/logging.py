"""Structured logging: formatters that show the job a record is about.

taskrt logs through the standard ``logging`` module, under the ``taskrt``
logger and its children. A record about a job carries ``job_id``, ``task``,
``pool`` and ``attempt`` as attributes (the runtime logs those through
``taskrt.runtime.job_logger``), so any handler can filter or index on them;
these formatters render them:

- ``JsonFormatter``: one JSON object a line (``time``, ``level``, ``logger``,
  ``message``, the job fields, any other ``extra``, ``exc_info`` as text);
- ``TextFormatter``: the usual line with ``job_id=7 task=resize attempt=2``
  appended.

``configure(format="json")`` puts one of them on the ``taskrt`` logger;
``taskrt serve --log-format json`` does that for the whole process.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

JOB_FIELDS: tuple[str, ...] = ("job_id", "task", "pool", "attempt")

# What every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
    | {"message", "asctime", "taskName", "color_message"}  # uvicorn's ANSI copy of the message
)


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record got from ``extra`` (the job fields first)."""
    found = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
    ordered = {k: found.pop(k) for k in JOB_FIELDS if k in found}
    ordered.update(found)
    return ordered


class JsonFormatter(logging.Formatter):
    """One JSON object a line; the job fields are top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extras(record).items():
            data.setdefault(key, value)
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exc_info"] = record.exc_text
        if record.stack_info:
            data["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(data, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The usual text line, with ``key=value`` job fields appended."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt or "%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = " ".join(f"{k}={record.__dict__[k]}" for k in JOB_FIELDS if k in record.__dict__)
        if not fields:
            return text
        first, sep, rest = text.partition("\n")  # after the message, before a traceback
        return f"{first} [{fields}]{sep}{rest}"


def configure(
    *,
    format: Literal["text", "json"] = "text",
    level: int | str = logging.INFO,
    stream: TextIO | None = None,
    logger: str = "taskrt",
) -> logging.Handler:
    """Send ``logger``'s records (``""``: every logger's) to ``stream`` in ``format``.

    Replaces a handler an earlier ``configure`` put there; returns the handler.
    """
    target = logging.getLogger(logger)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    handler.set_name("taskrt.logging")
    for old in list(target.handlers):
        if old.get_name() == "taskrt.logging":
            target.removeHandler(old)
    target.addHandler(handler)
    target.setLevel(level)
    if format == "json" and logger:
        # uvicorn's own records (server start, access log) in the same format.
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            other = logging.getLogger(name)
            for old in list(other.handlers):
                if old.get_name() == "taskrt.logging":
                    other.removeHandler(old)
            other.addHandler(handler)
            other.propagate = False
            other.setLevel(level)
    return handler


__all__ = ["JOB_FIELDS", "JsonFormatter", "TextFormatter", "configure", "extras"]
