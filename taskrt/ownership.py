"""Who runs a database's jobs, and how that is known: the ownership seam.

Exactly one process may run a SQLite database's jobs (two would run the same
jobs). The others of the host are standbys: they serve the whole API and take
over when the owner dies.

Design notes (cited where they apply):

1. **The kernel says who is alive.** The owner holds an exclusive
   ``fcntl.flock`` on a file beside the database (``<database>.lock``) for its
   whole life. The kernel releases it the moment the process ends, however it
   ends (``kill -9`` included), so a standby trying the lock takes over at
   once: no lease to expire, no clock to trust. The lock is the authority.
2. **The lease row is a record.** The owner writes who it is, where its relay
   listens and since when (``JobStore.claim_ownership``), for ``GET /health``,
   the dashboard, the CLI and the other processes; a row still there when the
   next owner claims means the last one died without stopping (the sequence
   gap of recovery, ``adoption``).
3. **Local disks only.** A file lock on a network file system (NFS, SMB, ...)
   cannot tell which machine's process is alive; such a database is refused
   at start with ``OwnershipError`` rather than risk two owners. Several
   machines share a queue through PostgreSQL, not a shared file.
4. **One process, one file.** ``:memory:`` databases exist in one connection:
   their runtime owns them with no lock.
5. **A server's lock for a server's database.** On PostgreSQL the authority is
   a session advisory lock held by a connection of the owner's own
   (``store.postgres.lock``): the server releases it when that session ends,
   which it learns within seconds for a machine that vanished (TCP
   keepalives). Standbys of the owner's host reach its relay; processes of
   other hosts serve the API from the database.
6. **A lock file removed under its owner.** Deleting ``<database>.lock``
   (a cleaner of old files, an operator) does not release the owner's lock,
   but the next process to look creates a new file and locks that: two
   owners. So a process that gets the lock asks the lease row who owns the
   database, and when that process, on this host, still holds the removed
   file open (Linux: ``/proc/<pid>/fd``), it lets the new lock go and stays a
   standby. The owner looks at the path every ``FOLLOW_INTERVAL``; finding it
   gone or replaced, it locks the file now there (made anew if need be) and
   lets the removed one go.
7. **One file, one lock, whatever name opens it.** The lock file is named
   after the database's real path (``lock_path_of``: symbolic links
   resolved), and so is the relay's socket. Before, a process that opened
   the file through a symbolic link locked ``<link>.lock``: two owners ran
   every job twice, and ``taskrt copy`` read a file another process was
   writing. A hard link is a second real path the lock cannot see
   (guarantees.md says not to open a database through one).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
import uuid
from typing import Protocol

from .errors import OwnershipError, TaskrtError
from .store import JobStore
from .store.sqlite import lock_path_of

log = logging.getLogger("taskrt")

NETWORK_FILE_SYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ncpfs",
        "afs",
        "9p",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "ocfs2",
        "gfs2",
        "davfs",
        "fuse.sshfs",
        "fuse.glusterfs",
        "fuse.cephfs",
        "fuse.s3fs",
        "fuse.rclone",
    }
)
MOUNTINFO = "/proc/self/mountinfo"


class Ownership(Protocol):
    """What the runtime asks of the one who decides who runs jobs."""

    owner: str
    """This process's name as an owner (host, pid and a random part)."""

    left_behind: str | None
    """After ``claim``: the previous owner, when it died without giving ownership up."""

    @property
    def held(self) -> bool: ...

    def check(self) -> None:
        """Refuse a database whose ownership cannot be decided safely (note 3)."""
        ...

    async def try_acquire(self) -> bool:
        """Take ownership if nobody alive has it; never waits for it."""
        ...

    async def claim(self, address: str | None) -> None:
        """Record this process as the owner, listening at ``address`` (note 2)."""
        ...

    async def release(self) -> None:
        """Give ownership up: remove the record this process wrote, then let the lock go."""
        ...

    def keep(self) -> None:
        """The owner, now and then: make sure the lock still guards the database (note 6)."""
        ...

    async def close(self) -> None:
        """Let go of what asking for ownership holds (a connection), owner or not."""
        ...


