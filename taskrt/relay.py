"""Between the processes of one host: the owner's events out, the others' calls in.

On one SQLite file one process owns the jobs (``taskrt.ownership``); the other
processes of the host (standbys, clients) connect to the owner's relay, a Unix
socket whose address the lease row records. Over that one connection a
process receives the events of the jobs its subscribers follow and sends the
calls it forwards (adds, actions, reads of live jobs and pools).

Design notes (cited where they apply):

1. **Frames.** A frame is a 4-byte big-endian length and a JSON object; one
   connection carries both directions. Values are checked before they reach a
   job (``taskrt.limits``), so they are valid JSON; a frame above
   ``MAX_FRAME`` ends the connection, so none is sent: a call that large is
   not forwarded, and an answer that large is an ``OwnerUnreachable`` error
   instead; either way the caller does it through the database (an
   ``add_many`` of 70 one-megabyte jobs, a listing of 80 of them).
2. **Interest, not everything.** A process tells the owner which jobs its
   subscribers follow (``watch`` / ``unwatch``) and whether it has a
   many-job subscriber (``wide``). The owner keeps, per peer, one many-job
   subscription of its broker that accepts exactly those events, so a peer
   costs the owner nothing for jobs nobody there follows (``Broker.wants``
   asks the peer), and the peer's events pass through the same bounded,
   conflating buffer as any subscriber's (events note 2).
3. **Order.** The owner reads a peer's frames in order and registers a
   ``watch`` before it reads the next frame, so a call sent after a ``watch``
   (the snapshot a stream opens with) is answered from a state that every
   later event follows: subscribe first, then read, as in one process.
4. **Gaps.** When the owner's subscription for a peer overflows, or the
   connection ends, the peer closes its own job subscriptions as overflowed:
   streams start again from a snapshot (``rt.subscribe`` does so by itself;
   an SSE client reconnects and resumes by ``Last-Event-ID``).
5. **Errors cross as themselves.** A call that fails on the owner raises the
   same ``TaskrtError`` subclass, with the same attributes, in the caller.
6. **The socket is private.** It is created with mode 0600, so only the
   processes of the database's user can connect.
7. **A clean goodbye.** An owner that stops sends ``bye``; a peer then sends
   no more calls (they fail with ``OwnerUnreachable(sent=False)``, and the
   caller falls back to the database) and answers ``bye``. The owner answers
   every call it read before that, and only then hangs up and lets the lock
   go: no forwarded add is lost or left in doubt by a clean stop, and none is
   made in an owner that is handing over. A peer whose connection ends counts
   as one that said ``bye``: a peer that hangs up after the owner's close
   began (it stopped too, or died) is waited for no longer (the close waited
   out its patience, 5 s, for a goodbye that could not come).
8. **Who answers.** The owner's first frame names it (``hello``): every owner
   listens at the same address, so the lease row read before connecting may
   already name the previous one.
9. **A start is whole or nothing.** A standby may be stopped while it takes
   over, in the middle of starting its relay. The socket is made and returned
   before anything is awaited, and a start cancelled after that closes it:
   before, a cancelled start left a socket that went on accepting connections
   for a process that no longer owned the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import struct
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

from . import errors
from .errors import OwnerUnreachable, TaskrtError
from .events import EventBus, Subscription
from .models import Event, EventType, JobStatus

log = logging.getLogger("taskrt")

_LENGTH = struct.Struct("!I")
MAX_FRAME = 64 * 1024 * 1024
PEER_BUFFER = 4096
"""Events a peer's subscription at the owner holds before it conflates progress."""

CONNECT_TIMEOUT = 1.0
CALL_TIMEOUT = 10.0
"""Seconds a forwarded call waits for the owner (one whose event loop is blocked
that long is treated as unreachable: reads fall back to the database)."""
PROBE_EVERY = 0.5
"""Seconds between two pings of an owner that left a call unanswered (``stalled``)."""
_ANSWER = "taskrt-relay-call"
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]
"""The owner's answer to a forwarded call: (method, arguments) -> a JSON value."""


def relay_address(path: str) -> str:
    """Where the owner of the database at ``path`` listens: beside it, or (for a
    path too long for a Unix socket, or one that is not UTF-8) in a private folder
    of the temporary directory."""
    real = os.path.realpath(path)  # whatever name opened it (ownership note 7)
    beside = real + ".sock"
    try:
        size = len(beside.encode())
    except UnicodeEncodeError:
        # A file name that is not UTF-8 (b"\xff.db" comes as surrogates): the owner
        # records its address in the database as text, which such a name is not.
        return private_address(real)
    if size <= 100:
        return beside
    return private_address(real)


