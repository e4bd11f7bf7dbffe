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
file), and the run is not taken.

A lock file left behind proves its driver dead: a driver that lets go removes the file first,
so one that is still there, free, with the pid of a process that no longer exists in it, was
held by a driver that died holding it (kill -9, a crash, the machine's power). A resume or a
``runs cancel`` that takes such a lock skips the heartbeat watch (``LIVE_WINDOW``, ~11 s);
``DriverLock.orphan_of`` says whose it was. When the lock is free and no dead pid is in it
(the file was never made: a driver of an older TwinGraph takes no lock) the heartbeat watch
still decides. Files of runs that have ended are swept (``DriverLocks.sweep``). A PostgreSQL
home's drivers may be on other machines: there the heartbeat alone decides, as before.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Callable
from pathlib import Path

try:
    import fcntl
except ImportError:              # not POSIX: the heartbeat alone decides
    fcntl = None  # type: ignore[assignment]


class DriverLock:
    """One run's lock, held (``release`` lets go and removes the file). ``orphan_of``: the pid
    of the dead process that held it before and never let go (the file was left behind), else
    None."""
    __slots__ = ("path", "fd", "orphan_of", "__weakref__")

    def __init__(self, path: Path, fd: int, orphan_of: int | None = None) -> None:
        self.path, self.fd, self.orphan_of = path, fd, orphan_of
        _HELD.add(self)

    def release(self, remove: bool = True) -> None:
        """Let go; the file is removed unless ``remove`` is False (a look that found it
        orphaned leaves it: it is what proves the dead driver dead to the next one)."""
        fd, self.fd = self.fd, -1
        if fd < 0:
            return
        if remove:
            # Removed while still held: one who opened it meanwhile and locks it after this
            # finds it is no longer the file at that path (``DriverLocks.take`` checks) and
            # tries again.
            with contextlib.suppress(OSError):
                self.path.unlink()
        else:        # the dead driver's pid goes back in (``take`` wrote this one's)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(self.orphan_of or 0).encode(), 0)
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
            # Free, and still the file at that path: a pid in it is one that held it and never
            # let go (letting go removes the file first). Not alive any more, it died holding
            # it; alive, it is another process by now (pids are reused): nothing is proven.
            before = _pid_in(fd)
            orphan_of = before if before > 0 and not _alive(before) else None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            return DriverLock(path, fd, orphan_of)
        return None

    def alive(self, run_id: str) -> int | None:
        """The pid of the live process that drives ``run_id`` here (0: unknown), None if none
        holds its lock (taken and let go at once)."""
        got = self.look(run_id)
        return None if got is False else got

    def look(self, run_id: str) -> int | bool | None:
        """The pid of the live process that drives ``run_id`` here (0: unknown); False if its
        lock file proves its last driver dead (``DriverLock.orphan_of``: the file is left as
        it was); None if nothing is known (no lock file, or no lock to take)."""
        got = self.take(run_id)
        if not isinstance(got, DriverLock):
            return got
        orphaned = got.orphan_of is not None
        got.release(remove=not orphaned)
        return False if orphaned else None

    def sweep(self, ended: Callable[[str], bool]) -> int:
        """Remove the lock files of runs that ``ended`` says are over (a driver killed, its run
        cancelled or resumed to the end elsewhere, or deleted) and that nobody holds; returns
        how many. The file of a run still RUNNING stays: it proves that run's driver dead."""
        try:
            names = [p.name for p in self.directory.iterdir() if p.suffix == ".lock"]
        except OSError:
            return 0
        removed = 0
        for name in names:
            run_id = name[:-len(".lock")]
            try:
                over = ended(run_id)
            except Exception:  # noqa: BLE001 - a store that cannot say: kept for now
                continue
            if not over:
                continue
            got = self.take(run_id)
            if isinstance(got, DriverLock):
                got.release()
                removed += 1
        return removed


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
