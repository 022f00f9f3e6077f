"""Server-Sent Events on the wire: frames, the response, and the cap on streams.

Design notes (cited where they apply):

1. **sse-starlette's ``EventSourceResponse`` carries the stream**, rather than
   Starlette's ``StreamingResponse``, which has no heartbeat, no send timeout,
   and (under ASGI 2.4 servers) does not watch for a disconnect while the
   generator waits for an event, so an idle stream's subscription would
   outlive its client. sse-starlette does all of that, answers ``HEAD``
   without opening a stream, and ends streams when uvicorn shuts down (so a
   graceful shutdown is not held open by browsers). Its price is four tasks
   per stream; the benchmark puts a whole stream at ~46 KiB of Python heap,
   about half of it sse-starlette's and anyio's. ``EventStream`` adds: a
   ``SendTimeoutError`` (a client that stopped reading) ends the response
   quietly instead of surfacing as an application error; a stream ended by a
   shutdown finishes its body, so clients see a clean end and reconnect; and a
   close callback runs however the response ends, so the broker subscription
   and the stream slot are released on every path (disconnect, timeout,
   shutdown, bug).
2. **Frames are encoded once, as bytes.** ``frame`` writes ``id``, ``event``
   and a single ``data`` line of compact JSON (JSON escapes newlines, so one
   line always suffices); sse-starlette passes bytes through untouched. An
   event's JSON is computed once however many streams send it (``_Encoded``),
   and kept as bytes (its ``event`` and ``data`` lines), so each stream only
   adds its ``id`` line.
3. **Every buffer is bounded.** Between the broker and the socket sit the
   subscription's buffer (``stream_buffer`` events; it conflates stale
   progress and never drops a terminal event, see ``taskrt.events`` note 2)
   and the transport's write buffer. A client that stops reading fills the
   latter; the next send then waits, and after ``send_timeout`` seconds the
   response ends and the server closes the connection.
4. **Streams are counted.** ``StreamSlots`` caps concurrent streams per app;
   beyond it a request is answered 503 with ``Retry-After`` before any
   subscription is made.
5. **The send timeout is an ``asyncio.timeout``.** sse-starlette wraps every
   send in an anyio cancel scope, which costs more than the rest of a send;
   ``EventStream._send_with_timeout`` does the same job with
   ``asyncio.timeout`` and raises the same ``SendTimeoutError``. (Should a
   later sse-starlette rename that method, its own timeout applies: same
   behaviour, a little slower.)
6. **Data that cannot be sent does not break a stream.** Values are checked
   where they enter (``taskrt.limits``); this is the defence behind that. The
   JSON is written with ``allow_nan=False`` and encoded to UTF-8, and only if
   that fails (a lone surrogate such as ``"\\ud800"``, a NaN or an infinity, a
   key JSON cannot have) is the event written again for that frame alone
   (``encode_data``): ASCII with ``\\uXXXX`` escapes, non-finite numbers as
   ``null``, other keys as text; failing even that, the event without its
   data. The wire always carries valid JSON, the stream goes on, and the
   other streams never see the failure. The common case pays nothing: one
   ``json.dumps`` and one ``encode``, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.types import Message, Receive, Scope, Send

from ..models import Event
from .errors import ApiError

log = logging.getLogger("taskrt.web")

RECONNECT_MS = 1000


_COMPACT = (",", ":")
#: An event's own fields: what the last resort of ``encode_data`` keeps (note 6).
_ENVELOPE = ("job_id", "seq", "type", "task", "pool", "status", "at")


def encode_data(value: dict[str, Any], prefix: str = "", suffix: str = "") -> bytes:
    """``prefix``, ``value`` as one line of compact JSON, ``suffix``: UTF-8, whatever
    ``value`` holds (note 6)."""
    try:
        text = json.dumps(
            value, separators=_COMPACT, ensure_ascii=False, allow_nan=False, default=str
        )
        return f"{prefix}{text}{suffix}".encode()
    except (ValueError, TypeError, RecursionError, UnicodeEncodeError):
        pass
    log.warning(
        "taskrt.web: event %s/%s has data JSON cannot carry as it is; sent escaped",
        value.get("job_id"),
        value.get("seq"),
    )
    try:
        data = _ascii_json(_sendable(value))
    except (ValueError, TypeError, RecursionError):
        data = _ascii_json(_sendable({key: value[key] for key in _ENVELOPE if key in value}))
    return f"{prefix}{data}{suffix}".encode()


def _ascii_json(value: Any) -> str:
    return json.dumps(value, separators=_COMPACT, ensure_ascii=True, allow_nan=False, default=str)


def _sendable(value: Any) -> Any:
    """``value`` with non-finite floats as ``None`` and dict keys JSON can have."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {
            key if isinstance(key, str | int | bool) or key is None else str(key): _sendable(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_sendable(item) for item in value]
    return value