def owner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class FileLockOwnership:
    """Ownership as an OS file lock beside the database (notes 1-3)."""

    def __init__(self, store: JobStore, path: str) -> None:
        self.store = store
        self.path = path
        self.lock_path = lock_path_of(path)
        self.owner = owner_name()
        self.left_behind: str | None = None
        self._fd: int | None = None
        self._locked: tuple[int, int] | None = None  # the locked file's device and inode
        self._replaced = False  # said once until the lock is whole again (note 6)
        self._recorded = False  # a start or takeover whose claim failed wrote nothing

    @property
    def held(self) -> bool:
        return self._fd is not None

    def check(self) -> None:
        fstype = filesystem_of(self.path)
        if fstype in NETWORK_FILE_SYSTEMS:
            raise OwnershipError(
                self.path,
                f"the database is on a network file system ({fstype}), where a file lock "
                "cannot tell which process is alive, so two processes could run the same "
                "jobs; keep the SQLite file on a local disk",
            )

    async def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = self._lock_path_file()
        if fd is None:
            return False
        try:
            holder = await self._holder_of_removed_lock()
        except BaseException:
            _let_go(fd)
            raise
        if holder is not None:
            _let_go(fd)
            log.error(
                "the lock file %s was removed while its owner (pid %d) runs: not taking "
                "over (the owner makes it again)",
                self.lock_path,
                holder,
            )
            return False
        self._fd, self._locked = fd, _identity(os.fstat(fd))
        return True

    def _lock_path_file(self) -> int | None:
        """The file at the lock path, opened (made if need be) and locked; ``None`` when
        another process holds it, or it was replaced between the open and the lock."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            at_path = _identity(os.stat(self.lock_path))
        except FileNotFoundError:
            at_path = None
        if at_path != _identity(os.fstat(fd)):
            _let_go(fd)  # removed meanwhile: a lock nobody else can see
            return None
        return fd

    async def _holder_of_removed_lock(self) -> int | None:
        """The recorded owner's pid when it runs on this host and holds a removed lock
        file of this path open (note 6), else ``None``."""
        try:
            record = await self.store.owner_record()
        except TaskrtError:
            return None  # the lock decides, as before
        if record is None or record.owner == self.owner:
            return None
        host, _, rest = record.owner.partition(":")
        pid_text = rest.partition(":")[0]
        if host != socket.gethostname() or not pid_text.isdigit():
            return None  # another host's: the lock cannot guard it (note 3)
        pid = int(pid_text)
        return pid if _holds_removed(pid, self.lock_path) else None

    def keep(self) -> None:
        if self._fd is None:
            return
        try:
            at_path = _identity(os.stat(self.lock_path))
        except FileNotFoundError:
            at_path = None
        except OSError as exc:
            log.warning("looking at the lock file %s failed: %s", self.lock_path, exc)
            return
        if at_path == self._locked:
            return
        try:
            fd = self._lock_path_file()
        except OSError as exc:
            log.error(
                "the lock file %s was removed; making it again failed: %s", self.lock_path, exc
            )
            return
        if fd is None:
            if not self._replaced:  # once: a standby checking it lets it go at once
                log.warning(
                    "the lock file %s was replaced and another process holds it; looking again",
                    self.lock_path,
                )
            self._replaced = True
            return
        old, self._fd, self._locked = self._fd, fd, _identity(os.fstat(fd))
        _let_go(old)
        self._replaced = False
        log.warning(
            "the lock file %s was removed while this process owned the database: made again",
            self.lock_path,
        )

    async def claim(self, address: str | None) -> None:
        self.left_behind = await self.store.claim_ownership(self.owner, address, time.time())
        self._recorded = True

    async def release(self) -> None:
        recorded, self._recorded = self._recorded, False
        try:
            if self._fd is not None and recorded:
                await self.store.release_lease(self.owner)
        finally:
            self._unlock()

    async def close(self) -> None:
        self._unlock()

    def _unlock(self) -> None:
        fd, self._fd, self._locked = self._fd, None, None
        if fd is not None:
            _let_go(fd)


def _holds_removed(pid: int, path: str) -> bool:
    """Whether process ``pid`` holds open a file once at ``path``, since removed
    (Linux: its ``/proc/<pid>/fd`` links; a read of memory, not of a disk)."""
    removed = f"{os.path.realpath(path)} (deleted)"
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False  # not running, or no /proc
    for name in names:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{name}") == removed:
                return True
    return False


def _let_go(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _identity(status: os.stat_result) -> tuple[int, int]:
    return status.st_dev, status.st_ino


class SoleOwnership:
    """A ``:memory:`` database: one process can see it, so it owns it (note 4)."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.owner = owner_name()
        self.left_behind: str | None = None
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    def check(self) -> None:
        pass

    async def try_acquire(self) -> bool:
        self._held = True
        return True

    async def claim(self, address: str | None) -> None:
        self.left_behind = await self.store.claim_ownership(self.owner, address, time.time())

    async def release(self) -> None:
        self._held = False
        await self.store.release_lease(self.owner)

    async def close(self) -> None:
        self._held = False

    def keep(self) -> None:
        pass  # nothing outside this process to lose


class HeldLock(Protocol):
    """A lock a database server holds for this process (note 5)."""

    @property
    def held(self) -> bool: ...

    async def try_hold(self) -> bool: ...

    async def let_go(self) -> None: ...


class ServerLockOwnership:
    """Ownership as a lock the database server holds for the owner's session (note 5)."""

    def __init__(self, store: JobStore, lock: HeldLock) -> None:
        self.store = store
        self.lock = lock
        self.owner = owner_name()
        self.left_behind: str | None = None

    @property
    def held(self) -> bool:
        return self.lock.held

    def check(self) -> None:
        pass

    async def try_acquire(self) -> bool:
        return await self.lock.try_hold()

    async def claim(self, address: str | None) -> None:
        self.left_behind = await self.store.claim_ownership(self.owner, address, time.time())

    async def release(self) -> None:
        try:
            if self.lock.held:
                await self.store.release_lease(self.owner)
        finally:
            await self.lock.let_go()

    async def close(self) -> None:
        await self.lock.let_go()

    def keep(self) -> None:
        pass  # the server holds the lock for the session (note 5)


def filesystem_of(path: str, mountinfo: str = MOUNTINFO) -> str | None:
    """The type of the file system holding ``path`` (Linux), or ``None`` when unknown."""
    target = os.path.realpath(os.path.dirname(os.path.abspath(path)) or ".")
    best = ""
    found: str | None = None
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                left, sep, right = line.partition(" - ")
                fields = left.split()
                if not sep or len(fields) < 5 or not right.split():
                    continue
                mount = _unescape(fields[4])
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, found = mount, right.split()[0]
    except OSError:
        return None
    return found


def _unescape(field: str) -> str:
    """Mount points in mountinfo escape space, tab, newline and backslash as octal."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field
