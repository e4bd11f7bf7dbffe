"""A run's driver holds a lock file while it drives the run (SQLite homes, decisions 0089, 0090).

A resume, a ``runs cancel`` and a server's adoption took a run's driver for gone when its
heartbeat had not moved for ``LIVE_WINDOW`` seconds. A live driver can miss that: its heartbeat
waits for SQLite's write lock (another process may hold it for up to the busy timeout, 30 s),
and for the GIL (a component in one long C call holds it). Its run was then taken over and its
finished work done again.

On a SQLite home every driver runs on this machine, so the kernel can say whether it lives: the
driver holds ``flock`` on ``<database>-drivers/<run id>.lock`` from before its run's row says
RUNNING until its end is written; a kill -9 lets go of it with the process. Whoever would take
the run over first tries the lock: held, the driver is alive (its pid is in the file), and the
run is not taken.

A lock file left behind can prove its driver dead. Whoever takes the lock writes its pid in it;
a driver, once it knows its generation (the run's ``driver_epoch``: 0 for a new run, the one
its claim gave a resume), writes ``pid:epoch`` (``DriverLock.mark``). Letting go removes the
file first. So a file still there, free, that says ``pid:epoch`` with a pid that no longer
exists, was left by the driver of that generation, which died holding it (kill -9, a crash).
If the run's ``driver_epoch`` is still that generation, nobody has claimed the run since, and
its driver is dead: a resume or a ``runs cancel`` skips the heartbeat watch and a server adopts
the run at once. Any claim raises the epoch (a resume, ``runs cancel``, an adoption), so the
file of an earlier generation proves nothing about a later driver, one that took no lock
included; nor does a pid without an epoch (someone about to drive, or watching, who died).
Looking (``DriverLocks.look``) never makes nor writes a file. Files of runs that have ended are
swept (``DriverLocks.sweep``). A PostgreSQL home's drivers may be on other machines: there the
heartbeat alone decides, as before.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

try:
    import fcntl
except ImportError:              # not POSIX: the heartbeat alone decides
    fcntl = None  # type: ignore[assignment]

#: Seconds a taker tries a held lock again before it takes the holder for its driver: a look or
#: a sweep holds it for an instant; and how long while only lookers hold it (shared).
TAKE_WAIT = 0.2
LOOK_WAIT = 5.0

#: A dead driver's file: (its pid, its generation).
Orphan = tuple[int, int]


class DriverLock:
    """One run's lock, held (``release`` lets go and removes the file). ``orphan``: the pid and
    generation the file held when it was taken, if that pid no longer exists (a driver that
    died holding it; the caller compares the generation with the run's), else None."""
    __slots__ = ("path", "fd", "orphan", "__weakref__")

    def __init__(self, path: Path, fd: int, orphan: Orphan | None) -> None:
        self.path, self.fd, self.orphan = path, fd, orphan
        _HELD.add(self)

    def mark(self, epoch: int) -> None:
        """Written by the run's driver once it knows its generation: the file then proves it
        dead if it dies holding it (on this machine, ``_HOST``)."""
        if self.fd >= 0:
            _write(self.fd, f"{os.getpid()}:{epoch}:{_HOST}")

    def release(self) -> None:
        fd, self.fd = self.fd, -1
        if fd < 0:
            return
        # Removed while still held: one who opened it meanwhile and locks it after this finds
        # it is no longer the file at that path (``DriverLocks.take`` checks) and tries again.
        try:
            self.path.unlink()
        except OSError:
            pass
        _close(fd)


class DriverLocks:
    """The lock files of the runs of one SQLite database."""

    def __init__(self, database: Path) -> None:
        self.directory = database.with_name(database.name + "-drivers")

    @classmethod
    def of(cls, metadata: object) -> DriverLocks | None:
        """The locks of ``metadata``'s runs: None unless it is a SQLite file on a POSIX system."""
        database = getattr(metadata, "local_file", None)
        if fcntl is None or not isinstance(database, Path):
            return None
        try:            # one database reached by a symlink and by its path: one lock directory
            database = database.resolve()
        except OSError:
            pass
        return cls(database)

    def take(self, run_id: str, wait: bool = True) -> DriverLock | int | None:
        """The run's lock, taken (its pid written in it); the pid written by the live process
        that holds it (0 if it is not known: not written yet, a dead process's pid in the file,
        only lookers holding it past ``LOOK_WAIT``) if another one does; None if there is no
        lock to take (the directory or the file cannot be made: a read-only home). A lock held
        is never "no lock": a driver that went on without one was taken over by the next.
        ``wait=False``: one try (the sweep, which takes only what nobody holds)."""
        assert fcntl is not None
        try:
            self.directory.mkdir(exist_ok=True)
        except OSError:
            return None
        path = self.directory / f"{run_id}.lock"
        start = time.monotonic()
        for _ in range(100_000):
            fd = _open(path, os.O_RDWR | os.O_CREAT)
            if fd is None:     # another user's file: locked all the same (its pid unwritten)
                fd = _open(path, os.O_RDONLY)
                if fd is None:
                    return None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _content(fd)[0]
                looking = _only_looked_at(fd)
                _close(fd)
                waited = time.monotonic() - start
                # a look, a sweep: gone in an instant; only lookers (shared holds), for longer
                # (one stopped while it looks must not make this one go on unlocked)
                if wait and (waited < TAKE_WAIT or (looking and waited < LOOK_WAIT)):
                    time.sleep(0.005)
                    continue
                return holder if holder > 0 and _alive(holder) else 0
            except OSError:
                _close(fd)
                return None
            if not _same(fd, path):  # released and removed while this opened it: the next one
                _close(fd)
                continue
            orphan = _orphan(fd)
            _write(fd, str(os.getpid()))
            lock = DriverLock(path, fd, orphan)
            _OPENING.discard(fd)
            return lock
        return None

    def look(self, run_id: str) -> int | Orphan | None:
        """What the run's lock says, holding it shared for an instant (a driver or a taker holds
        it exclusive), without making or writing anything: the pid of the live process that
        holds it (0: not known); the (pid, generation) of a driver that died holding it; None if
        nothing is known (no file; a file that proves nothing)."""
        assert fcntl is not None
        path = self.directory / f"{run_id}.lock"
        fd = _open(path, os.O_RDONLY)
        if fd is None:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _content(fd)[0]
                return holder if holder > 0 and _alive(holder) else 0
            except OSError:
                return None
            if not _same(fd, path):
                return None
            return _orphan(fd)
        finally:
            _close(fd)

    def alive(self, run_id: str) -> int | None:
        """The pid of the live process that drives ``run_id`` here (0: unknown), None if none
        holds its lock."""
        got = self.look(run_id)
        return got if isinstance(got, int) else None

    def run_ids(self) -> list[str]:
        """The runs that have a lock file."""
        try:
            return [p.name[:-len(".lock")] for p in self.directory.iterdir()
                    if p.suffix == ".lock"]
        except OSError:
            return []

    def sweep(self, ended: Callable[[str], bool]) -> int:
        """Remove the lock files of runs that ``ended`` says are over (a driver killed, its run
        cancelled or resumed to the end elsewhere, or deleted) and that nobody holds; returns
        how many. The file of a run still RUNNING stays: it may prove its driver dead."""
        removed = 0
        for run_id in self.run_ids():
            try:
                over = ended(run_id)
            except Exception:  # noqa: BLE001 - a store that cannot say: kept for now
                continue
            if not over:
                continue
            got = self.take(run_id, wait=False)      # held: a driver's, or looked at
            if isinstance(got, DriverLock):
                got.release()
                removed += 1
        return removed


#: The locks this process holds, and descriptors being opened: a forked child closes its
#: copies (``_in_child``). A child that outlived its killed parent (a pool worker a component
#: forked) held them, and kept the dead driver's run "alive" for as long.
_HELD: weakref.WeakSet[DriverLock] = weakref.WeakSet()
_OPENING: set[int] = set()
#: Held from a descriptor's opening until it is in ``_OPENING``, and by a fork: a child never
#: inherits a lock's descriptor this module does not know of.
_GUARD = threading.Lock()


def _open(path: Path, flags: int) -> int | None:
    with _GUARD:
        try:
            fd = os.open(path, flags, 0o644)
        except OSError:
            return None
        _OPENING.add(fd)
        return fd


def _close(fd: int) -> None:
    with _GUARD:
        _OPENING.discard(fd)
        try:
            os.close(fd)
        except OSError:
            pass


def _in_child() -> None:
    """In a forked child: close the inherited descriptors of the parent's locks (the parent
    keeps them held)."""
    for held in list(_HELD):
        fd, held.fd = held.fd, -1
        if fd >= 0:
            _OPENING.add(fd)
    for fd in _OPENING:
        try:
            os.close(fd)
        except OSError:
            pass
    _OPENING.clear()
    _GUARD.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_GUARD.acquire, after_in_parent=_GUARD.release,
                        after_in_child=_in_child)


