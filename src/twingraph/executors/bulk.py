"""Messages between the driver and its worker processes whose large buffers skip the pipe.

A task's inputs and a process task's result used to be pickled whole into one ``bytes`` and sent
down a pipe: a 200 MB NumPy array was copied into the pickle, read into another ``bytes`` on the
other side and copied again to rebuild the array, so the driver held it ~3 times over.

Pickle protocol 5 hands every buffer an object offers out of band (NumPy arrays and what is
built on them: pandas blocks, Arrow buffers). Here each buffer of ``INLINE_LIMIT`` bytes or more
is written once into a file of its own in the pool's directory in shared memory (``/dev/shm``
where there is one); the pipe carries the rest of the pickle and the files' names. The reader
maps each file and unlinks its name at once (the pages live as long as the mapping): the arrays
it unpickles are views of the mappings, no copy, and each buffer's memory goes back to the
system when the last array over it goes (one file per buffer: keeping one small output does
not keep a large one mapped).

Inputs are mapped copy-on-write (a task may change its arguments, as it could a pickled copy);
results are mapped read-only, as the engine keeps every result (``serialization.settled``). A
buffer that was read-only where it was pickled (a result of another task, passed on) is
read-only on the other side too: pickle says so.

Shared memory is not the message's to fill: a message that would take more than half of what
is free there travels whole in the pipe, as before. The sender removes its files once the
message is over (read or not). A pool's directory is held by an ``flock`` on its ``.owner``
file for as long as the pool lives, in whatever process (or PID namespace) that is; the next
pool removes the directories whose lock it can take, left by drivers that were killed.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import pickle
import shutil
import struct
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass
from itertools import count
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no sweep of others' directories
    fcntl = None  # type: ignore[assignment]

#: Buffers smaller than this stay in the pickle: a file costs ~50 µs to make, map and unlink.
INLINE_LIMIT = 1 << 20
#: A message takes at most this share of the free space of its directory's file system...
SHARE_OF_FREE = 0.5
#: ...and one above this share has its room taken before it is written.
RESERVE_ABOVE = 0.05
#: A directory with no ``.owner`` lock yet is being made: left alone this long.
YOUNG_SECONDS = 60.0
_PREFIX = "twingraph-bulk-"
_MAKING = ".twingraph-bulk-making-"      # (not ``_PREFIX``: no sweep sees it before it is held)
_OWNER = ".owner"
_BUDGET = ".budget"
#: Large buffers one message maps at most; the rest travel in the pipe. Each mapping keeps a
#: file descriptor open (``mmap`` duplicates it before Python 3.13) for as long as it lives.
MAX_FILES = 64
_INLINE, _FILED = b"P", b"B"
_HEAD = struct.Struct("<Q")
_serial = count()


class TransferError(Exception):
    """A message whose files are not what it says (another process's name, a wrong size)."""


@dataclass(frozen=True, slots=True)
class Packed:
    """A message as it goes down the pipe, and the files its large buffers are in."""
    data: bytes
    files: tuple[str, ...] = ()
    size: int = 0           # bytes of the message, the files' included

    def discard(self) -> None:
        """Remove the files (read or not: a reader's mappings keep the pages they use)."""
        for path in self.files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


class PoolDirectory:
    """A pool's private directory, held (``flock`` on ``.owner``) until ``remove``."""

    def __init__(self) -> None:
        base = shared_base()
        sweep(base)
        _more_descriptors()
        # Made under another name, locked, then renamed: a sweep in another process never
        # finds it unlocked (it took the lock in that moment and removed a live directory).
        making = tempfile.mkdtemp(prefix=f"{_MAKING}{os.getpid()}-", dir=base)
        self._fd = os.open(os.path.join(making, _OWNER), os.O_RDWR | os.O_CREAT, 0o600)
        if fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        self.path = os.path.join(base, _PREFIX + os.path.basename(making)[len(_MAKING):])
        os.rename(making, self.path)
        self._pid = os.getpid()

    def remove(self) -> None:
        """Remove it with what is left in it (only in the process that made it: a forked child
        ending must not take its parent's directory away)."""
        if os.getpid() != self._pid or self._fd < 0:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._fd)
        self._fd = -1


