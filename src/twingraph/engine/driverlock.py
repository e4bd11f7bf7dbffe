"""A run's driver holds a lock file while it drives the run (SQLite homes, decision 0089).

A resume, a ``runs cancel`` and a server's adoption took a run's driver for gone when its
heartbeat had not moved for ``LIVE_WINDOW`` seconds. A live driver can miss that: its heartbeat
waits for SQLite's write lock (another process may hold it for up to the busy timeout, 30 s),
and for the GIL (a component in one long C call holds it). Its run was then taken over and its
finished work done again.

On a SQLite home every driver runs on this machine, so the kernel can say whether it lives: the
driver holds ``flock`` on ``<database>-drivers/<run id>.lock`` from before its run's row says
RUNNING until its end is written; a kill -9 lets go of it with the process. Whoever would take
the run over first tries the lock without waiting: held, the driver is alive (its pid is in the
file), and the run is not taken. The heartbeat watch still follows when the lock is free (a
driver of an older TwinGraph takes no lock). A PostgreSQL home's drivers may be on other
machines: there the heartbeat alone decides, as before.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from pathlib import Path

try:
    import fcntl
except ImportError:              # not POSIX: the heartbeat alone decides
    fcntl = None  # type: ignore[assignment]


class DriverLock:
    """One run's lock, held (``release`` lets go and removes the file)."""
    __slots__ = ("path", "fd", "__weakref__")

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd
        _HELD.add(self)

    def release(self) -> None:
        fd, self.fd = self.fd, -1
        if fd < 0:
            return
        # Removed while still held: one who opened it meanwhile and locks it after this finds
        # it is no longer the file at that path (``DriverLocks.take`` checks) and tries again.
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(fd)


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

    def take(self, run_id: str) -> DriverLock | int | None:
        """The run's lock, taken without waiting; the pid written by the live process that holds
        it (0 if it wrote none yet) if another one does; None if there is no lock to take (the
        directory cannot be made: a read-only home)."""
        assert fcntl is not None
        try:
            self.directory.mkdir(exist_ok=True)
        except OSError:
            return None
        path = self.directory / f"{run_id}.lock"
        for _ in range(100):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _pid_in(fd)
                os.close(fd)
                if holder > 0 and not _alive(holder):
                    # held by what the dead driver left behind (a descriptor a child of
                    # another kind kept): no word from the kernel; the heartbeat decides
                    return None
                return holder
            except OSError:
                os.close(fd)
                return None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except OSError:
                same = False
            if not same:       # released and removed while this opened it: the next one
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return DriverLock(path, fd)
        return None

    def alive(self, run_id: str) -> int | None:
        """The pid of the live process that drives ``run_id`` here (0: unknown), None if none
        holds its lock (taken and let go at once)."""
        got = self.take(run_id)
        if isinstance(got, DriverLock):
            got.release()
            return None
        return got


#: The locks this process holds: a forked child drops its copies (``_forget_in_child``).
_HELD: weakref.WeakSet[DriverLock] = weakref.WeakSet()


def _forget_in_child() -> None:
    """In a forked child: close the inherited descriptors of the parent's locks (the parent
    keeps them held). A child that outlived its killed parent (a pool worker a component
    forked) held them, and kept the dead driver's run "alive" for as long."""
    for held in list(_HELD):
        fd, held.fd = held.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:                # another user's: it exists
        return True
    return True


def _pid_in(fd: int) -> int:
    try:
        text = os.pread(fd, 32, 0)
        return int(text.decode() or 0)
    except (OSError, ValueError):
        return 0
