"""Messages between the driver and its worker processes whose large buffers skip the pipe.

A task's inputs and a process task's result used to be pickled whole into one ``bytes`` and sent
down a pipe: a 200 MB NumPy array was copied into the pickle, read into another ``bytes`` on the
other side and copied again to rebuild the array, so the driver held it ~3 times over.

Pickle protocol 5 hands every buffer an object offers out of band (NumPy arrays and what is
built on them: pandas blocks, Arrow buffers). Here a buffer of ``INLINE_LIMIT`` bytes or more is
written once into a file of the pool's directory in shared memory (``/dev/shm`` where there is
one); the pipe carries the rest of the pickle and the file's name. The reader maps the file and
unlinks its name at once (the pages live as long as the mapping): the arrays it unpickles are
views of the mapping, no copy, and the memory goes back to the system when the last of them
goes.

Inputs are mapped copy-on-write (a task may change its arguments, as it could a pickled copy);
results are mapped read-only, as the engine keeps every result (``serialization.settled``).

The sender always removes its own file once the message is over (``discard``), read or not;
the pool's directory goes with the pool, and a directory left by a driver that was killed is
removed by the next pool that finds its process gone (``sweep``).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import shutil
import struct
import tempfile
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

import cloudpickle

#: Buffers smaller than this stay in the pickle: a file costs ~50 µs to make, map and unlink.
INLINE_LIMIT = 1 << 20
#: Where each buffer starts in the file: aligned as NumPy's SIMD loops like it.
ALIGN = 64
_PREFIX = "twingraph-bulk-"
_INLINE, _FILED = b"P", b"B"
_HEAD = struct.Struct("<Q")
_serial = count()


@dataclass(frozen=True, slots=True)
class Packed:
    """A message as it goes down the pipe, and the file its large buffers are in (if any)."""
    data: bytes
    file: str | None = None
    size: int = 0           # bytes of the message, the file's included

    def discard(self) -> None:
        """Remove the file (read or not: its reader's mapping keeps the pages it uses)."""
        if self.file is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.file)


def pool_directory() -> str:
    """A new private directory for one pool's files, in shared memory where there is one."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    sweep(base or tempfile.gettempdir())
    return tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=base)


def sweep(base: str) -> None:
    """Remove the directories under ``base`` left by pools whose process is gone (killed)."""
    try:
        entries = list(os.scandir(base))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(_PREFIX):
            continue
        pid = entry.name[len(_PREFIX):].split("-", 1)[0]
        try:
            if entry.stat(follow_symlinks=False).st_uid != os.getuid() or not pid.isdigit():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:             # alive (perhaps another user's: EPERM), or unreadable
            continue


def remove_directory(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def remove_files_of(directory: str | None, pid: int | None) -> None:
    """Remove the files process ``pid`` wrote in ``directory`` (it died: no one will read them)."""
    if directory is None or pid is None:
        return
    for path in Path(directory).glob(f"{pid}-*"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def dumps(obj: Any, directory: str | None, prefix: bytes = b"") -> Packed:
    """``prefix`` + ``obj`` pickled, its large buffers in a new file of ``directory`` (None:
    everything in the message). Shared memory full: everything in the message, as before."""
    if directory is None:
        return _inline(obj, prefix)
    large: list[pickle.PickleBuffer] = []

    def out_of_band(buf: pickle.PickleBuffer) -> bool:
        try:
            with buf.raw() as view:
                if view.nbytes < INLINE_LIMIT:
                    return True                 # pickled in line
        except BufferError:                     # not contiguous: its pickler's to copy
            return True
        large.append(buf)
        return False

    body = cloudpickle.dumps(obj, protocol=5, buffer_callback=out_of_band)
    if not large:
        return Packed(b"".join((prefix, _INLINE, body)), None, len(body))
    path = os.path.join(directory, f"{os.getpid()}-{next(_serial)}")
    try:
        places = _write(path, large)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return _inline(obj, prefix)
    finally:
        for buf in large:
            buf.release()
    head = pickle.dumps((path, places), protocol=5)
    size = places[-1][0] + places[-1][1] + len(body)
    return Packed(b"".join((prefix, _FILED, _HEAD.pack(len(head)), head, body)), path, size)


def _inline(obj: Any, prefix: bytes) -> Packed:
    body = cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return Packed(b"".join((prefix, _INLINE, body)), None, len(body))


def _write(path: str, buffers: list[pickle.PickleBuffer]) -> list[tuple[int, int]]:
    """Each buffer into the new file at ``path``, aligned; where each one is."""
    places: list[tuple[int, int]] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        offset = 0
        for buf in buffers:
            with buf.raw() as view:
                start = -(-offset // ALIGN) * ALIGN     # (the gap is a hole: zeros)
                done = 0
                while done < view.nbytes:        # (a write may take less than it is given)
                    done += os.pwrite(fd, view[done:], start + done)
                places.append((start, view.nbytes))
                offset = start + view.nbytes
    finally:
        os.close(fd)
    return places


def loads(message: bytes | memoryview, *, writable: bool, directory: str | None = None) -> Any:
    """The object of a message from ``dumps`` (``message`` without its prefix). ``writable``:
    its large buffers mapped copy-on-write, else read-only. A file outside ``directory`` (when
    given) is refused: the name came from another process."""
    view = memoryview(message)
    kind = bytes(view[:1])
    if kind == _INLINE:
        return cloudpickle.loads(view[1:])
    if kind != _FILED:
        raise ValueError(f"not a TwinGraph process message (starts with {kind!r})")
    (length,) = _HEAD.unpack_from(view, 1)
    start = 1 + _HEAD.size
    path, places = pickle.loads(view[start:start + length])
    if directory is not None and Path(path).parent != Path(directory):
        raise ValueError(f"a process message names a file outside its pool: {path!r}")
    buffers = _mapped(path, places, writable)
    return cloudpickle.loads(view[start + length:], buffers=buffers)


def _mapped(path: str, places: list[tuple[int, int]], writable: bool) -> list[memoryview]:
    size = places[-1][0] + places[-1][1]
    fd = os.open(path, os.O_RDONLY)
    try:
        if os.fstat(fd).st_size < size:
            raise ValueError(f"process message file {path} is shorter than its message says")
        try:
            area = mmap.mmap(fd, size, access=mmap.ACCESS_COPY if writable else mmap.ACCESS_READ)
        except OSError as exc:
            raise MemoryError(f"cannot map {size} bytes of a process message: {exc}") from exc
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    whole = memoryview(area)
    return [whole[start:start + n] for start, n in places]