def shared_base() -> str:
    """Where pools make their directories: shared memory, else the temporary directory."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) \
        else tempfile.gettempdir()


def sweep(base: str) -> None:
    """Remove the directories under ``base`` whose pool is gone: their ``.owner`` lock can be
    taken (the process that held it ended, however it ended)."""
    try:
        entries = list(os.scandir(base))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(_MAKING):          # its maker died before it was held
            try:
                if time.time() - entry.stat(follow_symlinks=False).st_mtime > YOUNG_SECONDS \
                        and entry.stat(follow_symlinks=False).st_uid == os.getuid():
                    shutil.rmtree(entry.path, ignore_errors=True)
            except OSError:
                pass
            continue
        if not entry.name.startswith(_PREFIX):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            if _abandoned(entry.path, entry.stat(follow_symlinks=False).st_mtime):
                shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            continue


def _abandoned(path: str, mtime: float) -> bool:
    if fcntl is None:
        return False
    try:
        fd = os.open(os.path.join(path, _OWNER), os.O_RDWR)
    except FileNotFoundError:               # being made, or made before there were owners
        return time.time() - mtime > YOUNG_SECONDS
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False                        # held: its pool lives
    else:
        return True
    finally:
        os.close(fd)


def remove_files_of(directory: str | None, pid: int | None) -> None:
    """Remove the files process ``pid`` wrote in ``directory`` (it died: no one will read them)."""
    if directory is None or pid is None:
        return
    for path in Path(directory).glob(f"{pid}-*"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def dumps(obj: Any, directory: str | None, prefix: bytes = b"") -> Packed:
    """``prefix`` + ``obj`` pickled, each of its large buffers in a new file of ``directory``
    (None: everything in the message). No room there: everything in the message, as before."""
    if directory is None:
        return _inline(obj, prefix)
    import cloudpickle      # (here: ``sweep`` is used by processes that never pickle a task)

    large: list[pickle.PickleBuffer] = []
    sizes: list[int] = []

    def out_of_band(buf: pickle.PickleBuffer) -> bool:
        try:
            with buf.raw() as view:
                size = view.nbytes
        except BufferError:                     # not contiguous: its pickler's to copy
            return True
        if size < INLINE_LIMIT or len(large) >= MAX_FILES:
            return True                         # pickled in line
        large.append(buf)
        sizes.append(size)
        return False

    body = cloudpickle.dumps(obj, protocol=5, buffer_callback=out_of_band)
    if not large:
        return Packed(b"".join((prefix, _INLINE, body)), (), len(body))
    files: list[str] = []
    fds: list[int] = []
    room = True
    try:
        with _budget(directory):
            # checked and taken in one step, across the pool's processes: each message alone
            # within half the free space, several at once filled a small /dev/shm
            free = _free(directory)
            room = sum(sizes) <= free * SHARE_OF_FREE
            # room taken now, so the next look sees it gone; only for a message that is not
            # small beside the free space (``posix_fallocate`` of 200 MB costs ~70 ms)
            reserve = sum(sizes) > free * RESERVE_ABOVE
            for size in sizes if room else ():
                files.append(os.path.join(directory, f"{os.getpid()}-{next(_serial)}"))
                fds.append(os.open(files[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                if reserve:
                    _reserve(fds[-1], size)
        for fd, buf in zip(fds, large):
            _fill(fd, buf)
    except OSError:
        Packed(b"", tuple(files)).discard()
        room = False
    finally:
        for fd in fds:
            os.close(fd)
        large.clear()       # (not released: a PickleBuffer the caller passed stays usable)
    if not room:            # (pickled whole outside the lock: others may take room meanwhile)
        return _inline(obj, prefix)
    head = pickle.dumps(list(zip(files, sizes)), protocol=5)
    return Packed(b"".join((prefix, _FILED, _HEAD.pack(len(head)), head, body)),
                  tuple(files), sum(sizes) + len(body))


#: ``mmap`` keeps a duplicate of the file's descriptor unless told not to (Python 3.13+).
_UNTRACKED: dict[str, Any] = {"trackfd": False} if sys.version_info >= (3, 13) else {}


def _more_descriptors() -> None:
    """The soft limit of open files raised to the hard one: each mapped buffer keeps a
    descriptor open as long as it lives (before Python 3.13), and a run keeping a thousand
    1 MiB results passed the usual soft limit of 1024."""
    if sys.version_info >= (3, 13):
        return
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > soft):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


#: Mappings made here and alive (each keeps a descriptor open before Python 3.13).
_live_maps = 0


def _descriptors_short(more: int) -> bool:
    """Whether ``more`` mappings would take this process's live ones past half its open-file
    limit: the buffers are then read into memory instead, a copy, not an EMFILE. (Counted, not
    listed: listing the descriptors for each message grew with every result kept.)"""
    if _UNTRACKED:
        return False
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return False
    return soft != resource.RLIM_INFINITY and _live_maps + more > soft * 0.5


def _read_whole(fd: int, size: int, writable: bool) -> memoryview:
    data = bytearray(size)
    view = memoryview(data)
    done = 0
    while done < size:
        got = os.readv(fd, [view[done:]])
        if got == 0:
            raise TransferError("a process message file ended early")
        done += got
    return view if writable else view.toreadonly()


def _free(directory: str) -> int:
    try:
        st = os.statvfs(directory)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def _inline(obj: Any, prefix: bytes) -> Packed:
    import cloudpickle

    body = cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return Packed(b"".join((prefix, _INLINE, body)), (), len(body))


@contextlib.contextmanager
def _budget(directory: str) -> Iterator[None]:
    """The pool's processes take room in its directory one at a time (an ``flock``)."""
    if fcntl is None:
        yield
        return
    fd = os.open(os.path.join(directory, _BUDGET), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)                        # (and with it the lock)