class _Encoded:
    """The last few events' frames but for their ``id`` line, by identity (note 2).

    Many streams on one job send the same ``Event`` object one after another;
    it is encoded once. Keyed by ``id`` and checked with ``is``, so a recycled
    id never returns another event's JSON.
    """

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._entries: OrderedDict[int, tuple[Event, bytes]] = OrderedDict()

    def __call__(self, event: Event) -> bytes:
        entry = self._entries.get(id(event))
        if entry is not None and entry[0] is event:
            return entry[1]
        data = encode_data(event.to_dict(), f"event: {event.type.value}\ndata: ", "\n\n")
        self._entries[id(event)] = (event, data)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return data


_encoded = _Encoded()


def frame(event: Event, event_id: str, *, retry: int | None = None) -> bytes:
    """One SSE frame for ``event`` (notes 2 and 6)."""
    head = f"retry: {retry}\nid: {event_id}\n" if retry is not None else f"id: {event_id}\n"
    return head.encode() + _encoded(event)


def _heartbeat() -> ServerSentEvent:
    return ServerSentEvent(comment="heartbeat", sep="\n")


class StreamSlots:
    """A counter of open streams with a ceiling (note 4)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("max_streams must be at least 1")
        self.limit = limit
        self.active = 0

    def acquire(self, retry_after: int) -> Callable[[], None]:
        """Take a slot, or raise a 503 ``ApiError``; returns the (idempotent) release."""
        if self.active >= self.limit:
            raise ApiError(
                503,
                "too_many_streams",
                f"{self.limit} event streams are open; try again later",
                headers={"Retry-After": str(retry_after)},
            )
        self.active += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.active -= 1

        return release


class EventStream(EventSourceResponse):
    """``text/event-stream`` of pre-encoded frames (notes 1, 3 and 5)."""

    def __init__(
        self,
        frames: AsyncIterator[bytes],
        *,
        heartbeat: float,
        send_timeout: float | None,
        on_close: Callable[[], None],
    ) -> None:
        super().__init__(
            frames,
            ping=heartbeat,
            ping_message_factory=_heartbeat,
            send_timeout=send_timeout,
            sep="\n",
        )
        self._frames = frames
        self._on_close = on_close
        self._timeout = send_timeout

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        """One send, given up after ``send_timeout`` seconds (note 5)."""
        # A send that did not finish marks the response interrupted, as the base
        # class's own does: no closing send is tried after it (a stalled client
        # would hold a shutdown up to another send_timeout).
        try:
            if self._timeout is None:
                await send(message)
                return
            async with asyncio.timeout(self._timeout):
                await send(message)
        except TimeoutError:
            self._send_interrupted = True
            raise SendTimeoutError() from None
        except BaseException:
            self._send_interrupted = True
            raise

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        completed = False

        async def tracking_send(message: Message) -> None:
            nonlocal completed
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                completed = True
            await send(message)

        try:
            await super().__call__(scope, receive, tracking_send)
            if not completed and self.active and not self._send_interrupted:
                # Ended by a server shutdown (note 1): finish the body, so the
                # client sees a clean end and reconnects, not a broken read.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
        except SendTimeoutError:
            # The client stopped reading: the server closes the connection once
            # we return, since the response never completed (note 3).
            log.info(
                "taskrt.web: closed an event stream to %s: the client stopped reading",
                _client(scope),
            )
        finally:
            self._on_close()
            aclose: Any = getattr(self._frames, "aclose", None)
            if aclose is not None:
                # Finalise the generator now rather than at garbage collection;
                # it cannot still be running: the task group has ended.
                with contextlib.suppress(RuntimeError):
                    await aclose()


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "a client"


__all__ = ["RECONNECT_MS", "EventStream", "StreamSlots", "encode_data", "frame"]