def _same(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except OSError:
        return False


def _write(fd: int, text: str) -> None:
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
    except OSError:
        pass


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process: a zombie (killed, its parent has not reaped it yet:
    a supervisor, a container's first process) is dead, and holds no lock."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:                # another user's: it exists
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):  # not Linux, or gone meanwhile
        return True


def _content(fd: int) -> tuple[int, int | None, str]:
    """The pid, the generation (None if none was written) and the host the file names."""
    try:
        pid, _, rest = os.pread(fd, 128, 0).decode().partition(":")
        epoch, _, host = rest.partition(":")
        return int(pid or 0), int(epoch) if epoch else None, host
    except (OSError, ValueError):
        return 0, None, ""


def _orphan(fd: int) -> Orphan | None:
    """The (pid, generation) a free file holds if its driver died holding it: a pid that no
    longer exists, written by a driver (with its generation) on this machine, in this pid
    namespace (``_HOST``: a driver on another machine sharing the home over a file system
    whose locks are not shared, or in another container, is not known dead from here)."""
    pid, epoch, host = _content(fd)
    if pid > 0 and epoch is not None and host == _HOST and not _alive(pid):
        return pid, epoch
    return None


def _only_looked_at(fd: int) -> bool:
    """Whether the lock ``fd``'s exclusive try failed on is held shared only (lookers)."""
    assert fcntl is not None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        pass
    return True


def _host() -> str:
    """This machine's boot and pid namespace: what a pid in a lock file is a pid of."""
    parts = []
    for path in ("/proc/sys/kernel/random/boot_id",):
        try:
            with open(path) as f:
                parts.append(f.read().strip())
        except OSError:
            parts.append("-")
    try:
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        parts.append("-")
    return ".".join(parts)


_HOST = _host()