def _reserve(fd: int, size: int) -> None:
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, 0, size)
    else:  # pragma: no cover - not Linux
        os.ftruncate(fd, size)


def _fill(fd: int, buf: pickle.PickleBuffer) -> None:
    with buf.raw() as view:
        done = 0
        while done < view.nbytes:                # (a write may take less than it is given)
            done += os.pwrite(fd, view[done:], done)


def loads(message: bytes | memoryview, *, writable: bool, directory: str | None = None) -> Any:
    """The object of a message from ``dumps`` (``message`` without its prefix). ``writable``:
    its large buffers mapped copy-on-write, else read-only. A file outside ``directory`` (when
    given) is refused: the name came from another process."""
    import cloudpickle

    view = memoryview(message)
    kind = bytes(view[:1])
    if kind == _INLINE:
        return cloudpickle.loads(view[1:])
    if kind != _FILED:
        raise TransferError(f"not a TwinGraph process message (starts with {kind!r})")
    (length,) = _HEAD.unpack_from(view, 1)
    start = 1 + _HEAD.size
    places: list[tuple[str, int]] = pickle.loads(view[start:start + length])
    if directory is not None:
        for path, _ in places:
            if Path(path).parent != Path(directory):
                raise TransferError(f"a process message names a file outside its pool: {path!r}")
    copy = _descriptors_short(len(places))
    try:
        buffers = [_mapped(path, size, writable, copy) for path, size in places]
    except OSError as exc:      # the files' failure, not the value's (its own code's errors
        if exc.errno == errno.ENOMEM:           # come from the unpickling below)
            raise MemoryError(f"cannot map a process message: {exc}") from exc
        raise TransferError(f"a process message's files could not be read: "
                            f"{type(exc).__name__}: {exc}") from exc
    finally:
        for path, _ in places:                  # every name goes, mapped or not
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    return cloudpickle.loads(view[start + length:], buffers=buffers)


def _mapped(path: str, size: int, writable: bool, copy: bool) -> memoryview:
    fd = os.open(path, os.O_RDONLY)
    try:
        if os.fstat(fd).st_size != size:
            raise TransferError(f"process message file {path} is not the size its message says")
        if copy:
            return _read_whole(fd, size, writable)
        area = mmap.mmap(fd, size, access=mmap.ACCESS_COPY if writable else mmap.ACCESS_READ,
                         **_UNTRACKED)
    finally:
        os.close(fd)
    global _live_maps
    _live_maps += 1
    weakref.finalize(area, _unmapped)
    return memoryview(area)


def _unmapped() -> None:
    global _live_maps
    _live_maps -= 1