def private_address(name: str) -> str:
    """A socket in this user's private folder of the temporary directory, named
    after ``name`` (a database that is not a file: a server's URL and schema)."""
    folder = os.path.join(tempfile.gettempdir(), f"taskrt-{os.getuid()}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:24]
    return os.path.join(folder, f"{digest}.sock")


class FrameTooLarge(ValueError):
    """A message whose frame would be above ``MAX_FRAME`` (note 1): never sent."""


def encode_frame(message: dict[str, Any]) -> bytes:
    body = _dumps(message).encode("utf-8", "surrogatepass")
    if len(body) > MAX_FRAME:
        raise FrameTooLarge(f"{len(body)} bytes, above the relay's {MAX_FRAME}")
    return _LENGTH.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    """The next frame; ``asyncio.IncompleteReadError`` at the end of the stream."""
    (size,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if size > MAX_FRAME:
        raise ConnectionError(f"a relay frame of {size} bytes is above the limit")
    message = json.loads(await reader.readexactly(size))
    if not isinstance(message, dict):
        raise ValueError(f"a relay frame holds {type(message).__name__}, not an object")
    return message


def encode_event(event: Event) -> list[Any]:
    return [
        event.job_id,
        event.seq,
        event.type.value,
        event.task,
        event.pool,
        event.status.value,
        event.at,
        event.data,
    ]


def decode_event(raw: list[Any]) -> Event:
    job_id, seq, kind, task, pool, status, at, data = raw
    return Event(job_id, seq, EventType(kind), task, pool, JobStatus(status), at, data)


def encode_error(exc: BaseException) -> dict[str, Any]:
    """A ``TaskrtError`` as its class name, arguments and attributes (note 5)."""
    attrs = {}
    for key, value in vars(exc).items():
        try:
            _dumps(value)
        except (TypeError, ValueError):
            continue
        attrs[key] = value
    args = [a if isinstance(a, str | int | float | bool) or a is None else str(a) for a in exc.args]
    return {"type": type(exc).__name__, "args": args, "attrs": attrs, "text": str(exc)}


def decode_error(raw: dict[str, Any]) -> TaskrtError:
    cls = getattr(errors, str(raw.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, TaskrtError)):
        return TaskrtError(str(raw.get("text")))
    exc: TaskrtError = cls.__new__(cls)
    exc.args = tuple(raw.get("args") or ())
    for key, value in (raw.get("attrs") or {}).items():
        with contextlib.suppress(AttributeError):
            setattr(exc, key, value)
    return exc


# -- the owner's side ------------------------------------------------------------------


class _Peer:
    """One connected process, as the owner sees it."""

    def __init__(self, server: RelayServer, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.writer = writer
        self.jobs: set[int] = set()
        self.wide = False
        self.sub: Subscription | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.said_bye = asyncio.Event()

    def accepts(self, job_id: int) -> bool:
        return self.wide or job_id in self.jobs

    def matches(self, event: Event) -> bool:
        return self.accepts(event.job_id)

    def send(self, message: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(encode_frame(message))

    def subscribe(self) -> Subscription:
        self.sub = self.server.broker.subscribe(
            None, matches=self.matches, accepts=self.accepts, maxsize=PEER_BUFFER
        )
        return self.sub

    async def pump(self) -> None:
        """Send the events of the peer's subscription, in batches (note 2)."""
        while True:
            sub = self.subscribe()
            while True:
                event = await sub.get()
                if event is None:
                    break
                batch = [encode_event(event)]
                while (more := sub.get_nowait()) is not None and len(batch) < 512:
                    batch.append(encode_event(more))
                self.send({"t": "ev", "e": batch})
                await self.writer.drain()
            if not sub.overflowed:
                return
            self.send({"t": "gap"})  # note 4: the peer's streams start again
            await self.writer.drain()


class RelayServer:
    """The owner's relay: a Unix socket that peers connect to (notes 1-6)."""

    def __init__(self, broker: EventBus, handle: Handler, *, owner: str, since: float) -> None:
        self.broker = broker
        self.handle = handle
        self.owner = owner
        self.since = since
        self.address: str | None = None
        self._server: asyncio.Server | None = None
        self._peers: set[_Peer] = set()
        self._closing = False

    @property
    def peers(self) -> int:
        return len(self._peers)

    async def start(self, address: str) -> None:
        """Listen at ``address`` (note 9: a start cancelled half-way leaves nothing open)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)  # a dead owner's socket (its address was in the lease row)
        old = os.umask(0o177)  # note 6
        try:
            # Not serving yet: nothing is awaited between the socket's creation and
            # its return here, so no cancel can come between them.
            server = await asyncio.start_unix_server(self._serve, path=address, start_serving=False)
        finally:
            os.umask(old)
        self._server = server
        self.address = address
        try:
            await server.start_serving()
        except BaseException:
            self._closing = True  # a connection accepted meanwhile is not served
            self._stop_listening()
            raise

    def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self.address is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.address)
            self.address = None

    async def close(self, patience: float = 5.0) -> None:
        """Stop listening; answer the calls under way (within ``patience`` seconds),
        refuse new ones (the caller falls back to the database), then hang up."""
        self._closing = True  # a connection accepted but not yet served ends too
        if self._server is not None:
            self._server.close()
        # Note 7: every call a peer sent before its "bye" is read (and answered
        # or refused) before the connection ends.
        for peer in self._peers:
            peer.send({"t": "bye"})
        byes = [asyncio.ensure_future(peer.said_bye.wait()) for peer in self._peers]
        if byes:
            _, late = await asyncio.wait(byes, timeout=patience)
            for waiter in late:
                waiter.cancel()
        answering = [t for peer in self._peers for t in peer.tasks if t.get_name() == _ANSWER]
        if answering:
            await asyncio.wait(answering, timeout=patience)
        for peer in list(self._peers):
            peer.writer.close()
            for task in list(peer.tasks):
                task.cancel()
            if peer.sub is not None:
                peer.sub.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()
        self._stop_listening()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing:
            writer.close()
            return
        peer = _Peer(self, writer)
        peer.send({"t": "hello", "owner": self.owner, "since": self.since})  # note 8
        self._peers.add(peer)
        pump = asyncio.create_task(peer.pump(), name="taskrt-relay-pump")
        peer.tasks.add(pump)
        pump.add_done_callback(peer.tasks.discard)
        try:
            while True:
                message = await read_frame(reader)
                self._receive(peer, message)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # Not what a taskrt process sends: that peer's connection ends, the rest go on.
            log.warning("a relay peer sent a malformed frame (%s); its connection ends", exc)
        finally:
            self._peers.discard(peer)
            peer.said_bye.set()  # nothing more can come from it: a close waits no longer
            if peer.sub is not None:
                peer.sub.close()
            for task in list(peer.tasks):
                task.cancel()
            writer.close()

    def _receive(self, peer: _Peer, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "watch":  # note 3: registered before the next frame is read
            job_id = int(message["job"])
            peer.jobs.add(job_id)
            self.broker.remember(job_id)
        elif kind == "unwatch":
            peer.jobs.discard(int(message["job"]))
        elif kind == "wide":
            peer.wide = bool(message["on"])
        elif kind == "bye":
            peer.said_bye.set()
        elif kind == "call":
            if self._closing:  # never done: the caller may do it through the database
                error = OwnerUnreachable("the owner is stopping")
                peer.send({"t": "err", "id": message.get("id"), "e": encode_error(error)})
                return
            task = asyncio.create_task(self._answer(peer, message), name=_ANSWER)
            peer.tasks.add(task)
            task.add_done_callback(peer.tasks.discard)

    async def _answer(self, peer: _Peer, message: dict[str, Any]) -> None:
        call_id = message.get("id")
        try:
            value = await self.handle(str(message.get("m")), dict(message.get("a") or {}))
        except TaskrtError as exc:
            peer.send({"t": "err", "id": call_id, "e": encode_error(exc)})
        except Exception as exc:
            log.exception("a forwarded call %r failed", message.get("m"))
            peer.send({"t": "err", "id": call_id, "e": {"type": "", "text": repr(exc)}})
        else:
            try:
                peer.send({"t": "ret", "id": call_id, "v": value})
            except FrameTooLarge as exc:  # note 1: the caller reads it from the database
                error = OwnerUnreachable(f"the answer is too large to forward ({exc})", sent=True)
                peer.send({"t": "err", "id": call_id, "e": encode_error(error)})


# -- the other processes' side ----------------------------------------------------------


class RelayClient:
    """A connection to the owner's relay; feeds the local broker, forwards calls."""

    def __init__(self, broker: EventBus, *, on_closed: Callable[[RelayClient], None]) -> None:
        self.broker = broker
        self.on_closed = on_closed
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next = 0
        self.connected = False
        self.accepting = False
        # An answer took longer than CALL_TIMEOUT (the owner's loop is blocked): calls
        # go to the database until any frame of the owner's comes (pings ask for one).
        self.stalled = False
        self._probe: asyncio.Task[None] | None = None
        self.owner: str | None = None
        self.since: float | None = None

    async def connect(self, address: str) -> None:
        """Connect, and tell the owner what this process's subscribers follow."""
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that
        # comes as the connection is made, and a stop waiting for the standby's
        # follow loop (which connects here) would wait for ever.
        async with asyncio.timeout(CONNECT_TIMEOUT):
            reader, writer = await asyncio.open_unix_connection(address, limit=MAX_FRAME)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                hello = await read_frame(reader)
        except (asyncio.IncompleteReadError, ValueError) as exc:
            writer.close()
            raise ConnectionError(f"no hello from the owner's relay ({exc!r})") from None
        except BaseException:
            writer.close()
            raise
        if hello.get("t") != "hello":
            writer.close()
            raise ConnectionError(f"expected a hello from the owner's relay, got {hello!r}")
        self.owner = str(hello["owner"])
        self.since = float(hello["since"])
        self._writer = writer
        self.connected = True
        self.accepting = True
        for job_id in self.broker.followed_jobs():
            self._send({"t": "watch", "job": job_id})
        if self.broker.has_wide():
            self._send({"t": "wide", "on": True})
        self._reader_task = asyncio.create_task(self._read(reader), name="taskrt-relay-read")

    def interest(self, job_id: int | None, on: bool) -> None:
        """The local broker's interest changed (note 2); tell the owner."""
        if not self.connected:
            return
        message = (
            {"t": "wide", "on": on}
            if job_id is None
            else {"t": "watch" if on else "unwatch", "job": job_id}
        )
        # Closing already: the reader ends soon and interrupts the streams (note 4).
        with contextlib.suppress(OwnerUnreachable):
            self._send(message)

    def _send(self, message: dict[str, Any]) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            raise OwnerUnreachable("the connection to the owner is closed")
        writer.write(encode_frame(message))

    async def call(self, method: str, longer: float = 0.0, **args: Any) -> Any:
        """Forward a call to the owner; raises what it raised (note 5). Its answer is
        awaited ``CALL_TIMEOUT`` seconds, plus ``longer`` for a call the owner itself
        lets run longer (a cancel waits for its handler to stop)."""
        within = CALL_TIMEOUT + longer
        if not self.connected:
            raise OwnerUnreachable("not connected")
        if not self.accepting:
            raise OwnerUnreachable("the owner is stopping")  # note 7: not sent
        self._next += 1
        call_id = self._next
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        try:
            try:
                self._send({"t": "call", "id": call_id, "m": method, "a": args})
            except FrameTooLarge as exc:  # note 1: not sent; done through the database
                raise OwnerUnreachable(f"the call is too large to forward ({exc})") from None
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the answer
            # when a cancel comes as it arrives, and the caller (a stop, a request
            # whose client went) runs on as if never cancelled.
            try:
                async with asyncio.timeout(within):
                    return await future
            except TimeoutError:
                self._stall()
                raise OwnerUnreachable(
                    f"no answer to {method!r} within {within:g} s", sent=True
                ) from None
        finally:
            self._pending.pop(call_id, None)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        reason = "the owner closed the connection"
        try:
            while True:
                message = await read_frame(reader)
                self.stalled = False  # the owner's loop runs: it sent this
                kind = message.get("t")
                if kind == "ev":
                    for raw in message["e"]:
                        self.broker.publish(decode_event(raw))
                elif kind == "ret":
                    self._resolve(message.get("id"), message.get("v"), None)
                elif kind == "err":
                    self._resolve(message.get("id"), None, decode_error(message.get("e") or {}))
                elif kind == "gap":
                    self.broker.interrupt()  # note 4
                elif kind == "bye":  # note 7: no call after this one
                    self.accepting = False
                    self._send({"t": "bye"})
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            reason = f"the connection to the owner ended ({type(exc).__name__})"
        finally:
            self._closed(reason)

    def _stall(self) -> None:
        """The owner left a call unanswered: treat it as unreachable (the runtime's
        calls go to the database) until it answers a ping, or anything."""
        self.stalled = True
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._ping(), name="taskrt-relay-probe")

    async def _ping(self) -> None:
        while self.stalled and self.connected:
            self._next += 1  # answered by a frame no call waits for: it clears ``stalled``
            with contextlib.suppress(OwnerUnreachable):
                self._send({"t": "call", "id": self._next, "m": "ping", "a": {}})
            await asyncio.sleep(PROBE_EVERY)

    def _resolve(self, call_id: Any, value: Any, error: BaseException | None) -> None:
        future = self._pending.get(call_id)
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def _closed(self, reason: str) -> None:
        if not self.connected:
            return
        self.connected = False
        if self._writer is not None:
            self._writer.close()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(OwnerUnreachable(reason, sent=True))
        self._pending.clear()
        self.broker.interrupt()  # note 4: what happened meanwhile is not known here
        self.on_closed(self)

    async def close(self) -> None:
        self.on_closed = _ignore  # leaving on purpose: nobody needs to take over
        if self._probe is not None:
            self._probe.cancel()
        task = self._reader_task
        self._reader_task = None
        if self._writer is not None:
            self._writer.close()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._closed("this process stopped")


def _ignore(client: RelayClient) -> None:
    pass
